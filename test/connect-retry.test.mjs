// --connect-retry=SPAN (issue 9): while the target refuses (not listening
// yet), clients wait and the proxy retries with a capped backoff, until SPAN
// after the client came. What the client sent meanwhile is delivered whole
// and in order; a client that resets while waiting is released at once, one
// that only half-closes waits on and gets its reply; waiting clients count
// against -c; one log line per episode. Real processes, the real kernel.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { SocketProxy } from '../dist/index.js';
import {
  CLI, activate, closed, collect, connect, connectTo, fdCount, freePort, pattern, sha256, startProxyNow, stop, tcpListening, waitFor, within,
} from './helpers.mjs';
import { blackhole, engineChild } from './fault-helpers.mjs';

const KiB = 1024;
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-retry-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));
let seq = 0;
const tmpPath = (name) => path.join(TMP, `${++seq}-${name}`);

/** How long a client "arrives before the upstream" in these tests: the scenario, not a synchronisation. */
const HEAD_START_MS = 1500;
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

/** An echo server on a given TCP port or UNIX path (it starts late in these tests). Keeps half-open peers. */
async function echoAt(where) {
  const sockets = new Set();
  let accepted = 0;
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {}).pipe(s);
  });
  server.listen(typeof where === 'number' ? { port: where, host: '127.0.0.1' } : { path: where });
  await once(server, 'listening');
  return {
    accepted: () => accepted,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
}

/**
 * Lines of the proxy's stderr that say clients wait (the once-per-episode
 * line): "wait", "waits" or "waiting"; not a client's give-up line ("… the
 * client waited N ms").
 */
const waitingLines = (child) => child.stderrText.split('\n').filter((l) => /\bwait(s|ing)?\b/i.test(l));

/** Resolves once the proxy has said (once) that clients wait for the upstream. */
async function saidWaiting(child, count = 1) {
  const ok = await waitFor(() => waitingLines(child).length >= count, 15_000);
  assert.ok(ok, `the proxy did not say that clients wait; stderr:\n${child.stderrText}`);
}

/**
 * Connects and writes `early` at once; resolves {socket, reply (what comes
 * back until the end), closedAt (resolves Date.now() at close)}.
 */
async function earlyClient(port, early, { end = false } = {}) {
  // Before the connect: the proxy's accept (and any span it starts) cannot come earlier.
  const startedAt = Date.now();
  const socket = await connect(port);
  const reply = closed(socket);
  const closedAt = reply.then(() => Date.now());
  if (end) socket.end(early);
  else socket.write(early);
  return { socket, reply, closedAt, startedAt };
}

test('--connect-retry: a client that comes before the TCP upstream listens is served, with its early bytes intact (socket-activated, as systemd starts both)', { timeout: 60_000 }, async () => {
  const upstreamPort = await freePort();
  const port = await freePort();
  const proxy = activate(`127.0.0.1:${port}`, process.execPath, [CLI, '--connect-retry=30s', `127.0.0.1:${upstreamPort}`]);
  let upstream = null;
  try {
    assert.ok(await waitFor(() => tcpListening(port), 15_000), 'systemd-socket-activate did not listen');
    // This client is the proxy's first: it starts it (as a unit's socket would).
    const early = pattern(64 * KiB, 1);
    const late = pattern(64 * KiB, 2);
    const c = await earlyClient(port, early);
    await saidWaiting(proxy);
    await pause(HEAD_START_MS);
    assert.equal(c.socket.readyState, 'open', 'the client is still there, waiting');
    upstream = await echoAt(upstreamPort);
    c.socket.end(late);
    const { data, error } = await within(c.reply, 20_000, 'the waiting client was not served once the upstream listened');
    assert.equal(error, null);
    assert.equal(data.length, early.length + late.length);
    assert.equal(sha256(data), sha256(Buffer.concat([early, late])), 'early bytes first, whole and in order, then the rest');
    assert.equal(waitingLines(proxy).length, 1, proxy.stderrText);
  } finally {
    await stop(proxy);
    await upstream?.close();
  }
});

