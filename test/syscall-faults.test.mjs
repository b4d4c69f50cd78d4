// Syscall fault injection on a running engine (issue 11, part 2): strace
// --inject on every forwarding thread makes one family of syscalls fail with
// one errno at a rate (every Sth call from the Fth, both drawn at random)
// while echo clients of both kinds run (small messages: the copy path; bulk:
// the splice path). For each syscall × errno:
//   - the proxy stays up and serves clean clients once the injection stops;
//   - every byte any client got back is the right byte (checked against what
//     it sent), and a client either gets its whole echo or is closed: none is
//     left hanging (each has a deadline);
//   - a fault costs at most its own connection (closed clients <= injected
//     faults), and none at all where the proxy waits or retries;
//   - once the injection stops, the proxy's fds (less its spare pipes, which
//     come and go) are back to where they were before.
// The seed of the random rates is printed; SYSCALL_FAULTS_SEED=N repeats a run.
// SYSCALL_FAULTS_MATRIX=FILE writes the outcome table (for the README).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { fdCount, pattern, startServerWith, waitFor } from './helpers.mjs';
import { engineChild, epollRegistrations, straceAttach, workerThreadIds } from './fault-helpers.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;
const WORKERS = 2;
const DEADLINE_MS = 30_000; // per client: closed or served by then, or it hung

const SEED = Number(process.env.SYSCALL_FAULTS_SEED ?? Math.floor(Math.random() * 2 ** 31));
let rngState = SEED || 1;
/** xorshift32: a repeatable stream of integers in [lo, hi]. */
function randomInt(lo, hi) {
  rngState ^= rngState << 13;
  rngState ^= rngState >>> 17;
  rngState ^= rngState << 5;
  return lo + ((rngState >>> 0) % (hi - lo + 1));
}

const matrix = [];
after(() => {
  const lines = [`seed ${SEED}`, '| syscall | errno | injected | clients served / closed | counters | what the proxy did |', '|---|---|---:|---:|---|---|'];
  for (const r of matrix) lines.push(`| ${r.syscall} | ${r.errno} | ${r.injected} | ${r.served} / ${r.closed} | ${r.counters} | ${r.did} |`);
  const text = lines.join('\n');
  if (process.env.SYSCALL_FAULTS_MATRIX) fs.writeFileSync(process.env.SYSCALL_FAULTS_MATRIX, `${text}\n`);
  console.log(text.split('\n').map((l) => `# ${l}`).join('\n'));
});

/**
 * An echo upstream that passes the client's end back once it has echoed
 * everything: TCP on loopback, or with `pauseMs` a UNIX socket path whose
 * connections read nothing for that long first. A UNIX socket buffers only
 * its sender's SO_SNDBUF (about 200 KiB, no autotuning), so the proxy holds a
 * bulk client's bytes in a pipe meanwhile.
 */
async function echoUpstream({ pauseMs = 0 } = {}) {
  const sockets = new Set();
  const dir = pauseMs ? fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-faults-')) : null;
  const server = await startServerWith({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    if (pauseMs === 0) return s.pipe(s);
    s.pause();
    setTimeout(() => s.pipe(s), pauseMs);
  }, dir ? path.join(dir, 'upstream.sock') : undefined);
  return {
    endpoint: dir ? { path: server.target } : { host: '127.0.0.1', port: server.port },
    close: async () => {
      for (const s of sockets) s.destroy();
      await server.close();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One client: sends `size` pattern bytes and half-closes, reads until the end
 * or an error. Resolves {outcome: 'served' | 'closed' | 'hung', bytes, size,
 * intact (every byte received is the one sent at that place), error}. 'hung':
 * not closed within `deadlineMs`; the client then resets its connection.
 */
function echoClient(port, size, seed, { deadlineMs = DEADLINE_MS } = {}) {
  const payload = pattern(size, seed);
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const chunks = [];
    let error = null;
    let done = false;
    const finish = (hung) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const got = Buffer.concat(chunks);
      const intact = got.length <= size && got.equals(payload.subarray(0, got.length));
      const outcome = hung ? 'hung' : got.length === size && intact && error === null ? 'served' : 'closed';
      if (hung) s.resetAndDestroy();
      else s.destroy();
      resolve({ outcome, bytes: got.length, size, intact, error });
    };
    const timer = setTimeout(() => finish(true), deadlineMs);
    s.on('connect', () => s.end(payload));
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e) => (error = e.code ?? String(e)));
    s.on('close', () => finish(false));
  });
}

