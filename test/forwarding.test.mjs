// The forwarding engine in-process (SocketProxy, and the native Engine for
// what SocketProxy cannot express), with real sockets and the real kernel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { SocketProxy } from '../dist/index.js';
import { addon } from '../dist/native.js';
import {
  abstractEchoServer,
  abstractName,
  abstractRoundTrip,
  closed,
  collect,
  connectOptions,
  connectTo,
  fdCount,
  pattern,
  sendRepeated,
  sha256,
  startServer,
  startServerWith,
  taskCount,
  waitFor,
  within,
  writeUntilStuck,
} from './helpers.mjs';
import { blackhole } from './fault-helpers.mjs';

const KiB = 1024;
const MiB = 1024 * 1024;

/** The largest buffer TCP autotuning may give a socket: the third field of net.ipv4.tcp_rmem / tcp_wmem. */
const kernelMax = (name) => Number(fs.readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim().split(/\s+/)[2]);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-fwd-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** Echo server that keeps half-open connections (it ends only after writing everything back). */
const halfOpenEcho = (address = '127.0.0.1', backlog = 511) =>
  address.startsWith('@')
    ? abstractEchoServer(address) // Node cannot bind an exact-length abstract name (helpers.mjs)
    : startServerWith({ allowHalfOpen: true }, (s) => s.on('error', () => {}).pipe(s), address, backlog);

/** Starts a SocketProxy on a port-0 loopback listener (unless `listen` is given); closes it after `fn`. */
async function withProxy(options, fn) {
  const proxy = new SocketProxy({ listen: ['127.0.0.1:0'], workers: 2, ...options });
  await proxy.start();
  try {
    return await fn(proxy, proxy.listening[0]);
  } finally {
    proxy.close();
  }
}

/** Sends `payload` through `address`, half-closes, resolves what came back. */
async function roundTrip(address, payload) {
  if (address.startsWith('@')) return abstractRoundTrip(address, payload);
  const socket = await connectTo(address);
  const reply = collect(socket);
  socket.end(payload);
  return reply;
}

/** Asserts that a client of `address` is served: an echo of 64 KiB comes back whole. */
async function assertServed(address, seed = 99) {
  const payload = pattern(64 * KiB, seed);
  const reply = await within(roundTrip(address, payload), 10_000, `no echo through ${address}`);
  assert.equal(reply.bytes, payload.length);
  assert.equal(reply.sha256, sha256(payload));
}


// ---------------------------------------------------------------------------
// Targets

for (const [name, address, listen] of [
  ['TCP IPv4', '127.0.0.1', '127.0.0.1:0'],
  ['TCP IPv6', '::1', '[::1]:0'],
  ['UNIX path', path.join(tmp, 'upstream.sock'), path.join(tmp, 'proxy.sock')],
  ['abstract UNIX', abstractName('upstream'), abstractName('proxy')],
]) {
  test(`forwards to a ${name} target (listening on ${name} too)`, { timeout: 30_000 }, async () => {
    const upstream = await halfOpenEcho(address);
    try {
      if (name === 'TCP IPv6') assert.match(upstream.target, /^\[::1\]:\d+$/);
      await withProxy({ target: upstream.target, listen: [listen] }, async (proxy, at) => {
        if (name === 'UNIX path') assert.ok(fs.statSync(listen).isSocket(), 'the proxy binds the UNIX path');
        for (const size of [1, 1000, 3 * MiB + 7]) {
          const payload = pattern(size, size);
          const reply = await roundTrip(at, payload);
          assert.equal(reply.bytes, size, `${size}-byte echo length`);
          assert.equal(reply.sha256, sha256(payload), `${size}-byte echo content`);
        }
        await waitFor(() => proxy.stats.active === 0);
        const stats = proxy.stats;
        assert.equal(stats.accepted, 3);
        assert.equal(stats.upstreamFailed, 0);
        assert.equal(stats.bytesToUpstream, 1 + 1000 + 3 * MiB + 7);
        assert.equal(stats.bytesToClient, 1 + 1000 + 3 * MiB + 7);
      });
    } finally {
      await upstream.close();
    }
  });
}

// ---------------------------------------------------------------------------
// Bulk, both ways at once

