// Typed access to the C++ addon. SOCKET_PROXYD_ADDON=/path/to/addon.node loads
// a specific build (the sanitizer build in CI); otherwise node-gyp-build picks
// build/Release or the matching prebuild.
import path from 'node:path';
import type { ProxyStats } from './proxy';

/** A numeric address ({host, port}) or a UNIX socket path ("@name" is abstract). */
export type NativeEndpoint = { host: string; port: number } | { path: string };

export interface EngineOptions {
  /** Listening socket fds; the engine owns them from now on. */
  listeners: number[];
  targets: NativeEndpoint[];
  maxConnections?: number;
  workers?: number;
  connectTimeoutMs?: number;
  pipeSize?: number;
  /** syslog level: 3 error, 4 warning, 6 info, 7 debug. */
  logLevel?: number;
  /** PROXY protocol header to send upstream: 0 none, 1 (text), 2 (binary). */
  proxyProtocol?: 0 | 1 | 2;
  /** While every target refuses, clients wait this long for one (0: fail at once). */
  connectRetryMs?: number;
  /** Connections with no byte moved for this long are reset (0: never). */
  idleTimeoutMs?: number;
  /** TCP keepalive on both TCP sockets, in seconds (idle 0: off). */
  keepaliveIdle?: number;
  keepaliveInterval?: number;
  keepaliveCount?: number;
  /** TCP_USER_TIMEOUT on both TCP sockets, in ms (0: the kernel's default). */
  userTimeoutMs?: number;
  /** Send access log batches (EngineEvent.AccessLog). */
  accessLog?: boolean;
  /** Bound UDP sockets to forward datagrams from; the engine owns them from now on. */
  datagramListeners?: number[];
  /** A UDP session ends after this long without a datagram either way. */
  udpTimeoutMs?: number;
  /** UDP sessions open at once (all workers); past it the least recently active is evicted. */
  udpSessionsMax?: number;
}

export const enum EngineEvent {
  /** The active count left 0 or returned to 0: re-read it. */
  Activity = 0,
  Log = 1,
  /** A batch of access log lines joined by "\n" (level: info). */
  AccessLog = 2,
}

export interface NativeEngine {
  /** Live counters, indexed by `COUNTERS`, updated by the workers. */
  readonly counters: BigUint64Array;
  start(onEvent: (kind: EngineEvent, level: number, message: string) => void): void;
  setTargets(targets: NativeEndpoint[]): void;
  setMaxConnections(limit: number): void;
  setLogLevel(level: number): void;
  /** Stops accepting and closes the listeners; open connections go on. */
  stopAccepting(): void;
  /** Each worker copies `seq` into its slot from `COUNTERS.firstWorkerPing` on. */
  ping(seq: number): void;
  /** Closes every connection and listener and joins the threads. */
  close(): void;
  ref(): void;
  unref(): void;
}

export interface FdInfo {
  socket: boolean;
  family?: 'inet' | 'inet6' | 'unix' | 'other';
  type?: 'stream' | 'dgram' | 'seqpacket' | 'other';
  listening?: boolean;
  address?: string;
}

export interface Addon {
  Engine: new (options: EngineOptions) => NativeEngine;
  /**
   * Slot of each counter in `counters`: every field of ProxyStats (documented there), plus the
   * engine's own: busyPeriods (times `open` left 0; bumped before the activity event is queued),
   * open (connections and UDP sessions open: what busy/idle follow), firstWorkerPing (where the
   * workers' watchdog answers begin, after the counters and the histograms).
   */
  COUNTERS: Record<keyof ProxyStats | 'busyPeriods' | 'open' | 'firstWorkerPing', number>;
  /**
   * Latency histograms in `counters`: from `first`, one slot per bucket (bounds.length + 1, the last
   * +Inf; not cumulative), then the count, then the sum in microseconds. Bounds in seconds.
   */
  HISTOGRAMS: Record<'connect' | 'duration', { first: number; bounds: number[] }>;
  /** Creates, binds and listens a non-blocking CLOEXEC stream socket; returns its fd. */
  bindListener(endpoint: NativeEndpoint, backlog?: number): number;
  /** Creates and binds a non-blocking CLOEXEC UDP socket; returns its fd. */
  bindDatagram(endpoint: NativeEndpoint): number;
  /** Throws for a closed fd. */
  inspectFd(fd: number): FdInfo;
  closeFd(fd: number): void;
  /** Sends one datagram to a NOTIFY_SOCKET path or "@abstract" name. */
  sdNotify(socketPath: string, message: string): void;
  /** Raises the soft RLIMIT_NOFILE to the hard limit; -1 means unlimited. */
  raiseFdLimit(): { soft: number; hard: number };
}

function load(): Addon {
  const explicit = process.env.SOCKET_PROXYD_ADDON;
  if (explicit) return require(path.resolve(explicit)) as Addon;
  const nodeGypBuild = require('node-gyp-build') as (dir: string) => Addon;
  return nodeGypBuild(path.join(__dirname, '..'));
}

export const addon: Addon = load();
