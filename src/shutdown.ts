// How the daemon stops: on SIGTERM/SIGINT (stop accepting, let open
// connections finish within --drain-timeout, a second signal cuts them), and
// when --exit-idle-time ran out (stop accepting first, then serve whatever
// connection slipped in to its end). Always exit status 0.
import type { Logger } from './log';
import type { SocketProxy } from './proxy';
import { plural, type StatusReporter } from './status';
import { USEC_INFINITY, formatTimespan, timespanToMs } from './timespan';

export const EXIT_SUCCESS = 0;
export const EXIT_FAILURE = 1;

export interface ShutdownOptions {
  logger: Logger;
  /** --drain-timeout, in µs (USEC_INFINITY: no limit). */
  drainTimeout: bigint;
  /** --exit-idle-time, in µs, for the log line. */
  exitIdleTime: bigint;
}

export class Shutdown {
  private proxy: SocketProxy | null = null;
  private status: StatusReporter | null = null;
  private running = false;
  private signalled = false;
  private draining = false;
  private exiting = false;
  /** Run just before exiting (timers to stop). */
  private readonly cleanups: (() => void)[] = [];

  constructor(private readonly options: ShutdownOptions) {}

  /**
   * Handles SIGTERM and SIGINT from now on. Until running() a signal just
   * exits (closing the proxy if there is one): signal handlers go in before
   * anything is announced, so a SIGTERM right after READY=1 stops us
   * cleanly instead of killing us with the default action.
   */
  installSignalHandlers(): void {
    const onSignal = (signal: NodeJS.Signals) => this.onSignal(signal);
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  }

  /** The proxy to close on exit (set as soon as it exists). */
  setProxy(proxy: SocketProxy): void {
    this.proxy = proxy;
  }

  /** The proxy forwards now: signals drain it. */
  setRunning(status: StatusReporter): void {
    this.status = status;
    this.running = true;
  }

  onExit(cleanup: () => void): void {
    this.cleanups.push(cleanup);
  }

  /** True once the daemon started to stop. */
  get stopping(): boolean {
    return this.signalled || this.draining || this.exiting;
  }

  /** --exit-idle-time ran out. */
  onIdleTimeout(): void {
    const proxy = this.proxy;
    if (!proxy || this.stopping) return;
    // Stop accepting first: once that returns, no client can slip in, so the
    // count read next is the final one. A client still in the backlog stays
    // there for the next instance (the service manager keeps the socket).
    proxy.stopAccepting();
    const open = proxy.active;
    const idle = formatTimespan(this.options.exitIdleTime);
    this.status?.stoppingNow();
    if (open === 0) {
      this.options.logger.info(`Exiting after ${idle} without connections.`);
      this.exit(EXIT_SUCCESS);
      return;
    }
    // Connections that opened as the time ran out are served to their end,
    // with no limit: they were accepted, so they are not dropped.
    this.draining = true;
    this.options.logger.info(
      `Exiting after ${idle} without connections, once the ${plural(open, 'connection')} opened meanwhile ` +
        `${open === 1 ? 'has' : 'have'} finished; no longer accepting.`,
    );
    this.drainThenExit(Infinity);
  }

  private onSignal(signal: NodeJS.Signals): void {
    const { logger } = this.options;
    const proxy = this.proxy;
    if (!this.running || !proxy) {
      logger.info(`Received ${signal} while starting; exiting.`);
      this.exit(EXIT_SUCCESS);
      return;
    }
    if (this.signalled) {
      logger.info(`Received ${signal} again; closing ${plural(proxy.active, 'connection')} and exiting now.`);
      this.exit(EXIT_SUCCESS);
      return;
    }
    this.signalled = true;
    proxy.stopAccepting();
    const open = proxy.active;
    this.status?.stoppingNow();
    if (open === 0) {
      logger.info(`Received ${signal}; exiting.`);
      this.exit(EXIT_SUCCESS);
      return;
    }
    const graceMs = timespanToMs(this.options.drainTimeout);
    logger.info(
      `Received ${signal}; no longer accepting, waiting ${
        this.options.drainTimeout === USEC_INFINITY ? 'without limit' : `up to ${formatTimespan(this.options.drainTimeout)}`
      } for ${plural(open, 'open connection')} to finish.`,
    );
    this.draining = true;
    this.drainThenExit(graceMs);
  }

  /** Waits (SocketProxy.drain) up to `ms` for the open connections, then exits 0. */
  private drainThenExit(ms: number): void {
    const proxy = this.proxy!;
    proxy.drain(ms).catch((error: unknown) => {
      // Not expected; still, a failed wait must end in an exit, not a crash.
      this.options.logger.error(`Waiting for connections failed: ${error instanceof Error ? error.message : String(error)}`);
      return false;
    }).then((allEnded) => {
      if (this.exiting) return; // exit() closed the proxy, which ended the wait
      if (allEnded) {
        this.options.logger.info('All connections finished; exiting.');
      } else {
        this.options.logger.warning(
          `Closing ${plural(proxy.active, 'connection')} still open after ${formatTimespan(this.options.drainTimeout)}.`,
        );
      }
      this.exit(EXIT_SUCCESS);
    });
  }

  /**
   * Stops the timers, closes the proxy (cutting open connections) and exits. The exit comes one
   * event-loop turn later: close() joined the forwarding threads, and what they sent last (the
   * access log lines of the connections just ended or cut, log lines) waits in the engine's event
   * queue, which the loop's next poll delivers. Called again meanwhile (a second signal): exits now.
   */
  exit(code: number): void {
    if (this.exiting) process.exit(code);
    this.exiting = true;
    for (const cleanup of this.cleanups) cleanup();
    this.proxy?.close();
    // Two turns: the first immediate may run before this turn's poll phase, the second cannot.
    setImmediate(() => setImmediate(() => process.exit(code)));
  }
}