test('connectRetry (library): a UNIX-path target that does not exist yet; the waiting client is served once it listens; stats.retriedConnects', { timeout: 60_000 }, async () => {
  const sock = tmpPath('late-upstream.sock');
  const proxy = new SocketProxy({ target: sock, listen: ['127.0.0.1:0'], connectRetry: 30_000, workers: 2 });
  await proxy.start();
  let upstream = null;
  try {
    const port = Number(proxy.listening[0].split(':').pop());
    const early = pattern(32 * KiB, 3);
    const a = await earlyClient(port, early);
    const b = await earlyClient(port, Buffer.from('second client\n'));
    assert.ok(await waitFor(() => proxy.stats.retriedConnects === 2, 15_000), `stats: ${JSON.stringify(proxy.stats)}`);
    await pause(HEAD_START_MS);
    assert.ok(!fs.existsSync(sock));
    upstream = await echoAt(sock);
    a.socket.end();
    b.socket.end();
    const [ra, rb] = await within(Promise.all([a.reply, b.reply]), 20_000, 'the waiting clients were not served');
    assert.equal(sha256(ra.data), sha256(early), 'first client: its early bytes, whole');
    assert.equal(rb.data.toString(), 'second client\n');
    assert.equal(proxy.stats.retriedConnects, 2, 'two clients waited');
    // A client that comes now finds the upstream at once: it did not wait.
    const c = await earlyClient(port, Buffer.from('third'), { end: true });
    assert.equal((await within(c.reply, 10_000)).data.toString(), 'third');
    assert.equal(proxy.stats.retriedConnects, 2);
  } finally {
    proxy.close();
    await upstream?.close();
  }
});

test('--connect-retry=2s with no upstream ever: the client is closed after about 2 s, and the proxy still serves afterwards', { timeout: 60_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow(['--connect-retry=2s', `127.0.0.1:${upstreamPort}`]);
  let upstream = null;
  try {
    const c = await earlyClient(port, Buffer.from('anyone there?\n'));
    const [{ data }, closedAt] = await within(Promise.all([c.reply, c.closedAt]), 20_000, 'the client was never closed');
    const waited = closedAt - c.startedAt;
    assert.equal(data.length, 0, 'nothing came back');
    assert.ok(waited >= 2000, `closed after ${waited} ms: before the 2 s span`);
    assert.ok(waited <= 2000 + 4000, `closed after ${waited} ms: long after the 2 s span`);
    assert.equal(child.exitCode, null, 'the proxy lives');
    upstream = await echoAt(upstreamPort);
    const d = await earlyClient(port, Buffer.from('now?'), { end: true });
    assert.equal((await within(d.reply, 10_000, 'not served after the failed episode')).data.toString(), 'now?');
  } finally {
    await stop(child);
    await upstream?.close();
  }
});

test('--connect-retry: clients that reset while waiting are released at once and leave no fd behind', { timeout: 60_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow(['--connect-retry=60s', `127.0.0.1:${upstreamPort}`]);
  let upstream = null;
  try {
    // Settle: the proxy's own fds, with no client.
    const baseline = await fdCount(child.pid);
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(await earlyClient(port, Buffer.from(`client ${i}\n`)));
    await saidWaiting(child);
    assert.ok(await waitFor(async () => (await fdCount(child.pid)) >= baseline + 5, 10_000),
      `the waiting clients hold no fds? ${await fdCount(child.pid)} vs ${baseline}`);
    const resetAt = Date.now();
    for (const c of clients) c.socket.resetAndDestroy();
    assert.ok(await waitFor(async () => (await fdCount(child.pid)) === baseline, 10_000, 20),
      `fds left behind: ${await fdCount(child.pid)} open, ${baseline} before the clients came`);
    const released = Date.now() - resetAt;
    assert.ok(released < 5000, `released after ${released} ms: not at once (the span is 60 s)`);
    // Nothing went to an upstream that appears now: those clients are gone.
    upstream = await echoAt(upstreamPort);
    const d = await earlyClient(port, Buffer.from('after'), { end: true });
    assert.equal((await within(d.reply, 10_000)).data.toString(), 'after');
    assert.equal(upstream.accepted(), 1, 'only the last client reached the upstream');
  } finally {
    await stop(child);
    await upstream?.close();
  }
});

