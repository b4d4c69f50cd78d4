// The command line: systemd-socket-proxyd's options, parsed the way its
// getopt_long() does (options and the target in any order, "--", unique
// prefixes of long options, "-c5", same error texts), plus our extensions.
import fs from 'node:fs';
import path from 'node:path';
import {
  DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DRAIN_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_RESOLVE_INTERVAL_MS,
  DEFAULT_UDP_SESSIONS_MAX, DEFAULT_UDP_TIMEOUT_MS, DEFAULT_WORKERS_CAP, LIMITS, MAX_TIMER_MS,
} from './defaults';
import {
  DEFAULT_KEEPALIVE_COUNT, KEEPALIVE_MAX_COUNT, MAX_DEFAULT_KEEPALIVE_INTERVAL_S, keepaliveSeconds, type KeepaliveOptions,
} from './keepalive';
import { parseLogLevel } from './log';
import { parseAddress, parseListenAddress, type Address } from './target';
import { USEC_INFINITY, USEC_PER_MSEC, formatTimespan, parseTimespan } from './timespan';

export const PROGRAM = 'socket-proxyd';

export interface CliOptions {
  /** HOST:PORT, [IPv6]:PORT, HOST (port 80), /path or @abstract; parsed. */
  target: Address;
  /** -c: simultaneous connections (exact). */
  maxConnections: number;
  /** --exit-idle-time, in µs; USEC_INFINITY for never. */
  exitIdleTime: bigint;
  /** --listen addresses, in order; parsed. */
  listen: Address[];
  /** --drain-timeout, in µs; USEC_INFINITY waits for every connection. */
  drainTimeout: bigint;
  /** --log-level (0–7), if given: wins over SYSTEMD_LOG_LEVEL. */
  logLevel?: number;
  /** --workers, if given. */
  workers?: number;
  /** --connect-timeout, in µs. */
  connectTimeout: bigint;
  /** --resolve-interval, in µs. */
  resolveInterval: bigint;
  /** --proxy-protocol, if given. */
  proxyProtocol?: 'v1' | 'v2';
  /** --connect-retry, in ms (0: off). */
  connectRetry: number;
  /** --idle-timeout, in ms (0: off). */
  idleTimeout: number;
  /** --keepalive, if given (spans in ms). */
  keepalive?: KeepaliveOptions;
  /** --user-timeout, in ms (0: the kernel's default). */
  userTimeout: number;
  /** --udp-timeout, in ms. */
  udpTimeout: number;
  /** --udp-sessions-max. */
  udpSessionsMax: number;
  /** --metrics: where to serve Prometheus metrics, if given. */
  metrics?: Address;
  /** --access-log: a line per finished connection. */
  accessLog: boolean;
}

export type ParsedCommandLine = { action: 'help' } | { action: 'version' } | { action: 'run'; options: CliOptions };

/** A bad command line: print `message` on one line, exit 1. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const msToUsec = (ms: number): bigint => BigInt(ms) * USEC_PER_MSEC;

/** The command line's defaults (src/defaults.ts), as its time spans are held: µs. */
export const DEFAULTS = {
  maxConnections: DEFAULT_MAX_CONNECTIONS,
  exitIdleTime: USEC_INFINITY,
  drainTimeout: msToUsec(DEFAULT_DRAIN_TIMEOUT_MS),
  connectTimeout: msToUsec(DEFAULT_CONNECT_TIMEOUT_MS),
  resolveInterval: msToUsec(DEFAULT_RESOLVE_INTERVAL_MS),
} as const;

const MAX_WORKERS = LIMITS.workers.max;

interface OptionSpec {
  long: string;
  short?: string;
  hasArg: boolean;
  /** Not in systemd-socket-proxyd. */
  extension?: boolean;
}

