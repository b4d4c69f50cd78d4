// sd_notify(3) and the service watchdog, for Type=notify units. The datagrams
// are sent by the addon (Node has no UNIX datagram sockets). Without
// NOTIFY_SOCKET everything here is a no-op.
import { addon } from './native';

export interface NotifierOptions {
  env?: NodeJS.ProcessEnv;
  pid?: number;
  /** Called once with the first failure to send (later ones are dropped quietly). */
  onError?: (error: Error) => void;
}

export class Notifier {
  /** $NOTIFY_SOCKET (a path or "@abstract"), or null when not under a notify-aware manager. */
  readonly socket: string | null;
  private failed = false;
  private readonly onError?: (error: Error) => void;
  private lastStatus: string | null = null;

  constructor(options: NotifierOptions = {}) {
    const env = options.env ?? process.env;
    const socket = env.NOTIFY_SOCKET;
    this.socket = socket && (socket.startsWith('/') || socket.startsWith('@')) ? socket : null;
    this.onError = options.onError;
  }

  get enabled(): boolean {
    return this.socket !== null;
  }

  /** Sends one notification ("READY=1", "STATUS=…", several joined by "\n"). Returns false if it was not sent. */
  send(message: string): boolean {
    if (!this.socket) return false;
    try {
      addon.sdNotify(this.socket, message);
      return true;
    } catch (error) {
      if (!this.failed) {
        this.failed = true;
        this.onError?.(error as Error);
      }
      return false;
    }
  }

  ready(status?: string): boolean {
    if (status !== undefined) this.lastStatus = status;
    return this.send(status !== undefined ? `READY=1\nSTATUS=${status}` : 'READY=1');
  }

  stopping(status?: string): boolean {
    if (status !== undefined) this.lastStatus = status;
    return this.send(status !== undefined ? `STOPPING=1\nSTATUS=${status}` : 'STOPPING=1');
  }

  /** Sends STATUS= unless it is the same text as last time. */
  status(text: string): boolean {
    if (text === this.lastStatus) return false;
    this.lastStatus = text;
    return this.send(`STATUS=${text}`);
  }

  watchdog(): boolean {
    return this.send('WATCHDOG=1');
  }
}

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
    this.intervalMs = Math.max(1, Math.min(2 ** 31 - 1, Number(options.usec / 2n / 1000n)));
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
