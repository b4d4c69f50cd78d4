// Lingering close (native/linger.cc): a connection that ended cleanly keeps its
// TCP socket until the peer has acknowledged the last bytes, so the kernel's
// resets of orphaned sockets (short of TCP memory, too many orphans) cannot
// cut the tail of a stream. Real sockets, a real slow reader; the orphan
// limit is the kernel's own (net.ipv4.tcp_max_orphans).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';

import { SocketProxy } from '../dist/index.js';
import { engineChild, reap, spawnTool, straceAttach, workerThreadIds } from './fault-helpers.mjs';
import {
  activateProxy,
  activateReference,
  CLI,
  fdCount,
  freePort,
  pattern,
  sha256,
  startServerWith,
  stop,
  waitFor,
  within,
} from './helpers.mjs';

const MiB = 1024 * 1024;

/**
 * The reply size: it must fit in what the kernel holds for a reader that reads nothing (its receive
 * buffer and the proxy's send buffer, autotuned up to net.ipv4.tcp_wmem's maximum), so the proxy
 * can finish while the reply is still unread.
 */
const REPLY = Math.min(MiB, Number(fs.readFileSync('/proc/sys/net/ipv4/tcp_wmem', 'utf8').trim().split(/\s+/)[2]) / 2);

/** An upstream that answers every connection with `payload`, then ends (it reads and ignores the request). */
const answering = (payload) =>
  startServerWith({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.resume();
    s.end(payload);
  });

/**
 * A client that sends a request (and half-closes at once, unless told not to), then reads nothing
 * until read() is called: the reply piles up in the kernel (its receive buffer, the proxy's send
 * buffer). read() resolves {data, ended, error} once the stream is over; end() half-closes.
 */
async function slowReader(port, { halfClose = true, request = 'GET\n' } = {}) {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  socket.pause();
  await within(new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject)), 10_000, 'no connect');
  const chunks = [];
  let ended = false;
  let error = null;
  const done = new Promise((resolve) => {
    socket.on('data', (d) => chunks.push(d));
    socket.on('end', () => { ended = true; socket.end(); });
    socket.on('error', (e) => (error = e.code ?? String(e)));
    socket.on('close', () => resolve({ data: Buffer.concat(chunks), ended, error }));
  });
  if (halfClose) socket.end(request);
  else socket.write(request);
  return {
    localPort: socket.localPort,
    end: () => socket.end(),
    read: () => {
      socket.resume();
      return within(done, 30_000, 'the reply never ended');
    },
    destroy: () => socket.destroy(),
  };
}

/**
 * An upstream in python3 (one thread per connection) that sends `payload` at once, and ends its
 * side only after the client's end reached it; it keeps each socket open until it exits. So the
 * client decides when a connection is over, and no close of the upstream's can interfere.
 */
async function answerOnEnd(payload) {
  const script = `
import socket, sys, threading
payload = sys.stdin.buffer.read()
held = []
def serve(conn):
    held.append(conn)
    try:
        conn.sendall(payload)
        while conn.recv(65536):
            pass
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
`;
  const child = spawnTool('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] }, 'apt-get install -y python3');
  child.stdin.end(payload);
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  assert.ok(await waitFor(() => /^\d+\n/.test(out), 15_000), 'the python upstream did not start');
  return { target: `127.0.0.1:${parseInt(out, 10)}`, close: () => reap(child) };
}

/** Recv-Q and Send-Q (ss(8)) of the TCP socket from port `from` to port `to`; null if there is none. */
function queues(from, to) {
  const out = execFileSync('ss', ['-tnH', 'state', 'all', `( sport = :${from} and dport = :${to} )`], { encoding: 'utf8' });
  const line = out.trim().split('\n').find(Boolean);
  if (!line) return null;
  const [state, recvQ, sendQ] = line.split(/\s+/);
  return { state, recvQ: Number(recvQ), sendQ: Number(sendQ) };
}

test('a finished connection whose reader is slow: its socket lingers (not counted active) until every byte was taken, then closes', { timeout: 60_000 }, async () => {
  const payload = pattern(REPLY, 11);
  const upstream = await answering(payload);
  const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 1 });
  await proxy.start();
  let client;
  try {
    const port = Number(proxy.listening[0].split(':').pop());
    const baseline = await fdCount();
    client = await slowReader(port);
    // The proxy has forwarded everything and ended the connection; the kernel holds the rest.
    assert.ok(await waitFor(() => proxy.stats.socketsLingering === 1 && proxy.stats.active === 0, 20_000),
      `no lingering socket: ${JSON.stringify(proxy.stats)}`);
    assert.equal(proxy.stats.bytesToClient, payload.length);
    assert.equal(proxy.stats.closedClientEnd + proxy.stats.closedUpstreamEnd, 1, 'counted as ended cleanly');
    // This process holds both ends now: the client's socket and the proxy's lingering one.
    assert.ok((await fdCount()) >= baseline + 2, `fds: ${await fdCount()} (baseline ${baseline})`);
    const { data, ended, error } = await client.read();
    assert.equal(error, null);
    assert.ok(ended, 'no clean end');
    assert.equal(data.length, payload.length);
    assert.equal(sha256(data), sha256(payload));
    assert.ok(await waitFor(() => proxy.stats.socketsLingering === 0, 10_000), 'the socket still lingers once everything was read');
    assert.equal(proxy.stats.lingersGivenUp, 0);
    assert.ok(await waitFor(async () => (await fdCount()) <= baseline, 10_000), `fds left: ${await fdCount()} (baseline ${baseline})`);
  } finally {
    client?.destroy();
    proxy.close();
    upstream.close();
  }
});

