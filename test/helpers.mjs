// Shared test plumbing: real servers, real clients, real processes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = path.join(ROOT, 'bin', 'socket-proxyd');
export const REFERENCE = '/lib/systemd/systemd-socket-proxyd';
export const ACTIVATE = '/usr/bin/systemd-socket-activate';

/** Starts a net.Server; `address` is a port-0 TCP host or a UNIX path / "@abstract". */
export async function startServer(onConnection, address = '127.0.0.1') {
  return startServerWith({}, onConnection, address);
}

/** Echo server: writes back everything, ends when the client ends. */
export const echoServer = (address) => startServer((s) => s.on('error', () => {}).pipe(s), address);

/** Ports this process has handed out: never twice. */
const handedOut = new Set();
const FIRST_TEST_PORT = 10000;

/** Whether `port` can be bound on `host` right now. */
function bindable(port, host) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/**
 * A port that was free a moment ago, for a daemon to bind later. Drawn below the kernel's
 * ephemeral range (net.ipv4.ip_local_port_range), where a port-0 bind would draw it: there no
 * outgoing connection of this busy test machine can take it as its source port in between.
 */
export async function freePort(host = '127.0.0.1') {
  let low = 32768;
  try {
    low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  } catch {
    // no procfs: the kernel's default range
  }
  for (let attempt = 0; low - FIRST_TEST_PORT > 1000 && attempt < 100; attempt++) {
    const port = FIRST_TEST_PORT + Math.floor(Math.random() * (low - FIRST_TEST_PORT));
    if (handedOut.has(port) || !(await bindable(port, host))) continue;
    handedOut.add(port);
    return port;
  }
  // An ephemeral range that starts too low to leave room below it: the kernel's pick.
  const s = net.createServer().listen(0, host);
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  handedOut.add(port);
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

/**
 * Sends `size` pattern bytes to 127.0.0.1:`port` (an echo behind a proxy), half-closes, and asserts
 * the echo comes back whole and in order. Returns the byte count.
 */
export async function assertEchoes(port, size, seed = 1) {
  const payload = pattern(size, seed);
  const socket = await connect(port);
  const got = collect(socket);
  socket.end(payload);
  const { bytes, sha256: digest } = await got;
  assert.equal(bytes, payload.length, 'echo length');
  assert.equal(digest, sha256(payload), 'echo content');
  return bytes;
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

/** One connect to the port: true if it was accepted. */
function probePort(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** Resolves once something accepts TCP connections on the port. */
export async function waitForPort(port, host = '127.0.0.1', timeoutMs = 10000) {
  const ok = await waitFor(() => probePort(port, host), timeoutMs, 50);
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

/**
 * Runs `command args…` socket-activated on a fresh port (by `launch`: activate() or the like);
 * resolves {child, port} once the port accepts (the probe is the first connection).
 * freePort's port can be taken by another process before systemd-socket-activate binds it: then
 * it exits ("Address already in use") and another port is tried.
 */
export async function activateOnFreePort(command, args, options, launch = activate) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const child = launch(`127.0.0.1:${port}`, command, args, options);
    let gone = false;
    child.exited.then(() => (gone = true), () => (gone = true));
    // A probe that connects wins: a daemon may exit right after its first connection.
    const up = await waitFor(async () => (await probePort(port)) || (gone && 'exited'), 30_000, 50);
    if (up === true) return { child, port };
    child.kill('SIGKILL');
    await child.exited;
    if (up === 'exited' && attempt < 3 && /already in use/i.test(child.stderrText)) continue;
    throw new Error(`nothing listens on 127.0.0.1:${port} (${up === 'exited' ? 'systemd-socket-activate exited' : 'after 30 s'}): ${child.stderrText}`);
  }
}

/** Starts our CLI socket-activated on a fresh port; resolves {child, port}. */
export const activateProxy = (args, options = {}) => activateOnFreePort(process.execPath, [CLI, ...args], options);

/** Starts the reference daemon socket-activated on a fresh port. */
export const activateReference = (args, options = {}) => activateOnFreePort(REFERENCE, args, options);

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

// ---------------------------------------------------------------------------
// Helpers added for the forwarding / activation suites.

/** Like startServer, with net.Server options (e.g. {allowHalfOpen: true}) and a listen backlog. */
export async function startServerWith(options, onConnection, address = '127.0.0.1', backlog = 511) {
  const server = net.createServer(options, onConnection);
  if (address.startsWith('/') || address.startsWith('@')) {
    server.listen({ path: address.startsWith('@') ? `\0${address.slice(1)}` : address, backlog });
  } else {
    server.listen({ port: 0, host: address, backlog });
  }
  await once(server, 'listening');
  // close() must not wait for peers the test left half-open.
  const open = new Set();
  server.on('connection', (s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
  });
  const a = server.address();
  const target = typeof a === 'string' ? address : a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  const close = () =>
    new Promise((r) => {
      server.close(r);
      for (const s of open) s.destroy();
    });
  return { server, target, port: typeof a === 'string' ? 0 : a.port, close };
}

/** net.connect options for an address string: "HOST:PORT", "[IPv6]:PORT", "/path" or "@abstract". */
export function connectOptions(address) {
  if (address.startsWith('/')) return { path: address };
  if (address.startsWith('@')) return { path: `\0${address.slice(1)}` };
  const m = /^\[(.*)\]:(\d+)$/.exec(address) ?? /^(.*):(\d+)$/.exec(address);
  if (!m) throw new Error(`bad address ${address}`);
  return { host: m[1], port: Number(m[2]) };
}

/** Connects to an address string (see connectOptions); resolves the socket once connected. */
export async function connectTo(address, options = {}) {
  const socket = net.connect({ ...connectOptions(address), ...options });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/**
 * Resolves when the socket closes: {data (Buffer of everything read), ended (got FIN),
 * error (code or null)}. Attach it right after connecting so no data is missed.
 */
export function closed(socket) {
  return new Promise((resolve) => {
    const chunks = [];
    let ended = false;
    let error = null;
    socket.on('data', (d) => chunks.push(d));
    socket.on('end', () => (ended = true));
    socket.on('error', (e) => (error = e.code ?? String(e)));
    socket.on('close', () => resolve({ data: Buffer.concat(chunks), ended, error }));
  });
}

/** Rejects with `message` if `promise` has not settled within `ms`. */
export function within(promise, ms, message = `timed out after ${ms} ms`) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms))),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Writes `chunk` repeatedly until the socket stops draining (no 'drain' for `stallMs`).
 * Returns {written: bytes handed to write(), pushed: bytes the kernel took (written − still
 * buffered in Node)}. `hash` (optional) is updated with every byte written, in order.
 */
