// SocketProxy: the in-process forwarder. A thin class over the native Engine:
// it resolves the target, owns the listening sockets until the engine takes
// them, turns activity changes into 'busy'/'idle' events and reads the
// counters straight from native memory.
import { EventEmitter } from 'node:events';
import {
  DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_PIPE_SIZE,
  DEFAULT_RESOLVE_INTERVAL_MS, defaultWorkers,
} from './defaults';
import { LogLevel } from './log';
import { addon, EngineEvent, type NativeEndpoint, type NativeEngine } from './native';
import { longTimeout } from './timers';
import { formatAddress, isLiteral, parseAddress, resolveAddress, toEndpoint, type Address } from './target';

export interface SocketProxyOptions {
  /**
   * Where clients are forwarded: "HOST:PORT", "[IPv6]:PORT", "/unix/path" or "@abstract" (HOST alone
   * means port 80), or an Address as parseAddress() returns it.
   */
  target: string | Address;
  /** Listening sockets to take over (e.g. inherited from systemd). The proxy owns and closes them. */
  fds?: number[];
  /** Addresses to bind and listen on, same syntax as `target` (a port is required; 0 picks a free one). */
  listen?: (string | Address)[];
  /** Simultaneous connections; the next client is closed at once. Default 256. */
  maxConnections?: number;
  /** Forwarding threads. Default: the number of CPUs, at most 4. */
  workers?: number;
  /** Time allowed for each upstream address to accept the connection, in ms. Default 10000. */
  connectTimeout?: number;
  /** Size asked for each pipe (F_SETPIPE_SZ). Default 256 KiB. */
  pipeSize?: number;
  /** How often a hostname target is resolved again, in ms. Default 30000. */
  resolveInterval?: number;
  /** syslog level of the 'log' events emitted: 3 error, 4 warning, 6 info (default), 7 debug. */
  logLevel?: number;
  /** listen(2) backlog for sockets bound from `listen`. Default 4096. */
  backlog?: number;
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
}

export { LogLevel };

const RESOLVE_RETRY_MS = 1000;

export interface SocketProxyEvents {
  /** The first connection opened (the active count left 0). */
  busy: [];
  /** The last connection closed (the active count returned to 0). */
  idle: [];
  log: [level: number, message: string];
}

export declare interface SocketProxy {
  on<E extends keyof SocketProxyEvents>(event: E, listener: (...args: SocketProxyEvents[E]) => void): this;
  once<E extends keyof SocketProxyEvents>(event: E, listener: (...args: SocketProxyEvents[E]) => void): this;
  off<E extends keyof SocketProxyEvents>(event: E, listener: (...args: SocketProxyEvents[E]) => void): this;
  emit<E extends keyof SocketProxyEvents>(event: E, ...args: SocketProxyEvents[E]): boolean;
}

export class SocketProxy extends EventEmitter {
  readonly target: Address;
  private readonly options: SocketProxyOptions;
  private engine: NativeEngine | null = null;
  private counters: BigUint64Array | null = null;
  /** 'busy' and 'idle' events emitted so far (busy while busyCount > idleCount). */
  private busyCount = 0;
  private idleCount = 0;
  /** Called after every look at the activity counters (drain() waits with these). */
  private readonly activityWatchers = new Set<() => void>();
  private resolveTimer: NodeJS.Timeout | null = null;
  private pingSeq = 0;
  private closed = false;
  /** Addresses the proxy listens on, as the kernel reports them (after start). */
  listening: string[] = [];

  constructor(options: SocketProxyOptions) {
    super();
    this.options = options;
    this.target = typeof options.target === 'string' ? parseAddress(options.target, 80) : options.target;
  }