const OPTIONS: OptionSpec[] = [
  { long: 'help', short: 'h', hasArg: false },
  { long: 'version', hasArg: false },
  { long: 'connections-max', short: 'c', hasArg: true },
  { long: 'exit-idle-time', hasArg: true },
  // Extensions.
  { long: 'listen', hasArg: true, extension: true },
  { long: 'drain-timeout', hasArg: true, extension: true },
  { long: 'log-level', hasArg: true, extension: true },
  { long: 'workers', hasArg: true, extension: true },
  { long: 'connect-timeout', hasArg: true, extension: true },
  { long: 'resolve-interval', hasArg: true, extension: true },
  { long: 'proxy-protocol', hasArg: true, extension: true },
  { long: 'connect-retry', hasArg: true, extension: true },
  { long: 'idle-timeout', hasArg: true, extension: true },
  { long: 'keepalive', hasArg: true, extension: true },
  { long: 'user-timeout', hasArg: true, extension: true },
  { long: 'udp-timeout', hasArg: true, extension: true },
  { long: 'udp-sessions-max', hasArg: true, extension: true },
  { long: 'metrics', hasArg: true, extension: true },
  { long: 'access-log', hasArg: false, extension: true },
];

export function helpText(): string {
  return `${PROGRAM} [OPTIONS...] HOST:PORT
${PROGRAM} [OPTIONS...] SOCKET

Bidirectionally proxy local sockets to another (possibly remote) socket.
A drop-in replacement for systemd-socket-proxyd. HOST may be a name, an IPv4
address or an IPv6 address ([::1]:8080 or ::1:8080); without :PORT it means
port 80. SOCKET is a UNIX socket path, or @NAME for an abstract socket.

  -c --connections-max=N  Set the maximum number of connections to be accepted
                          (default ${DEFAULTS.maxConnections}; exactly N are served at once, the
                          next client is closed at once)
     --exit-idle-time=SPAN
                          Exit when without a connection for this duration
                          (default infinity). See the systemd.time(7) man page
                          for time span format
  -h --help               Show this help
     --version            Show package version

Extensions (not in systemd-socket-proxyd):
     --listen=ADDRESS     Listen on ADDRESS (HOST:PORT, [IPv6]:PORT, /path or
                          @name; udp:HOST:PORT for datagrams) besides any
                          sockets passed in; repeatable. For use without
                          systemd
     --drain-timeout=SPAN On SIGTERM/SIGINT, stop accepting and let open
                          connections finish for up to SPAN (default ${formatTimespan(DEFAULTS.drainTimeout)};
                          0 closes them at once). A second signal exits at once
     --log-level=LEVEL    emerg, alert, crit, err, warning, notice, info
                          (default) or debug, or 0-7. Overrides
                          $SYSTEMD_LOG_LEVEL
     --workers=N          Forwarding threads (default: CPUs, at most ${DEFAULT_WORKERS_CAP})
     --connect-timeout=SPAN
                          Time allowed for each target address to accept a
                          connection (default ${formatTimespan(DEFAULTS.connectTimeout)})
     --resolve-interval=SPAN
                          How often a HOST name is resolved again, so new
                          connections follow DNS changes (default ${formatTimespan(DEFAULTS.resolveInterval)})
     --proxy-protocol=v1|v2
                          Send a PROXY protocol header with the client's
                          address to the upstream before any client byte
     --connect-retry=SPAN While the target refuses (not listening yet), let
                          each client wait up to SPAN for it, retrying with
                          a backoff of 20 ms doubling to 500 ms (default 0:
                          close the client at once)
     --idle-timeout=SPAN  Reset connections with no byte moved in either
                          direction for SPAN (default infinity: never)
     --keepalive=IDLE[,INTERVAL[,COUNT]]
                          TCP keepalive on both TCP sockets: first probe after
                          IDLE, then every INTERVAL (default IDLE/4, 1s-${MAX_DEFAULT_KEEPALIVE_INTERVAL_S}s),
                          dropped after COUNT unanswered (default ${DEFAULT_KEEPALIVE_COUNT})
     --user-timeout=SPAN  TCP_USER_TIMEOUT on both TCP sockets: end a
                          connection whose sent data stays unacknowledged
                          for SPAN, also a peer that stops reading that long
                          (default: the kernel's, about 15 minutes)
     --udp-timeout=SPAN   End a UDP session after SPAN without a datagram
                          either way (default ${DEFAULT_UDP_TIMEOUT_MS / 1000}s)
     --udp-sessions-max=N UDP sessions (client addresses) at once; past it the
                          least recently active one is evicted (default ${DEFAULT_UDP_SESSIONS_MAX})
     --metrics=ADDRESS    Serve Prometheus metrics over HTTP at /metrics on
                          ADDRESS (HOST:PORT, [IPv6]:PORT, /path or @name)
     --access-log         Log a line per finished connection (info level):
                          client, local and upstream addresses, bytes each
                          way, connect time, duration and how it ended; at
                          most 1000 lines a second per forwarding thread

Listening sockets come from systemd socket activation ($LISTEN_FDS, see
sd_listen_fds(3)); each must be a listening stream socket, or a bound UDP
socket (ListenDatagram=) whose datagrams are forwarded over UDP, each client
address in a session of its own. Under systemd it
reports READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 to $NOTIFY_SOCKET
(use Type=notify), and logs with journal priorities.

Exit status: 0 after --exit-idle-time, after SIGTERM or SIGINT, and for --help
and --version; 1 for a bad command line, no or unusable listening sockets, or
any other failure to start.

See the systemd-socket-proxyd(8) man page for details.
`;
}

