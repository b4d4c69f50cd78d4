// Differential tests: the same scenarios run against the reference
// (/lib/systemd/systemd-socket-proxyd, systemd 252) and against our CLI
// (node bin/socket-proxyd), both socket-activated the same way by
// systemd-socket-activate, with real processes and real sockets.
//
// Each scenario is one row of SCENARIOS: `run(ctx)` drives one daemon and
// returns a plain outcome. `expect: 'same'` asserts both outcomes are equal
// and `check` asserts that outcome is the right one; `expect: 'differs'`
// asserts the reference shows its known defect (`reference`) and ours is right
// (`ours`), so the difference is documented and a changed reference is noticed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import {
  ACTIVATE,
  CLI,
  REFERENCE,
  abstractEchoServer,
  abstractName,
  activate,
  activateNow,
  activateWrapped,
  closed,
  connectTo,
  echoServer,
  freePort,
  hostsNamespace,
  notifyReceiver,
  pattern,
  resolveUnder,
  sha256,
  startServerWith,
  waitFor,
  waitForPort,
  activateOnFreePort,
  within,
} from './helpers.mjs';
import { udpClient, udpEchoServer, udpRequest } from './udp-helpers.mjs';

const KiB = 1024;
const MiB = 1024 * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Every tool this file needs, checked up front: a missing one fails loudly.
for (const [tool, probe] of [
  [REFERENCE, ['--version']],
  [ACTIVATE, ['--version']],
  ['socat', ['-V']],
  ['nc', ['-h']],
  ['python3', ['--version']],
  ['unshare', ['--version']],
  ['getent', ['--version']],
]) {
  try {
    execFileSync(tool, probe, { stdio: 'ignore' });
  } catch (error) {
    // nc -h exits 1 on netcat-openbsd; only "not found" counts as missing.
    if (error.code === 'ENOENT') throw new Error(`${tool} is missing: this suite needs it`);
  }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-diff-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let serial = 0;
const tmpPath = (name) => path.join(tmp, `${++serial}-${name}`);

const DAEMONS = [
  { name: 'reference', command: REFERENCE, argv: (args) => args },
  { name: 'ours', command: process.execPath, argv: (args) => [CLI, ...args] },
];

/** Every daemon pid this file started: none may be left at the end. */
const spawnedPids = new Set();

const alive = (child) => child.exitCode === null && child.signalCode === null;

/** Per-run resources of one scenario on one daemon; cleanup() releases them in reverse order. */
class Context {
  constructor(daemon) {
    this.daemon = daemon;
    this.cleanups = [];
  }

  defer(fn) {
    this.cleanups.push(fn);
  }

  async cleanup() {
    const errors = [];
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn();
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length) throw errors[0];
  }

  /** Tracks a daemon child: killed (SIGKILL) at cleanup if still running. */
  track(child) {
    spawnedPids.add(child.pid);
    child.exited.catch(() => {});
    this.defer(async () => {
      if (alive(child)) child.kill('SIGKILL');
      await child.exited;
    });
    return child;
  }

  /**
   * Starts the daemon with `args` under systemd-socket-activate on a fresh port.
   * `wait` (default) makes the first connection (the port probe) so it is exec'd.
   */
  async start(args, { extra = [], env = {}, wrapper = null, wait = true } = {}) {
    const argv = this.daemon.argv(args);
    const launch = wrapper ? (...a) => activateWrapped(wrapper, ...a) : activate;
    if (wait) {
      const { child, port } = await activateOnFreePort(this.daemon.command, argv, { extra, env }, (...a) => this.track(launch(...a)));
      return { child, port };
    }
    const port = await freePort();
    return { child: this.track(launch(`127.0.0.1:${port}`, this.daemon.command, argv, { extra, env })), port };
  }

  /** Starts the daemon with a listening socket passed in at once (no client needed to start it). */
  startNow(args, port) {
    return this.track(activateNow(port, this.daemon.command, this.daemon.argv(args)));
  }

  /** A client socket, destroyed at cleanup. */
  async connect(port) {
    const socket = await connectTo(`127.0.0.1:${port}`);
    this.defer(() => socket.destroy());
    return socket;
  }

  /** Registers a server's close() for cleanup and returns the server. */
  server(s) {
    this.defer(() => s.close());
    return s;
  }
}

// ---------------------------------------------------------------------------
// Client-side building blocks.