test('a reader that keeps up leaves nothing lingering, a reset ends a linger, close() gives up on the rest', { timeout: 60_000 }, async () => {
  const payload = pattern(REPLY, 12);
  const upstream = await answering(payload);
  const proxy = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], workers: 1 });
  await proxy.start();
  const port = Number(proxy.listening[0].split(':').pop());
  const clients = [];
  try {
    // A reader that keeps up: whatever was unacknowledged when the proxy was done is soon
    // acknowledged, and the socket closed.
    const quick = await slowReader(port);
    clients.push(quick);
    assert.equal((await quick.read()).data.length, payload.length);
    assert.ok(await waitFor(() => proxy.stats.closedClientEnd + proxy.stats.closedUpstreamEnd === 1 && proxy.stats.active === 0 && proxy.stats.socketsLingering === 0, 10_000),
      JSON.stringify(proxy.stats));

    // A reader that resets instead of reading: its lingering socket learns so and is closed.
    const resetting = await slowReader(port);
    clients.push(resetting);
    assert.ok(await waitFor(() => proxy.stats.socketsLingering === 1, 20_000), JSON.stringify(proxy.stats));
    resetting.destroy(); // unread data in its receive queue: the kernel answers with a reset
    assert.ok(await waitFor(() => proxy.stats.socketsLingering === 0, 10_000), 'still lingering after the reset');
    assert.equal(proxy.stats.lingersGivenUp, 0, 'a reset is not a give-up: nothing is left to deliver');

    // Two that never read: close() gives up on them (the kernel goes on delivering, as without lingering).
    const waiting = [await slowReader(port), await slowReader(port)];
    clients.push(...waiting);
    assert.ok(await waitFor(() => proxy.stats.socketsLingering === 2, 20_000), JSON.stringify(proxy.stats));
    assert.equal(proxy.stats.lingersGivenUp, 0);
    proxy.close();
    assert.equal(proxy.stats.lingersGivenUp, 2, JSON.stringify(proxy.stats));
    assert.equal(proxy.stats.socketsLingering, 0);
    for (const w of waiting) {
      const { data, ended } = await w.read();
      assert.equal(data.length, payload.length, 'the kernel delivers the rest of a socket given up on');
      assert.ok(ended);
    }
  } finally {
    for (const c of clients) c.destroy();
    proxy.close();
    upstream.close();
  }
});

/**
 * Runs `fn` with net.ipv4.tcp_mem at `value` (machine-wide: the kernel has no per-namespace knob),
 * then puts it back. A detached guard puts it back after 15 s even if this process dies; `fn` must
 * be done well within that.
 */