test('--connect-retry: a client that only half-closes (FIN) keeps waiting and gets its reply once the upstream listens', { timeout: 60_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow(['--connect-retry=30s', `127.0.0.1:${upstreamPort}`]);
  let server = null;
  try {
    const c = await earlyClient(port, Buffer.from('QUESTION'), { end: true });
    await saidWaiting(child);
    await pause(HEAD_START_MS);
    assert.ok(!c.socket.destroyed, 'the half-closed client was let go while waiting');
    // An upstream that answers once the request has ended (like an HTTP/1.0 server).
    server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('end', () => s.end(`ANSWER TO ${got}`));
    });
    server.listen(upstreamPort, '127.0.0.1');
    await once(server, 'listening');
    const { data, error } = await within(c.reply, 20_000, 'no reply for the half-closed client');
    assert.equal(error, null);
    assert.equal(data.toString(), 'ANSWER TO QUESTION');
  } finally {
    await stop(child);
    server?.close();
  }
});

test('--connect-retry with -c 2: waiting clients count against the limit; the next one is closed at once', { timeout: 60_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow(['-c', '2', '--connect-retry=30s', `127.0.0.1:${upstreamPort}`]);
  let upstream = null;
  try {
    const baseline = await fdCount(child.pid);
    const a = await earlyClient(port, Buffer.from('a'));
    const b = await earlyClient(port, Buffer.from('b'));
    await saidWaiting(child);
    assert.ok(await waitFor(async () => (await fdCount(child.pid)) >= baseline + 2, 10_000), 'the two clients are not both in');
    const third = await earlyClient(port, Buffer.from('c'));
    const [{ data }, closedAt] = await within(Promise.all([third.reply, third.closedAt]), 10_000, 'the third client was not closed (the waiting ones do not count?)');
    assert.equal(data.length, 0);
    assert.ok(closedAt - third.startedAt < 5000, `the third client was closed only after ${closedAt - third.startedAt} ms`);
    assert.ok(!a.socket.destroyed && !b.socket.destroyed, 'the waiting clients are still there');
    upstream = await echoAt(upstreamPort);
    a.socket.end();
    b.socket.end();
    const [ra, rb] = await within(Promise.all([a.reply, b.reply]), 20_000, 'the waiting clients were not served');
    assert.deepEqual([ra.data.toString(), rb.data.toString()], ['a', 'b']);
    // Their places are free again.
    const d = await earlyClient(port, Buffer.from('d'), { end: true });
    assert.equal((await within(d.reply, 10_000)).data.toString(), 'd');
  } finally {
    await stop(child);
    await upstream?.close();
  }
});

test('without --connect-retry a refusing upstream closes the client at once, as before', { timeout: 30_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow([`127.0.0.1:${upstreamPort}`]);
  try {
    const c = await earlyClient(port, Buffer.from('hello'));
    const [{ data }, closedAt] = await within(Promise.all([c.reply, c.closedAt]), 10_000, 'the client was not closed');
    assert.equal(data.length, 0);
    assert.ok(closedAt - c.startedAt < 5000, `closed after ${closedAt - c.startedAt} ms, not at once`);
    assert.equal(waitingLines(child).length, 0, child.stderrText);
  } finally {
    await stop(child);
  }
});