/** Reads from `socket` until `n` bytes came; resolves {bytes, sha256} (rejects on early close). */
function readExactly(socket, n) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const onData = (d) => {
      bytes += d.length;
      hash.update(d);
      if (bytes >= n) finish(null);
    };
    const onClose = () => finish(new Error(`closed after ${bytes} of ${n} bytes`));
    const onError = (e) => finish(e);
    const finish = (error) => {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (error) reject(error);
      else resolve({ bytes, sha256: hash.digest('hex') });
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onError);
  });
}

/** Writes `buf`, honouring backpressure, without ending the stream; rejects if the socket closes first. */
async function writeAll(socket, buf, chunk = 256 * KiB) {
  for (let i = 0; i < buf.length; i += chunk) {
    if (socket.destroyed) throw new Error(`closed after ${i} bytes written`);
    if (!socket.write(buf.subarray(i, i + chunk))) {
      await new Promise((resolve, reject) => {
        const done = (error) => {
          socket.off('drain', onDrain);
          socket.off('close', onClose);
          socket.off('error', onClose);
          if (error) reject(error);
          else resolve();
        };
        const onDrain = () => done(null);
        const onClose = () => done(new Error(`closed while writing, after ${i} bytes`));
        socket.on('drain', onDrain);
        socket.on('close', onClose);
        socket.on('error', onClose);
      });
    }
  }
}

/**
 * Echo through an open socket without half-closing: sends `payload`, waits for
 * it back. Resolves 'echoed', or 'closed' when the connection ends or fails
 * first, or 'silent' when nothing at all happens within `ms`.
 */
async function echoOnce(socket, payload = Buffer.from('ping\n'), ms = 15_000) {
  if (socket.destroyed) return 'closed';
  let timer;
  const silent = new Promise((r) => (timer = setTimeout(() => r('silent'), ms)));
  const result = readExactly(socket, payload.length).then(
    ({ sha256: h }) => (h === sha256(payload) ? 'echoed' : 'garbled'),
    () => 'closed',
  );
  socket.on('error', () => {});
  socket.write(payload, () => {});
  try {
    return await Promise.race([result, silent]);
  } finally {
    clearTimeout(timer);
  }
}

/** A new client through the proxy on `port`: 'echoed', 'closed' or 'silent' (see echoOnce). */
async function probeClient(ctx, port) {
  let socket;
  try {
    socket = await ctx.connect(port);
  } catch {
    return { socket: null, result: 'closed' };
  }
  return { socket, result: await echoOnce(socket) };
}

/** Round trip of `size` bytes through an echo upstream, without half-close; then the client closes. */
async function echoRoundTrip(ctx, port, size, seed) {
  const socket = await ctx.connect(port);
  const payload = pattern(size, seed);
  const reply = readExactly(socket, size);
  await writeAll(socket, payload);
  const { bytes, sha256: h } = await within(reply, 20_000, 'echo did not come back');
  socket.destroy();
  return { bytes, intact: h === sha256(payload) };
}

/** A server that answers only once the client's stream ended: "reply to <what it sent>". */
const replyAfterEofServer = () =>
  startServerWith({ allowHalfOpen: true }, (s) => {
    const chunks = [];
    s.on('error', () => {});
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => s.end(`reply to ${Buffer.concat(chunks)}`));
  });

