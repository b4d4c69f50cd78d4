// SocketProxy's lifecycle, in-process, with real sockets and threads: 'busy'
// and 'idle' from the busyPeriods counter, drain(), option checks before
// anything is bound, start()/close() races, errors with a .code, ref/unref.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SocketProxy, parseAddress } from '../dist/index.js';
import {
  closed, connectTo, echoServer, fdCount, freePort, taskCount, waitFor, within,
} from './helpers.mjs';
import { DIST_INDEX, burst, busyPeriods, nodeChild, portIsFree } from './lifecycle-helpers.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-lifecycle-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** Sends `text` through `address`, half-closes, resolves what came back. */
async function roundTrip(address, text) {
  const socket = await connectTo(address);
  const done = closed(socket);
  socket.end(text);
  return (await within(done, 10_000, `no reply through ${address}`)).data.toString();
}

/** Counts 'busy' and 'idle' events, and checks they alternate (busy first). */
function countActivity(proxy) {
  const counts = { busy: 0, idle: 0, outOfOrder: 0 };
  proxy.on('busy', () => {
    if (counts.busy !== counts.idle) counts.outOfOrder++;
    counts.busy++;
  });
  proxy.on('idle', () => {
    counts.idle++;
    if (counts.busy !== counts.idle) counts.outOfOrder++;
  });
  return counts;
}

/** The fd and thread counts of this process, once what measuring them uses is warm. */
async function baseline() {
  await fdCount();
  await taskCount();
  return { fds: await fdCount(), tasks: await taskCount() };
}

/** Waits until the fd and thread counts are back at `base`; asserts they are. */
async function assertBackTo(base, what) {
  await waitFor(async () => (await fdCount()) === base.fds && (await taskCount()) === base.tasks, 5_000);
  assert.deepEqual({ fds: await fdCount(), tasks: await taskCount() }, base, `${what}: fds and threads left behind`);
}

// ---------------------------------------------------------------------------
// 'busy' and 'idle': one pair per busy period, however short

test("hundreds of very short connections from several clients: one 'busy' and one 'idle' per busy period", { timeout: 120_000 }, async () => {
  // Nothing listens upstream: each connection ends as soon as its connect is refused, so busy
  // periods come and go far faster than their events reach JS. No limit in the way: every
  // client is accepted.
  const upstream = { target: `127.0.0.1:${await freePort()}`, close: async () => {} };
  const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 2, maxConnections: 100_000 });
  const counts = countActivity(proxy);
  await proxy.start();
  try {
    const at = proxy.listening[0];
    let connected = 0;
    for (let round = 0; round < 3; round++) connected += await burst(at, { clients: 8, each: 50 });
    assert.equal(connected, 1200);
    // The kernel completes a handshake before the proxy accepts it: wait until every client
    // was accepted, then for the activity event that ends the last busy period.
    const settled = await waitFor(
      () =>
        proxy.stats.accepted === 1200 && proxy.active === 0 &&
        counts.idle === busyPeriods(proxy) && counts.busy === counts.idle,
      30_000,
    );
    assert.ok(
      settled,
      `busy ${counts.busy}, idle ${counts.idle}, busyPeriods ${busyPeriods(proxy)}, ` +
        `active ${proxy.active}, accepted ${proxy.stats.accepted}`,
    );
    assert.ok(busyPeriods(proxy) >= 1);
    assert.equal(proxy.stats.upstreamFailed, 1200);
    assert.equal(counts.outOfOrder, 0, "'busy' and 'idle' did not alternate");
  } finally {
    proxy.close();
    await upstream.close();
  }
});

