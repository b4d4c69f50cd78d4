// SocketProxy: the in-process forwarder. A thin class over the native Engine:
// it checks its options, resolves the target, owns the listening sockets
// until the engine takes them, turns activity changes into 'busy'/'idle'
// events and reads the counters straight from native memory.
import { EventEmitter } from 'node:events';
import {
  DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_PIPE_SIZE,
  DEFAULT_RESOLVE_INTERVAL_MS, DEFAULT_UDP_SESSIONS_MAX, DEFAULT_UDP_TIMEOUT_MS, LIMITS, defaultWorkers,
} from './defaults';
import {
  ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_PROXY_CLOSED, ERR_PROXY_STARTED, ERR_PROXY_START_FAILED,
  codedError, withCode,
} from './errors';
import { keepaliveSeconds, type KeepaliveOptions, type KeepaliveSeconds } from './keepalive';
import { LogLevel } from './log';
import type { Registry } from 'prom-client';
import { processMetrics, promClient, proxyRegistry } from './metrics';
import { addon, EngineEvent, type NativeEndpoint, type NativeEngine } from './native';
import { longTimeout } from './timers';
import {
  formatAddress, isLiteral, parseAddress, parseListenAddress, resolveAddress, toEndpoint, type Address,
} from './target';

export { LogLevel };
export type { KeepaliveOptions };

export interface SocketProxyOptions {
  /**
   * Where clients are forwarded: "HOST:PORT", "[IPv6]:PORT", "/unix/path" or "@abstract" (HOST alone
   * means port 80), or an Address as parseAddress() returns it.
   */
  target: string | Address;
  /**
   * Sockets to take over (e.g. inherited from systemd): listening stream sockets, and bound UDP sockets
   * whose datagrams are forwarded. The proxy owns and closes them.
   */
  fds?: number[];
  /**
   * Addresses to bind and listen on, same syntax as `target` (a port is required; 0 picks a free one);
   * "udp:HOST:PORT" binds a UDP socket for datagram forwarding.
   */
  listen?: (string | Address)[];
  /** Simultaneous connections; the next client is closed at once. Default 256. */
  maxConnections?: number;
  /** Forwarding threads, 1–256. Default: the number of CPUs, at most 4. */
  workers?: number;
  /** Time allowed for each upstream address to accept the connection, in ms. Default 10000. */
  connectTimeout?: number;
  /** Size asked for each pipe (F_SETPIPE_SZ), 4096 B–1 GiB. Default 256 KiB. */
  pipeSize?: number;
  /** How often a hostname target is resolved again, in ms. Default 30000. */
  resolveInterval?: number;
  /** syslog level of the 'log' events emitted, 0–7: 3 error, 4 warning, 6 info (default), 7 debug. */
  logLevel?: number;
  /** listen(2) backlog for sockets bound from `listen`. Default 4096. */
  backlog?: number;
  /**
   * Send a PROXY protocol header (HAProxy's proxy-protocol.txt) to the upstream before any client
   * byte: the client's address and port, and the address and port it connected to. Default: none.
   */
  proxyProtocol?: 'v1' | 'v2';
  /**
   * While every target address refuses (a backend still starting), clients wait and the connection
   * is retried, until this many ms have passed since the client came. Default 0: fail at once.
   */
  connectRetry?: number;
  /** Reset connections with no byte moved in either direction for this many ms. Default 0: never. */
  idleTimeout?: number;
  /** TCP keepalive on both TCP sockets of every connection. Default: off. */
  keepalive?: KeepaliveOptions;
  /**
   * One line per finished connection (and per client refused at the limit), emitted as 'access'
   * events in batches. Default false.
   */
  accessLog?: boolean;
  /**
   * TCP_USER_TIMEOUT on both TCP sockets, in ms: sent data unacknowledged this long ends the
   * connection (also a peer that keeps its window shut: a reader paused that long). Default 0: the
   * kernel's (about 15 minutes of retransmissions).
   */
  userTimeout?: number;
  /** A UDP session ends after this many ms without a datagram either way. Default 30000. */
  udpTimeout?: number;
  /** UDP sessions open at once; past it the least recently active one is evicted. Default 4096. */
  udpSessionsMax?: number;
}