export function versionText(): string {
  let version = 'unknown';
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version?: string };
    version = pkg.version ?? version;
  } catch {
    // keep "unknown"
  }
  return `${PROGRAM} ${version} (compatible with systemd-socket-proxyd)\n`;
}

/**
 * Parses an unsigned int like systemd's safe_atou(): leading whitespace, an
 * optional "+", decimal, 0x hex or 0 octal; "-" only for zero; 32 bits.
 */
export function parseUnsigned(text: string): number | null {
  const s = text.replace(/^[ \t\n\r]+/, '');
  const m = /^([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (!m) return null;
  const digits = m[2];
  const value = /^0[xX]/.test(digits)
    ? BigInt(digits)
    : digits.length > 1 && digits.startsWith('0')
      ? BigInt(`0o${digits.slice(1)}`)
      : BigInt(digits);
  if (m[1] === '-' && value !== 0n) return null;
  if (value > 0xffffffffn) return null;
  return Number(value);
}

function parseSpan(option: string, value: string): bigint {
  try {
    return parseTimespan(value);
  } catch {
    throw new UsageError(`Failed to parse --${option}= argument: ${value}`);
  }
}

function spanInRange(option: string, value: string, usec: bigint, { min = 0n, finite = false } = {}): bigint {
  if (usec < min) throw new UsageError(`--${option}= is too short: ${value}`);
  if (finite && usec === USEC_INFINITY) throw new UsageError(`--${option}= must be finite: ${value}`);
  return usec;
}

/** A span for the engine, in whole ms (rounded up); 0 and, if `infinityIsOff`, infinity mean off (0). */
function spanMs(option: string, value: string, { infinityIsOff = false } = {}): number {
  const usec = parseSpan(option, value);
  if (usec === USEC_INFINITY && infinityIsOff) return 0;
  const ms = (usec + USEC_PER_MSEC - 1n) / USEC_PER_MSEC;
  if (ms > BigInt(MAX_TIMER_MS)) {
    throw new UsageError(`--${option}= is too long (at most ${formatTimespan(BigInt(MAX_TIMER_MS) * USEC_PER_MSEC)}): ${value}`);
  }
  return Number(ms);
}

/** IDLE[,INTERVAL[,COUNT]]: spans (default unit: seconds) and a count. */
function parseKeepalive(value: string): KeepaliveOptions {
  const fail = (why = ''): never => {
    throw new UsageError(`Failed to parse --keepalive= argument${why}: ${value}`);
  };
  const parts = value.split(',');
  if (parts.length > 3 || parts.some((p) => p.trim() === '')) fail();
  const span = (text: string): number => {
    let usec: bigint;
    try {
      usec = parseTimespan(text);
    } catch {
      return fail();
    }
    if (usec === USEC_INFINITY || usec === 0n) fail(' (spans must be finite and not 0)');
    return Number((usec + USEC_PER_MSEC - 1n) / USEC_PER_MSEC);
  };
  const options: KeepaliveOptions = { idle: span(parts[0]) };
  if (parts.length > 1) options.interval = span(parts[1]);
  if (parts.length > 2) {
    const count = parseUnsigned(parts[2]);
    if (count === null || count < 1 || count > KEEPALIVE_MAX_COUNT) fail(` (COUNT must be 1-${KEEPALIVE_MAX_COUNT})`);
    options.count = count as number;
  }
  try {
    keepaliveSeconds(options);
  } catch (error) {
    fail(` (${(error as Error).message})`);
  }
  return options;
}

/** Finds a long option by its name or a unique prefix, like getopt_long. */
function findLong(name: string, given: string): OptionSpec {
  const exact = OPTIONS.find((o) => o.long === name);
  if (exact) return exact;
  // Abbreviations that systemd-socket-proxyd takes ("--conn=3") keep meaning
  // its options: they win over our extensions.
  const original = OPTIONS.filter((o) => !o.extension && o.long.startsWith(name));
  if (original.length === 1 && name !== '') return original[0];
  const candidates = OPTIONS.filter((o) => o.long.startsWith(name));
  if (candidates.length === 1 && name !== '') return candidates[0];
  if (candidates.length > 1 && name !== '') {
    throw new UsageError(
      `option '${given}' is ambiguous; possibilities: ${candidates.map((o) => `'--${o.long}'`).join(' ')}`,
    );
  }
  throw new UsageError(`unrecognized option '${given}'`);
}

/**
 * Parses argv (without node and the script). Returns what to do; throws
 * UsageError for anything wrong, with the message to print.
 */
export function parseCommandLine(argv: string[]): ParsedCommandLine {
  const positional: string[] = [];
  const o: Omit<CliOptions, 'target'> = {
    maxConnections: DEFAULTS.maxConnections,
    exitIdleTime: DEFAULTS.exitIdleTime,
    listen: [],
    drainTimeout: DEFAULTS.drainTimeout,
    connectTimeout: DEFAULTS.connectTimeout,
    resolveInterval: DEFAULTS.resolveInterval,
    connectRetry: 0,
    idleTimeout: 0,
    userTimeout: 0,
    udpTimeout: DEFAULT_UDP_TIMEOUT_MS,
    udpSessionsMax: DEFAULT_UDP_SESSIONS_MAX,
    accessLog: false,
  };

  // Applies one option; returns an action for --help/--version.
  const apply = (spec: OptionSpec, value: string): ParsedCommandLine | null => {
    switch (spec.long) {
      case 'help':
        return { action: 'help' };
      case 'version':
        return { action: 'version' };
      case 'connections-max': {
        const n = parseUnsigned(value);
        if (n === null) throw new UsageError(`Failed to parse --connections-max= argument: ${value}`);
        if (n < 1) throw new UsageError('Connection limit is too low.');
        o.maxConnections = n;
        return null;
      }
      case 'exit-idle-time':
        o.exitIdleTime = parseSpan(spec.long, value);
        return null;
      case 'listen':
        try {
          o.listen.push(parseListenAddress(value));
        } catch (error) {
          throw new UsageError(`Failed to parse --listen= argument: ${(error as Error).message}`);
        }
        return null;
      case 'drain-timeout':
        o.drainTimeout = parseSpan(spec.long, value);
        return null;
      case 'log-level': {
        const level = parseLogLevel(value);
        if (level === null) throw new UsageError(`Failed to parse --log-level= argument: ${value}`);
        o.logLevel = level;
        return null;
      }
      case 'workers': {
        const n = parseUnsigned(value);
        if (n === null) throw new UsageError(`Failed to parse --workers= argument: ${value}`);
        if (n < 1 || n > MAX_WORKERS) throw new UsageError(`--workers= must be between 1 and ${MAX_WORKERS}: ${value}`);
        o.workers = n;
        return null;
      }
      case 'connect-timeout':
        o.connectTimeout = spanInRange(spec.long, value, parseSpan(spec.long, value), { min: USEC_PER_MSEC, finite: true });
        return null;
      case 'resolve-interval':
        o.resolveInterval = spanInRange(spec.long, value, parseSpan(spec.long, value), { min: USEC_PER_MSEC });
        return null;
      case 'proxy-protocol':
        if (value !== 'v1' && value !== 'v2') throw new UsageError(`Failed to parse --proxy-protocol= argument (v1 or v2): ${value}`);
        o.proxyProtocol = value;
        return null;
      case 'connect-retry':
        if (parseSpan(spec.long, value) === USEC_INFINITY) throw new UsageError(`--connect-retry= must be finite: ${value}`);
        o.connectRetry = spanMs(spec.long, value);
        return null;
      case 'idle-timeout':
        o.idleTimeout = spanMs(spec.long, value, { infinityIsOff: true });
        return null;
      case 'keepalive':
        o.keepalive = parseKeepalive(value);
        return null;
      case 'metrics':
        try {
          o.metrics = parseAddress(value, undefined, true);
        } catch (error) {
          throw new UsageError(`Failed to parse --metrics= argument: ${(error as Error).message}`);
        }
        return null;
      case 'access-log':
        o.accessLog = true;
        return null;
      case 'user-timeout':
        o.userTimeout = spanMs(spec.long, value, { infinityIsOff: true });
        return null;
      case 'udp-timeout':
        if (parseSpan(spec.long, value) === USEC_INFINITY) throw new UsageError(`--udp-timeout= must be finite: ${value}`);
        o.udpTimeout = spanMs(spec.long, value);
        if (o.udpTimeout < 1) throw new UsageError(`--udp-timeout= is too short: ${value}`);
        return null;
      case 'udp-sessions-max': {
        const n = parseUnsigned(value);
        if (n === null) throw new UsageError(`Failed to parse --udp-sessions-max= argument: ${value}`);
        if (n < 1) throw new UsageError(`--udp-sessions-max= must be at least 1: ${value}`);
        o.udpSessionsMax = n;
        return null;
      }
      default:
        throw new Error(`unhandled option --${spec.long}`);
    }
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const given = eq < 0 ? arg : arg.slice(0, eq);
      const spec = findLong(name, given);
      let value = '';
      if (spec.hasArg) {
        if (eq >= 0) value = arg.slice(eq + 1);
        else if (i + 1 < argv.length) value = argv[++i];
        else throw new UsageError(`option '--${spec.long}' requires an argument`);
      } else if (eq >= 0) {
        throw new UsageError(`option '--${spec.long}' doesn't allow an argument`);
      }
      const action = apply(spec, value);
      if (action) return action;
      continue;
    }
    if (arg.startsWith('-') && arg !== '-') {
      // A cluster of short options: "-h", "-c5", "-c 5".
      for (let j = 1; j < arg.length; j++) {
        const spec = OPTIONS.find((s) => s.short === arg[j]);
        if (!spec) throw new UsageError(`invalid option -- '${arg[j]}'`);
        let value = '';
        if (spec.hasArg) {
          if (j + 1 < arg.length) value = arg.slice(j + 1);
          else if (i + 1 < argv.length) value = argv[++i];
          else throw new UsageError(`option requires an argument -- '${arg[j]}'`);
          j = arg.length;
        }
        const action = apply(spec, value);
        if (action) return action;
      }
      continue;
    }
    positional.push(arg);
  }

  if (positional.length < 1) throw new UsageError('Not enough parameters.');
  if (positional.length > 1) throw new UsageError('Too many parameters.');
  const spec = positional[0];
  let target: Address;
  try {
    target = parseAddress(spec, 80);
  } catch (error) {
    throw new UsageError(`Failed to parse target "${spec}": ${(error as Error).message}`);
  }
  return { action: 'run', options: { target, ...o } };
}

/** µs to a timer's ms, capped at what setTimeout can take. */
export function timerMs(usec: bigint): number {
  if (usec === USEC_INFINITY) return MAX_TIMER_MS;
  return Math.min(MAX_TIMER_MS, Number(usec / USEC_PER_MSEC));
}
