// TCP keepalive settings (--keepalive, SocketProxyOptions.keepalive): spans in
// ms as the user gives them, whole seconds as the kernel takes them, and the
// defaults for what is left out. (TCP_USER_TIMEOUT is a separate option,
// --user-timeout: Linux also applies it to a peer whose receive window stays
// shut, so tying it to keepalive would cut readers that merely paused.)

export interface KeepaliveOptions {
  /** Time without traffic before the first probe, in ms (rounded up to whole seconds). */
  idle: number;
  /** Time between probes, in ms. Default: idle / 4, between 1 s and 75 s. */
  interval?: number;
  /** Unanswered probes before the connection is dropped, 1–127. Default 4. */
  count?: number;
}

/** What the engine takes: TCP_KEEPIDLE, TCP_KEEPINTVL (seconds), TCP_KEEPCNT. */
export interface KeepaliveSeconds {
  idle: number;
  interval: number;
  count: number;
}

/** The kernel's bounds: TCP_KEEPIDLE and TCP_KEEPINTVL 1–32767 s, TCP_KEEPCNT 1–127. */
export const KEEPALIVE_MAX_SECONDS = 32767;
export const KEEPALIVE_MAX_COUNT = 127;
export const DEFAULT_KEEPALIVE_COUNT = 4;
/** The default interval is at most the kernel's own default (tcp_keepalive_intvl). */
export const MAX_DEFAULT_KEEPALIVE_INTERVAL_S = 75;

const toSeconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000));

/** The default INTERVAL for an IDLE (both in seconds): a quarter of it, within [1 s, 75 s]. */
export function defaultKeepaliveInterval(idleSeconds: number): number {
  return Math.min(MAX_DEFAULT_KEEPALIVE_INTERVAL_S, Math.max(1, Math.ceil(idleSeconds / 4)));
}

/** Checks and converts; throws a RangeError naming the bad part. */
export function keepaliveSeconds(options: KeepaliveOptions): KeepaliveSeconds {
  const span = (ms: number, what: string): number => {
    if (!Number.isFinite(ms) || ms <= 0) throw new RangeError(`${what} must be a positive number of ms; got ${ms}`);
    const seconds = toSeconds(ms);
    if (seconds > KEEPALIVE_MAX_SECONDS) {
      throw new RangeError(`${what} must be at most ${KEEPALIVE_MAX_SECONDS} s; got ${ms} ms`);
    }
    return seconds;
  };
  const idle = span(options.idle, 'idle');
  const interval = options.interval === undefined ? defaultKeepaliveInterval(idle) : span(options.interval, 'interval');
  const count = options.count ?? DEFAULT_KEEPALIVE_COUNT;
  if (!Number.isInteger(count) || count < 1 || count > KEEPALIVE_MAX_COUNT) {
    throw new RangeError(`count must be an integer from 1 to ${KEEPALIVE_MAX_COUNT}; got ${count}`);
  }
  return { idle, interval, count };
}