export interface ProxyStats {
  /** Connections open now. */
  active: number;
  /** Clients served since start (not counting refused ones). */
  accepted: number;
  /** Clients closed at once because `maxConnections` were open. */
  refused: number;
  /** Clients closed because no target address accepted a connection. */
  upstreamFailed: number;
  bytesToUpstream: number;
  bytesToClient: number;
  /** Pipes holding bytes in flight now. */
  pipesInUse: number;
  /** Spare pipes kept for reuse. */
  pipesPooled: number;
  /** Reads that went through the copy path (recv + send: small messages). */
  copyReads: number;
  /** Reads that went through a pipe with splice (bulk). */
  spliceReads: number;
  /** Connections reset because no byte moved for `idleTimeout`. */
  idleTimeouts: number;
  /** Clients that waited for a refusing upstream (`connectRetry`). */
  retriedConnects: number;
  /** `upstreamFailed` by the last failure's cause (the rest, up to `upstreamFailed`: other causes). */
  upstreamRefused: number;
  upstreamTimeout: number;
  upstreamUnreachable: number;
  /** The target name resolved to no address (yet). */
  upstreamNoAddress: number;
  /** Connections that ended cleanly both ways, the client's side first. */
  closedClientEnd: number;
  /** … the upstream's side first. */
  closedUpstreamEnd: number;
  /** Connections ended by a reset or error on the client's side (also while waiting for `connectRetry`). */
  closedClientReset: number;
  closedUpstreamReset: number;
  /** Connections ended by a failure of the proxy's own. */
  closedError: number;
  /** Connections cut by close() (a drain that ran out, a stop). */
  closedDrain: number;
  /** UDP sessions open now, and since start: opened, ended by `udpTimeout`, evicted at `udpSessionsMax`. */
  udpSessions: number;
  udpSessionsOpened: number;
  udpSessionsExpired: number;
  udpSessionsEvicted: number;
  udpDatagramsToUpstream: number;
  udpDatagramsToClient: number;
  udpBytesToUpstream: number;
  udpBytesToClient: number;
  /** Datagrams not forwarded: a full socket buffer, or no session to be had. */
  udpDropped: number;
  /** ICMP port unreachable reports from the upstream. */
  udpUpstreamRefused: number;
  /**
   * Sockets of connections that ended cleanly, kept open until their peer has acknowledged the
   * last bytes sent to it (closed sockets with unacknowledged data are what the kernel resets when
   * TCP memory runs short). Not counted in `active`.
   */
  socketsLingering: number;
  /** Lingering sockets closed before their peer had acknowledged everything: after 60 s, past a quarter of the fd limit, when fds or memory ran short, or at close(). */
  lingersGivenUp: number;
}

const RESOLVE_RETRY_MS = 1000;

/** Counter slots that are the engine's bookkeeping, not statistics. */
const ENGINE_SLOTS = new Set(['busyPeriods', 'open', 'firstWorkerPing']);

export interface SocketProxyEvents {
  /** The first connection opened (the active count left 0). */
  busy: [];
  /** The last connection closed (the active count returned to 0). */
  idle: [];
  log: [level: number, message: string];
  /**
   * With `accessLog`: the lines of connections that finished, one batch per event (a forwarding
   * thread sends one at most every 100 ms, or sooner when it is large).
   */
  access: [lines: string[]];
}

export declare interface SocketProxy {
  on<E extends keyof SocketProxyEvents>(event: E, listener: (...args: SocketProxyEvents[E]) => void): this;
  once<E extends keyof SocketProxyEvents>(event: E, listener: (...args: SocketProxyEvents[E]) => void): this;
  off<E extends keyof SocketProxyEvents>(event: E, listener: (...args: SocketProxyEvents[E]) => void): this;
  emit<E extends keyof SocketProxyEvents>(event: E, ...args: SocketProxyEvents[E]): boolean;
}

