// The service watchdog (WatchdogSec=): WATCHDOG=1 every half interval, sent
// only while every forwarding thread proves itself alive, so a stuck thread
// lets systemd restart the service.
import type { Logger } from './log';
import type { Notifier } from './notify';
import type { SocketProxy } from './proxy';
import { MAX_TIMER_MS } from './defaults';
import { USEC_PER_MSEC, formatTimespan } from './timespan';

/**
 * The watchdog interval asked for by the service manager, in µs, like
 * sd_watchdog_enabled(): WATCHDOG_USEC, honoured only if WATCHDOG_PID is
 * unset or names this process. Null when disabled or malformed.
 */
export function watchdogUsec(env: NodeJS.ProcessEnv = process.env, pid = process.pid): bigint | null {
  const usecText = env.WATCHDOG_USEC;
  if (!usecText || !/^[0-9]+$/.test(usecText)) return null;
  const usec = BigInt(usecText);
  if (usec === 0n || usec >= (1n << 64n) - 1n) return null;
  const pidText = env.WATCHDOG_PID;
  if (pidText !== undefined) {
    if (!/^[0-9]+$/.test(pidText) || Number(pidText) !== pid) return null;
  }
  return usec;
}

export interface WatchdogOptions {
  notifier: Notifier;
  /** WATCHDOG_USEC. Pings go out every half of it. */
  usec: bigint;
  /** True while the work is proven alive; a ping is sent only then. */
  alive: () => boolean;
  /** Told when a ping is withheld (once per episode) and when pings resume. */
  onStall?: (stalled: boolean) => void;
}

/** Sends WATCHDOG=1 every half interval while `alive()` says so. */
export class Watchdog {
  private timer: NodeJS.Timeout | null = null;
  private stalled = false;
  readonly intervalMs: number;

  constructor(private readonly options: WatchdogOptions) {
    this.intervalMs = Math.max(1, Math.min(MAX_TIMER_MS, Number(options.usec / 2n / USEC_PER_MSEC)));
  }

  start(): void {
    if (this.timer) return;
    this.tick();
    this.timer = setInterval(() => this.tick(), this.intervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private tick(): void {
    const alive = this.options.alive();
    if (alive) this.options.notifier.watchdog();
    if (alive === this.stalled) {
      this.stalled = !alive;
      this.options.onStall?.(this.stalled);
    }
  }
}

/** Starts the watchdog if the service manager asked for one (and listens on NOTIFY_SOCKET). */
export function startWatchdog(
  env: NodeJS.ProcessEnv,
  notifier: Notifier,
  proxy: SocketProxy,
  logger: Logger,
): Watchdog | null {
  const usec = watchdogUsec(env);
  if (usec === null || !notifier.enabled) return null;
  const watchdog = new Watchdog({
    notifier,
    usec,
    alive: () => proxy.workersAlive(),
    onStall: (stalled) =>
      stalled
        ? logger.error('A forwarding thread did not answer in time; withholding the watchdog ping.')
        : logger.info('Forwarding threads answer again; watchdog pings resumed.'),
  });
  logger.debug(`Watchdog: pinging every ${formatTimespan(BigInt(watchdog.intervalMs) * USEC_PER_MSEC)}.`);
  watchdog.start();
  return watchdog;
}