  /** Resolves the target, binds `listen` addresses and starts forwarding. */
  async start(): Promise<void> {
    if (this.engine || this.closed) throw new Error('SocketProxy already started');
    const o = this.options;
    const listeners = [...(o.fds ?? [])];
    try {
      for (const spec of o.listen ?? []) {
        const address = typeof spec === 'string' ? parseAddress(spec, undefined, true) : spec;
        listeners.push(addon.bindListener(toEndpoint(address), o.backlog ?? DEFAULT_BACKLOG));
      }
    } catch (error) {
      for (const fd of listeners.slice(o.fds?.length ?? 0)) addon.closeFd(fd);
      throw error;
    }
    if (listeners.length === 0) throw new Error('no listening sockets: pass fds or listen addresses');
    this.listening = listeners.map((fd) => addon.inspectFd(fd).address ?? `fd ${fd}`);

    let targets: NativeEndpoint[] = [];
    let resolveError: unknown = null;
    try {
      targets = await resolveAddress(this.target);
    } catch (error) {
      resolveError = error;  // not fatal: clients fail until it resolves
    }
    const engine = new addon.Engine({
      listeners,
      targets,
      maxConnections: o.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      workers: o.workers ?? defaultWorkers(),
      connectTimeoutMs: o.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT_MS,
      pipeSize: o.pipeSize ?? DEFAULT_PIPE_SIZE,
      logLevel: o.logLevel ?? LogLevel.info,
    });
    this.engine = engine;
    this.counters = engine.counters;
    engine.start((kind, level, message) => this.onEngineEvent(kind, level, message));
    if (resolveError) this.onResolveFailure(resolveError);
    if (!isLiteral(this.target)) this.scheduleResolve(resolveError ? RESOLVE_RETRY_MS : this.resolveInterval);
  }

  /** Live counters, read from native memory. */
  get stats(): ProxyStats {
    const c = this.counters;
    const K = addon.COUNTERS;
    const read = (i: number) => (c ? Number(c[i]) : 0);
    return {
      active: read(K.active),
      accepted: read(K.accepted),
      refused: read(K.refused),
      upstreamFailed: read(K.upstreamFailed),
      bytesToUpstream: read(K.bytesToUpstream),
      bytesToClient: read(K.bytesToClient),
      pipesInUse: read(K.pipesInUse),
      pipesPooled: read(K.pipesPooled),
      copyReads: read(K.copyReads),
      spliceReads: read(K.spliceReads),
    };
  }

  /** Connections open now. */
  get active(): number {
    return this.counters ? Number(this.counters[addon.COUNTERS.active]) : 0;
  }

  setMaxConnections(limit: number): void {
    this.options.maxConnections = limit;
    this.engine?.setMaxConnections(limit);
  }

  setLogLevel(level: number): void {
    this.options.logLevel = level;
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

  /** Stops accepting and closes the listening sockets; open connections carry on. */
  stopAccepting(): void {
    this.stopResolving();
    this.engine?.stopAccepting();
  }

  /**
   * Stops accepting, then waits up to `timeoutMs` (default and Infinity: no
   * limit) for open connections to end. Resolves true if they all ended,
   * false if some were still open at the deadline. Call close() afterwards.
   */
  async drain(timeoutMs = Infinity): Promise<boolean> {
    this.stopAccepting();
    if (this.active === 0 || this.closed) return true;
    return new Promise<boolean>((resolve) => {
      const finish = (ended: boolean) => {
        this.activityWatchers.delete(check);
        cancel();
        resolve(ended);
      };
      // Every return to zero is followed by an activity event: look at the count then.
      const check = () => {
        if (this.active === 0 || this.closed) finish(true);
      };
      this.activityWatchers.add(check);
      const cancel = longTimeout(timeoutMs, () => finish(this.active === 0));
    });
  }

  /** Closes every connection and listener and stops the threads. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopResolving();
    this.engine?.close();
    this.checkActivity();
  }

  /** Lets the process exit while the proxy runs (like net.Server#unref). */
  unref(): this {
    this.engine?.unref();
    this.resolveTimer?.unref();
    return this;
  }

  ref(): this {
    this.engine?.ref();
    return this;
  }

  private get resolveInterval(): number {
    return this.options.resolveInterval ?? DEFAULT_RESOLVE_INTERVAL_MS;
  }

  private onEngineEvent(kind: EngineEvent, level: number, message: string): void {
    if (kind === EngineEvent.Activity) this.checkActivity();
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
      const periods = Number(this.counters[addon.COUNTERS.busyPeriods]);
      const active = this.closed ? 0 : Number(this.counters[addon.COUNTERS.active]);
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
          if (this.closed || !this.engine) return;
          this.engine.setTargets(targets);
          this.scheduleResolve(this.resolveInterval);
        },
        (error) => {
          if (this.closed) return;
          this.onResolveFailure(error);
          this.scheduleResolve(RESOLVE_RETRY_MS);
        },
      );
    }, delay);
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