/** The options after checking: every default filled in, every address parsed. */
interface ProxyConfig {
  target: Address;
  fds: number[];
  listen: Address[];
  maxConnections: number;
  workers: number;
  connectTimeout: number;
  pipeSize: number;
  resolveInterval: number;
  logLevel: number;
  backlog: number;
  proxyProtocol: 0 | 1 | 2;
  connectRetry: number;
  idleTimeout: number;
  keepalive: KeepaliveSeconds | null;
  accessLog: boolean;
  userTimeout: number;
  udpTimeout: number;
  udpSessionsMax: number;
}

type Limit = { readonly min: number; readonly max: number };

function integerOption(options: SocketProxyOptions, name: keyof typeof LIMITS, fallback: number): number {
  const value = (options as unknown as Record<string, unknown>)[name];
  if (value === undefined) return fallback;
  return checkInteger(value, `options.${name}`, LIMITS[name]);
}

function checkInteger(value: unknown, what: string, { min, max }: Limit): number {
  if (typeof value !== 'number') {
    throw codedError(ERR_INVALID_ARG_TYPE, `${what} must be a number; got ${typeof value}`, TypeError);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw codedError(ERR_INVALID_ARG_VALUE, `${what} must be an integer from ${min} to ${max}; got ${value}`, RangeError);
  }
  return value;
}

/** An address given as a string or as an Address object, checked; `listening` allows port 0 and needs a port. */
function checkAddress(value: unknown, what: string, listening: boolean): Address {
  if (typeof value === 'string') {
    try {
      return listening ? parseListenAddress(value) : parseAddress(value, 80);
    } catch (error) {
      throw codedError(ERR_INVALID_ARG_VALUE, `${what}: ${(error as Error).message}`, RangeError);
    }
  }
  const a = value as Partial<{ kind: unknown; path: unknown; host: unknown; port: unknown }> | null;
  if (a && typeof a === 'object' && a.kind === 'unix' && typeof a.path === 'string') {
    // The same rules as for its string form (parseAddress).
    if (!/^[/@]./.test(a.path) && a.path !== '/') {
      throw codedError(ERR_INVALID_ARG_VALUE, `${what}.path must start with "/" or be "@name"; got "${a.path}"`, RangeError);
    }
    return { kind: 'unix', path: a.path };
  }
  if (a && typeof a === 'object' && a.kind === 'inet' && typeof a.host === 'string' && typeof a.port === 'number') {
    const port = checkInteger(a.port, `${what}.port`, { min: listening ? 0 : 1, max: 65535 });
    if (a.host === '') throw codedError(ERR_INVALID_ARG_VALUE, `${what}.host is empty`, RangeError);
    const udp = listening && (a as { udp?: unknown }).udp === true;
    return udp ? { kind: 'inet', host: a.host, port, udp } : { kind: 'inet', host: a.host, port };
  }
  throw codedError(
    ERR_INVALID_ARG_TYPE,
    `${what} must be an address string or {kind: 'inet', host, port} or {kind: 'unix', path}`,
    TypeError,
  );
}

/** Checks every option before anything is bound; throws a TypeError/RangeError with `.code`. */
function checkOptions(options: SocketProxyOptions): ProxyConfig {
  if (options === null || typeof options !== 'object') {
    throw codedError(ERR_INVALID_ARG_TYPE, 'options must be an object', TypeError);
  }
  const list = (value: unknown, what: string): unknown[] => {
    if (value === undefined) return [];
    if (!Array.isArray(value)) throw codedError(ERR_INVALID_ARG_TYPE, `${what} must be an array`, TypeError);
    return value;
  };
  if (options.target === undefined) throw codedError(ERR_INVALID_ARG_TYPE, 'options.target is required', TypeError);
  return {
    target: checkAddress(options.target, 'options.target', false),
    fds: list(options.fds, 'options.fds').map((fd, i) =>
      checkInteger(fd, `options.fds[${i}]`, { min: 0, max: 2 ** 31 - 1 }),
    ),
    listen: list(options.listen, 'options.listen').map((a, i) => checkAddress(a, `options.listen[${i}]`, true)),
    maxConnections: integerOption(options, 'maxConnections', DEFAULT_MAX_CONNECTIONS),
    workers: integerOption(options, 'workers', defaultWorkers()),
    connectTimeout: integerOption(options, 'connectTimeout', DEFAULT_CONNECT_TIMEOUT_MS),
    pipeSize: integerOption(options, 'pipeSize', DEFAULT_PIPE_SIZE),
    resolveInterval: integerOption(options, 'resolveInterval', DEFAULT_RESOLVE_INTERVAL_MS),
    logLevel: integerOption(options, 'logLevel', LogLevel.info),
    backlog: integerOption(options, 'backlog', DEFAULT_BACKLOG),
    proxyProtocol: checkProxyProtocol(options.proxyProtocol),
    connectRetry: integerOption(options, 'connectRetry', 0),
    idleTimeout: integerOption(options, 'idleTimeout', 0),
    keepalive: checkKeepalive(options.keepalive),
    accessLog: checkBoolean(options.accessLog, 'options.accessLog'),
    userTimeout: integerOption(options, 'userTimeout', 0),
    udpTimeout: integerOption(options, 'udpTimeout', DEFAULT_UDP_TIMEOUT_MS),
    udpSessionsMax: integerOption(options, 'udpSessionsMax', DEFAULT_UDP_SESSIONS_MAX),
  };
}

