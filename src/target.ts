// Target and listen-address syntax: HOST:PORT, [IPv6]:PORT, /unix/path, @abstract.
import dns from 'node:dns/promises';
import net from 'node:net';
import type { NativeEndpoint } from './native';

export type Address =
  | { kind: 'unix'; path: string }
  /** `udp`: a datagram (UDP) address, for listening ("udp:HOST:PORT"). */
  | { kind: 'inet'; host: string; port: number; udp?: boolean };

/**
 * Parses an address the way systemd-socket-proxyd does, plus brackets: a path
 * starting with "/" or "@" is a UNIX socket; otherwise HOST:PORT split at the
 * last ":" ("::1:8080" works), "[::1]:8080", or HOST alone meaning port
 * `defaultPort`. Port 0 (any free port) only with `allowPortZero`, for
 * listening. Throws an Error with a one-line message.
 */
export function parseAddress(spec: string, defaultPort?: number, allowPortZero = false): Address {
  if (spec === '') throw new Error('empty address');
  if (spec.startsWith('/') || spec.startsWith('@')) {
    if (spec === '@') throw new Error('empty abstract socket name "@"');
    return { kind: 'unix', path: spec };
  }
  let host: string;
  let portText: string | undefined;
  if (spec.startsWith('[')) {
    const close = spec.indexOf(']');
    if (close < 0) throw new Error(`missing "]" in address "${spec}"`);
    host = spec.slice(1, close);
    const rest = spec.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) throw new Error(`unexpected "${rest}" after "]" in address "${spec}"`);
    portText = rest === '' ? undefined : rest.slice(1);
    if (net.isIPv6(host.replace(/%.*$/, '')) === false) throw new Error(`"${host}" in brackets is not an IPv6 address`);
  } else {
    const colon = spec.lastIndexOf(':');
    host = colon < 0 ? spec : spec.slice(0, colon);
    portText = colon < 0 ? undefined : spec.slice(colon + 1);
    // Only an IPv6 address has colons of its own ("::1:8080"); any other host with one ("a.aa::1"),
    // or with a bracket outside "[IPv6]:PORT", no resolver can find, so every client would fail.
    if ((host.includes(':') && !net.isIPv6(host.replace(/%.*$/, ''))) || /[[\]]/.test(host)) {
      throw new Error(`"${host}" is neither a host name nor an IPv6 address in address "${spec}"`);
    }
  }
  if (host === '') throw new Error(`missing host in address "${spec}"`);
  let port: number;
  if (portText === undefined) {
    if (defaultPort === undefined) throw new Error(`missing port in address "${spec}"`);
    port = defaultPort;
  } else {
    if (!/^[0-9]+$/.test(portText)) throw new Error(`invalid port "${portText}" in address "${spec}"`);
    port = Number(portText);
    if (port < (allowPortZero ? 0 : 1) || port > 65535) throw new Error(`port ${portText} out of range in address "${spec}"`);
  }
  return { kind: 'inet', host, port };
}

export function formatAddress(address: Address): string {
  if (address.kind === 'unix') return address.path;
  const text = address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
  return address.udp ? `udp:${text}` : text;
}

/**
 * A listening address: parseAddress's syntax (a port required, 0 allowed),
 * or "udp:HOST:PORT" / "udp:[IPv6]:PORT" for a datagram socket.
 */
export function parseListenAddress(spec: string): Address {
  if (!spec.startsWith('udp:')) return parseAddress(spec, undefined, true);
  const address = parseAddress(spec.slice(4), undefined, true);
  if (address.kind !== 'inet') throw new Error(`a UDP address needs HOST:PORT, not "${address.path}"`);
  return { ...address, udp: true };
}

/** True when connecting needs no resolver: a UNIX path or an IP literal. */
export function isLiteral(address: Address): boolean {
  return address.kind === 'unix' || net.isIP(address.host.replace(/%.*$/, '')) !== 0;
}

/** Every address the target stands for, in resolver order. */
export async function resolveAddress(address: Address): Promise<NativeEndpoint[]> {
  if (address.kind === 'unix' || isLiteral(address)) return [toEndpoint(address)];
  const results = await dns.lookup(address.host, { all: true, verbatim: true });
  return results.map((r) => ({ host: r.address, port: address.port }));
}

/** The engine's form of an address (numeric host or path; a hostname needs resolveAddress first). */
export function toEndpoint(address: Address): NativeEndpoint {
  return address.kind === 'unix' ? { path: address.path } : { host: address.host, port: address.port };
}