test('256 MiB each way at once through one connection, checksummed', { timeout: 120_000 }, async () => {
  const TOTAL = 256 * MiB;
  const up = pattern(MiB, 11);
  const down = pattern(MiB, 22);
  let serverSide;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    const expected = createHash('sha256');
    serverSide = {
      received: collect(s),
      sent: sendRepeated(s, down, TOTAL, expected).then(() => expected.digest('hex')),
    };
  });
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const client = await connectTo(at, { allowHalfOpen: true });
      const received = collect(client);
      const sentHash = createHash('sha256');
      await sendRepeated(client, up, TOTAL, sentHash);
      const clientGot = await received;
      await waitFor(() => serverSide);
      const serverGot = await serverSide.received;
      const serverSent = await serverSide.sent;
      assert.equal(serverGot.bytes, TOTAL, 'bytes the upstream received');
      assert.equal(serverGot.sha256, sentHash.digest('hex'), 'upstream received exactly what the client sent');
      assert.equal(clientGot.bytes, TOTAL, 'bytes the client received');
      assert.equal(clientGot.sha256, serverSent, 'client received exactly what the upstream sent');
      await waitFor(() => proxy.stats.active === 0);
      assert.equal(proxy.stats.bytesToUpstream, TOTAL);
      assert.equal(proxy.stats.bytesToClient, TOTAL);
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Half-close

test("a reply sent only after the client's FIN arrives whole", { timeout: 30_000 }, async () => {
  const reply = pattern(MiB, 5);
  const requests = [];
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    const chunks = [];
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => {
      requests.push(Buffer.concat(chunks).toString());
      s.end(reply); // only now: the client has shut down its write side
    });
  });
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      for (let i = 0; i < 3; i++) {
        const client = await connectTo(at);
        const got = collect(client);
        client.end(`GET ${i}\n`);
        const answer = await within(got, 10_000, 'no reply after half-close');
        assert.equal(answer.bytes, reply.length, 'the whole reply arrived');
        assert.equal(answer.sha256, sha256(reply));
      }
      assert.deepEqual(requests, ['GET 0\n', 'GET 1\n', 'GET 2\n']);
      await waitFor(() => proxy.stats.active === 0);
      assert.equal(proxy.stats.active, 0, 'connections end once both directions are done');
    });
  } finally {
    await upstream.close();
  }
});

test('an upload followed by the client half-close gets its full echo', { timeout: 30_000 }, async () => {
  const upstream = await halfOpenEcho();
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const client = await connectTo(at);
      const echoed = collect(client);
      const sent = createHash('sha256');
      await sendRepeated(client, pattern(MiB, 3), 16 * MiB, sent);
      const got = await within(echoed, 20_000, 'echo did not end');
      assert.equal(got.bytes, 16 * MiB);
      assert.equal(got.sha256, sent.digest('hex'));
    });
  } finally {
    await upstream.close();
  }
});

test('the upstream ends first: the client keeps sending and the upstream still receives it', { timeout: 30_000 }, async () => {
  let upstreamGot;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    upstreamGot = collect(s);
    s.end('bye\n'); // half-close from the upstream side at once
  });
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const client = await connectTo(at, { allowHalfOpen: true });
      const fromUpstream = collect(client, { keep: true });
      const done = closed(client);
      const first = await within(fromUpstream, 10_000, 'the upstream FIN did not reach the client');
      assert.equal(first.data.toString(), 'bye\n');
      assert.ok(!client.destroyed && client.writable, 'client can still write after the upstream ended');
      // Now the client talks into the half-closed connection.
      const sent = createHash('sha256');
      await sendRepeated(client, pattern(256 * KiB, 8), 4 * MiB + 3, sent);
      await waitFor(() => upstreamGot);
      const got = await within(upstreamGot, 10_000, 'upstream never saw the client end');
      assert.equal(got.bytes, 4 * MiB + 3);
      assert.equal(got.sha256, sent.digest('hex'));
      const end = await within(done, 10_000, 'client connection did not close');
      assert.equal(end.error, null);
      assert.equal(end.ended, true, 'the client saw a clean end');
      assert.equal(proxy.stats.bytesToClient, 4);
      assert.equal(proxy.stats.bytesToUpstream, 4 * MiB + 3);
      await waitFor(() => proxy.stats.active === 0);
      assert.equal(proxy.stats.active, 0);
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Back-pressure