test('--connect-retry logs one "waiting" line per episode, not one per attempt or per client (default log level)', { timeout: 90_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow(['--connect-retry=30s', `127.0.0.1:${upstreamPort}`]);
  let upstream = null;
  try {
    for (const episode of [1, 2]) {
      // Three clients wait about 2.5 s: with a backoff from ~20 ms to 500 ms, each
      // has tried many times by then.
      const clients = [];
      for (let i = 0; i < 3; i++) clients.push(await earlyClient(port, Buffer.from(`episode ${episode} client ${i}`)));
      await saidWaiting(child, episode);
      await pause(2500);
      upstream = await echoAt(upstreamPort);
      for (const c of clients) c.socket.end();
      const replies = await within(Promise.all(clients.map((c) => c.reply)), 20_000, `episode ${episode}: clients not served`);
      assert.deepEqual(replies.map((r) => r.data.toString()), [0, 1, 2].map((i) => `episode ${episode} client ${i}`));
      assert.equal(waitingLines(child).length, episode, `episode ${episode}:\n${child.stderrText}`);
      await upstream.close();
      upstream = null;
    }
    // Nothing else per attempt either: a handful of lines in all.
    const lines = child.stderrText.split('\n').filter(Boolean);
    assert.ok(lines.length <= 8, `too many log lines:\n${child.stderrText}`);
  } finally {
    await stop(child);
    await upstream?.close();
  }
});

test('--connect-retry: an episode whose clients all gave up does not silence the "waiting" line of the next one', { timeout: 60_000 }, async () => {
  const upstreamPort = await freePort();
  const { child, port } = await startProxyNow(['--connect-retry=8s', `127.0.0.1:${upstreamPort}`]);
  let upstream = null;
  try {
    // Episode 1: nobody ever listens; the client is closed after the span.
    const a = await earlyClient(port, Buffer.from('a'));
    await saidWaiting(child, 1);
    await within(a.reply, 15_000, 'the first client was never closed');
    // The upstream comes and serves a client at once (it does not wait)…
    upstream = await echoAt(upstreamPort);
    const b = await earlyClient(port, Buffer.from('b'), { end: true });
    assert.equal((await within(b.reply, 10_000)).data.toString(), 'b');
    // …and goes away again: episode 2 is a new one, and is said so.
    await upstream.close();
    upstream = null;
    const c = await earlyClient(port, Buffer.from('c'));
    // The line comes with the first refusal (within ms); looked for well within the 8 s span.
    const said = await waitFor(() => waitingLines(child).length >= 2, 6000);
    upstream = await echoAt(upstreamPort);
    c.socket.end();
    assert.equal((await within(c.reply, 15_000, 'the third client was not served')).data.toString(), 'c');
    assert.ok(said, `no "waiting" line for the second episode; stderr:\n${child.stderrText}`);
  } finally {
    await stop(child);
    await upstream?.close();
  }
});

test('connect retry: a client that resets during its first round of connect attempts is released then, not held for the whole span', { timeout: 60_000 }, async () => {
  // The first address never answers (its connect times out after 1.5 s), the
  // second refuses: the round ends in a refusal, which would start a wait.
  const hole = await blackhole();
  const refusingPort = await freePort();
  const proxy = await engineChild({
    listen: [{ host: '127.0.0.1', port: 0 }], workers: 1, connectTimeoutMs: 1500, connectRetryMs: 30_000,
    targets: [hole.endpoint, { host: '127.0.0.1', port: refusingPort }],
  });
  try {
    const port = Number(proxy.listeners[0].address.split(':').pop());
    const client = await connectTo(`127.0.0.1:${port}`);
    client.on('error', () => {});
    const t0 = Date.now();
    await pause(200);
    client.resetAndDestroy();
    assert.ok(await waitFor(async () => (await proxy.stats()).active === 0, 15_000), 'the client was held');
    const elapsed = Date.now() - t0;
    const stats = await proxy.stats();
    assert.ok(elapsed < 10_000, `released after ${elapsed} ms (the span is 30 s)`);
    assert.equal(stats.closedClientReset, 1, JSON.stringify(stats));
    assert.equal(stats.upstreamFailed, 0, JSON.stringify(stats));
    assert.equal(stats.retriedConnects, 0, JSON.stringify(stats));
  } finally {
    await proxy.close();
    hole.close();
  }
});
