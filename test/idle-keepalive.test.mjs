// --idle-timeout and --keepalive (issue 9). Idle: a connection with no byte
// moved either way for SPAN is reset on both sides (python peers tell a reset
// from an end; Node cannot always), a busy one beside it lives, half-closed
// ones time out too; counted in stats and STATUS=. Keepalive: the options as
// the kernel holds them on both TCP sockets of a connection (read through
// pidfd_getfd), the timer in `ss -o`, and a client that vanishes behind a
// veth link in a network namespace of our own is detected and its upstream
// reset within IDLE + INTERVAL × COUNT.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { SocketProxy } from '../dist/index.js';
import {
  CLI, activateWrapped, connectTo, exchange, notifyReceiver, startProxyNow, startServer, stop, tcpListening, waitFor, within,
} from './helpers.mjs';
import { netnsPair, outcomeEchoServer, reap, resetAwareClientProcess, socketOptions } from './fault-helpers.mjs';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-idle-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));
let seq = 0;
const tmpPath = (name) => path.join(TMP, `${++seq}-${name}`);

const pause = (ms) => new Promise((r) => setTimeout(r, ms));
/** Coarse per-worker clock: up to ~1 s late is allowed; a loaded 2-core machine gets more. */
const LATE_MS = 3000;

// ---------------------------------------------------------------------------
// Idle timeout

test('idleTimeout 2 s (library): quiet and half-closed connections are reset on both sides, a busy one beside them is not; stats.idleTimeouts', { timeout: 60_000 }, async () => {
  const SPAN = 2000;
  // Connections whose first bytes start with "half" never get the upstream's end: they stay half-closed.
  const upstream = await outcomeEchoServer({ halfOpen: 'half' });
  const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], idleTimeout: SPAN, workers: 2 });
  await proxy.start();
  try {
    const port = Number(proxy.listening[0].split(':').pop());
    const quiet = resetAwareClientProcess('127.0.0.1', port, 'quiet\n');
    const half = resetAwareClientProcess('127.0.0.1', port, 'half-closed\n', { halfClose: true });
    // One byte every 200 ms for 5 s (2.5 spans), each echoed.
    const busy = resetAwareClientProcess('127.0.0.1', port, 'busy\n', { ticks: 25, tickMs: 200 });
    const [q, h, b] = await Promise.all([quiet.result, half.result, busy.result]);

    assert.equal(q.outcome, 'ECONNRESET', `quiet client: ${JSON.stringify(q)} (a clean end would make a cut transfer look complete)`);
    assert.equal(q.bytes, 'quiet\n'.length, 'the quiet client got its echo before going quiet');
    assert.ok(q.ms >= SPAN - 100, `quiet client reset after ${q.ms} ms, before the ${SPAN} ms span`);
    assert.ok(q.ms <= SPAN + LATE_MS, `quiet client reset only after ${q.ms} ms`);

    assert.equal(h.outcome, 'ECONNRESET', `half-closed client: ${JSON.stringify(h)}`);
    assert.equal(h.bytes, 'half-closed\n'.length);
    assert.ok(h.ms >= SPAN - 100 && h.ms <= SPAN + LATE_MS, `half-closed client reset after ${h.ms} ms`);

    assert.equal(b.outcome, 'ALIVE', `busy client: ${JSON.stringify(b)}`);
    assert.equal(b.bytes, 'busy\n'.length + 25, 'every echo of the busy client came back');
    assert.ok(b.ms >= 2 * SPAN, `the busy client ran ${b.ms} ms only`);

    // The upstream's side: a reset too, for both idle ones; the busy one ended cleanly.
    assert.equal((await upstream.end('quiet')).outcome, 'ECONNRESET', 'upstream of the quiet client');
    // A reset that meets a socket which already got the peer's FIN (CLOSE_WAIT) is
    // reported as EPIPE by Linux (tcp_reset); a clean close would report nothing at all
    // there (the upstream never ends its side), so either error is the reset.
    assert.match((await upstream.end('half-closed')).outcome, /^(ECONNRESET|EPIPE)$/, 'upstream of the half-closed client');
    assert.equal((await upstream.end('busy')).outcome, 'EOF', 'upstream of the busy client');
    assert.equal(proxy.stats.idleTimeouts, 2, JSON.stringify(proxy.stats));
  } finally {
    proxy.close();
    await upstream.close();
  }
});