test('drain(Infinity) during a burst of short connections resolves true once the last one ended', { timeout: 60_000 }, async () => {
  const upstream = await echoServer();
  const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 2 });
  await proxy.start();
  try {
    const at = proxy.listening[0];
    // Keep bursting while draining: the clients that come after stopAccepting are refused.
    const clients = burst(at, { clients: 8, each: 100 });
    assert.ok(await waitFor(() => proxy.stats.accepted >= 50, 20_000), 'the burst did not start');
    const drained = await within(proxy.drain(Infinity), 30_000, 'drain(Infinity) never resolved');
    assert.equal(drained, true);
    assert.equal(proxy.active, 0);
    await clients;
    const served = proxy.stats.accepted;
    // Nothing is accepted any more.
    assert.equal(await roundTrip(at, 'late').catch((e) => e.code), 'ECONNREFUSED');
    assert.equal(proxy.stats.accepted, served);
  } finally {
    proxy.close();
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// drain()

test('drain(ms): true when the open connections end in time, false when they do not', { timeout: 60_000 }, async () => {
  const upstream = await echoServer();
  try {
    // Ends in time: the client closes while drain waits.
    const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 2 });
    await proxy.start();
    const at = proxy.listening[0];
    const c = await connectTo(at);
    const done = closed(c);
    c.write('x');
    assert.ok(await waitFor(() => proxy.active === 1));
    const draining = proxy.drain(30_000);
    // No longer accepting, and the open connection still forwards.
    assert.equal(await roundTrip(at, 'refused?').catch((e) => e.code), 'ECONNREFUSED');
    c.end('y');
    assert.equal((await within(done, 10_000)).data.toString(), 'xy');
    assert.equal(await within(draining, 20_000, 'drain did not resolve when the connection ended'), true);
    assert.equal(proxy.active, 0);
    proxy.close();

    // Does not end in time: false after about the timeout, the connection still open until close().
    const slow = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 2 });
    await slow.start();
    const held = await connectTo(slow.listening[0]);
    const heldDone = closed(held);
    held.write('z');
    assert.ok(await waitFor(() => slow.active === 1));
    const t0 = Date.now();
    assert.equal(await within(slow.drain(300), 20_000), false);
    assert.ok(Date.now() - t0 >= 290, `drain(300) gave up after ${Date.now() - t0} ms`);
    assert.equal(slow.active, 1);
    slow.close();
    const r = await within(heldDone, 10_000, 'close() did not close the open connection');
    assert.equal(r.data.toString(), 'z');

    // Nothing open: true at once.
    const quiet = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 1 });
    await quiet.start();
    assert.equal(await quiet.drain(0), true);
    quiet.close();

    // drain(0) with a connection open: false at once (the daemon's --drain-timeout=0).
    const hasty = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 1 });
    await hasty.start();
    const open = await connectTo(hasty.listening[0]);
    const openDone = closed(open);
    open.write('w');
    assert.ok(await waitFor(() => hasty.active === 1));
    assert.equal(await within(hasty.drain(0), 5_000), false);
    // close() during a drain cuts the connections: the drain did not see them end.
    const cut = hasty.drain(30_000);
    hasty.close();
    assert.equal(await within(cut, 5_000), false);
    await within(openDone, 10_000, 'close() did not close the open connection');
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Options are checked before anything is bound

