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
import { burst, busyPeriods } from './lifecycle-helpers.mjs';

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
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Parsed addresses and setters

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
    } finally {
      proxy.close();
    }
  } finally {
    await upstream.close();
  }
});

