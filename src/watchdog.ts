// The service watchdog (WatchdogSec=): WATCHDOG=1 every half interval, sent
// only while every forwarding thread proves itself alive, so a stuck thread
// lets systemd restart the service. Stalls are logged at most once per
// STALL_REPORT_INTERVAL_MS, with a count of the ones left out.
import type { Logger } from './log';
import type { Notifier } from './notify';
import type { SocketProxy } from './proxy';
import { MAX_TIMER_MS } from './defaults';
import { USEC_PER_MSEC, formatTimespan } from './timespan';

/** Pings never go out more often than this, whatever WATCHDOG_USEC asks (1 µs would spin the event loop). */
export const MIN_PING_INTERVAL_MS = 10;
/** At most one "did not answer" line per this much time. */
export const STALL_REPORT_INTERVAL_MS = 10_000;

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
  /** WATCHDOG_USEC. Pings go out every half of it, but at most every MIN_PING_INTERVAL_MS. */
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
  /** Half of WATCHDOG_USEC was shorter than MIN_PING_INTERVAL_MS. */
  readonly floored: boolean;

  constructor(private readonly options: WatchdogOptions) {
    const asked = Number(options.usec / 2n / USEC_PER_MSEC);
    this.floored = asked < MIN_PING_INTERVAL_MS;
    this.intervalMs = Math.max(MIN_PING_INTERVAL_MS, Math.min(MAX_TIMER_MS, asked));
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

/**
 * Logs stalls without flooding: the first one, then at most one per
 * `intervalMs` (saying how many were left out); "resumed" only after a
 * stall that was logged.
 */
export class StallReporter {
  private lastReport = -Infinity;
  private omitted = 0;
  private reported = false;

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = STALL_REPORT_INTERVAL_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  onStall(stalled: boolean): void {
    if (!stalled) {
      if (this.reported) this.logger.info('Forwarding threads answer again; watchdog pings resumed.');
      this.reported = false;
      return;
    }
    const now = this.now();
    if (now - this.lastReport < this.intervalMs) {
      this.omitted++;
      this.reported = false;
      return;
    }
    const more = this.omitted ? ` (${this.omitted} more such stalls since the last report)` : '';
    this.logger.error(`A forwarding thread did not answer in time; withholding the watchdog ping${more}.`);
    this.lastReport = now;
    this.omitted = 0;
    this.reported = true;
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
  const stalls = new StallReporter(logger);
  const watchdog = new Watchdog({
    notifier,
    usec,
    alive: () => proxy.workersAlive(),
    onStall: (stalled) => stalls.onStall(stalled),
  });
  const every = formatTimespan(BigInt(watchdog.intervalMs) * USEC_PER_MSEC);
  if (watchdog.floored) {
    logger.warning(`WATCHDOG_USEC=${usec} is too short to ping every half of it; pinging every ${every}.`);
  } else {
    logger.debug(`Watchdog: pinging every ${every}.`);
  }
  watchdog.start();
  return watchdog;
}