export async function writeUntilStuck(socket, chunk, { stallMs = 500, hash, limit = 1 << 30 } = {}) {
  let written = 0;
  for (;;) {
    while (written < limit) {
      hash?.update(chunk);
      written += chunk.length;
      if (!socket.write(chunk)) break;
    }
    if (written >= limit) break;
    const drained = await new Promise((resolve) => {
      const timer = setTimeout(() => { socket.off('drain', onDrain); resolve(false); }, stallMs);
      const onDrain = () => { clearTimeout(timer); resolve(true); };
      socket.once('drain', onDrain);
    });
    if (!drained) break;
  }
  return { written, pushed: written - socket.writableLength };
}

/** A numeric field of /proc/PID/status in KiB (e.g. "VmRSS"). */
export async function procStatusKiB(pid, field) {
  const { readFile } = await import('node:fs/promises');
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

/** Threads of a process (default: this one). */
export async function taskCount(pid = process.pid) {
  const { readdir } = await import('node:fs/promises');
  return (await readdir(`/proc/${pid}/task`)).length;
}

/** A fresh, unique abstract UNIX socket name ("@…"). */
export function abstractName(tag = 'test') {
  return `@socket-proxyd-${tag}-${process.pid}-${Math.random().toString(36).slice(2)}`;
}

// Node (libuv) binds and connects abstract UNIX names padded with NULs to the
// whole sun_path, so a Node peer never meets a name bound the way systemd,
// socat and this proxy bind it (exact length). Abstract peers are socat.

/** Spawns `socat args…`; rejects loudly when socat is not installed. */
function socat(args, stdio) {
  const child = spawn('socat', args, { stdio });
  child.exited = new Promise((resolve, reject) => {
    child.once('error', (e) =>
      reject(e.code === 'ENOENT' ? new Error('socat is missing: apt-get install -y socat') : e));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return child;
}

/** True once something listens on the abstract name "@name" (exact length). */
export async function abstractListening(name) {
  const { readFile } = await import('node:fs/promises');
  const table = await readFile('/proc/net/unix', 'utf8');
  // Columns: Num RefCount Protocol Flags(00010000 = listening) Type St Inode Path.
  return table.split('\n').some((line) => line.endsWith(` ${name}`) && line.split(/\s+/)[3] === '00010000');
}

/**
 * True once something listens on TCP `port` (any address, IPv4 or IPv6), read
 * from /proc/net/tcp{,6}; in the network namespace of process `pid` if given.
 */
export async function tcpListening(port, pid = 'self') {
  const { readFile } = await import('node:fs/promises');
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const table of [`/proc/${pid}/net/tcp`, `/proc/${pid}/net/tcp6`]) {
    // Columns: sl local_address(ADDR:PORT, hex) rem_address st(0A = LISTEN) …
    const rows = (await readFile(table, 'utf8')).split('\n').slice(1).map((l) => l.trim().split(/\s+/));
    if (rows.some((r) => r[1]?.endsWith(hex) && r[3] === '0A')) return true;
  }
  return false;
}

/** An echo server on the abstract name "@name": socat, one `cat` per connection. */
export async function abstractEchoServer(name) {
  const child = socat([`ABSTRACT-LISTEN:${name.slice(1)},fork,backlog=256`, 'EXEC:cat'], ['ignore', 'ignore', 'inherit']);
  child.exited.catch(() => {});
  const up = await Promise.race([waitFor(() => abstractListening(name)), child.exited.then(() => false)]);
  if (!up) {
    child.kill('SIGKILL');
    await child.exited; // rejects with the reason when socat is missing
    throw new Error(`socat did not listen on ${name}`);
  }
  return {
    target: name,
    close: async () => {
      child.kill('SIGTERM');
      await child.exited;
    },
  };
}

/** Sends `payload` to the abstract name "@name" with socat, half-closes, resolves {bytes, sha256} of the reply. */
export async function abstractRoundTrip(name, payload) {
  const child = socat(['-t', '30', '-', `ABSTRACT-CONNECT:${name.slice(1)}`], ['pipe', 'pipe', 'inherit']);
  const reply = collect(child.stdout);
  child.stdin.end(payload);
  const [result, { code }] = await Promise.all([reply, child.exited]);
  if (code !== 0) throw new Error(`socat to ${name} exited with status ${code}`);
  return result;
}

// ---------------------------------------------------------------------------
// Helpers added for the differential suite (reference vs ours).

/** Spawns a daemon-like command; the child carries stderrText and `exited` like activate()'s. */
function spawnCollecting(command, args, env = {}) {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderrText = '';
  child.stdoutText = '';
  child.stderr.on('data', (d) => (child.stderrText += d));
  child.stdout.on('data', (d) => (child.stdoutText += d));
  child.exited = new Promise((resolve, reject) => {
    child.once('error', (e) => reject(e.code === 'ENOENT' ? new Error(`${command} is missing`) : e));
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  return child;
}

/**
 * Like activate(), with systemd-socket-activate itself run under `wrapper`
 * (an argv prefix, e.g. from hostsNamespace()): the daemon it execs inherits it.
 */
export function activateWrapped(wrapper, listen, command, args, { env = {}, extra = [] } = {}) {
  const listenArgs = (Array.isArray(listen) ? listen : [listen]).flatMap((l) => ['-l', l]);
  return spawnCollecting(wrapper[0], [...wrapper.slice(1), ACTIVATE, ...listenArgs, ...extra, command, ...args], env);
}

/**
 * An argv prefix that runs a command in a private mount namespace where
 * `hostsFile` is bind-mounted over /etc/hosts (needs root; nothing outside changes).
 */
export function hostsNamespace(hostsFile) {
  return ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hostsFile];
}

/** Runs `getent ahosts NAME` under `wrapper`; resolves the stream addresses, in resolver order. */
export async function resolveUnder(wrapper, name) {
  const child = spawnCollecting(wrapper[0], [...wrapper.slice(1), 'getent', 'ahosts', name]);
  const { code } = await child.exited;
  if (code !== 0) throw new Error(`getent ahosts ${name} failed (${code}): ${child.stderrText}`);
  return child.stdoutText.split('\n').filter((l) => /\sSTREAM\s/.test(l)).map((l) => l.split(/\s+/)[0]);
}

/**
 * Socket activation without waiting for a client: python3 binds and listens on
 * 127.0.0.1:port, puts the socket on fd 3, sets LISTEN_FDS=1 and LISTEN_PID
 * and execs `command args…` at once (the pid stays the same).
 */
export function activateNow(port, command, args, { env = {} } = {}) {
  const script = [
    'import os, socket, sys',
    's = socket.socket(socket.AF_INET, socket.SOCK_STREAM)',
    's.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
    "s.bind(('127.0.0.1', int(sys.argv[1])))",
    's.listen(128)',
    'fd = s.detach()',
    'if fd != 3:',
    '    os.dup2(fd, 3)',
    '    os.close(fd)',
    'os.set_inheritable(3, True)',
    "os.environ['LISTEN_FDS'] = '1'",
    "os.environ['LISTEN_PID'] = str(os.getpid())",
    'os.execvp(sys.argv[2], sys.argv[2:])',
  ].join('\n');
  return spawnCollecting('python3', ['-c', script, String(port), command, ...args], env);
}

/**
 * A notification socket like systemd's: AF_UNIX datagrams received by python3
 * (Node has no UNIX datagram sockets). `address` is a path or "@abstract".
 * messages: [{text, t, at}]: t is when the kernel queued the datagram (SO_TIMESTAMPNS, ms since
 * the epoch: the sender's moment, however late the receiver reads it), at is Date.now() when this
 * process got it.
 */
export async function notifyReceiver(address) {
  const script = `
import json, socket, struct, sys, time
SO_TIMESTAMPNS = 35  # not in Python's socket module
a = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.bind('\\0' + a[1:] if a.startswith('@') else a)
print('bound', flush=True)
while True:
    d, ancillary, _, _ = s.recvmsg(65536, 256)
    t = time.time() * 1000
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack('qq', data[:16])
            t = sec * 1000 + nsec / 1e6
    print(json.dumps({'t': t, 'text': d.decode()}), flush=True)
`;
  const child = spawn('python3', ['-c', script, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  const messages = [];
  const listeners = new Set();
  let buffered = '';
  let bound;
  const isBound = new Promise((r) => (bound = r));
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buffered += d;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line === 'bound') { bound(); continue; }
      const m = { ...JSON.parse(line), at: Date.now() };
      messages.push(m);
      for (const l of listeners) l(m);
    }
  });
  await within(Promise.race([isBound, exited.then((code) => { throw new Error(`python3 receiver exited with ${code}`); })]), 10000, 'python3 receiver did not bind');
  return {
    address,
    pid: child.pid,
    messages,
    /** Calls fn on every new message (synchronously, as it arrives). */
    onMessage: (fn) => listeners.add(fn),
    /** Resolves the first message (already received or later) whose text matches `re`. */
    wait: async (re, ms = 10000) => {
      const m = await waitFor(() => messages.find((x) => re.test(x.text)), ms, 10);
      if (!m) throw new Error(`no notification matching ${re} within ${ms} ms; got ${JSON.stringify(messages.map((x) => x.text))}`);
      return m;
    },
    close: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * Our CLI socket-activated at once on a fresh 127.0.0.1 port (activateNow: no
 * first connection needed, none made); resolves {child, port} once it logged
 * its startup line. The child has stderrText and `exited`.
 */
export async function startProxyNow(args, { env = {} } = {}) {
  const port = await freePort();
  const child = activateNow(port, process.execPath, [CLI, ...args], { env });
  child.exited.catch(() => {});
  const up = await Promise.race([waitFor(() => /Listening on/.test(child.stderrText), 15_000), child.exited.then(() => false)]);
  if (!up) {
    child.kill('SIGKILL');
    throw new Error(`the proxy did not start: ${child.stderrText}`);
  }
  return { child, port };
}

/** Writes `text` and resolves once as many bytes came back (an echo behind the proxy). */
export async function exchange(socket, text, ms = 10_000) {
  let got = '';
  const reply = new Promise((resolve, reject) => {
    const onData = (d) => {
      got += d;
      if (got.length >= text.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed before the echo of ${JSON.stringify(text)} (got ${JSON.stringify(got)})`)));
  });
  socket.write(text);
  return within(reply, ms, `no echo of ${JSON.stringify(text)} within ${ms} ms (got ${JSON.stringify(got)})`);
}

// ---------------------------------------------------------------------------
// Helpers added for the datagram suite.

/**
 * Socket activation of several sockets at once, as a .socket unit with ListenStream= and
 * ListenDatagram= passes them (systemd-socket-activate applies --datagram to every -l, so it
 * cannot mix kinds): python3 makes one socket per spec, in order from fd 3, sets LISTEN_FDS,
 * LISTEN_PID (and LISTEN_FDNAMES when every spec has a name) and execs `command args…` at once.
 * A spec is {type: 'stream' | 'dgram', host, port, name?, bind?} or {type, path} (AF_UNIX);
 * IPv6 literals make AF_INET6 sockets (dual-stack, as systemd's BindIPv6Only=default); bind:
 * false leaves a datagram socket unbound. Returns a spawnCollecting child.
 */
export function activateSockets(specs, command, args, { env = {} } = {}) {
  const script = `
import json, os, socket, sys
specs = json.loads(sys.argv[1])
made = []
for s in specs:
    kind = socket.SOCK_STREAM if s['type'] == 'stream' else socket.SOCK_DGRAM
    if 'path' in s:
        k = socket.socket(socket.AF_UNIX, kind)
        if s.get('bind', True):
            k.bind(s['path'])
    else:
        fam = socket.AF_INET6 if ':' in s['host'] else socket.AF_INET
        k = socket.socket(fam, kind)
        if fam == socket.AF_INET6:
            k.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if s.get('bind', True):
            k.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            k.bind((s['host'], s['port']))
    if s.get('bind', True):
        if kind == socket.SOCK_STREAM:
            k.listen(128)
    made.append(k.detach())
# Out of the way first, then onto 3, 4, ...
high = [os.dup2(fd, 200 + i) for i, fd in enumerate(made)]
for fd in made:
    os.close(fd)
for i in range(len(high)):
    os.dup2(200 + i, 3 + i)
    os.close(200 + i)
    os.set_inheritable(3 + i, True)
os.environ['LISTEN_FDS'] = str(len(specs))
os.environ['LISTEN_PID'] = str(os.getpid())
if all('name' in s for s in specs):
    os.environ['LISTEN_FDNAMES'] = ':'.join(s['name'] for s in specs)
os.execvp(sys.argv[2], sys.argv[2:])
`;
  return spawnCollecting('python3', ['-c', script, JSON.stringify(specs), command, ...args], env);
}
