// Every default and every limit of the proxy's settings, in one place: the
// library (proxy.ts), the command line (options.ts) and the help text read
// them from here.
import os from 'node:os';

/** Simultaneous connections (-c, maxConnections). */
export const DEFAULT_MAX_CONNECTIONS = 256;
/** Forwarding threads: the number of CPUs, at most this many. */
export const DEFAULT_WORKERS_CAP = 4;
/** Size asked for each pipe (F_SETPIPE_SZ), in bytes. */
export const DEFAULT_PIPE_SIZE = 256 * 1024;
/** Time each target address gets to accept the connection, in ms. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** How often a hostname target is resolved again, in ms. */
export const DEFAULT_RESOLVE_INTERVAL_MS = 30_000;
/** How long SIGTERM/SIGINT let open connections finish, in ms. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 5_000;
/** A UDP session ends after this long without a datagram either way, in ms (conntrack's unreplied UDP timeout). */
export const DEFAULT_UDP_TIMEOUT_MS = 30_000;
/** UDP sessions open at once. */
export const DEFAULT_UDP_SESSIONS_MAX = 4096;
/** listen(2) backlog of the sockets the proxy binds itself. */
export const DEFAULT_BACKLOG = 4096;

/** Forwarding threads when none are asked for: the CPUs, at most DEFAULT_WORKERS_CAP. */
export function defaultWorkers(): number {
  return Math.min(DEFAULT_WORKERS_CAP, os.availableParallelism?.() ?? os.cpus().length);
}

/** The longest timer Node can arm (setTimeout's limit, about 24.8 days), in ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Inclusive bounds of the numeric settings (the engine enforces the same). */
export const LIMITS = {
  workers: { min: 1, max: 256 },
  maxConnections: { min: 0, max: 2 ** 32 - 1 },
  connectTimeout: { min: 1, max: MAX_TIMER_MS },
  pipeSize: { min: 4096, max: 2 ** 30 },
  logLevel: { min: 0, max: 7 },
  backlog: { min: 0, max: 2 ** 31 - 1 },
  resolveInterval: { min: 1, max: MAX_TIMER_MS },
  connectRetry: { min: 0, max: MAX_TIMER_MS },
  idleTimeout: { min: 0, max: MAX_TIMER_MS },
  userTimeout: { min: 0, max: MAX_TIMER_MS },
  udpTimeout: { min: 1, max: MAX_TIMER_MS },
  udpSessionsMax: { min: 1, max: 2 ** 32 - 1 },
} as const;