/** Runs `printf DATA | nc -N 127.0.0.1 PORT`; resolves {code, stdout}. */
async function ncHalfClose(port, data) {
  const child = spawn('nc', ['-N', '127.0.0.1', String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  const exited = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.stdin.end(data);
  try {
    const { code } = await within(exited, 10_000, 'nc did not finish');
    return { code, stdout };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

/** The daemon's own stderr lines (systemd-socket-activate's are dropped), program name normalised. */
function daemonLines(child) {
  const lines = child.stderrText.split('\n').filter((l) => l !== '');
  const exec = lines.findIndex((l) => l.startsWith('Execing '));
  return lines
    .slice(exec + 1)
    .filter((l) => !/^(Listening on .* as \d+\.|Communication attempt on fd \d+\.)$/.test(l))
    .map((l) => l.replace(/^(\/lib\/systemd\/systemd-socket-proxyd|socket-proxyd): /, 'PROGRAM: '));
}

/** Waits for a daemon to exit; resolves {code, signal} or 'running' after `ms`. */
async function exitWithin(child, ms) {
  return Promise.race([child.exited, sleep(ms).then(() => 'running')]);
}

/** A listening TCP server on a given port (for an upstream that appears later). */
async function echoOnPort(port, host = '127.0.0.1') {
  const server = net.createServer((s) => s.on('error', () => {}).pipe(s));
  server.listen(port, host);
  await once(server, 'listening');
  const open = new Set();
  server.on('connection', (s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
  });
  return {
    close: () =>
      new Promise((r) => {
        server.close(r);
        for (const s of open) s.destroy();
      }),
  };
}

/** Waits until an upstream server has no connection left (the daemon tore them down), plus a margin. */
async function settled(upstream, ms = 10_000) {
  const count = () => new Promise((resolve) => upstream.server.getConnections((_, n) => resolve(n)));
  const idle = await waitFor(async () => (await count()) === 0, ms);
  assert.ok(idle, 'the upstream still has connections');
  await sleep(200);
}

/**
 * Connection-limit probe with -c `limit`: opens clients one at a time, each
 * kept open once served, until one is refused. Returns how many were served,
 * what the refused one saw, and whether a client is served again once all close.
 */
async function limitProbe(ctx, limit) {
  const upstream = ctx.server(await echoServer());
  const { port } = await ctx.start(['-c', String(limit), upstream.target]);
  // The daemon runs and the port probe's connection is over on its side.
  const warmup = await probeClient(ctx, port);
  assert.equal(warmup.result, 'echoed', 'the first client was not served');
  warmup.socket.destroy();
  await settled(upstream);
  const open = [];
  let refused = null;
  for (let i = 0; i < limit + 3; i++) {
    const { socket, result } = await probeClient(ctx, port);
    if (result !== 'echoed') {
      refused = result;
      socket?.destroy();
      break;
    }
    open.push(socket);
  }
  // The ones served are still served.
  const stillServed = (await Promise.all(open.map((s) => echoOnce(s)))).every((r) => r === 'echoed');
  for (const s of open) s.destroy();
  await settled(upstream);
  const again = (await probeClient(ctx, port)).result;
  return { served: open.length, refused, stillServed, again };
}

// ---------------------------------------------------------------------------
// The scenarios.

/** The correct outcome of a forwarding round trip. */
const intact = (size) => ({ bytes: size, intact: true });

/** A scenario for a bad command line: the daemon exits 1 with one line on stderr. */
const badCommandLine = (title, args, line) => ({
  name: `bad command line: ${title}`,
  expect: 'same',
  async run(ctx) {
    const { child } = await ctx.start(args);
    const { code, signal } = await within(child.exited, 10_000, 'did not exit');
    return { code, signal, lines: daemonLines(child) };
  },
  check(outcome) {
    assert.deepEqual(outcome, { code: 1, signal: null, lines: [line] });
  },
});

const SCENARIOS = [
  // --- Forwarding to each kind of target: the same.
  {
    name: 'TCP IPv4 target (HOST:PORT), 2 MiB echoed without half-close',
    expect: 'same',
    async run(ctx) {
      const upstream = ctx.server(await echoServer('127.0.0.1'));
      const { port } = await ctx.start([upstream.target]);
      return echoRoundTrip(ctx, port, 2 * MiB, 1);
    },
    check: (o) => assert.deepEqual(o, intact(2 * MiB)),
  },
  {
    name: 'TCP IPv6 target written ::1:PORT (split at the last colon), 2 MiB echoed',
    expect: 'same',
    async run(ctx) {
      const upstream = ctx.server(await echoServer('::1'));
      const { port } = await ctx.start([`::1:${upstream.port}`]);
      return echoRoundTrip(ctx, port, 2 * MiB, 2);
    },
    check: (o) => assert.deepEqual(o, intact(2 * MiB)),
  },
  {
    name: 'UNIX socket path target, 2 MiB echoed',
    expect: 'same',
    async run(ctx) {
      const upstream = ctx.server(await echoServer(tmpPath('echo.sock')));
      const { port } = await ctx.start([upstream.target]);
      return echoRoundTrip(ctx, port, 2 * MiB, 3);
    },
    check: (o) => assert.deepEqual(o, intact(2 * MiB)),
  },
  {
    name: 'abstract UNIX socket target (@name, socat peer), 2 MiB echoed',
    expect: 'same',
    async run(ctx) {
      const upstream = ctx.server(await abstractEchoServer(abstractName('diff')));
      const { port } = await ctx.start([upstream.target]);
      return echoRoundTrip(ctx, port, 2 * MiB, 4);
    },
    check: (o) => assert.deepEqual(o, intact(2 * MiB)),
  },
  {
    name: '8 MiB each way at once (different payloads), checksummed; the server closes at the end',
    expect: 'same',
    async run(ctx) {
      const up = pattern(8 * MiB, 5);
      const down = pattern(8 * MiB, 6);
      let received = null;
      const upstream = ctx.server(
        await startServerWith({}, async (s) => {
          s.on('error', () => {});
          const got = readExactly(s, up.length).catch(() => null); // the port probe's gets nothing
          try {
            await writeAll(s, down);
          } catch {
            return; // the port probe's connection is gone
          }
          const r = await got;
          if (r) received = r;
          s.end();
        }),
      );
      const { port } = await ctx.start([upstream.target]);
      await sleep(200); // the port probe has come and gone on the upstream
      const socket = await ctx.connect(port);
      const reply = closed(socket);
      await writeAll(socket, up); // never half-closed by the client
      const { data, ended, error } = await within(reply, 30_000, 'download did not finish');
      return {
        downBytes: data.length,
        downIntact: sha256(data) === sha256(down),
        upIntact: received?.sha256 === sha256(up),
        ended,
        error,
      };
    },
    check: (o) => assert.deepEqual(o, { downBytes: 8 * MiB, downIntact: true, upIntact: true, ended: true, error: null }),
  },
  {
    name: 'a client that never half-closes: request, response, then the server closes',
    expect: 'same',
    async run(ctx) {
      const upstream = ctx.server(
        await startServerWith({}, (s) => {
          let text = '';
          s.on('error', () => {});
          s.on('data', (d) => {
            text += d;
            if (text.endsWith('\n')) s.end(`response to ${text}`);
          });
        }),
      );
      const { port } = await ctx.start([upstream.target]);
      const socket = await ctx.connect(port);
      const reply = closed(socket);
      socket.write('request\n');
      const { data, ended, error } = await within(reply, 10_000, 'no response');
      return { data: data.toString(), ended, error };
    },
    check: (o) => assert.deepEqual(o, { data: 'response to request\n', ended: true, error: null }),
  },

  // --- Lifecycle and failures: the same.
  {
    name: '-c 2: clients past the limit are refused; a client is served again once they close',
    expect: 'same',
    async run(ctx) {
      const { served, refused, stillServed, again } = await limitProbe(ctx, 2);
      // How many exactly is the 'exact limit' scenario below; here: bounded, refused, recovers.
      return { bounded: served >= 2 && served <= 3, refused, stillServed, again };
    },
    check: (o) => assert.deepEqual(o, { bounded: true, refused: 'closed', stillServed: true, again: 'echoed' }),
  },
  {
    name: '--exit-idle-time=1s: stays while a connection is open, exits 0 after the last one closes',
    expect: 'same',
    async run(ctx) {
      const upstream = ctx.server(await echoServer());
      const { child, port } = await ctx.start(['--exit-idle-time=1s', upstream.target]);
      const socket = await ctx.connect(port);
      const first = await echoOnce(socket);
      await sleep(2000); // longer than the idle time, with the connection open
      const aliveWhileOpen = alive(child);
      const second = await echoOnce(socket);
      socket.destroy();
      const closedAt = Date.now();
      const exit = await exitWithin(child, 10_000);
      const exitedAfterMs = Date.now() - closedAt;
      return { first, aliveWhileOpen, second, exit, exitedAfterIdleTime: exitedAfterMs >= 500 && exitedAfterMs < 8000 };
    },
    check: (o) =>
      assert.deepEqual(o, {
        first: 'echoed',
        aliveWhileOpen: true,
        second: 'echoed',
        exit: { code: 0, signal: null },
        exitedAfterIdleTime: true,
      }),
  },
  badCommandLine('unknown long option', ['--bogus', '127.0.0.1:1'], "PROGRAM: unrecognized option '--bogus'"),
  badCommandLine('unknown short option', ['-x', '127.0.0.1:1'], "PROGRAM: invalid option -- 'x'"),
  badCommandLine('no target', [], 'Not enough parameters.'),
  badCommandLine('two targets', ['127.0.0.1:1', '127.0.0.1:2'], 'Too many parameters.'),
  badCommandLine('-c 0', ['-c', '0', '127.0.0.1:1'], 'Connection limit is too low.'),
  badCommandLine('-c not a number', ['-c', 'many', '127.0.0.1:1'], 'Failed to parse --connections-max= argument: many'),
  badCommandLine('-c without its value', ['-c'], "PROGRAM: option requires an argument -- 'c'"),
  badCommandLine('bad --exit-idle-time', ['--exit-idle-time=soon', '127.0.0.1:1'], 'Failed to parse --exit-idle-time= argument: soon'),
  {
    name: "no sockets passed in: \"Didn't get any sockets passed in.\", exit 1",
    expect: 'same',
    async run(ctx) {
      // Started directly, without systemd-socket-activate.
      const child = spawn(ctx.daemon.command, ctx.daemon.argv(['127.0.0.1:1']), { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
      ctx.track(child);
      const { code, signal } = await within(child.exited, 10_000, 'did not exit');
      return { code, signal, stderr };
    },
    check: (o) => assert.deepEqual(o, { code: 1, signal: null, stderr: "Didn't get any sockets passed in.\n" }),
  },
  {
    name: 'refused upstream: the client is closed, the daemon carries on and serves the next client',
    expect: 'same',
    async run(ctx) {
      const upstreamPort = await freePort();
      const { child, port } = await ctx.start([`127.0.0.1:${upstreamPort}`]);
      const first = (await probeClient(ctx, port)).result;
      const second = (await probeClient(ctx, port)).result;
      const upstream = ctx.server(await echoOnPort(upstreamPort));
      const third = (await probeClient(ctx, port)).result;
      await upstream.close();
      return { first, second, third, running: alive(child) };
    },
    check: (o) => assert.deepEqual(o, { first: 'closed', second: 'closed', third: 'echoed', running: true }),
  },

  // --- Ours right, reference wrong.
  {
    // systemd issue 5196: the reference forwards streams only. Ours forwards a ListenDatagram=
    // socket over UDP (issue 10; test/udp.test.mjs has the rest).
    name: 'a passed datagram socket (ListenDatagram=): the reference refuses it, ours forwards its datagrams',
    expect: 'differs',
    async run(ctx) {
      const upstream = await udpEchoServer('127.0.0.1', { prefix: 'echo:' });
      ctx.defer(() => upstream.close());
      const { child, port } = await ctx.start([upstream.target], { extra: ['--datagram'], wait: false });
      const bound = await waitFor(() => /Listening on/.test(child.stderrText) || !alive(child), 10_000);
      assert.ok(bound && alive(child), `systemd-socket-activate did not bind: ${child.stderrText}`);
      const udp = await udpClient();
      ctx.defer(() => udp.close());
      // The first datagram makes systemd-socket-activate exec the daemon; it stays queued for it.
      const reply = await within(
        Promise.race([
          udpRequest(udp, 'over udp', port, '127.0.0.1', 20_000).then(({ msg }) => msg.toString()),
          child.exited.then(() => null),
        ]),
        20_000,
        'neither a reply nor an exit',
      );
      const exit = await exitWithin(child, 300);
      const lines = daemonLines(child);
      return {
        reply,
        exit,
        oneLine: lines.length === 1,
        saysNotStream: lines[0]?.startsWith('Passed in socket is not a stream socket') ?? false,
      };
    },
    // The reference: exit non-zero, one line, "Passed in socket is not a stream socket".
    reference: (o) => assert.deepEqual(o, { reply: null, exit: { code: 1, signal: null }, oneLine: true, saysNotStream: true }),
    // Ours: the datagram reaches the upstream, the reply comes back, the daemon keeps running.
    ours: (o) => assert.deepEqual({ reply: o.reply, exit: o.exit, saysNotStream: o.saysNotStream }, { reply: 'echo:over udp', exit: 'running', saysNotStream: false }),
  },
  {
    name: 'half-close: `printf hi | nc -N` to a server that replies only after EOF',
    expect: 'differs',
    async run(ctx) {
      const upstream = ctx.server(await replyAfterEofServer());
      const { port } = await ctx.start([upstream.target]);
      return ncHalfClose(port, 'hi');
    },
    // The reference closes both sides once the client's side ended: no reply.
    reference: (o) => assert.deepEqual(o, { code: 0, stdout: '' }),
    ours: (o) => assert.deepEqual(o, { code: 0, stdout: 'reply to hi' }),
  },
  {
    name: 'half-close: 4 MiB upload to an echo server, then the client half-closes',
    expect: 'differs',
    async run(ctx) {
      const upstream = ctx.server(await startServerWith({ allowHalfOpen: true }, (s) => s.on('error', () => {}).pipe(s)));
      const { port } = await ctx.start([upstream.target]);
      const payload = pattern(4 * MiB, 7);
      const socket = await ctx.connect(port);
      const reply = closed(socket);
      socket.on('error', () => {});
      await writeAll(socket, payload).catch(() => {});
      socket.end();
      const { data } = await within(reply, 30_000, 'echo did not end');
      return { bytes: data.length, intact: sha256(data) === sha256(payload) };
    },
    // Measured: ~110 KiB come back from the reference; what matters is "much less".
    reference: (o) => assert.ok(o.bytes < 2 * MiB && !o.intact, `reference echoed ${o.bytes} bytes`),
    ours: (o) => assert.deepEqual(o, intact(4 * MiB)),
  },
  {
    name: 'exact limit: with -c 2 and 2 connections open, the 3rd is refused',
    expect: 'differs',
    async run(ctx) {
      return limitProbe(ctx, 2);
    },
    // The reference compares with ">": N+1 connections get through.
    reference: (o) => assert.deepEqual(o, { served: 3, refused: 'closed', stillServed: true, again: 'echoed' }),
    ours: (o) => assert.deepEqual(o, { served: 2, refused: 'closed', stillServed: true, again: 'echoed' }),
  },
  {
    name: 'target [::1]:PORT (brackets)',
    expect: 'differs',
    async run(ctx) {
      const upstream = ctx.server(await echoServer('::1'));
      const { child, port } = await ctx.start([`[::1]:${upstream.port}`]);
      const result = (await probeClient(ctx, port)).result;
      return { result, running: alive(child) };
    },
    // The brackets reach getaddrinfo in the reference, which fails: clients are closed.
    reference: (o) => assert.deepEqual(o, { result: 'closed', running: true }),
    ours: (o) => assert.deepEqual(o, { result: 'echoed', running: true }),
  },
  {
    name: 'READY=1 on $NOTIFY_SOCKET',
    expect: 'differs',
    async run(ctx) {
      const socketPath = tmpPath('notify.sock');
      const receiver = await notifyReceiver(socketPath);
      ctx.defer(() => receiver.close());
      const upstream = ctx.server(await echoServer());
      const { port } = await ctx.start([upstream.target], { extra: ['-E', `NOTIFY_SOCKET=${socketPath}`] });
      const served = (await probeClient(ctx, port)).result; // up and serving
      // The reference never sends it: a short wait there; ours, generous.
      await waitFor(() => receiver.messages.some((m) => m.text.split('\n').includes('READY=1')), ctx.daemon.name === 'ours' ? 15_000 : 2000);
      return { served, messages: receiver.messages.map((m) => m.text) };
    },
    // systemd 252's proxy sends nothing when it starts (no watchdog asked for here).
    reference: (o) => {
      assert.equal(o.served, 'echoed');
      assert.ok(!o.messages.some((m) => m.split('\n').includes('READY=1')), JSON.stringify(o.messages));
    },
    ours: (o) => {
      assert.equal(o.served, 'echoed');
      assert.ok(o.messages.length >= 1, 'no notification at all');
      const first = o.messages[0].split('\n');
      assert.ok(first.includes('READY=1'), JSON.stringify(o.messages));
      assert.ok(first.some((l) => l.startsWith('STATUS=')), JSON.stringify(o.messages));
    },
  },
  {
    name: 'SIGTERM with a connection open',
    expect: 'differs',
    async run(ctx) {
      const upstream = ctx.server(await echoServer());
      const { child, port } = await ctx.start([upstream.target]);
      const socket = await ctx.connect(port);
      const before = await echoOnce(socket);
      await sleep(300); // past start-up: signal handlers in place
      child.kill('SIGTERM');
      // Until the signal has been handled: new clients are no longer served (each probe that
      // still got in is ended, so it holds nothing open).
      let newClient;
      await waitFor(async () => {
        const probe = await probeClient(ctx, port);
        probe.socket?.end();
        newClient = probe.result;
        return newClient === 'closed';
      }, 15_000, 100);
      const after = await echoOnce(socket);
      socket.end();
      const exit = await exitWithin(child, 10_000);
      return { before, after, newClient, exit };
    },
    // The reference dies of the signal at once: the open connection is cut.
    reference: (o) =>
      assert.deepEqual(o, { before: 'echoed', after: 'closed', newClient: 'closed', exit: { code: null, signal: 'SIGTERM' } }),
    // Ours stops accepting, lets the open connection finish, then exits 0.
    ours: (o) =>
      assert.deepEqual(o, { before: 'echoed', after: 'echoed', newClient: 'closed', exit: { code: 0, signal: null } }),
  },
  {
    name: 'a hostname with two addresses, the upstream only on the second',
    expect: 'differs',
    async run(ctx) {
      // A private mount namespace where /etc/hosts gives the name both loopbacks.
      const hosts = tmpPath('hosts');
      fs.writeFileSync(hosts, '127.0.0.1 localhost\n::1 dualstack.test\n127.0.0.1 dualstack.test\n');
      const wrapper = hostsNamespace(hosts);
      const order = await resolveUnder(wrapper, 'dualstack.test');
      assert.equal(order.length, 2, `dualstack.test resolves to ${order}`);
      const upstream = ctx.server(await echoServer(order[1])); // not on the first address
      const { child, port } = await ctx.start([`dualstack.test:${upstream.port}`], { wrapper });
      const result = (await probeClient(ctx, port)).result;
      return { order, result, running: alive(child) };
    },
    // The reference connects to the first address only.
    reference: (o) => assert.deepEqual(o, { order: ['::1', '127.0.0.1'], result: 'closed', running: true }),
    ours: (o) => assert.deepEqual(o, { order: ['::1', '127.0.0.1'], result: 'echoed', running: true }),
  },
  {
    name: 'a target that cannot work (port out of range: 127.0.0.1:99999)',
    expect: 'differs',
    async run(ctx) {
      const { child, port } = await ctx.start(['127.0.0.1:99999']);
      const result = (await probeClient(ctx, port)).result;
      const exit = await exitWithin(child, 1000);
      return { result, exit, lines: daemonLines(child) };
    },
    // The reference starts, then fails every client at connect time.
    reference: (o) => assert.deepEqual({ result: o.result, exit: o.exit }, { result: 'closed', exit: 'running' }),
    // Ours checks the target before starting: one line, exit 1.
    ours: (o) =>
      assert.deepEqual(o, {
        result: 'closed',
        exit: { code: 1, signal: null },
        lines: ['Failed to parse target "127.0.0.1:99999": port 99999 out of range in address "127.0.0.1:99999"'],
      }),
  },
  {
    name: '--exit-idle-time=1s when no client ever connects (sockets passed in at once)',
    expect: 'differs',
    async run(ctx) {
      const upstream = ctx.server(await echoServer());
      const port = await freePort();
      const child = ctx.startNow(['--exit-idle-time=1s', upstream.target], port);
      const exit = await exitWithin(child, 5000);
      return { exit };
    },
    // The reference arms its idle timer only when a connection closes.
    reference: (o) => assert.deepEqual(o, { exit: 'running' }),
    // Ours counts the idle time from start as well.
    ours: (o) => assert.deepEqual(o, { exit: { code: 0, signal: null } }),
  },
];

for (const scenario of SCENARIOS) {
  test(`${scenario.name} [${scenario.expect}]`, { timeout: scenario.timeout ?? 60_000 }, async () => {
    const outcomes = {};
    for (const daemon of DAEMONS) {
      const ctx = new Context(daemon);
      try {
        outcomes[daemon.name] = await scenario.run(ctx);
      } catch (error) {
        error.message = `${daemon.name}: ${error.message}`;
        throw error;
      } finally {
        await ctx.cleanup();
      }
    }
    if (scenario.expect === 'same') {
      assert.deepEqual(outcomes.ours, outcomes.reference, 'ours and the reference differ');
      scenario.check(outcomes.ours);
    } else {
      scenario.reference(outcomes.reference);
      scenario.ours(outcomes.ours);
    }
  });
}

test('no daemon or helper process is left behind', () => {
  const running = [...spawnedPids].filter((pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  });
  assert.deepEqual(running, []);
  let children = '';
  try {
    children = execFileSync('pgrep', ['-P', String(process.pid)], { encoding: 'utf8' }).trim();
  } catch {
    // pgrep exits 1 when nothing matches
  }
  assert.equal(children, '', `children of the test process still running: ${children}`);
});