/**
 * A long transfer: writes 64 KiB of pattern every 20 ms until stop(), then
 * half-closes; resolves like echoClient once its echo has ended.
 */
function pacedClient(port, seed) {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const chunk = pattern(64 * KiB, seed);
  const sent = createHash('sha256');
  const got = createHash('sha256');
  let sentBytes = 0;
  let gotBytes = 0;
  let error = null;
  const timer = setInterval(() => {
    if (s.writableLength > 1024 * KiB) return;
    s.write(chunk);
    sent.update(chunk);
    sentBytes += chunk.length;
  }, 20);
  s.on('data', (d) => {
    got.update(d);
    gotBytes += d.length;
  });
  s.on('error', (e) => (error = e.code));
  const closed = new Promise((resolve) => s.on('close', resolve));
  return {
    connected: new Promise((resolve) => s.once('connect', resolve)),
    stop: async () => {
      clearInterval(timer);
      s.end();
      let deadline;
      await Promise.race([closed, new Promise((r) => (deadline = setTimeout(r, DEADLINE_MS)))]);
      clearTimeout(deadline);
      s.destroy();
      const served = error === null && gotBytes === sentBytes && got.digest('hex') === sent.digest('hex');
      return { outcome: served ? 'served' : 'closed', sentBytes, gotBytes, error };
    },
  };
}