test('invalid options throw from the constructor with a .code, and nothing is bound', async () => {
  const port = await freePort();
  const listen = [`127.0.0.1:${port}`];
  const base = await baseline();
  const cases = [
    [{ workers: 0 }, 'ERR_INVALID_ARG_VALUE'],
    [{ workers: 257 }, 'ERR_INVALID_ARG_VALUE'],
    [{ workers: 1.5 }, 'ERR_INVALID_ARG_VALUE'],
    [{ workers: '2' }, 'ERR_INVALID_ARG_TYPE'],
    [{ maxConnections: -1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ maxConnections: NaN }, 'ERR_INVALID_ARG_VALUE'],
    [{ connectTimeout: 0 }, 'ERR_INVALID_ARG_VALUE'],
    [{ connectTimeout: 2 ** 31 }, 'ERR_INVALID_ARG_VALUE'],
    [{ pipeSize: 4095 }, 'ERR_INVALID_ARG_VALUE'],
    [{ pipeSize: 2 ** 30 + 1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ logLevel: 8 }, 'ERR_INVALID_ARG_VALUE'],
    [{ logLevel: 'debug' }, 'ERR_INVALID_ARG_TYPE'],
    [{ backlog: -1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ resolveInterval: 0 }, 'ERR_INVALID_ARG_VALUE'],
    [{ target: '127.0.0.1:99999' }, 'ERR_INVALID_ARG_VALUE'],
    [{ target: '[::1' }, 'ERR_INVALID_ARG_VALUE'],
    [{ target: '' }, 'ERR_INVALID_ARG_VALUE'],
    [{ target: 8080 }, 'ERR_INVALID_ARG_TYPE'],
    [{ target: undefined }, 'ERR_INVALID_ARG_TYPE'],
    [{ target: { kind: 'inet', host: '127.0.0.1', port: 0 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ target: { kind: 'unix', path: 'relative' } }, 'ERR_INVALID_ARG_VALUE'],
    [{ listen: [...listen, '127.0.0.1'] }, 'ERR_INVALID_ARG_VALUE'],
    [{ listen: '127.0.0.1:0' }, 'ERR_INVALID_ARG_TYPE'],
    [{ fds: [-1] }, 'ERR_INVALID_ARG_VALUE'],
    // Issue 9's options.
    [{ proxyProtocol: 'v3' }, 'ERR_INVALID_ARG_VALUE'],
    [{ proxyProtocol: 'V2' }, 'ERR_INVALID_ARG_VALUE'],
    [{ proxyProtocol: 2 }, 'ERR_INVALID_ARG_TYPE'],
    [{ connectRetry: -1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ connectRetry: 0.5 }, 'ERR_INVALID_ARG_VALUE'],
    [{ connectRetry: '5s' }, 'ERR_INVALID_ARG_TYPE'],
    [{ idleTimeout: -1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ idleTimeout: Infinity }, 'ERR_INVALID_ARG_VALUE'],
    [{ idleTimeout: '1s' }, 'ERR_INVALID_ARG_TYPE'],
    [{ keepalive: 60_000 }, 'ERR_INVALID_ARG_TYPE'],
    [{ keepalive: null }, 'ERR_INVALID_ARG_TYPE'],
    [{ keepalive: { idle: '1s' } }, 'ERR_INVALID_ARG_TYPE'],
    [{ keepalive: { interval: 1000 } }, 'ERR_INVALID_ARG_TYPE'],
    [{ keepalive: { idle: 0 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ keepalive: { idle: -1000 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ keepalive: { idle: 40_000_000 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ keepalive: { idle: 1000, interval: 0 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ keepalive: { idle: 1000, count: 0 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ keepalive: { idle: 1000, count: 128 } }, 'ERR_INVALID_ARG_VALUE'],
    [{ keepalive: { idle: 1000, count: 2.5 } }, 'ERR_INVALID_ARG_VALUE'],
  ];
  for (const [bad, code] of cases) {
    const options = { target: '127.0.0.1:9', listen, ...bad };
    assert.throws(() => new SocketProxy(options), (e) => {
      assert.equal(e.code, code, `${JSON.stringify(bad)}: ${e.message}`);
      assert.ok(e instanceof Error);
      return true;
    }, JSON.stringify(bad));
    assert.equal(await portIsFree(port), true, `${JSON.stringify(bad)} left 127.0.0.1:${port} bound`);
  }
  await assertBackTo(base, 'invalid options');
});

test('workers: 0 with a listen address: rejected with a .code, and the port is free again', async () => {
  const port = await freePort();
  const base = await baseline();
  const attempt = async () => {
    const proxy = new SocketProxy({ target: '127.0.0.1:9', listen: [`127.0.0.1:${port}`], workers: 0 });
    await proxy.start();
  };
  await assert.rejects(attempt(), { code: 'ERR_INVALID_ARG_VALUE' });
  assert.equal(await portIsFree(port), true, `127.0.0.1:${port} is still bound`);
  await assertBackTo(base, 'workers: 0');
});

test('the engine refusing its options after the sockets were bound: start() rejects with a .code and closes them', async () => {
  const port = await freePort();
  const base = await baseline();
  // A UNIX target path longer than sun_path: only the engine finds out.
  const proxy = new SocketProxy({ target: `/tmp/${'x'.repeat(200)}`, listen: [`127.0.0.1:${port}`], workers: 1 });
  await assert.rejects(proxy.start(), (e) => {
    assert.equal(e.code, 'ERR_INVALID_ARG_VALUE', e.message);
    assert.match(e.message, /too long/);
    return true;
  });
  assert.equal(await portIsFree(port), true, `127.0.0.1:${port} is still bound`);
  await assertBackTo(base, 'engine failure');
  // A failed start leaves the proxy closed.
  await assert.rejects(proxy.start(), { code: 'ERR_PROXY_CLOSED' });
});

test('a listen address in use: start() rejects with code EADDRINUSE and closes what it bound before', async () => {
  const taken = await echoServer();
  const free = await freePort();
  const base = await baseline();
  try {
    const proxy = new SocketProxy({ target: '127.0.0.1:9', listen: [`127.0.0.1:${free}`, taken.target], workers: 1 });
    await assert.rejects(proxy.start(), (e) => {
      assert.equal(e.code, 'EADDRINUSE', e.message);
      return true;
    });
    assert.equal(await portIsFree(free), true, `127.0.0.1:${free} is still bound`);
    await assertBackTo(base, 'EADDRINUSE');
  } finally {
    await taken.close();
  }
});

// ---------------------------------------------------------------------------
// start() and close() races

test('close() while start() resolves the target: start() rejects with ERR_PROXY_CLOSED, nothing is left running', async () => {
  const upstream = await echoServer();
  const port = await freePort();
  const base = await baseline();
  try {
    for (let i = 0; i < 5; i++) {
      // "localhost" goes through the resolver: start() awaits it.
      const proxy = new SocketProxy({ target: `localhost:${upstream.port}`, listen: [`127.0.0.1:${port}`], workers: 2 });
      const starting = proxy.start();
      proxy.close();
      await assert.rejects(starting, { code: 'ERR_PROXY_CLOSED' });
      assert.equal(await portIsFree(port), true, `127.0.0.1:${port} is still bound`);
      await assertBackTo(base, 'close() during start()');
      assert.deepEqual(proxy.listening, [`127.0.0.1:${port}`]);
      assert.equal(proxy.active, 0);
    }
  } finally {
    await upstream.close();
  }
});

test('start() twice: the second rejects at once with ERR_PROXY_STARTED; after close() with ERR_PROXY_CLOSED', async () => {
  const upstream = await echoServer();
  const base = await baseline();
  try {
    const proxy = new SocketProxy({ target: `localhost:${upstream.port}`, listen: ['127.0.0.1:0'], workers: 1 });
    const first = proxy.start();
    await assert.rejects(proxy.start(), { code: 'ERR_PROXY_STARTED' });
    await first;
    await assert.rejects(proxy.start(), { code: 'ERR_PROXY_STARTED' });
    assert.equal(await roundTrip(proxy.listening[0], 'once'), 'once');
    proxy.close();
    await assert.rejects(proxy.start(), { code: 'ERR_PROXY_CLOSED' });
    await assertBackTo(base, 'start twice');
  } finally {
    await upstream.close();
  }
});

test('passed fds belong to the proxy from start() on: closed by close() during start()', async () => {
  const { addon } = await import('../dist/native.js');
  const base = await baseline();
  const port = await freePort();
  const fd = addon.bindListener({ host: '127.0.0.1', port }, 16);
  const proxy = new SocketProxy({ target: 'localhost:9', fds: [fd], workers: 1 });
  const starting = proxy.start();
  proxy.close();
  await assert.rejects(starting, { code: 'ERR_PROXY_CLOSED' });
  assert.equal(await portIsFree(port), true);
  await assertBackTo(base, 'passed fd');
});

// ---------------------------------------------------------------------------
// Parsed addresses and setters

test('stopAccepting() before start() has finished: the proxy never accepts', async () => {
  const upstream = await echoServer();
  try {
    const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 1 });
    const starting = proxy.start();
    proxy.stopAccepting();
    await starting;
    assert.equal(proxy.listening.length, 1);
    assert.equal(await roundTrip(proxy.listening[0], 'hello?').catch((e) => e.code), 'ECONNREFUSED');
    assert.equal(proxy.stats.accepted, 0);
    proxy.close();
  } finally {
    await upstream.close();
  }
});

test('target and listen as parsed Address objects forward like their strings', async () => {
  const upstream = await echoServer();
  const unixPath = path.join(tmp, 'listen.sock');
  try {
    const proxy = new SocketProxy({
      target: parseAddress(upstream.target),
      listen: [parseAddress('127.0.0.1:0', undefined, true), { kind: 'unix', path: unixPath }],
      workers: 1,
    });
    await proxy.start();
    try {
      assert.deepEqual(proxy.target, { kind: 'inet', host: '127.0.0.1', port: upstream.port });
      assert.equal(proxy.listening[1], unixPath);
      assert.equal(await roundTrip(proxy.listening[0], 'tcp'), 'tcp');
      assert.equal(await roundTrip(unixPath, 'unix'), 'unix');
      assert.throws(() => proxy.setMaxConnections(-1), { code: 'ERR_INVALID_ARG_VALUE' });
      assert.throws(() => proxy.setLogLevel(9), { code: 'ERR_INVALID_ARG_VALUE' });
      await assert.rejects(proxy.drain(-1), { code: 'ERR_INVALID_ARG_VALUE' });
    } finally {
      proxy.close();
    }
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// ref() / unref()

/** A child process that starts a proxy (forwarding to `target`), prints where it listens, then calls `then`. */
const childSource = (target, then) => `
import { createRequire } from 'node:module';
const { SocketProxy } = createRequire(import.meta.url)(${JSON.stringify(DIST_INDEX)});
const proxy = new SocketProxy({ target: ${JSON.stringify(target)}, listen: ['127.0.0.1:0'], workers: 2 });
await proxy.start();
${then}
console.log('listening ' + proxy.listening[0]);
`;

test('unref(): a process whose only handle is an unref()ed proxy exits by itself; ref() keeps it running', { timeout: 60_000 }, async () => {
  const upstream = await echoServer();
  try {
    const unrefd = nodeChild(childSource(upstream.target, 'proxy.unref();'));
    assert.deepEqual(await within(unrefd.exited, 20_000, `the unref()ed proxy kept its process alive: ${unrefd.err}`), { code: 0, signal: null }, unrefd.err);
    assert.match(unrefd.out, /^listening 127\.0\.0\.1:\d+$/m);

    for (const then of ['', 'proxy.unref(); proxy.ref();']) {
      const refd = nodeChild(childSource(upstream.target, then));
      try {
        const at = (await refd.waitLine(/^listening /)).split(' ')[1];
        // Its module has finished; the proxy alone keeps it alive, and it keeps forwarding.
        for (let i = 0; i < 3; i++) assert.equal(await roundTrip(at, `still here ${i}`), `still here ${i}`);
        assert.equal(refd.exitCode, null, `exited: ${refd.err}`);
        refd.kill('SIGTERM');
        assert.deepEqual(await within(refd.exited, 10_000), { code: null, signal: 'SIGTERM' });
      } finally {
        if (refd.exitCode === null && refd.signalCode === null) refd.kill('SIGKILL');
      }
    }
  } finally {
    await upstream.close();
  }
});