async function withTcpMem(value, fn) {
  const file = '/proc/sys/net/ipv4/tcp_mem';
  const original = fs.readFileSync(file, 'utf8').trim().replace(/\s+/g, ' ');
  assert.match(original, /^\d+ \d+ \d+$/);
  // A hard limit this low is another run's test value, not the machine's: it would be "restored".
  assert.ok(Number(original.split(' ')[2]) >= 1000,
    `net.ipv4.tcp_mem reads "${original}": another run of this test is under way, or one left it so (the kernel's default is a few percent of RAM in pages)`);
  const guard = spawn('sh', ['-c', `sleep 15; echo '${original}' > ${file}`], { detached: true, stdio: 'ignore' });
  guard.unref();
  try {
    fs.writeFileSync(file, value); // needs root: fails loudly without it
    return await fn();
  } finally {
    fs.writeFileSync(file, original);
    try {
      process.kill(-guard.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** TcpExt TCPAbortOnMemory: orphaned sockets the kernel reset for want of TCP memory (or for too many orphans). */
function abortsOnMemory() {
  const text = fs.readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'));
  const names = text[0].split(/\s+/);
  return Number(text[1].split(/\s+/)[names.indexOf('TCPAbortOnMemory')]);
}

test('TCP memory over its hard limit when a connection ends with its reply unread: systemd-socket-proxyd loses the tail to a reset, ours delivers all of it', { timeout: 120_000 }, async () => {
  const payload = pattern(REPLY, 13);
  const upstream = await answerOnEnd(payload);
  const results = {};
  try {
    for (const [name, launch, options] of [['reference', activateReference, []], ['ours', activateProxy, ['--access-log']]]) {
      const { child, port } = await launch([...options, upstream.target]);
      try {
        // A request; the whole reply comes, and waits in the kernel: the client reads nothing yet.
        const client = await slowReader(port, { halfClose: false });
        const inKernel = () => {
          const mine = queues(client.localPort, port);
          const theirs = queues(port, client.localPort);
          return mine && theirs && mine.recvQ + theirs.sendQ === payload.length;
        };
        assert.ok(await waitFor(inKernel, 20_000, 50), `${name}: the reply never reached the kernel's buffers`);
        const abortsBefore = abortsOnMemory();
        // Now TCP memory is over its hard limit (as on a machine whose sockets hold too much),
        // and the client ends its side: the connection is over for both daemons.
        const closedAtOnce = await withTcpMem('1 1 1', async () => {
          client.end();
          if (name === 'reference') {
            // It closes both sockets at once: an orphan holding the unread reply (LAST-ACK), or gone.
            const closed = await waitFor(() => !['ESTAB', 'CLOSE-WAIT'].includes(queues(port, client.localPort)?.state), 5000, 20);
            assert.ok(closed, `reference: did not close (${JSON.stringify(queues(port, client.localPort))})`);
          } else {
            const logged = new RegExp(`client=127\\.0\\.0\\.1:${client.localPort} .*end=`);
            assert.ok(await waitFor(() => logged.test(child.stderrText), 5000), `no access line: ${child.stderrText}`);
          }
          return abortsOnMemory() - abortsBefore;
        });
        const { data, error } = await client.read();
        results[name] = { bytes: data.length, intact: data.length === payload.length && sha256(data) === sha256(payload), error, resets: closedAtOnce };
      } finally {
        await stop(child);
      }
    }
    console.log(`linger under TCP memory pressure: ${JSON.stringify(results)}`);
    // The kernel's reset is real here: the reference closed with the reply unread, and lost its tail
    // (TCPAbortOnMemory counts machine-wide resets of the kind, so it is evidence, not a proof)…
    assert.ok(results.reference.bytes < payload.length && results.reference.resets >= 1, `reference: ${JSON.stringify(results)}`);
    // …ours waited for the acknowledgements before closing, and lost nothing.
    const { bytes, intact, error } = results.ours;
    assert.deepEqual({ bytes, intact, error }, { bytes: payload.length, intact: true, error: null }, JSON.stringify(results));
  } finally {
    await upstream.close();
  }
});

/** The value of an unlabelled `socket_proxyd_NAME` sample served at http://127.0.0.1:PORT/metrics. */
async function metric(port, name) {
  const body = await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve(text));
    }).on('error', reject);
  });
  const m = new RegExp(`^socket_proxyd_${name} (\\d+)$`, 'm').exec(body);
  assert.ok(m, `no socket_proxyd_${name} in:\n${body}`);
  return Number(m[1]);
}

