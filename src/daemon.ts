// The daemon's whole lifecycle, in one place: sockets in, READY=1, live
// STATUS=, watchdog, exit when idle, graceful stop on SIGTERM/SIGINT.
//
// Exit statuses: 0 after --exit-idle-time or a stop signal (also a second,
// impatient one); 1 when it cannot start (no or unusable sockets, a listen
// address that cannot be bound). Command-line errors are cli.ts's (also 1).
import { ActivationError, checkListenFds, listenFds, socketLabel } from './activation';
import { LogLevel, Logger, parseLogLevel, stderrIsJournal } from './log';
import { addon } from './native';
import { Notifier, Watchdog, watchdogUsec } from './notify';
import { timerMs, type CliOptions } from './options';
import { SocketProxy } from './proxy';
import { formatAddress } from './target';
import { longTimeout } from './timers';
import { USEC_PER_MSEC, formatTimespan, timespanToMs } from './timespan';

export const EXIT_SUCCESS = 0;
export const EXIT_FAILURE = 1;

/** How often STATUS= is refreshed (sent only when the text changed). */
const STATUS_INTERVAL_MS = 1000;

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** The log level: --log-level, else $SYSTEMD_LOG_LEVEL, else info. */
function logLevelFrom(options: CliOptions, env: NodeJS.ProcessEnv, complain: string[]): number {
  if (options.logLevel !== undefined) return options.logLevel;
  const fromEnv = env.SYSTEMD_LOG_LEVEL;
  if (fromEnv !== undefined && fromEnv !== '') {
    const level = parseLogLevel(fromEnv);
    if (level !== null) return level;
    complain.push(`Failed to parse log level '${fromEnv}'. Ignoring.`);
  }
  return LogLevel.info;
}