function checkBoolean(value: unknown, what: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw codedError(ERR_INVALID_ARG_TYPE, `${what} must be a boolean; got ${typeof value}`, TypeError);
  return value;
}

function checkProxyProtocol(value: unknown): 0 | 1 | 2 {
  if (value === undefined) return 0;
  if (value === 'v1') return 1;
  if (value === 'v2') return 2;
  const type = typeof value === 'string' ? RangeError : TypeError;
  throw codedError(
    type === RangeError ? ERR_INVALID_ARG_VALUE : ERR_INVALID_ARG_TYPE,
    `options.proxyProtocol must be 'v1' or 'v2'; got ${String(value)}`,
    type,
  );
}

function checkKeepalive(value: unknown): KeepaliveSeconds | null {
  if (value === undefined) return null;
  const k = value as Partial<Record<keyof KeepaliveOptions, unknown>> | null;
  if (k === null || typeof k !== 'object' || typeof k.idle !== 'number' ||
      (k.interval !== undefined && typeof k.interval !== 'number') ||
      (k.count !== undefined && typeof k.count !== 'number')) {
    throw codedError(
      ERR_INVALID_ARG_TYPE, 'options.keepalive must be {idle, interval?, count?} (spans in ms, count a number)', TypeError,
    );
  }
  try {
    return keepaliveSeconds(k as KeepaliveOptions);
  } catch (error) {
    throw codedError(ERR_INVALID_ARG_VALUE, `options.keepalive.${(error as Error).message}`, RangeError);
  }
}

export class SocketProxy extends EventEmitter {
  readonly target: Address;
  private readonly config: ProxyConfig;
  private engine: NativeEngine | null = null;
  private counters: BigUint64Array | null = null;
  private state: 'new' | 'starting' | 'running' | 'closed' = 'new';
  /** stopAccepting() was called (perhaps before the engine existed). */
  private acceptingStopped = false;
  /** Connections open when close() cut them. */
  private cutByClose = 0;
  /** Sockets start() owns and has not handed to the engine yet. */
  private pending: number[] = [];
  /** Whether any of them forwards datagrams (known after start()). */
  private datagrams = false;
  /** 'busy' and 'idle' events emitted so far (busy while busyCount > idleCount). */
  private busyCount = 0;
  private idleCount = 0;
  /** Called after every look at the activity counters (drain() waits with these). */
  private readonly activityWatchers = new Set<() => void>();
  private resolveTimer: NodeJS.Timeout | null = null;
  private referenced = true;
  private pingSeq = 0;
  /** Made on the first metrics()/metricsRegistry() call. */
  private registry: Registry | null = null;
  private metricsRegistries: Registry | null = null;
  /** Addresses the proxy listens on, as the kernel reports them (after start). */
  listening: string[] = [];

  /** Checks the options; throws (with `.code`) for any invalid one. Binds nothing. */
  constructor(options: SocketProxyOptions) {
    super();
    this.config = checkOptions(options);
    this.target = this.config.target;
  }