test('a slow upstream bounds what the proxy takes from the client; every byte arrives in order later', { timeout: 60_000 }, async () => {
  let upstreamSocket;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    if (upstreamSocket) {
      s.on('error', () => {}).pipe(s); // later connections: an echo
      return;
    }
    s.pause(); // the first never reads until told
    upstreamSocket = s;
  });
  try {
    // One worker: the probe connection below goes through the same event loop.
    await withProxy({ target: upstream.target, workers: 1 }, async (proxy, at) => {
      const client = await connectTo(at);
      client.on('error', () => {});
      await waitFor(() => upstreamSocket);
      assert.ok(upstreamSocket, 'upstream got the connection');
      const sent = createHash('sha256');
      const { written, pushed } = await writeUntilStuck(client, pattern(256 * KiB, 4), { hash: sent, stallMs: 700 });
      assert.ok(pushed > 0, 'some bytes went out');
      // What a stalled path can hold: four socket buffers at the kernel's autotuning maxima (the
      // client's send and the proxy's receive, the proxy's send and the upstream's receive) and
      // the one pipe between them. Without back-pressure the client would push its whole 1 GiB.
      const bound = 2 * kernelMax('tcp_rmem') + 2 * kernelMax('tcp_wmem') + 256 * KiB + MiB;
      assert.ok(pushed < bound, `the client pushed ${pushed} bytes into a stalled path (bound: ${bound})`);
      const stats = proxy.stats;
      assert.ok(stats.bytesToUpstream <= pushed, 'the proxy forwarded no more than the client pushed');
      assert.ok(stats.pipesInUse <= 2, `pipes in use: ${stats.pipesInUse}`);
      // Stuck for a whole second by the proxy's own count (the client's 700 ms without 'drain'
      // can pass while a descheduled worker still had bytes to move).
      let last = -1;
      assert.ok(await waitFor(() => {
        const now = proxy.stats.bytesToUpstream;
        const same = now === last;
        last = now;
        return same;
      }, 20_000, 1000), 'bytes kept moving to an upstream that does not read');
      // Still stuck after the worker has run again (a whole exchange on another
      // connection went through its loop): the proxy is not reading ahead.
      const before = proxy.stats.bytesToUpstream;
      const probe = await connectTo(at);
      const probeEcho = collect(probe);
      probe.end('probe');
      assert.equal((await within(probeEcho, 10_000, 'the probe was not served')).bytes, 5);
      assert.equal(proxy.stats.bytesToUpstream, before + 5, 'nothing moves while the upstream does not read');

      const got = collect(upstreamSocket);
      upstreamSocket.resume();
      client.end();
      const result = await within(got, 20_000, 'upstream did not get the end');
      assert.equal(result.bytes, written, 'every byte arrived');
      assert.equal(result.sha256, sent.digest('hex'), 'in order');
      assert.equal(proxy.stats.bytesToUpstream, written + 5, 'counted exactly (the stalled upload and the probe)');
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Many connections

test('1,000 concurrent connections through one proxy, each verified', { timeout: 60_000 }, async () => {
  addon.raiseFdLimit();
  const N = 1000;
  let upstreamConnections = 0;
  const upstream = await startServerWith(
    { allowHalfOpen: true },
    (s) => {
      upstreamConnections++;
      s.on('error', () => {}).pipe(s);
    },
    '127.0.0.1',
    2048,
  );
  try {
    await withProxy({ target: upstream.target, maxConnections: 2 * N }, async (proxy, at) => {
      const clients = await Promise.all(Array.from({ length: N }, () => connectTo(at)));
      // All of them open at once, each with its own upstream connection.
      assert.ok(await waitFor(() => proxy.stats.active === N && upstreamConnections === N, 20_000),
        `active ${proxy.stats.active}, upstream connections ${upstreamConnections}`);
      const results = await Promise.all(
        clients.map(async (client, i) => {
          const payload = pattern(2 * KiB + i, i + 1);
          const got = collect(client);
          client.end(payload);
          const r = await got;
          return r.bytes === payload.length && r.sha256 === sha256(payload);
        }),
      );
      assert.equal(results.filter(Boolean).length, N, 'every connection got its own bytes back');
      assert.ok(await waitFor(() => proxy.stats.active === 0, 10_000));
      const stats = proxy.stats;
      assert.equal(stats.accepted, N);
      assert.equal(stats.refused, 0);
      assert.equal(stats.upstreamFailed, 0);
      const expected = N * 2 * KiB + (N * (N - 1)) / 2;
      assert.equal(stats.bytesToUpstream, expected);
      assert.equal(stats.bytesToClient, expected);
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Failing upstreams

test('refused upstream (TCP): the client is closed, counted, and the proxy carries on', { timeout: 30_000 }, async () => {
  const dead = await startServer(() => {});
  const port = dead.port;
  await dead.close();
  await withProxy({ target: `127.0.0.1:${port}` }, async (proxy, at) => {
    for (let i = 1; i <= 3; i++) {
      const client = await connectTo(at);
      const end = await within(closed(client), 5_000, 'client not closed');
      assert.deepEqual(end, { data: Buffer.alloc(0), ended: true, error: null }, 'a clean end, nothing before it');
      assert.equal(proxy.stats.upstreamFailed, i);
    }
    await waitFor(() => proxy.stats.active === 0);
    assert.equal(proxy.stats.active, 0);
    // The upstream comes back: the same proxy serves the next client.
    const revived = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s)).listen(port, '127.0.0.1');
    await once(revived, 'listening');
    try {
      await assertServed(at);
      assert.equal(proxy.stats.upstreamFailed, 3);
      assert.equal(proxy.stats.accepted, 4);
    } finally {
      await new Promise((r) => revived.close(r));
    }
  });
});

test('refused upstream (UNIX path missing, then a full backlog): client closed, proxy carries on', { timeout: 30_000 }, async () => {
  const sock = path.join(tmp, 'late.sock');
  await withProxy({ target: sock }, async (proxy, at) => {
    let end = await within(closed(await connectTo(at)), 5_000, 'client not closed');
    assert.deepEqual(end, { data: Buffer.alloc(0), ended: true, error: null });
    assert.equal(proxy.stats.upstreamFailed, 1);

    // A UNIX listener that never accepts and whose backlog is full.
    const fd = addon.bindListener({ path: sock }, 0);
    const fillers = [];
    try {
      // Backlog 0 queues one; the connect after it fails (EAGAIN): the backlog is full.
      let full = false;
      for (let i = 0; i < 8 && !full; i++) {
        const s = net.connect({ path: sock });
        fillers.push(s);
        full = await new Promise((resolve) => {
          s.once('connect', () => resolve(false));
          s.once('error', () => resolve(true));
        });
        s.on('error', () => {});
      }
      assert.ok(full, 'the UNIX listener backlog did not fill');
      end = await within(closed(await connectTo(at)), 5_000, 'client not closed');
      assert.deepEqual(end, { data: Buffer.alloc(0), ended: true, error: null });
      assert.equal(proxy.stats.upstreamFailed, 2);
    } finally {
      for (const s of fillers) s.destroy();
      addon.closeFd(fd);
      fs.rmSync(sock, { force: true });
    }

    const live = await halfOpenEcho(sock);
    try {
      await assertServed(at);
      assert.equal(proxy.stats.upstreamFailed, 2);
    } finally {
      await live.close();
    }
  });
});

test('unreachable upstream (connect never completes): the timeout closes the client, proxy carries on', { timeout: 30_000 }, async () => {
  const hole = await blackhole();
  let holeOpen = true;
  try {
    await withProxy({ target: hole.target, connectTimeout: 400 }, async (proxy, at) => {
      const started = Date.now();
      const client = await connectTo(at);
      const end = await within(closed(client), 8_000, 'client not closed after the connect timeout');
      const waited = Date.now() - started;
      assert.deepEqual(end, { data: Buffer.alloc(0), ended: true, error: null }, 'a clean end, nothing before it');
      assert.ok(waited >= 350, `closed after ${waited} ms: should be the 400 ms connect timeout`);
      assert.equal(proxy.stats.upstreamFailed, 1);
      // Another client waiting meanwhile is not blocked by the first.
      const [a, b] = await Promise.all([connectTo(at), connectTo(at)]);
      const ends = await within(Promise.all([closed(a), closed(b)]), 8_000, 'clients not closed');
      for (const e of ends) assert.deepEqual(e, { data: Buffer.alloc(0), ended: true, error: null });
      assert.equal(proxy.stats.upstreamFailed, 3);
      await waitFor(() => proxy.stats.active === 0);
      assert.equal(proxy.stats.active, 0);

      // The upstream comes back on the same port: the next client is served.
      hole.close();
      holeOpen = false;
      const revived = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s)).listen(hole.port, '127.0.0.1');
      await once(revived, 'listening');
      try {
        await assertServed(at);
        assert.equal(proxy.stats.upstreamFailed, 3);
      } finally {
        await new Promise((r) => revived.close(r));
      }
    });
  } finally {
    if (holeOpen) hole.close();
  }
});

// ---------------------------------------------------------------------------
// Several target addresses (native Engine: SocketProxy gets them from the resolver)

/** Runs a native Engine on a fresh 127.0.0.1 listener; closes it after `fn`. */
async function withEngine(options, fn) {
  const fd = addon.bindListener({ host: '127.0.0.1', port: 0 }, 128);
  const at = addon.inspectFd(fd).address;
  const engine = new addon.Engine({ listeners: [fd], workers: 1, ...options });
  const logs = [];
  engine.start((kind, level, message) => logs.push(message));
  const counter = (name) => Number(engine.counters[addon.COUNTERS[name]]);
  try {
    return await fn({ engine, at, counter, logs });
  } finally {
    engine.close();
  }
}

test('several target addresses: a refused one is skipped for the next', { timeout: 30_000 }, async () => {
  const live = await halfOpenEcho();
  const dead = await startServer(() => {});
  await dead.close();
  try {
    await withEngine(
      { targets: [{ host: '127.0.0.1', port: dead.port }, { path: path.join(tmp, 'nothing-here.sock') }, { host: '127.0.0.1', port: live.port }] },
      async ({ at, counter }) => {
        await assertServed(at);
        await assertServed(at);
        assert.equal(counter('upstreamFailed'), 0);
        assert.equal(counter('accepted'), 2);
      },
    );
  } finally {
    await live.close();
  }
});

test('several target addresses: one that times out is skipped for the next', { timeout: 30_000 }, async () => {
  const name = abstractName('live');
  const live = await halfOpenEcho(name);
  const hole = await blackhole();
  try {
    await withEngine(
      { targets: [{ host: '127.0.0.1', port: hole.port }, { path: name }], connectTimeoutMs: 300 },
      async ({ at, counter }) => {
        const started = Date.now();
        await assertServed(at);
        assert.ok(Date.now() - started >= 250, 'the first address was tried for the connect timeout');
        assert.equal(counter('upstreamFailed'), 0);
      },
    );
  } finally {
    hole.close();
    await live.close();
  }
});

test('several target addresses: when all fail the client is closed once and counted once', { timeout: 30_000 }, async () => {
  const dead = await startServer(() => {});
  await dead.close();
  await withEngine(
    { targets: [{ host: '127.0.0.1', port: dead.port }, { host: '::1', port: dead.port }, { path: '@socket-proxyd-nobody-here' }] },
    async ({ at, counter }) => {
      const end = await within(closed(await connectTo(at)), 5_000, 'client not closed');
      assert.deepEqual(end, { data: Buffer.alloc(0), ended: true, error: null });
      assert.equal(counter('upstreamFailed'), 1);
      assert.ok(await waitFor(() => counter('active') === 0));
    },
  );
});

// ---------------------------------------------------------------------------
// The connection limit

/** Opens a client that stays open and proves it is forwarded (one echo exchange). */
async function servedClient(at, tag) {
  const socket = await connectTo(at);
  const msg = Buffer.from(`hello ${tag}\n`);
  const reply = new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    socket.on('data', function onData(d) {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= msg.length) {
        socket.off('data', onData);
        resolve(buf);
      }
    });
    socket.once('close', () => reject(new Error(`client ${tag} closed before its echo`)));
  });
  socket.write(msg);
  assert.deepEqual(await within(reply, 5_000, `client ${tag} not served`), msg);
  return socket;
}

/** A client the proxy is expected to close at once without forwarding. */
async function refusedClient(at) {
  const socket = await connectTo(at);
  const end = await within(closed(socket), 10_000, 'client over the limit was not closed');
  assert.deepEqual(end, { data: Buffer.alloc(0), ended: true, error: null }, 'closed at once with a clean end');
}

test('the connection limit: N served, N+1th closed at once; a freed slot serves again; changed live', { timeout: 30_000 }, async () => {
  const upstream = await halfOpenEcho();
  try {
    await withProxy({ target: upstream.target, maxConnections: 3 }, async (proxy, at) => {
      const open = [];
      for (let i = 0; i < 3; i++) open.push(await servedClient(at, i));
      assert.equal(proxy.stats.active, 3);
      await refusedClient(at);
      await refusedClient(at);
      assert.equal(proxy.stats.refused, 2);
      assert.equal(proxy.stats.accepted, 3);
      assert.equal(proxy.stats.active, 3);

      const gone = closed(open[0]);
      open.shift().end();
      await gone;
      assert.ok(await waitFor(() => proxy.stats.active === 2));
      open.push(await servedClient(at, 'after-free'));
      await refusedClient(at);
      assert.equal(proxy.stats.refused, 3);

      proxy.setMaxConnections(5);
      open.push(await servedClient(at, 'raised-1'));
      open.push(await servedClient(at, 'raised-2'));
      assert.equal(proxy.stats.active, 5);
      await refusedClient(at);
      assert.equal(proxy.stats.refused, 4);

      proxy.setMaxConnections(1);
      await refusedClient(at);
      assert.equal(proxy.stats.refused, 5);
      // The open ones keep working.
      for (const s of open) {
        s.write('still\n');
        const [d] = await within(once(s, 'data'), 5_000, 'an open connection stopped forwarding');
        assert.equal(d.toString(), 'still\n');
      }
      await Promise.all(open.map((s) => { const c = closed(s); s.end(); return c; }));
      assert.ok(await waitFor(() => proxy.stats.active === 0));
      open.length = 0;
      open.push(await servedClient(at, 'alone'));
      await refusedClient(at);
      assert.equal(proxy.stats.refused, 6);
      assert.equal(proxy.stats.accepted, 7);
      open[0].destroy();
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Counters and events

test("counters count what was sent; 'busy' and 'idle' fire on 0→1 and back to 0", { timeout: 30_000 }, async () => {
  const replySize = 300 * KiB + 1;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    s.on('data', () => {});
    s.on('end', () => s.end(pattern(replySize, 9)));
  });
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const events = [];
      proxy.on('busy', () => events.push('busy'));
      proxy.on('idle', () => events.push('idle'));
      // Spare pipes made at start (reserved for running out of fds) may be pooled already.
      const { pipesPooled: _pooled, ...start } = proxy.stats;
      for (const key of ['active', 'accepted', 'refused', 'upstreamFailed', 'bytesToUpstream', 'bytesToClient', 'pipesInUse', 'copyReads', 'spliceReads']) {
        assert.ok(key in start, key);
      }
      // Every other counter starts at zero too.
      for (const [key, value] of Object.entries(start)) assert.equal(value, 0, key);

      // One connection at a time: busy, idle, busy, idle.
      for (let i = 0; i < 2; i++) {
        const client = await connectTo(at);
        await waitFor(() => events.length === 2 * i + 1);
        assert.equal(proxy.stats.active, 1);
        assert.equal(proxy.active, 1);
        const got = collect(client);
        client.end(pattern(123_457, i));
        assert.equal((await got).bytes, replySize);
        assert.ok(await waitFor(() => events.length === 2 * i + 2));
        assert.equal(proxy.stats.active, 0);
      }
      assert.deepEqual(events, ['busy', 'idle', 'busy', 'idle']);

      // Overlapping connections: one busy, one idle.
      events.length = 0;
      const clients = await Promise.all([0, 1, 2].map(() => connectTo(at)));
      assert.ok(await waitFor(() => proxy.stats.active === 3));
      await Promise.all(clients.map((c, i) => { const got = collect(c); c.end(pattern(1000 + i, i)); return got; }));
      assert.ok(await waitFor(() => events.length === 2));
      assert.deepEqual(events, ['busy', 'idle']);
      // No stray event is still on its way: events arrive in order, so one
      // would come before those of the next connection.
      const last = await connectTo(at);
      const lastGot = collect(last);
      last.end(pattern(1003, 3));
      assert.equal((await lastGot).bytes, replySize);
      assert.ok(await waitFor(() => events.length >= 4));
      assert.deepEqual(events, ['busy', 'idle', 'busy', 'idle']);

      const stats = proxy.stats;
      assert.equal(stats.accepted, 6);
      assert.equal(stats.active, 0);
      assert.equal(stats.refused, 0);
      assert.equal(stats.upstreamFailed, 0);
      assert.equal(stats.bytesToUpstream, 2 * 123_457 + 1000 + 1001 + 1002 + 1003);
      assert.equal(stats.bytesToClient, 6 * replySize);
      assert.equal(stats.pipesInUse, 0, 'no pipe is held once nothing is in flight');
      assert.ok(stats.pipesPooled > 0, 'pipes are kept for reuse');
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Peers that do unusual things

test('a UNIX client that passes an fd mid-stream is not stalled: the bytes after it flow at once', { timeout: 30_000 }, async () => {
  // The fd itself is dropped, as splice drops it; what matters is that the read
  // that stops after it does not make the proxy think the socket is drained.
  let received = 0;
  let ended = false;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    s.on('data', (d) => (received += d.length));
    s.on('end', () => { ended = true; s.end(); });
  }, path.join(tmp, 'scm-upstream.sock'));
  const listen = path.join(tmp, 'scm-proxy.sock');
  const script = `
import array, os, socket, sys, time
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
time.sleep(0.3)
r, w = os.pipe()
c.sendmsg([b'A' * 100], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r]))])
c.send(b'B' * 100)
print('sent', flush=True)
sys.stdin.read()
c.shutdown(socket.SHUT_WR)
c.recv(1)
`;
  try {
    await withProxy({ target: upstream.target, listen: [listen] }, async () => {
      const { spawn } = await import('node:child_process');
      const client = spawn('python3', ['-c', script, listen], { stdio: ['pipe', 'pipe', 'inherit'] });
      const exited = new Promise((resolve, reject) => {
        client.once('error', (e) => reject(e.code === 'ENOENT' ? new Error('python3 is missing') : e));
        client.once('exit', resolve);
      });
      try {
        await within(once(client.stdout, 'data'), 10_000, 'the python client did not send');
        assert.ok(await waitFor(() => received === 200, 15_000), `upstream has ${received} of 200 bytes while the client waits`);
        assert.equal(ended, false);
        client.stdin.end();
        assert.ok(await waitFor(() => ended, 5000), 'the end did not arrive');
        assert.equal(await within(exited, 5000, 'the python client did not finish'), 0);
      } finally {
        client.kill();
      }
    });
  } finally {
    await upstream.close();
  }
});

test('TCP urgent data in a bulk upload: every in-band byte after it still arrives, and the end only after them', { timeout: 30_000 }, async () => {
  // splice stops at the urgent mark for good (the kernel's tcp_read_sock); the
  // urgent byte itself is not forwarded (out of band, as with systemd-socket-proxyd).
  const upstreamData = [];
  let ended = false;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    s.on('data', (d) => upstreamData.push(d));
    s.on('end', () => { ended = true; s.end(); });
  });
  const received = () => upstreamData.reduce((n, d) => n + d.length, 0);
  const script = `
import socket, sys
h, p = sys.argv[1].rsplit(':', 1)
c = socket.create_connection((h, int(p)))
c.sendall(b'a' * 300000)
c.send(b'X', socket.MSG_OOB)
c.sendall(b'tail')
print('sent', flush=True)
sys.stdin.read()
c.shutdown(socket.SHUT_WR)
c.recv(1)
`;
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const { spawn } = await import('node:child_process');
      const client = spawn('python3', ['-c', script, at], { stdio: ['pipe', 'pipe', 'inherit'] });
      const exited = new Promise((resolve, reject) => {
        client.once('error', (e) => reject(e.code === 'ENOENT' ? new Error('python3 is missing') : e));
        client.once('exit', resolve);
      });
      try {
        await within(once(client.stdout, 'data'), 10_000, 'the python client did not send');
        assert.ok(await waitFor(() => received() === 300_004, 15_000), `upstream has ${received()} of 300004 bytes while the client waits`);
        client.stdin.end();
        assert.ok(await waitFor(() => ended, 5000), 'the end did not arrive');
        assert.equal(await within(exited, 5000, 'the python client did not finish'), 0);
        const all = Buffer.concat(upstreamData);
        assert.equal(all.length, 300_004);
        assert.equal(all.subarray(-4).toString(), 'tail');
        assert.equal(all.indexOf('X'), -1, 'the urgent byte is not forwarded in band');
      } finally {
        client.kill();
      }
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Resets

/** After a reset: the bystander's connection is the only one left, still forwards, and new clients are served. */
async function assertOnlyVictimGone(proxy, at, bystander) {
  assert.ok(await waitFor(() => proxy.stats.active === 1), `active ${proxy.stats.active}`);
  bystander.write('ping\n');
  const [d] = await within(once(bystander, 'data'), 5_000, 'bystander stopped forwarding');
  assert.equal(d.toString(), 'ping\n');
  const next = await servedClient(at, 'next');
  next.destroy();
  bystander.destroy();
  assert.ok(await waitFor(() => proxy.stats.active === 0));
}

test('a client reset mid-transfer costs only that connection', { timeout: 30_000 }, async () => {
  assert.equal(typeof net.Socket.prototype.resetAndDestroy, 'function', 'this Node has socket.resetAndDestroy()');
  const upstreamEnds = [];
  let received = 0;
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    upstreamEnds.push(closed(s));
    if (upstreamEnds.length !== 2) {
      s.pipe(s); // the bystander and the next client: an echo
      return;
    }
    s.on('data', (d) => (received += d.length));
    s.on('end', () => s.end());
    s.write(pattern(4 * MiB, 1)); // the upstream is sending too
  });
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const bystander = await servedClient(at, 'bystander');
      const victim = await connectTo(at);
      victim.on('error', () => {});
      victim.on('data', () => {});
      const chunk = pattern(256 * KiB, 2);
      const pump = setInterval(() => victim.write(chunk), 5);
      assert.ok(await waitFor(() => received >= 2 * MiB, 10_000), 'upload under way');
      clearInterval(pump);
      victim.resetAndDestroy();
      const end = await within(upstreamEnds[1], 5_000, "the upstream's connection did not end after the client reset");
      // Which side: the victim's upstream connection ends, the bystander's does not
      // (assertOnlyVictimGone). How (a reset, never a clean end) is bug 8 in
      // engine-review.test.mjs.
      assert.ok(end.ended || end.error, 'upstream saw an end or a reset');
      await assertOnlyVictimGone(proxy, at, bystander);
    });
  } finally {
    await upstream.close();
  }
});