/** `count` echo clients, `concurrency` at a time, alternately small (copy path) and bulk (splice path). */
async function load(port, { count = 24, concurrency = 6, small = 700, bulk = 384 * KiB } = {}) {
  const results = [];
  let next = 0;
  const runner = async () => {
    while (next < count) {
      const i = next++;
      results[i] = await echoClient(port, i % 2 === 0 ? small : bulk + i, 1000 + i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, runner));
  return results;
}

const summary = (results) => ({
  served: results.filter((r) => r.outcome === 'served').length,
  closed: results.filter((r) => r.outcome === 'closed').length,
  hung: results.filter((r) => r.outcome === 'hung').length,
  broken: results.filter((r) => !r.intact).length,
});

const portOf = (proxy) => Number(proxy.listeners[0].address.split(':').pop());

/** fds of the engine process that are not spare pipes or lingering sockets (those come and go). */
async function fdsLessSpares(proxy) {
  const stats = await proxy.stats();
  return (await fdCount(proxy.pid)) - 2 * stats.pipesPooled - stats.socketsLingering;
}

/** Waits until the engine is at rest: nothing open or lingering, no pipe in use, spares back to the reserve. */
async function atRest(proxy, ms = 20_000) {
  return waitFor(async () => {
    const s = await proxy.stats();
    return s.active === 0 && s.socketsLingering === 0 && s.pipesInUse === 0 && s.pipesPooled <= 2 * WORKERS;
  }, ms, 50);
}

const COUNTERS_SHOWN = ['upstreamFailed', 'closedClientReset', 'closedUpstreamReset', 'closedError', 'idleTimeouts'];
function counterDelta(before, afterStats) {
  return COUNTERS_SHOWN.map((k) => [k, afterStats[k] - before[k]]).filter(([, v]) => v !== 0)
    .map(([k, v]) => `${k} +${v}`).join(', ') || '—';
}

/** A fresh engine child (2 workers) in front of a fresh echo upstream, warmed up and at rest. */
async function startProxy(spec = {}, upstreamOptions = {}) {
  const upstream = await echoUpstream(upstreamOptions);
  const proxy = await engineChild({ listen: [{ host: '127.0.0.1', port: 0 }], targets: [upstream.endpoint], workers: WORKERS, logLevel: 6, ...spec });
  const warm = summary(await load(portOf(proxy), { count: 4, concurrency: 2 }));
  assert.equal(warm.served, 4, 'warm-up clients served');
  assert.ok(await atRest(proxy), `engine not at rest after the warm-up: ${JSON.stringify(await proxy.stats())}`);
  return { proxy, upstream, close: async () => { await proxy.close(); await upstream.close(); } };
}

/**
 * One row of the matrix: injects `errno` into `syscall` (strace names; `trace`
 * may list several, all injected alike) on every worker thread at a random
 * rate while `load` runs; then checks the rules above. `lossless`: no client
 * may be closed (the proxy waits or retries); otherwise closed clients must not
 * outnumber the faults. `stalls`: injected EAGAIN, see below. `filter(line)` (optional) keeps only the injected
 * lines that count (e.g. fcntl F_SETPIPE_SZ). Returns the row.
 */
async function injectPhase({ proxy }, { syscalls, errno, lossless, stalls = false, when, did, loadOptions, filter, check }) {
  const port = portOf(proxy);
  const baseFds = await fdsLessSpares(proxy);
  const before = await proxy.stats();
  const rate = when ?? `${randomInt(1, 4)}+${randomInt(2, 5)}`;
  const strace = await straceAttach(workerThreadIds(proxy.pid), [
    `trace=${syscalls.join(',')}`,
    ...syscalls.map((s) => `inject=${s}:error=${errno}:when=${rate}`),
  ]);
  let trace;
  let results;
  try {
    results = await load(port, loadOptions);
  } finally {
    trace = await strace.stop();
  }
  const label = `${syscalls.join('/')} ${errno} (when=${rate}, seed ${SEED})`;
  const injectedLines = trace.split('\n').filter((l) => l.includes('(INJECTED)'));
  const counted = filter ? injectedLines.filter(filter) : injectedLines;
  assert.ok(counted.length > 0, `${label}: no fault was injected:\n${trace.slice(0, 4000)}`);
  if (filter) assert.equal(counted.length, injectedLines.length, `${label}: a fault hit a call it should not have:\n${injectedLines.join('\n')}`);
  const s = summary(results);
  const bad = (k) => results.map((r, i) => ({ i, ...r })).filter(k);
  // An injected EAGAIN skips a call that had work to do (bytes queued, room to
  // write): the engine waits for the next readiness edge, as it must after a
  // real EAGAIN, and with nothing more coming from the peers none follows. A
  // real kernel never answers EAGAIN in that state (see the README's
  // Reliability section). Those phases run with --idle-timeout: a stalled
  // connection is reset by it, and must not hang past it.
  if (stalls) {
    assert.equal(s.hung, 0, `${label}: clients left hanging past the idle timeout: ${JSON.stringify(bad((r) => r.outcome === 'hung'))}`);
    assert.ok(s.closed <= counted.length, `${label}: ${s.closed} closed clients from ${counted.length} faults`);
  } else if (s.hung > 0) {
    const threads = workerThreadIds(proxy.pid).map((t) => fs.readFileSync(`/proc/${proxy.pid}/task/${t}/stat`, 'utf8').split(' ').slice(2, 3).join('') + ':' + fs.readFileSync(`/proc/${proxy.pid}/task/${t}/wchan`, 'utf8'));
    assert.fail(`${label}: clients left hanging: ${JSON.stringify(bad((r) => r.outcome === 'hung'))}\nworkers: ${threads.join(' ')}\nstats: ${JSON.stringify(await proxy.stats())}\n${proxy.logs.slice(-20).map((l) => l.message).join('\n')}\n${trace.split('\n').slice(-30).join('\n')}`);
  }
  assert.equal(s.broken, 0, `${label}: wrong bytes delivered: ${JSON.stringify(bad((r) => !r.intact))}`);
  if (lossless) {
    assert.equal(s.closed, 0, `${label}: clients closed although the proxy should have waited or retried: ${JSON.stringify(bad((r) => r.outcome === 'closed'))}\n${proxy.logs.slice(-10).map((l) => l.message).join('\n')}`);
  } else {
    assert.ok(s.closed <= counted.length, `${label}: ${s.closed} clients closed by ${counted.length} faults (a fault may cost its own connection only)`);
  }
  // Still serving, once the faults stop...
  assert.ok(proxy.alive(), `${label}: the engine died: ${proxy.stderr()}`);
  const clean = summary(await load(port, { count: 6, concurrency: 3 }));
  assert.equal(clean.served, 6, `${label}: clients after the injection: ${JSON.stringify(clean)}`);
  // ...and back to its fds.
  assert.ok(await atRest(proxy), `${label}: not at rest: ${JSON.stringify(await proxy.stats())}`);
  let fds;
  const back = await waitFor(async () => (fds = await fdsLessSpares(proxy)) === baseFds, 15_000, 100);
  assert.ok(back, `${label}: ${fds} fds (less spare pipes) after the injection, ${baseFds} before`);
  const afterStats = await proxy.stats();
  if (check) await check({ results, trace, before, after: afterStats, injected: counted.length, summary: s });
  const row = {
    syscall: syscalls.join(' / '),
    errno,
    injected: counted.length,
    served: s.served,
    closed: s.closed,
    counters: counterDelta(before, afterStats),
    did,
  };
  matrix.push(row);
  return row;
}

// ---------------------------------------------------------------------------
// One test per syscall family

test('accept4 failing (EMFILE, ENFILE, ENOBUFS, ECONNABORTED): clients wait in the backlog and are all served', { timeout: 120_000 }, async () => {
  const p = await startProxy();
  try {
    for (const errno of ['EMFILE', 'ENFILE', 'ENOBUFS']) {
      await injectPhase(p, { syscalls: ['accept4'], errno, lossless: true, did: 'accepting pauses 100 ms (one log line per episode); the client waits in the backlog and is served' });
    }
    await injectPhase(p, { syscalls: ['accept4'], errno: 'ECONNABORTED', lossless: true, did: 'that accept is skipped, the next one taken at once; every client served' });
  } finally {
    await p.close();
  }
});

test('socket and connect failing (EMFILE, ENOMEM, EADDRNOTAVAIL): a shortage waits, anything else closes that client only', { timeout: 120_000 }, async () => {
  const p = await startProxy();
  try {
    for (const errno of ['EMFILE', 'ENOMEM']) {
      await injectPhase(p, { syscalls: ['socket'], errno, lossless: true, did: 'out of fds/memory: accepting pauses, the client waits 100 ms and its socket() is tried again; served' });
    }
    await injectPhase(p, { syscalls: ['socket'], errno: 'EADDRNOTAVAIL', lossless: false, did: 'the next target address is tried; with none left the client is closed (end), counted in upstreamFailed' });
    for (const errno of ['EMFILE', 'ENOMEM', 'EADDRNOTAVAIL']) {
      await injectPhase(p, { syscalls: ['connect'], errno, lossless: false, did: 'the next target address is tried; with none left the client is closed (end), counted in upstreamFailed' });
    }
  } finally {
    await p.close();
  }
});

test('pipe2 failing (EMFILE, ENFILE): connections forward without a pipe or wait for one; no byte lost', { timeout: 120_000 }, async () => {
  // The upstream reads each connection only after 300 ms: meanwhile its bytes
  // wait in a pipe, so a dozen connections need more pipes than the spares.
  const p = await startProxy({}, { pauseMs: 300 });
  try {
    for (const errno of ['EMFILE', 'ENFILE']) {
      await injectPhase(p, { syscalls: ['pipe2'], errno, lossless: true, loadOptions: { concurrency: 12, bulk: MiB }, did: 'no pipe: peek, send, take what was sent (or wait 100 ms for a pipe); accepting pauses; every client served' });
    }
  } finally {
    await p.close();
  }
});

test('fcntl(F_SETPIPE_SZ) failing (EPERM, as over fs.pipe-user-pages-soft): pipes stay smaller, nothing lost', { timeout: 120_000 }, async () => {
  const p = await startProxy({}, { pauseMs: 300 });
  try {
    // The worker's fcntl calls come in pairs (F_SETPIPE_SZ, then F_GETPIPE_SZ) in
    // the pipe pool: every odd one is a F_SETPIPE_SZ.
    await injectPhase(p, {
      syscalls: ['fcntl'], errno: 'EPERM', lossless: true, when: `1+2`, loadOptions: { concurrency: 12, bulk: MiB },
      // (A call another thread interrupted in strace's log ends on a line of its
      // own, "<... fcntl resumed>", without its arguments: only a line that names
      // another command is a miss.)
      filter: (l) => !/fcntl\(\d+, F_(?!SETPIPE_SZ)/.test(l),
      did: 'the pipe keeps its default size (64 KiB), one warning, spare pipes given back; every client served',
      check: () => assert.ok(p.proxy.logs.some((l) => /Pipes are smaller .*Operation not permitted/.test(l.message)), 'no warning about small pipes'),
    });
  } finally {
    await p.close();
  }
});

// EINTR: retried on the next loop turn, nothing lost. The rest: that
// connection is reset. (EAGAIN has a test of its own, below.)
const DATA_ERRNOS = ['EINTR', 'ENOMEM', 'EPIPE', 'ECONNRESET'];
const dataExpectation = (errno) => ({ lossless: errno === 'EINTR' });

test('splice failing (EINTR, ENOMEM, EPIPE, ECONNRESET): a retry, or that connection reset, never a wrong byte', { timeout: 180_000 }, async () => {
  const p = await startProxy();
  try {
    for (const errno of DATA_ERRNOS) {
      await injectPhase(p, {
        syscalls: ['splice'], errno, ...dataExpectation(errno),
        did: errno === 'EINTR' ? 'the connection yields and is pumped again on the next loop turn; every client served'
          : 'into a pipe: a peek finds the bytes still queued, so that side is read on with recv, nothing lost; out of a pipe: that connection is reset on both sides',
      });
    }
  } finally {
    await p.close();
  }
});

test('recv failing (recvmsg, recvfrom: EINTR, ENOMEM, EPIPE, ECONNRESET): a retry, or that connection reset', { timeout: 180_000 }, async () => {
  const p = await startProxy();
  try {
    for (const errno of DATA_ERRNOS) {
      await injectPhase(p, {
        syscalls: ['recvmsg', 'recvfrom'], errno, ...dataExpectation(errno),
        did: errno === 'EINTR' ? 'the connection yields and is pumped again on the next loop turn (the take after a peek is retried on the spot); every client served'
          : 'the read ends that side with an error: what was read before it is delivered, then both sides are reset',
      });
    }
  } finally {
    await p.close();
  }
});

test('send failing (sendto: EINTR, ENOMEM, EPIPE, ECONNRESET): a retry, or that connection reset', { timeout: 180_000 }, async () => {
  const p = await startProxy();
  try {
    for (const errno of DATA_ERRNOS) {
      await injectPhase(p, {
        syscalls: ['sendto'], errno, ...dataExpectation(errno),
        did: errno === 'EINTR' ? 'what was not sent waits in a spare pipe and is spliced out next; every client served'
          : 'that connection is reset on both sides',
      });
    }
  } finally {
    await p.close();
  }
});

test('EAGAIN injected into splice, recv and send: with --idle-timeout=2s a stalled connection is reset, none hangs, no byte is wrong', { timeout: 180_000 }, async () => {
  // strace skips the call, so the bytes it would have moved stay queued, and
  // no readiness edge follows unless a peer does something: a state a real
  // kernel never produces (README, Reliability). The engine waits for that
  // edge as it must; the idle timeout is what ends such a connection.
  const p = await startProxy({ idleTimeoutMs: 2000 });
  try {
    for (const syscalls of [['splice'], ['recvmsg', 'recvfrom'], ['sendto']]) {
      await injectPhase(p, {
        syscalls, errno: 'EAGAIN', lossless: false, stalls: true,
        did: 'waits for the next readiness edge; bytes queued without one (kernel-impossible) stall until --idle-timeout resets both sides',
      });
    }
  } finally {
    await p.close();
  }
});

test('epoll_ctl(EPOLL_CTL_ADD) failing (ENOMEM, ENOSPC) for a client or its upstream socket: the client is reset or waits; running transfers untouched', { timeout: 120_000 }, async () => {
  // strace cannot tell ADD from DEL, and a DEL never fails with these errors
  // in a real kernel, so each fault is one shot at a chosen call: per new
  // connection a worker makes two ADDs, the client's then the upstream's.
  // Established connections make no epoll_ctl call until they close: four
  // long transfers run across every fault and must arrive whole.
  const p = await startProxy();
  const port = portOf(p.proxy);
  const background = Array.from({ length: 4 }, (_, i) => pacedClient(port, 77 + i));
  let results = null;
  try {
    await Promise.all(background.map((b) => b.connected));
    assert.ok(await waitFor(async () => (await p.proxy.stats()).active === 4, 10_000), 'the long transfers are not all forwarded');
    const outcomes = { client: [], upstream: [] };
    for (let round = 0; round < 6; round++) {
      const errno = round % 2 === 0 ? 'ENOMEM' : 'ENOSPC';
      const which = randomInt(1, 2);
      // A fault pauses accepting for 100 ms: every worker is back on the listener first.
      const listening = () => p.proxy.epolls.every((ep) => epollRegistrations(p.proxy.pid, ep).some((r) => r.tfd === p.proxy.listeners[0].fd));
      assert.ok(await waitFor(listening, 10_000), 'the workers did not resume accepting');
      const strace = await straceAttach(workerThreadIds(p.proxy.pid), ['trace=epoll_ctl', `inject=epoll_ctl:error=${errno}:when=${which}`]);
      let r;
      let trace;
      try {
        r = await echoClient(port, 700, round);
      } finally {
        trace = await strace.stop();
      }
      const injected = trace.split('\n').filter((l) => l.includes('(INJECTED)'));
      assert.equal(injected.length, 1, `round ${round} (seed ${SEED}): ${trace}`);
      assert.match(injected[0], /EPOLL_CTL_ADD/);
      assert.ok(r.intact && r.outcome !== 'hung', `round ${round}: ${JSON.stringify(r)}`);
      // The client's own ADD: it is reset; the upstream's: it waits 100 ms and is served.
      assert.equal(r.outcome, which === 1 ? 'closed' : 'served', `round ${round}, ${errno} on ADD #${which}: ${JSON.stringify(r)}`);
      outcomes[which === 1 ? 'client' : 'upstream'].push(errno);
    }
    results = await Promise.all(background.map((b) => b.stop()));
    assert.deepEqual(results.map((r) => r.outcome), Array(4).fill('served'), JSON.stringify(results));
    assert.ok(results.every((r) => r.sentBytes > MiB), `the long transfers moved too little: ${JSON.stringify(results)}`);
    assert.ok(await atRest(p.proxy));
    matrix.push({ syscall: 'epoll_ctl ADD (client socket)', errno: 'ENOMEM, ENOSPC', injected: outcomes.client.length, served: 0, closed: outcomes.client.length, counters: 'closedError', did: 'that client is reset; accepting pauses 100 ms; transfers in progress untouched' });
    matrix.push({ syscall: 'epoll_ctl ADD (upstream socket)', errno: 'ENOMEM, ENOSPC', injected: outcomes.upstream.length, served: outcomes.upstream.length, closed: 0, counters: '—', did: 'the client waits 100 ms (accepting paused) and its upstream is connected again; served' });
  } finally {
    if (!results) await Promise.all(background.map((b) => b.stop()));
    await p.close();
  }
});

test('setsockopt failing (ENOMEM, ENOBUFS; with --keepalive): that client closed, the rest served', { timeout: 120_000 }, async () => {
  const p = await startProxy({ keepaliveIdle: 60, keepaliveInterval: 15, keepaliveCount: 4 });
  try {
    for (const errno of ['ENOMEM', 'ENOBUFS']) {
      // A dozen setsockopt calls per connection (TCP_NODELAY and five keepalive
      // options per TCP side), one more (SO_LINGER) when it is reset: a sparse rate.
      await injectPhase(p, { syscalls: ['setsockopt'], errno, lossless: false, when: `${randomInt(1, 12)}+${randomInt(14, 30)}`,
        did: "the client's option: that client is reset; the upstream socket's: the next address is tried, then the client is closed (upstreamFailed); SO_LINGER (a reset): a plain close instead" });
    }
  } finally {
    await p.close();
  }
});

// ---------------------------------------------------------------------------
// Found while analysing the stalls above, on a real kernel with no fault
// injected: a client's reset that follows its own half-close is not passed on
// while the upstream stays silent. The connection (two sockets) stays open
// until the upstream writes or --idle-timeout runs out, and the upstream never
// learns that its client is gone. The same client resetting without a
// half-close first is passed on at once.

for (const halfClosedFirst of [false, true]) {
  const name = halfClosedFirst
    ? 'a client that half-closes, then resets while the upstream is silent: the upstream gets the reset'
    : 'a client that resets while the upstream is silent: the upstream gets the reset';
  test(name, { timeout: 30_000 }, async () => {
    const upstreamSockets = [];
    const server = await startServerWith({ allowHalfOpen: true }, (s) => {
      const seen = { data: '', ended: false, error: null, closed: false };
      upstreamSockets.push(seen);
      s.on('data', (d) => (seen.data += d));
      s.on('end', () => (seen.ended = true)); // and says nothing: a server still working on the answer
      s.on('error', (e) => (seen.error = e.code));
      s.on('close', () => (seen.closed = true));
    });
    const proxy = await engineChild({ listen: [{ host: '127.0.0.1', port: 0 }], targets: [{ host: '127.0.0.1', port: server.port }], workers: 1 });
    const client = net.connect({ port: portOf(proxy), host: '127.0.0.1', allowHalfOpen: true });
    client.on('error', () => {});
    try {
      await new Promise((r) => client.once('connect', r));
      client.write('request');
      if (halfClosedFirst) client.end();
      assert.ok(await waitFor(() => upstreamSockets[0]?.data === 'request' && (!halfClosedFirst || upstreamSockets[0].ended), 10_000), 'the upstream did not get the request');
      client.resetAndDestroy();
      if (!halfClosedFirst) {
        const passedOn = await waitFor(() => upstreamSockets[0].closed, 5000);
        assert.ok(passedOn, `the client's reset did not reach the upstream within 5 s (engine: ${JSON.stringify(await proxy.stats())})`);
        assert.equal(upstreamSockets[0].error, 'ECONNRESET', 'a reset, not a clean end');
      } else {
        // The upstream read its end already, so Node reads no more and would
        // only learn of a reset by writing: ask the kernel instead. A reset
        // takes its socket out of CLOSE-WAIT, where it otherwise stays.
        const closeWait = () => spawnSync('ss', ['-tnH', 'state', 'close-wait', `( sport = :${server.port} )`], { encoding: 'utf8' }).stdout.trim();
        const passedOn = await waitFor(() => closeWait() === '', 5000);
        assert.ok(passedOn, `the upstream's socket is still in CLOSE-WAIT 5 s after the client's reset: ${closeWait()} (engine: ${JSON.stringify(await proxy.stats())})`);
        assert.equal((await proxy.stats()).closedClientReset, 1);
      }
    } finally {
      client.destroy();
      await proxy.close();
      await server.close();
    }
  });
}