  /**
   * Binds the `listen` addresses, resolves the target and starts forwarding.
   * Rejects (with `.code`) if it cannot; then every socket it was given or
   * bound is closed. close() before it finished: rejects with ERR_PROXY_CLOSED,
   * having started nothing.
   */
  async start(): Promise<void> {
    if (this.state === 'closed') throw codedError(ERR_PROXY_CLOSED, 'SocketProxy is closed');
    if (this.state !== 'new') throw codedError(ERR_PROXY_STARTED, 'SocketProxy.start() was called already');
    this.state = 'starting';
    const c = this.config;
    // From here on the proxy owns the passed fds.
    this.pending = [...c.fds];
    const streams: number[] = [];
    const datagrams: number[] = [];
    try {
      for (const address of c.listen) {
        this.pending.push(
          address.kind === 'inet' && address.udp
            ? addon.bindDatagram(toEndpoint(address))
            : addon.bindListener(toEndpoint(address), c.backlog),
        );
      }
      if (this.pending.length === 0) {
        throw codedError(ERR_INVALID_ARG_VALUE, 'no listening sockets: pass fds or listen addresses', RangeError);
      }
      this.listening = this.pending.map((fd) => {
        const info = addon.inspectFd(fd);
        const address = info.address ?? `fd ${fd}`;
        if (info.type !== 'dgram') {
          streams.push(fd);
          return address;
        }
        // The engine forwards UDP only, from a bound socket, to a HOST:PORT target.
        if (info.family !== 'inet' && info.family !== 'inet6') {
          throw codedError(ERR_INVALID_ARG_VALUE, `fd ${fd} is a ${info.family} datagram socket: only UDP is forwarded`, RangeError);
        }
        if (!info.address || /:0$/.test(info.address)) {
          throw codedError(ERR_INVALID_ARG_VALUE, `fd ${fd} is a datagram socket that is not bound`, RangeError);
        }
        if (this.target.kind === 'unix') {
          throw codedError(ERR_INVALID_ARG_VALUE, `datagrams are forwarded to a HOST:PORT target, not to ${this.target.path}`, RangeError);
        }
        datagrams.push(fd);
        return `udp:${address}`;
      });
    } catch (error) {
      this.fail();
      throw withCode(error, ERR_INVALID_ARG_VALUE);
    }
    this.datagrams = datagrams.length > 0;

    let targets: NativeEndpoint[] = [];
    let resolveError: unknown = null;
    try {
      targets = await resolveAddress(this.target);
    } catch (error) {
      resolveError = error; // not fatal: clients fail until it resolves
    }
    // close() ran meanwhile: it closed the sockets; start nothing.
    if (this.state !== 'starting') throw codedError(ERR_PROXY_CLOSED, 'SocketProxy was closed before it started');

    let engine: NativeEngine;
    try {
      engine = new addon.Engine({
        listeners: streams,
        datagramListeners: datagrams,
        targets,
        maxConnections: c.maxConnections,
        workers: c.workers,
        connectTimeoutMs: c.connectTimeout,
        pipeSize: c.pipeSize,
        logLevel: c.logLevel,
        proxyProtocol: c.proxyProtocol,
        connectRetryMs: c.connectRetry,
        idleTimeoutMs: c.idleTimeout,
        ...(c.keepalive && {
          keepaliveIdle: c.keepalive.idle,
          keepaliveInterval: c.keepalive.interval,
          keepaliveCount: c.keepalive.count,
        }),
        accessLog: c.accessLog,
        userTimeoutMs: c.userTimeout,
        udpTimeoutMs: c.udpTimeout,
        udpSessionsMax: c.udpSessionsMax,
      });
    } catch (error) {
      this.fail();
      throw withCode(error, ERR_INVALID_ARG_VALUE);
    }
    this.pending = []; // the engine owns them now, and closes them
    try {
      engine.start((kind, level, message) => this.onEngineEvent(kind, level, message));
    } catch (error) {
      engine.close();
      this.fail();
      throw withCode(error, ERR_PROXY_START_FAILED);
    }
    this.engine = engine;
    this.counters = engine.counters;
    this.state = 'running';
    if (this.acceptingStopped) engine.stopAccepting();
    if (!this.referenced) engine.unref();
    if (resolveError) this.onResolveFailure(resolveError);
    if (!isLiteral(this.target)) this.scheduleResolve(resolveError ? RESOLVE_RETRY_MS : c.resolveInterval);
  }