test('--idle-timeout=1s (CLI): a quiet connection is reset, and STATUS= says "1 closed idle"; --idle-timeout=0 is off', { timeout: 60_000 }, async () => {
  const upstream = await outcomeEchoServer();
  const notify = await notifyReceiver(tmpPath('notify.sock'));
  const { child, port } = await startProxyNow(['--idle-timeout=1s', upstream.target], { env: { NOTIFY_SOCKET: notify.address } });
  const off = await startProxyNow(['--idle-timeout=0', upstream.target]);
  try {
    const r = await resetAwareClientProcess('127.0.0.1', port, 'quiet cli\n').result;
    assert.equal(r.outcome, 'ECONNRESET', JSON.stringify(r));
    assert.ok(r.ms >= 900 && r.ms <= 1000 + LATE_MS, `reset after ${r.ms} ms`);
    assert.equal((await upstream.end('quiet cli')).outcome, 'ECONNRESET');
    const status = await notify.wait(/STATUS=.*\b1 closed idle\b/, 10_000);
    assert.match(status.text, /STATUS=/);

    // Off: a connection quiet for 2.5 s (2.5 × the other proxy's span) still works.
    const socket = await connectTo(`127.0.0.1:${off.port}`);
    assert.equal(await exchange(socket, 'first'), 'first');
    await pause(2500);
    assert.equal(await exchange(socket, 'second'), 'second', 'the quiet connection was closed with --idle-timeout=0');
    socket.destroy();
  } finally {
    await stop(child);
    await stop(off.child);
    await notify.close();
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Keepalive: the options on both sockets

/**
 * The proxy's two sockets of one connection: the accepted one (local port =
 * listen port) and the upstream one (peer = the upstream's port, or its path).
 */
function connectionSockets(sockets, listenPort, clientPort, upstreamPort) {
  const clientSide = sockets.filter((s) => s.family !== 'unix' && s.local[1] === listenPort && s.peer[1] === clientPort);
  const upstreamSide = typeof upstreamPort === 'string' // a UNIX path
    ? sockets.filter((s) => s.family === 'unix' && s.peer === upstreamPort)
    : sockets.filter((s) => s.family !== 'unix' && s.peer[1] === upstreamPort);
  assert.equal(clientSide.length, 1, `client-side socket: ${JSON.stringify(sockets)}`);
  assert.equal(upstreamSide.length, 1, `upstream-side socket: ${JSON.stringify(sockets)}`);
  return { clientSide: clientSide[0], upstreamSide: upstreamSide[0] };
}

const pick = (s) => ({ keepalive: s.keepalive, keepidle: s.keepidle, keepintvl: s.keepintvl, keepcnt: s.keepcnt, user_timeout: s.user_timeout });

test('--keepalive=30s,5s,3 --user-timeout=45s (CLI): SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT and TCP_USER_TIMEOUT on both TCP sockets, and the timer in ss -o', { timeout: 60_000 }, async () => {
  const upstream = await startServer((s) => s.on('error', () => {}).pipe(s));
  const { child, port } = await startProxyNow(['--keepalive=30s,5s,3', '--user-timeout=45s', upstream.target]);
  try {
    const socket = await connectTo(`127.0.0.1:${port}`);
    assert.equal(await exchange(socket, 'hello'), 'hello');
    const { clientSide, upstreamSide } = connectionSockets(await socketOptions(child.pid), port, socket.localPort, upstream.port);
    const want = { keepalive: 1, keepidle: 30, keepintvl: 5, keepcnt: 3, user_timeout: 45_000 };
    assert.deepEqual(pick(clientSide), want, 'client side');
    assert.deepEqual(pick(upstreamSide), want, 'upstream side');

    // ss -o shows the keepalive timer running on both of the proxy's sockets.
    const ss = spawnSync('ss', ['-tnoHp', 'state', 'established'], { encoding: 'utf8' });
    assert.equal(ss.status, 0, ss.stderr);
    const mine = ss.stdout.split('\n').filter((l) => l.includes(`pid=${child.pid},`));
    const clientLine = mine.find((l) => new RegExp(`:${port}\\s+\\S+:${socket.localPort}\\b`).test(l));
    const upstreamLine = mine.find((l) => new RegExp(`\\S+:${upstream.port}\\b`).test(l.split(/\s+/).slice(3, 5).join(' ')));
    assert.ok(clientLine, `no client-side line for pid ${child.pid} in:\n${ss.stdout}`);
    assert.ok(upstreamLine, `no upstream-side line for pid ${child.pid} in:\n${ss.stdout}`);
    assert.match(clientLine, /timer:\(keepalive,/, clientLine);
    assert.match(upstreamLine, /timer:\(keepalive,/, upstreamLine);
    socket.destroy();
  } finally {
    await stop(child);
    await upstream.close();
  }
});

test('keepalive (library): INTERVAL defaults to IDLE/4 within [1 s, 75 s], COUNT to 4, spans round up to whole seconds; UNIX sides untouched', { timeout: 60_000 }, async () => {
  const tcpUpstream = await startServer((s) => s.on('error', () => {}).pipe(s));
  const unixPath = tmpPath('upstream.sock');
  const unixUpstream = await startServer((s) => s.on('error', () => {}).pipe(s), unixPath);
  const cases = [
    // [keepalive option, target, expected seconds {idle, interval, count}]
    [{ idle: 60_000 }, tcpUpstream, { idle: 60, interval: 15, count: 4 }],
    [{ idle: 1500 }, tcpUpstream, { idle: 2, interval: 1, count: 4 }],
    [{ idle: 3_600_000 }, tcpUpstream, { idle: 3600, interval: 75, count: 4 }],
    [{ idle: 600_000, interval: 120_000, count: 9 }, tcpUpstream, { idle: 600, interval: 120, count: 9 }],
    [{ idle: 10_000, interval: 2500 }, unixUpstream, { idle: 10, interval: 3, count: 4 }],
  ];
  try {
    for (const [keepalive, upstream, e] of cases) {
      const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], keepalive, workers: 1 });
      await proxy.start();
      try {
        const port = Number(proxy.listening[0].split(':').pop());
        const socket = await connectTo(`127.0.0.1:${port}`);
        assert.equal(await exchange(socket, 'ka'), 'ka');
        const isUnix = upstream === unixUpstream;
        const { clientSide, upstreamSide } = connectionSockets(await socketOptions(process.pid), port, socket.localPort, isUnix ? unixPath : upstream.port);
        // Keepalive alone leaves TCP_USER_TIMEOUT at the kernel's default: a paused reader is not cut.
        const want = { keepalive: 1, keepidle: e.idle, keepintvl: e.interval, keepcnt: e.count, user_timeout: 0 };
        assert.deepEqual(pick(clientSide), want, `client side for ${JSON.stringify(keepalive)}`);
        if (isUnix) assert.equal(upstreamSide.keepalive, 0, 'the UNIX upstream socket is left alone');
        else assert.deepEqual(pick(upstreamSide), want, `upstream side for ${JSON.stringify(keepalive)}`);
        socket.destroy();
      } finally {
        proxy.close();
      }
    }
  } finally {
    await tcpUpstream.close();
    await unixUpstream.close();
  }
});

test('without --keepalive the proxy\'s sockets have no keepalive (unchanged behaviour)', { timeout: 30_000 }, async () => {
  const upstream = await startServer((s) => s.on('error', () => {}).pipe(s));
  const { child, port } = await startProxyNow([upstream.target]);
  try {
    const socket = await connectTo(`127.0.0.1:${port}`);
    assert.equal(await exchange(socket, 'plain'), 'plain');
    const { clientSide, upstreamSide } = connectionSockets(await socketOptions(child.pid), port, socket.localPort, upstream.port);
    assert.equal(clientSide.keepalive, 0);
    assert.equal(upstreamSide.keepalive, 0);
    assert.equal(clientSide.user_timeout, 0);
    assert.equal(upstreamSide.user_timeout, 0);
    socket.destroy();
  } finally {
    await stop(child);
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Keepalive: a client that vanishes

test('--keepalive=2s,1s,2: a client that vanishes (its link goes down) is detected and its upstream connection reset within IDLE + INTERVAL × COUNT', { timeout: 90_000 }, async () => {
  const IDLE = 2000;
  const DEADLINE = IDLE + 1000 * 2; // IDLE + INTERVAL × COUNT
  const pair = await netnsPair();
  let upstream = null;
  let proxy = null;
  let client = null;
  try {
    // The proxy and its upstream live in namespace b; the client in a, across the veth link.
    upstream = await outcomeEchoServer({ wrapper: pair.b.exec });
    const port = 8080; // a fresh namespace: nothing else listens there
    proxy = activateWrapped(pair.b.exec, `${pair.b.address}:${port}`, process.execPath, [CLI, '--keepalive=2s,1s,2', upstream.target]);
    proxy.exited.catch(() => {});
    assert.ok(await waitFor(() => tcpListening(port, proxy.pid).catch(() => false), 15_000), `the proxy does not listen in ${pair.b.name}: ${proxy.stderrText}`);
    client = resetAwareClientProcess(pair.b.address, port, 'hello from a\n', { wrapper: pair.a.exec, timeoutMs: 80_000 });
    await client.connected;
    await upstream.received('hello from a');

    // While the client is there, keepalive probes are answered: quiet for longer than
    // the whole deadline, the connection lives.
    await pause(DEADLINE + 1500);
    assert.deepEqual(upstream.ended(), [], 'the connection ended though the client answers the probes');

    const cutAt = Date.now();
    await pair.cut(pair.a); // the client's machine is gone (suspended laptop, pulled cable)
    const end = await upstream.end('hello from a', DEADLINE + 15_000);
    const took = end.at - cutAt;
    assert.equal(end.outcome, 'ECONNRESET', `the upstream connection ended with ${end.outcome}, not a reset`);
    // The last probe was answered at most IDLE before the cut.
    assert.ok(took >= 1000, `ended ${took} ms after the cut: too soon for keepalive`);
    assert.ok(took <= DEADLINE + 3000, `ended only ${took} ms after the cut (deadline ${DEADLINE} ms)`);
    assert.equal(proxy.exitCode, null, `the proxy died: ${proxy.stderrText}`);
  } finally {
    if (client) await reap(client.child, 2000);
    if (proxy) await reap(proxy, 5000);
    await upstream?.close();
    await pair.close();
  }
});

test('netnsPair (fault-helpers): two namespaces joined by veth, traffic flows, and close() removes them', { timeout: 30_000 }, async () => {
  const pair = await netnsPair();
  let server = null;
  try {
    server = await outcomeEchoServer({ host: pair.b.address, wrapper: pair.b.exec });
    const r = resetAwareClientProcess(pair.b.address, server.port, 'ping\n', { wrapper: pair.a.exec, halfClose: true });
    const result = await r.result;
    assert.deepEqual([result.outcome, result.bytes], ['EOF', 5]);
  } finally {
    await server?.close();
    await pair.close();
  }
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  assert.ok(!list.includes(pair.a.name) && !list.includes(pair.b.name), `namespaces left behind: ${list}`);
});