/** Runs the proxy until it is told to stop or has been idle long enough; never returns. */
export async function runDaemon(options: CliOptions, env: NodeJS.ProcessEnv = process.env): Promise<never> {
  const complaints: string[] = [];
  const logger = new Logger({ level: logLevelFrom(options, env, complaints), journal: stderrIsJournal(env) });
  complaints.forEach((c) => logger.warning(c));
  const die = (message: string): never => {
    logger.error(message);
    process.exit(EXIT_FAILURE);
  };

  // Sockets passed in by the service manager, checked before anything else.
  let passed: ReturnType<typeof listenFds> = [];
  let infos: ReturnType<typeof checkListenFds> = [];
  try {
    passed = listenFds(env);
    infos = checkListenFds(passed);
  } catch (error) {
    if (error instanceof ActivationError) die(error.message);
    throw error;
  }
  if (passed.length === 0 && options.listen.length === 0) die("Didn't get any sockets passed in.");

  const limits = addon.raiseFdLimit();
  logger.debug(`File descriptor limit: ${limits.soft < 0 ? 'unlimited' : limits.soft}.`);

  const notifier = new Notifier({
    env,
    onError: (error) => logger.warning(`Failed to notify the service manager: ${error.message}`),
  });
  // Signal handlers go in before anything is announced (the startup line,
  // READY=1): a SIGTERM right after them must stop us cleanly, not kill us
  // with the default action. Until the proxy runs, a signal just exits.
  let created: SocketProxy | null = null;
  let signalHandler = (signal: NodeJS.Signals): void => {
    logger.info(`Received ${signal} while starting; exiting.`);
    created?.close();
    process.exit(EXIT_SUCCESS);
  };
  const onAnySignal = (signal: NodeJS.Signals) => signalHandler(signal);
  process.on('SIGTERM', onAnySignal);
  process.on('SIGINT', onAnySignal);

  // The addresses travel as options.ts parsed them.
  const proxy = new SocketProxy({
    target: options.target,
    fds: passed.map((s) => s.fd),
    listen: options.listen,
    maxConnections: options.maxConnections,
    workers: options.workers,
    connectTimeout: Math.max(1, timerMs(options.connectTimeout)),
    resolveInterval: Math.max(1, timerMs(options.resolveInterval)),
    logLevel: logger.level,
  });
  created = proxy;
  proxy.on('log', (level, message) => logger.log(level, message));
  try {
    await proxy.start();
  } catch (error) {
    die(error instanceof Error ? error.message : String(error));
  }

  const target = formatAddress(proxy.target);
  const listening = [
    ...passed.map((s, i) => socketLabel(s, infos[i])),
    ...proxy.listening.slice(passed.length),
  ];
  logger.info(`Listening on ${listening.join(', ')}; forwarding to ${target}.`);

  let stopping = false;
  const statusText = (): string => {
    const s = proxy.stats;
    const parts = [`${s.active} of ${options.maxConnections} connections open`, `${s.accepted} served`];
    if (s.refused) parts.push(`${s.refused} refused at the limit`);
    if (s.upstreamFailed) parts.push(`${s.upstreamFailed} failed to connect`);
    return `${stopping ? 'Stopping' : 'Forwarding'} to ${target}: ${parts.join(', ')}`;
  };

  // READY=1 only now: every listener is armed.
  notifier.ready(statusText());
  let statusTimer: NodeJS.Timeout | null = null;
  if (notifier.enabled) {
    statusTimer = setInterval(() => notifier.status(statusText()), STATUS_INTERVAL_MS);
    statusTimer.unref();
  }

  const watchdogInterval = watchdogUsec(env);
  const watchdog = watchdogInterval && notifier.enabled
    ? new Watchdog({
        notifier,
        usec: watchdogInterval,
        alive: () => proxy.workersAlive(),
        onStall: (stalled) =>
          stalled
            ? logger.error('A forwarding thread did not answer in time; withholding the watchdog ping.')
            : logger.info('Forwarding threads answer again; watchdog pings resumed.'),
      })
    : null;
  if (watchdog) {
    logger.debug(`Watchdog: pinging every ${formatTimespan(BigInt(watchdog.intervalMs) * USEC_PER_MSEC)}.`);
    watchdog.start();
  }

  const exit = (code: number): never => {
    if (statusTimer) clearInterval(statusTimer);
    watchdog?.stop();
    proxy.close();
    process.exit(code);
  };

  // --exit-idle-time: counted from start and from every return to zero connections.
  let cancelIdle: (() => void) | null = null;
  const idleMs = timespanToMs(options.exitIdleTime);
  const armIdle = () => {
    cancelIdle?.();
    cancelIdle = longTimeout(idleMs, () => {
      cancelIdle = null;
      if (stopping || proxy.active > 0) return;
      stopping = true;
      logger.info(`Exiting after ${formatTimespan(options.exitIdleTime)} without connections.`);
      proxy.stopAccepting();
      notifier.stopping(statusText());
      exit(EXIT_SUCCESS);
    });
  };
  const disarmIdle = () => {
    cancelIdle?.();
    cancelIdle = null;
  };
  if (Number.isFinite(idleMs)) {
    proxy.on('busy', disarmIdle);
    proxy.on('idle', armIdle);
    if (proxy.active === 0) armIdle();
  }

  // SIGTERM/SIGINT: stop accepting, let open connections finish within the
  // grace period, exit 0. A second signal cuts them and exits at once.
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.info(`Received ${signal} again; closing ${plural(proxy.active, 'connection')} and exiting now.`);
      exit(EXIT_SUCCESS);
    }
    stopping = true;
    disarmIdle();
    proxy.stopAccepting();
    const open = proxy.active;
    notifier.stopping(statusText());
    if (open === 0) {
      logger.info(`Received ${signal}; exiting.`);
      exit(EXIT_SUCCESS);
    }
    const graceMs = timespanToMs(options.drainTimeout);
    logger.info(
      `Received ${signal}; no longer accepting, waiting ${
        Number.isFinite(graceMs) ? `up to ${formatTimespan(options.drainTimeout)}` : 'without limit'
      } for ${plural(open, 'open connection')} to finish.`,
    );
    const finished = () => {
      logger.info('All connections finished; exiting.');
      exit(EXIT_SUCCESS);
    };
    proxy.once('idle', finished);
    longTimeout(graceMs, () => {
      const left = proxy.active;
      if (left === 0) finished();
      logger.warning(`Closing ${plural(left, 'connection')} still open after ${formatTimespan(options.drainTimeout)}.`);
      exit(EXIT_SUCCESS);
    });
    // Updated status while draining.
    if (statusTimer === null && notifier.enabled) {
      statusTimer = setInterval(() => notifier.status(statusText()), STATUS_INTERVAL_MS);
    }
  };
  signalHandler = onSignal;

  return new Promise<never>(() => {});
}