  /**
   * The proxy's metrics in the Prometheus text format (what `--metrics` serves): its own
   * (socket_proxyd_*, read from native memory now) and prom-client's default process metrics.
   * Loads prom-client on first use.
   */
  async metrics(): Promise<string> {
    this.metricsRegistries ??= promClient().Registry.merge([this.metricsRegistry(), processMetrics()]);
    return this.metricsRegistries.metrics();
  }

  /**
   * A prom-client Registry holding only the proxy's own metrics (socket_proxyd_*), to merge with
   * an application's registry (`Registry.merge`). Loads prom-client on first use.
   */
  metricsRegistry(): Registry {
    this.registry ??= proxyRegistry({
      counters: () => this.counters,
      workers: () => this.config.workers,
      maxConnections: () => this.config.maxConnections,
    });
    return this.registry;
  }

  /** Live counters, read from native memory. */
  get stats(): ProxyStats {
    // Every slot the engine counts, but its own bookkeeping: the names are ProxyStats's.
    const c = this.counters;
    const stats: Record<string, number> = {};
    for (const [name, slot] of Object.entries(addon.COUNTERS)) {
      if (!ENGINE_SLOTS.has(name)) stats[name] = c ? Number(c[slot]) : 0;
    }
    return stats as unknown as ProxyStats;
  }

  /** True if a socket it forwards from is a UDP socket (known once start() resolved). */
  get forwardsDatagrams(): boolean {
    return this.datagrams;
  }

  /** Connections open now. */
  get active(): number {
    return this.counters ? Number(this.counters[addon.COUNTERS.active]) : 0;
  }

  setMaxConnections(limit: number): void {
    this.config.maxConnections = checkInteger(limit, 'maxConnections', LIMITS.maxConnections);
    this.engine?.setMaxConnections(limit);
  }

  setLogLevel(level: number): void {
    this.config.logLevel = checkInteger(level, 'logLevel', LIMITS.logLevel);
    this.engine?.setLogLevel(level);
  }

  /**
   * Proves the forwarding threads alive: true if every worker answered the
   * previous call's ping. Call it periodically (the watchdog does).
   */
  workersAlive(): boolean {
    if (!this.engine || !this.counters) return false;
    const first = addon.COUNTERS.firstWorkerPing;
    const expected = BigInt(this.pingSeq);
    let alive = true;
    for (let i = first; i < this.counters.length; i++) if (this.counters[i] !== expected) alive = false;
    this.engine.ping(++this.pingSeq);
    return alive;
  }

  /**
   * Stops accepting and closes the listening sockets; open connections carry
   * on. Synchronous: once it returns no new connection appears, so `active`
   * read after it only goes down.
   */
  stopAccepting(): void {
    this.stopResolving();
    // Before start() has made the engine, remembered: it will not accept.
    this.acceptingStopped = true;
    this.engine?.stopAccepting();
  }