test('an upstream reset mid-transfer closes its client and nothing else', { timeout: 30_000 }, async () => {
  const sockets = [];
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    sockets.push(s);
    s.on('error', () => {});
    s.on('data', (d) => s.write(d));
    s.on('end', () => s.end());
  });
  try {
    await withProxy({ target: upstream.target }, async (proxy, at) => {
      const bystander = await servedClient(at, 'bystander');
      const victim = await connectTo(at);
      const end = closed(victim);
      victim.write(pattern(MiB, 3));
      // Reset while the upload is under way: some of it has reached the upstream.
      assert.ok(await waitFor(() => sockets.length === 2 && sockets[1].bytesRead >= 64 * 1024, 10_000), 'upload under way');
      sockets[1].resetAndDestroy();
      const r = await within(end, 5_000, 'client not closed after the upstream reset');
      // How (ECONNRESET, never a clean end) is bug 8 in engine-review.test.mjs.
      assert.ok(r.ended || r.error);
      await assertOnlyVictimGone(proxy, at, bystander);
    });
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Clean shutdown

test('close() leaves no fd, pipe or thread behind, even with connections open', { timeout: 30_000 }, async () => {
  let stalled = 0;
  const upstreamSockets = [];
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    upstreamSockets.push(s);
    s.on('error', () => {});
    if (upstreamSockets.length > 6) {
      s.pause(); // these never read: their connections hold pipes with bytes
      stalled++;
    } else {
      s.pipe(s);
    }
  });
  // Warm up what the measurement itself uses (libuv's thread pool, the addon).
  await fdCount();
  await taskCount();
  const baseFds = await fdCount();
  const baseTasks = await taskCount();

  const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0', abstractName('close')], workers: 2 });
  await proxy.start();
  const at = proxy.listening[0];
  const idle = once(proxy, 'idle');
  assert.equal(await taskCount(), baseTasks + 2, 'two worker threads while running');

  // Finished connections leave pooled pipes.
  for (let i = 0; i < 4; i++) await assertServed(at, i);
  assert.ok(await waitFor(() => proxy.stats.pipesPooled > 0));
  // Connections open at close time: two idle, two with bytes stuck in pipes.
  const clients = [];
  for (let i = 0; i < 2; i++) clients.push(await servedClient(at, `open-${i}`));
  for (let i = 0; i < 2; i++) {
    const c = await connectTo(at);
    c.on('error', () => {});
    clients.push(c);
    await writeUntilStuck(c, pattern(256 * KiB, i), { stallMs: 300 });
  }
  assert.equal(stalled, 2);
  assert.equal(proxy.stats.active, 4);
  assert.ok(proxy.stats.pipesInUse >= 2, `pipes in use: ${proxy.stats.pipesInUse}`);
  assert.ok((await fdCount()) > baseFds + 8);

  const ends = clients.map(closed);
  proxy.close();
  await within(idle, 10_000, "no 'idle' after close()");
  // The proxy closed every client.
  const results = await within(Promise.all(ends), 10_000, 'clients not closed by close()');
  assert.equal(results.length, 4);
  for (const s of upstreamSockets) s.destroy();
  // All our own sockets are gone too; what remains is the baseline.
  const back = await waitFor(async () => (await fdCount()) === baseFds && (await taskCount()) === baseTasks, 5_000);
  const [fds, tasks] = [await fdCount(), await taskCount()];
  await upstream.close();
  assert.ok(back, `fds ${fds} (baseline ${baseFds}), threads ${tasks} (baseline ${baseTasks})`);
  assert.equal(proxy.stats.active, 0);
  // Idempotent.
  proxy.close();
});
