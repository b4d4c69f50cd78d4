// Shared test plumbing: real servers, real clients, real processes.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = path.join(ROOT, 'bin', 'socket-proxyd');
export const REFERENCE = '/lib/systemd/systemd-socket-proxyd';
export const ACTIVATE = '/usr/bin/systemd-socket-activate';

/** Starts a net.Server; `address` is a port-0 TCP host or a UNIX path / "@abstract". */
export async function startServer(onConnection, address = '127.0.0.1') {
  const server = net.createServer(onConnection);
  if (address.startsWith('/') || address.startsWith('@')) {
    server.listen(address.startsWith('@') ? `\0${address.slice(1)}` : address);
  } else {
    server.listen(0, address);
  }
  await once(server, 'listening');
  const a = server.address();
  const target = typeof a === 'string' ? address : a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  return { server, target, port: typeof a === 'string' ? 0 : a.port, close: () => new Promise((r) => server.close(r)) };
}

/** Echo server: writes back everything, ends when the client ends. */
export const echoServer = (address) => startServer((s) => s.on('error', () => {}).pipe(s), address);

/** A port that was free a moment ago. */
export async function freePort(host = '127.0.0.1') {
  const s = net.createServer().listen(0, host);
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** Connects; resolves the socket once connected. */
export async function connect(port, host = '127.0.0.1') {
  const socket = net.connect({ port, host });
  await once(socket, 'connect');
  return socket;
}

/** Collects a readable until it ends; resolves {bytes, sha256, data?}. */
export function collect(socket, { keep = false } = {}) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const chunks = [];
    let bytes = 0;
    socket.on('data', (d) => {
      bytes += d.length;
      hash.update(d);
      if (keep) chunks.push(d);
    });
    socket.on('end', () => resolve({ bytes, sha256: hash.digest('hex'), data: keep ? Buffer.concat(chunks) : null }));
    socket.on('error', reject);
  });
}

/** Deterministic pseudo-random bytes (fast, reproducible). */
export function pattern(size, seed = 1) {
  const buf = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  for (let i = size - (size % 4); i < size; i++) buf[i] = i & 0xff;
  return buf;
}

export const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

/** Writes `total` bytes made of `chunk` repeated, honouring backpressure, then ends (half-close). */
export async function sendRepeated(socket, chunk, total, hash) {
  let sent = 0;
  while (sent < total) {
    const piece = total - sent >= chunk.length ? chunk : chunk.subarray(0, total - sent);
    hash?.update(piece);
    sent += piece.length;
    if (!socket.write(piece)) await once(socket, 'drain');
  }
  socket.end();
}

/** Polls `fn` until truthy or the timeout passes; returns its last value. */
export async function waitFor(fn, timeoutMs = 5000, stepMs = 20) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** Resolves once something accepts TCP connections on the port. */
export async function waitForPort(port, host = '127.0.0.1', timeoutMs = 10000) {
  const ok = await waitFor(
    () =>
      new Promise((resolve) => {
        const s = net.connect({ port, host });
        s.once('connect', () => { s.destroy(); resolve(true); });
        s.once('error', () => resolve(false));
      }),
    timeoutMs,
    50,
  );
  if (!ok) throw new Error(`nothing listens on ${host}:${port}`);
}

/**
 * Runs `command args…` under systemd-socket-activate, as systemd would start it
 * (it execs the command on the first connection, so waitForPort's probe is
 * that first connection and is forwarded like any other),
 * listening on `listen` (e.g. "127.0.0.1:PORT"). Returns the child process plus
 * its collected stderr. `extra` are extra systemd-socket-activate options.
 */
export function activate(listen, command, args, { env = {}, extra = [] } = {}) {
  const listenArgs = (Array.isArray(listen) ? listen : [listen]).flatMap((l) => ['-l', l]);
  const child = spawn(ACTIVATE, [...listenArgs, ...extra, command, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderrText = '';
  child.stderr.on('data', (d) => (child.stderrText += d));
  child.stdout.on('data', () => {});
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

/** Starts our CLI socket-activated on a fresh port; resolves {child, port}. */
export async function activateProxy(args, options = {}) {
  const port = await freePort();
  const child = activate(`127.0.0.1:${port}`, process.execPath, [CLI, ...args], options);
  await waitForPort(port);
  return { child, port };
}

/** Starts the reference daemon socket-activated on a fresh port. */
export async function activateReference(args, options = {}) {
  const port = await freePort();
  const child = activate(`127.0.0.1:${port}`, REFERENCE, args, options);
  await waitForPort(port);
  return { child, port };
}

/** SIGTERMs a child and waits for it to exit. */
export async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exited;
  child.kill('SIGTERM');
  return child.exited;
}

/** Open fds of a process (default: this one). */
export async function fdCount(pid = process.pid) {
  const { readdir } = await import('node:fs/promises');
  return (await readdir(`/proc/${pid}/fd`)).length;
}