  /**
   * Stops accepting, then waits up to `timeoutMs` (default and Infinity: no
   * limit) for open connections to end. Resolves true if they all ended,
   * false if some were still open at the deadline. Call close() afterwards.
   */
  async drain(timeoutMs = Infinity): Promise<boolean> {
    if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || timeoutMs < 0) {
      throw codedError(ERR_INVALID_ARG_VALUE, `drain(timeoutMs): a number ≥ 0 or Infinity; got ${timeoutMs}`, RangeError);
    }
    this.stopAccepting();
    if (this.state === 'closed') return this.cutByClose === 0;
    if (this.active === 0) return true;
    return new Promise<boolean>((resolve) => {
      let cancel = () => {};
      const finish = (ended: boolean) => {
        this.activityWatchers.delete(check);
        cancel();
        resolve(ended);
      };
      // Every return to zero is followed by an activity event: look at the count then.
      // close() meanwhile cuts the connections: they did not end.
      const check = () => {
        if (this.state === 'closed') finish(this.cutByClose === 0);
        else if (this.active === 0) finish(true);
      };
      this.activityWatchers.add(check);
      cancel = longTimeout(timeoutMs, () => finish(this.active === 0));
    });
  }

  /** Closes every connection and listener and stops the threads. */
  close(): void {
    if (this.state === 'closed') return;
    this.cutByClose = this.active;
    this.state = 'closed';
    this.stopResolving();
    this.closePending();
    this.engine?.close();
    this.checkActivity();
  }

  /** Lets the process exit while the proxy runs (like net.Server#unref). */
  unref(): this {
    this.referenced = false;
    this.engine?.unref();
    this.resolveTimer?.unref();
    return this;
  }

  ref(): this {
    this.referenced = true;
    this.engine?.ref();
    this.resolveTimer?.ref();
    return this;
  }

  /** A failed start: closes what it owned; the proxy is closed. */
  private fail(): void {
    this.closePending();
    this.state = 'closed';
  }

  private closePending(): void {
    for (const fd of this.pending) {
      try {
        addon.closeFd(fd);
      } catch {
        // already closed by its owner: nothing left to release
      }
    }
    this.pending = [];
  }

  private onEngineEvent(kind: EngineEvent, level: number, message: string): void {
    if (kind === EngineEvent.Activity) this.checkActivity();
    else if (kind === EngineEvent.AccessLog) this.emit('access', message.split('\n'));
    else this.emit('log', level, message);
  }

  // Activity events only say "look again": the counters are the one source of
  // truth. busyPeriods counts every time active left 0, so a whole busy period
  // that opened and closed between two looks is still seen: one 'busy' and one
  // 'idle' for each period, in order, whatever the timing of the events.
  // busyPeriods is read before active: a period counted there has ended if
  // active reads 0 afterwards.
  private checkActivity(): void {
    if (this.counters) {
      // Atomic (ordered) loads, periods first: a worker bumps active, then
      // periods (release), so a new period seen here comes with its active count.
      const periods = Number(Atomics.load(this.counters, addon.COUNTERS.busyPeriods));
      // Connections and UDP sessions both make the proxy busy.
      const active = this.state === 'closed' ? 0 : Number(Atomics.load(this.counters, addon.COUNTERS.open));
      const busy = () => this.busyCount > this.idleCount;
      const emitBusy = () => {
        this.busyCount++;
        this.emit('busy');
      };
      const emitIdle = () => {
        this.idleCount++;
        this.emit('idle');
      };
      if (active === 0) {
        if (busy()) emitIdle();
        while (this.busyCount < periods) {
          emitBusy();
          emitIdle();
        }
      } else if (this.busyCount < periods) {
        // The period we last reported (if any) ended; the newest one is under way.
        if (busy()) emitIdle();
        while (this.busyCount < periods - 1) {
          emitBusy();
          emitIdle();
        }
        emitBusy();
      }
      // active > 0 with no new period counted: the worker counts it before it
      // queues its event, so that event is still to come (or it was a client
      // refused at a limit of 0, which never made the proxy busy).
    }
    for (const watcher of [...this.activityWatchers]) watcher();
  }

  private scheduleResolve(delay: number): void {
    this.resolveTimer = setTimeout(() => {
      this.resolveTimer = null;
      resolveAddress(this.target).then(
        (targets) => {
          if (this.state !== 'running' || !this.engine) return;
          this.engine.setTargets(targets);
          this.scheduleResolve(this.config.resolveInterval);
        },
        (error) => {
          if (this.state !== 'running') return;
          this.onResolveFailure(error);
          this.scheduleResolve(RESOLVE_RETRY_MS);
        },
      );
    }, delay);
    if (!this.referenced) this.resolveTimer.unref();
  }

  private onResolveFailure(error: unknown): void {
    const why = error instanceof Error ? error.message : String(error);
    this.emit('log', LogLevel.warning, `Failed to resolve ${formatAddress(this.target)}: ${why}`);
  }

  private stopResolving(): void {
    if (this.resolveTimer) clearTimeout(this.resolveTimer);
    this.resolveTimer = null;
  }
}