test('at most a quarter of the fd limit lingers (64 of 256 with one thread): past it, sockets are closed at once, counted as given up, and still delivered by the kernel', { timeout: 120_000 }, async () => {
  const payload = pattern(REPLY / 4, 14);
  const upstream = await answering(payload);
  const [port, metricsPort] = [await freePort(), await freePort()];
  const child = spawnTool('prlimit', ['--nofile=256:256', process.execPath, CLI, `--listen=127.0.0.1:${port}`, '--workers=1',
    `--metrics=127.0.0.1:${metricsPort}`, upstream.target], { stdio: ['ignore', 'ignore', 'pipe'] }, 'apt-get install -y util-linux');
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const clients = [];
  try {
    assert.ok(await waitFor(() => /Listening on/.test(stderr), 15_000), `the proxy did not start: ${stderr}`);
    // One at a time (each ended before the next comes), so only lingering sockets pile up.
    for (let i = 0; i < 80; i++) {
      clients.push(await slowReader(port));
      const ended = await waitFor(async () => (await metric(metricsPort, 'sockets_lingering')) + (await metric(metricsPort, 'lingers_given_up_total')) === i + 1, 20_000, 20);
      assert.ok(ended, `client ${i}: lingering ${await metric(metricsPort, 'sockets_lingering')}, given up ${await metric(metricsPort, 'lingers_given_up_total')}`);
    }
    assert.equal(await metric(metricsPort, 'sockets_lingering'), 64);
    assert.equal(await metric(metricsPort, 'lingers_given_up_total'), 16);
    // Every reader gets every byte: from a lingering socket, or from the kernel's orphan.
    for (const c of clients) {
      const { data, ended, error } = await c.read();
      assert.deepEqual({ bytes: data.length, ended, error }, { bytes: payload.length, ended: true, error: null });
      assert.equal(sha256(data), sha256(payload));
    }
    assert.ok(await waitFor(async () => (await metric(metricsPort, 'sockets_lingering')) === 0, 15_000), 'sockets still linger');
    assert.equal(await metric(metricsPort, 'lingers_given_up_total'), 16);
    // Nothing but the start-up lines: no shortage of fds, no error.
    assert.deepEqual(stderr.split('\n').filter((l) => l && !/^(Listening on|Serving metrics at) /.test(l)), []);
  } finally {
    for (const c of clients) c.destroy();
    await reap(child);
    upstream.close();
  }
});

test('pipes refused their size (F_SETPIPE_SZ failing, as over fs.pipe-user-pages-soft) leave a lingering socket alone: it holds no pipe pages', { timeout: 120_000 }, async () => {
  const payload = pattern(REPLY, 15);
  const big = pattern(8 * MiB, 16);
  // "BIG" gets more than the kernel's buffers hold: its connection keeps a pipe full while unread.
  const upstream = await startServerWith({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.once('data', (d) => s.end(d.toString().startsWith('BIG') ? big : payload));
    s.resume();
  });
  const proxy = await engineChild({ listen: [{ host: '127.0.0.1', port: 0 }], targets: [{ host: '127.0.0.1', port: upstream.port }], workers: 1, logLevel: 6 });
  const port = Number(proxy.listeners[0].address.split(':').pop());
  const clients = [];
  let strace;
  try {
    const slow = await slowReader(port);
    clients.push(slow);
    assert.ok(await waitFor(async () => (await proxy.stats()).socketsLingering === 1, 20_000), JSON.stringify(await proxy.stats()));
    // Every F_SETPIPE_SZ fails from now on (the pool's fcntl calls alternate: set, then get the size),
    // while 12 readers of a big reply each hold a full pipe: more than the pool holds spare.
    strace = await straceAttach(workerThreadIds(proxy.pid), ['trace=fcntl', 'inject=fcntl:error=EPERM:when=1+2']);
    const stuck = [];
    for (let i = 0; i < 12; i++) stuck.push(await slowReader(port, { request: 'BIG\n' }));
    clients.push(...stuck);
    assert.ok(await waitFor(async () => (await proxy.stats()).pipesInUse >= 12, 20_000), JSON.stringify(await proxy.stats()));
    for (const r of await Promise.all(stuck.map((c) => c.read()))) {
      assert.deepEqual({ bytes: r.data.length, error: r.error }, { bytes: big.length, error: null });
      assert.equal(sha256(r.data), sha256(big));
    }
    const trace = await strace.stop();
    strace = null;
    assert.ok(/F_SETPIPE_SZ.*\(INJECTED\)/.test(trace), `no F_SETPIPE_SZ failed:\n${trace.slice(0, 2000)}`);
    assert.ok(proxy.logs.some((l) => /Pipes are smaller/.test(l.message)), 'no warning about small pipes');
    // The big readers' sockets come and go; the slow reader's stays, never given up.
    assert.ok(await waitFor(async () => (await proxy.stats()).socketsLingering === 1, 15_000), JSON.stringify(await proxy.stats()));
    assert.equal((await proxy.stats()).lingersGivenUp, 0);
    const { data } = await slow.read();
    assert.equal(sha256(data), sha256(payload));
    assert.ok(await waitFor(async () => (await proxy.stats()).socketsLingering === 0, 15_000));
  } finally {
    await strace?.stop();
    for (const c of clients) c.destroy();
    await proxy.close();
    upstream.close();
  }
});
