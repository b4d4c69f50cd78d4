#!/usr/bin/env node
// Soak: one socket-activated socket-proxyd under a mixed load for N minutes, on loopback only.
//
//   npm run soak -- --minutes N [--seed S] [--crowd 1100] [--rss-bound 48] [--json FILE]
//
// The CLI is started the way systemd starts it (systemd-socket-activate -l 127.0.0.1:PORT node
// bin/socket-proxyd -c … 127.0.0.1:UPSTREAM), with $NOTIFY_SOCKET pointed at a receiver of our own
// (READY=1, STATUS=) and scripts/soak/probe.cjs preloaded (`node -r`), which only reads the engine's
// exact counters. The upstream is a process of its own (scripts/soak/upstream.mjs), SIGKILLed and
// started again every minute (every third of the run when that is shorter, at least every 20 s).
//
// Load, all at once: a new connection per request; keep-alive request/response; bulk both ways;
// half-close echoes; clients that reset (SO_LINGER 0); upstreams that reset; clients that vanish
// mid-transfer (close with bytes unread and unsent); slow readers; and, every kill interval, a crowd of
// --crowd (1100) connections open at once, each proving it is forwarded, held for a few seconds.
// Every byte either way is checked where it lands (scripts/soak/protocol.mjs).
//
// Phases: warm-up (8 s of the load without kills or crowds), then idle: the baseline sample (fds,
// threads, RSS); then N minutes of load, sampled every 10 s (/proc/PID/{fd,task,status}, the counters,
// the last STATUS=); then idle again: the final sample. It prints the table and the checks, and exits 1
// when one fails:
//   - any byte arrived wrong (either direction, any connection, clean or not);
//   - a connection failed or hung that no upstream kill explains (a connection is excused only when its
//     lifetime overlaps a kill: from the SIGKILL until 2 s after the new upstream listens); a reset
//     that arrived as a clean end (a loss that looks like success);
//   - once the load stopped, fds or threads above the baseline (waited for up to 30 s: spare pipes
//     are trimmed after a second unused);
//   - RSS after the load more than --rss-bound MiB (default 16) above the baseline, or more than half
//     of that grown between the first and the last load sample of a run of 3 minutes or more. The
//     forwarding allocates nothing per byte and little per connection, and no JS runs per connection;
//     measured growth is 1–6 MiB, nearly all in the first seconds of load. 16 MiB leaves room for V8
//     and malloc jitter, and still
//     catches a leak of 600 bytes per connection in one minute (~27,000 connections), or of 25 bytes
//     per connection in an hour;
//   - the counters disagree: accepted ≠ closed (every cause) + active; accepted + refused ≠ the
//     connections the clients made; bytes to upstream/client outside what the peers prove: every clean
//     connection counts exactly (its upstream confirms the count it received), a cut one between what
//     its receiver got and what its sender wrote; STATUS= not the counters' figures;
//   - the proxy did not stay up, or did not exit 0 on SIGTERM.
import { fork } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ACTIVATE, CLI, activate, freePort, notifyReceiver } from '../test/helpers.mjs';
import {
  Checker, KIND, KIND_NAME, TRAILER_SIZE, decodeTrailer, encodeHeader, prng, writeStream,
} from './soak/protocol.mjs';

const HERE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'soak');
const USAGE = `usage: npm run soak -- [--minutes N] [--seed S] [--crowd N] [--rss-bound MiB] [--json FILE]
  --minutes N      minutes of load after the warm-up (default 1; fractions allowed)
  --seed S         seed of every random choice (default: from the clock; printed)
  --crowd N        connections held open at once, every kill interval (default 1100)
  --rss-bound MiB  allowed RSS growth from the idle baseline to the idle end (default 16)
  --json FILE      also write the samples and the checks as JSON
  --access-log FILE  run the proxy with --access-log --log-level=debug and write its stderr to FILE
                   (a line per connection); a failure then quotes the lines of its client port`;

const { values: opts } = parseArgs({
  options: {
    minutes: { type: 'string', default: '1' },
    seed: { type: 'string' },
    crowd: { type: 'string', default: '1100' },
    'rss-bound': { type: 'string', default: '16' },
    json: { type: 'string' },
    'access-log': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (opts.help) {
  console.log(USAGE);
  process.exit(0);
}
const MINUTES = Number(opts.minutes);
const CROWD = Number(opts.crowd);
const RSS_BOUND_MIB = Number(opts['rss-bound']);
const SEED = opts.seed === undefined ? Date.now() % 1e9 : Number(opts.seed);
if (!(MINUTES > 0 && MINUTES <= 24 * 60) || !(CROWD >= 0) || !(RSS_BOUND_MIB > 0) || !Number.isInteger(SEED)) {
  console.error(USAGE);
  process.exit(2);
}

// Under AddressSanitizer (npm run test:asan preloads libasan into every node) freed memory waits in
// ASan's quarantine (quarantine_size_mb, 256 by default) before it is reused: RSS grows by up to that
// much by design, so the bound grows by as much there.
const ASAN_QUARANTINE_MIB = /libasan/.test(process.env.LD_PRELOAD ?? '')
  ? Number(/quarantine_size_mb=(\d+)/.exec(process.env.ASAN_OPTIONS ?? '')?.[1] ?? 256) : 0;
const RSS_LIMIT_MIB = RSS_BOUND_MIB + ASAN_QUARANTINE_MIB;
const LOAD_MS = Math.round(MINUTES * 60_000);
const KILL_EVERY_MS = Math.min(60_000, Math.max(20_000, Math.round(LOAD_MS / 3)));
const WARMUP_MS = 8_000;
const SAMPLE_EVERY_MS = 10_000;
const CONN_DEADLINE_MS = 120_000; // a connection still open after this is hung
const KILL_GRACE_MS = 2_000; // after the new upstream listens, failures are no longer excused
const CROWD_HOLD_MS = 5_000;
const MAX_CONNECTIONS = Math.max(4096, CROWD + 1024);
const WORKERS = 2; // --workers: both cores

const log = (msg) => process.stderr.write(`[soak ${((Date.now() - T0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
const T0 = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rng = prng(SEED);

// ---------------------------------------------------------------------------------------------------
// Preconditions: fail loudly, never skip.

function fdLimit() {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
  return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
}
{
  // This process holds the clients, the upstream child the other ends: one fd each per crowd member.
  const need = CROWD + 1024;
  if (fdLimit() < need) {
    console.error(`soak: RLIMIT_NOFILE is ${fdLimit()}, the crowd of ${CROWD} needs ${need}: run under prlimit --nofile=${2 * need}:${2 * need}`);
    process.exit(2);
  }
  for (const tool of [ACTIVATE, 'python3']) {
    const found = tool.startsWith('/') ? fs.existsSync(tool) : process.env.PATH.split(':').some((d) => fs.existsSync(path.join(d, tool)));
    if (!found) {
      console.error(`soak: ${tool} is missing (apt-get install -y systemd python3)`);
      process.exit(2);
    }
  }
  if (!fs.existsSync(path.join(HERE, '..', '..', 'dist', 'cli.js'))) {
    console.error('soak: dist/ is missing: npm run build:ts');
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------------------------------
// The upstream: killed and restarted.

const upstreamPort = await freePort();
const kills = []; // {at, ready}
let upstream = null;
const ledger = new Map(); // id -> {rec (client side, once done), report (upstream side)}
const failures = []; // {what, detail}: never excused
const excusable = []; // {what, detail, start, end}: failures only if no kill explains them
const stats = {
  made: 0, connectFailed: 0, clean: 0, cut: 0, excused: 0, excusedByMemory: [], byKind: {}, crowds: [],
  lowUp: 0, highUp: 0, lowDown: 0, highDown: 0, reports: 0,
};
const fail = (what, detail, rec = null) => failures.push({ what, detail, rec });

function onReports(reports) {
  for (const r of reports) {
    stats.reports++;
    if (!r.ok) fail('wrong byte at the upstream', `connection ${r.id} (${KIND_NAME[r.kind]}): a byte it received differs from what the client sent`);
    const entry = ledger.get(r.id);
    if (!entry) continue; // a clean connection, settled already
    entry.report = r;
    if (entry.rec) settleCut(entry.rec, r);
  }
}

let stopping = false;
async function startUpstream() {
  for (let attempt = 0; ; attempt++) {
    const child = fork(path.join(HERE, 'upstream.mjs'), [String(upstreamPort)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.on('message', (m) => m.reports && onReports(m.reports));
    const ready = await new Promise((resolve) => {
      child.on('message', (m) => m.ready && resolve(true));
      child.once('exit', () => resolve(false));
    });
    child.once('exit', (code, signal) => {
      if (signal === 'SIGKILL' || stopping) return;
      // The soak's own peer broke: no verdict on the proxy can be trusted after this.
      fail('the soak upstream died', `exit ${code} ${signal}`);
      if (upstream === child) startUpstream().then((c) => (upstream = c));
    });
    if (ready) return child;
    if (attempt >= 20) throw new Error('the soak upstream does not start');
    await sleep(250);
  }
}

async function killUpstream() {
  const k = { at: Date.now(), ready: Infinity };
  kills.push(k);
  const old = upstream;
  if (old.exitCode === null && old.signalCode === null) {
    const gone = new Promise((r) => old.once('exit', r));
    old.kill('SIGKILL');
    await gone;
  }
  upstream = await startUpstream();
  k.ready = Date.now();
  log(`upstream SIGKILLed and listening again after ${k.ready - k.at} ms`);
}

const excusedByKill = (start, end) => kills.some((k) => start <= k.ready + KILL_GRACE_MS && end >= k.at);

// The kernel's own resets. When TCP memory is over net.ipv4.tcp_mem's hard limit (another process
// parking gigabytes in socket buffers: the test suite's 1,000 slow readers do), close() of a socket
// with unsent data sends a reset and drops that data (TcpExt TCPAbortOnMemory), whatever the program
// did: a connection that lost its tail while that counter rose is the machine's, not the proxy's.
// Sampled every 250 ms; the counters are the network namespace's, shared with anything else there.
function abortsOnMemory() {
  const [keys, values] = fs.readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:')).map((l) => l.split(/\s+/));
  return Number(values[keys.indexOf('TCPAbortOnMemory')]);
}
const memoryAborts = [{ at: Date.now(), count: abortsOnMemory() }]; // {at, count}, in time order
const memorySampler = setInterval(() => {
  const count = abortsOnMemory();
  if (count !== memoryAborts.at(-1).count) memoryAborts.push({ at: Date.now(), count });
}, 250);
const excusedByMemory = (start, end) => memoryAborts.some((m, i) => i > 0 && m.at >= start && m.at <= end + 500);

// ---------------------------------------------------------------------------------------------------
// The proxy, socket-activated, and what it reports.

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-soak-'));
const probeFile = path.join(work, 'counters.json');
const notify = await notifyReceiver(path.join(work, 'notify.sock'));
const proxyPort = await freePort();
upstream = await startUpstream();
const proxy = activate(`127.0.0.1:${proxyPort}`, process.execPath,
  ['-r', path.join(HERE, 'probe.cjs'), CLI, '-c', String(MAX_CONNECTIONS), `--workers=${WORKERS}`,
    ...(opts['access-log'] ? ['--access-log', '--log-level=debug'] : []), `127.0.0.1:${upstreamPort}`],
  { extra: ['-E', `NOTIFY_SOCKET=${notify.address}`, '-E', `SOAK_PROBE_FILE=${probeFile}`] });
let proxyExit = null;
proxy.exited.then((e) => (proxyExit = e));
if (opts['access-log']) {
  // To the file, not to memory: an hour is a million lines. The last few KiB stay for messages.
  const file = fs.createWriteStream(opts['access-log']);
  proxy.stderr.removeAllListeners('data');
  proxy.stderr.on('data', (d) => {
    file.write(d);
    proxy.stderrText = (proxy.stderrText + d).slice(-8192);
  });
}

/** What is known of a failed connection beyond its detail: the upstream's report, its access log lines. */
function evidence(f) {
  let text = f.rec?.report ? `; the upstream's report: ${JSON.stringify(f.rec.report)}` : '';
  const port = f.rec?.port;
  if (opts['access-log'] && port) {
    const lines = fs.readFileSync(opts['access-log'], 'utf8').split('\n').filter((l) => l.includes(`client=127.0.0.1:${port} `));
    text += `; the access log's ${lines.length} lines for client port ${port} (ports are reused): ${lines.slice(-40).join(' | ')}`;
  }
  return text;
}

function counters() {
  try {
    return JSON.parse(fs.readFileSync(probeFile, 'utf8')).counters;
  } catch {
    return null; // not written yet, or caught between truncate and write
  }
}
async function freshCounters(after = Date.now()) {
  for (let i = 0; i < 200; i++) {
    try {
      const snap = JSON.parse(fs.readFileSync(probeFile, 'utf8'));
      if (snap.at >= after) return snap.counters;
    } catch { /* next */ }
    await sleep(50);
  }
  throw new Error('the probe in the proxy stopped writing counters');
}
const lastStatus = () => {
  const m = [...notify.messages].reverse().find((x) => /STATUS=/.test(x.text));
  return m ? /STATUS=([^\n]*)/.exec(m.text)[1] : '';
};

async function sample(phase) {
  const pid = proxy.pid;
  const c = await freshCounters();
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const s = {
    t: Math.round((Date.now() - T0) / 1000),
    phase,
    fds: fs.readdirSync(`/proc/${pid}/fd`).length,
    threads: Number(/^Threads:\s+(\d+)/m.exec(status)[1]),
    rssKiB: Number(/^VmRSS:\s+(\d+)/m.exec(status)[1]),
    active: c.active,
    accepted: c.accepted,
    refused: c.refused,
    upstreamFailed: c.upstreamFailed,
    bytesToUpstream: c.bytesToUpstream,
    bytesToClient: c.bytesToClient,
    pipes: `${c.pipesInUse}/${c.pipesPooled}`,
    pooled: c.pipesPooled,
    lingering: c.socketsLingering ?? 0,
    clientsOpen: openClients,
    status: lastStatus(),
  };
  samples.push(s);
  log(`${phase}: fds ${s.fds}, threads ${s.threads}, RSS ${(s.rssKiB / 1024).toFixed(1)} MiB, active ${s.active}, accepted ${s.accepted}, clients open ${openClients}`);
  return s;
}
const samples = [];

// ---------------------------------------------------------------------------------------------------
// Clients.

let nextId = 0;
let openClients = 0;

/** Everything the upstream writes on a connection of this header, trailer included: exact for the kinds that end cleanly, at most for the others. */
function expectedDown(h) {
  switch (h.kind) {
    case KIND.rr: case KIND.bulk: case KIND.slow: return h.downSize + TRAILER_SIZE;
    case KIND.keepalive: return h.param * h.downSize + TRAILER_SIZE;
    case KIND.echo: return h.upSize;
    case KIND.upstreamReset: return h.param;
    default: return h.downSize; // clientReset, vanish
  }
}
const CLEAN_KINDS = new Set([KIND.rr, KIND.keepalive, KIND.bulk, KIND.echo, KIND.slow]);

/**
 * One connection of `kind`; resolves its record once it closed. `hold` (echo only): after the echo of
 * the payload, wait for this promise before ending; `onEchoed` is told when the echo is back.
 */
function runConn(kind, { upSize = 0, downSize = 0, param = 0, hold = null, onEchoed = null, rate = 0 } = {}) {
  const h = { kind, id: ++nextId >>> 0, seedUp: rng.int(0, 2 ** 31), seedDown: rng.int(0, 2 ** 31), upSize, downSize, param };
  const rec = { h, start: Date.now(), end: 0, connected: false, ok: true, error: null, ended: false, down: 0, trailer: null, sent: 0, got: 0 };
  const entry = { rec: null, report: null };
  ledger.set(h.id, entry);
  stats.byKind[KIND_NAME[kind]] ??= { made: 0, clean: 0, cut: 0 };
  stats.byKind[KIND_NAME[kind]].made++;
  openClients++;
  const payloadDown = expectedDown(h) - (CLEAN_KINDS.has(kind) && kind !== KIND.echo ? TRAILER_SIZE : 0);
  const checker = new Checker(kind === KIND.echo ? h.seedUp : h.seedDown);
  const trailer = [];
  const waiters = []; // {bytes, resolve}
  let lastDownAt = 0;
  let trickle = null;

  return new Promise((resolve) => {
    const socket = net.connect({ port: proxyPort, host: '127.0.0.1', allowHalfOpen: true });
    const deadline = setTimeout(() => {
      rec.error = 'hung';
      socket.destroy();
    }, CONN_DEADLINE_MS);
    const untilDown = (bytes) => new Promise((r) => (rec.down >= bytes ? r(true) : waiters.push({ bytes, resolve: r })));
    socket.on('connect', () => {
      rec.connected = true;
      rec.port = socket.localPort;
      stats.made++;
      socket.setNoDelay(true);
      drive().catch((e) => {
        rec.error ??= `client: ${e.message}`;
        socket.destroy();
      });
    });
    socket.on('data', (d) => {
      const payload = Math.max(0, Math.min(d.length, payloadDown - rec.down));
      if (payload > 0 && !checker.push(d.subarray(0, payload))) rec.ok = false;
      if (payload < d.length) {
        if (!CLEAN_KINDS.has(kind) || kind === KIND.echo) rec.ok = false; // more than was ever sent
        else trailer.push(d.subarray(payload));
      }
      rec.down += d.length;
      for (let i = waiters.length - 1; i >= 0; i--) if (rec.down >= waiters[i].bytes) waiters.splice(i, 1)[0].resolve(true);
      if (rate > 0) {
        // A slow reader: pause until the byte budget at `rate` bytes/s catches up.
        const due = rec.start + (rec.down / rate) * 1000;
        if (due > Date.now() + 5) {
          socket.pause();
          clearTimeout(trickle);
          trickle = setTimeout(() => socket.resume(), due - Date.now());
        }
      }
      lastDownAt = Date.now();
    });
    socket.on('end', () => {
      rec.ended = true;
      if (kind === KIND.upstreamReset) {
        // libuv reports a reset that follows data at once (POLLHUP after a partial read) as an end,
        // so Node cannot tell them apart by reading. Writing can: after a reset the socket is closed
        // and write() fails with EPIPE at once; after a FIN it succeeds.
        socket.write(Buffer.alloc(1), (e) => {
          rec.resetSeen = Boolean(e);
          socket.destroy();
        });
        return;
      }
      if (!hold) socket.end(); // a crowd member ends when released
    });
    socket.on('error', (e) => (rec.error ??= e.code ?? e.message));
    socket.on('close', () => {
      clearTimeout(deadline);
      clearTimeout(trickle);
      for (const w of waiters) w.resolve(false);
      rec.end = Date.now();
      rec.sent = socket.bytesWritten;
      rec.got = socket.bytesRead;
      if (trailer.length) rec.trailer = decodeTrailer(Buffer.concat(trailer));
      openClients--;
      settle(rec, entry);
      resolve(rec);
    });

    async function drive() {
      socket.write(encodeHeader(h));
      switch (kind) {
        case KIND.rr:
        case KIND.slow:
          await writeStream(socket, h.seedUp, upSize);
          break; // the upstream answers and ends; 'end' ends ours
        case KIND.keepalive:
          for (let k = 1; k <= param; k++) {
            if (!(await writeStream(socket, h.seedUp, upSize, (k - 1) * upSize))) return;
            if (!(await untilDown(k * downSize))) return;
          }
          break;
        case KIND.bulk:
          if (await writeStream(socket, h.seedUp, upSize)) socket.end();
          break;
        case KIND.echo:
          if (!(await writeStream(socket, h.seedUp, upSize))) return;
          if (!hold) {
            socket.end();
            break;
          }
          if (!(await untilDown(upSize))) return;
          onEchoed?.();
          await hold;
          socket.end();
          break;
        case KIND.clientReset:
          await writeStream(socket, h.seedUp, upSize);
          if (await untilDown(param)) socket.resetAndDestroy();
          break;
        case KIND.upstreamReset:
          await writeStream(socket, h.seedUp, upSize); // the upstream sends `param` bytes and resets
          break;
        case KIND.vanish:
          writeStream(socket, h.seedUp, upSize);
          if (await untilDown(param)) socket.destroy(); // mid-transfer, unread bytes and unsent ones
          break;
        default:
          throw new Error(`kind ${kind}`);
      }
    }
  });
}

/** A client closed: judge it; clean ones are counted exactly now, cut ones once the upstream reports. */
function settle(rec, entry) {
  const { h } = rec;
  const name = KIND_NAME[h.kind];
  const tag = `connection ${h.id} (${name}, ${rec.end - rec.start} ms from ${((rec.start - T0) / 1000).toFixed(1)} s, client port ${rec.port})`;
  if (!rec.connected) {
    stats.connectFailed++;
    excusable.push({ what: 'connect to the proxy failed', detail: `${tag}: ${rec.error}`, start: rec.start, end: rec.end });
    ledger.delete(h.id);
    return;
  }
  if (!rec.ok) fail('wrong byte at a client', `${tag}: a byte it received differs from what the upstream sent`);
  let clean = false;
  if (CLEAN_KINDS.has(h.kind)) {
    const whole = rec.down === expectedDown(h) && rec.ended && rec.error === null;
    if (h.kind === KIND.echo) clean = whole;
    else if (whole && rec.trailer) {
      const payloadUp = h.kind === KIND.keepalive ? h.param * h.upSize : h.upSize;
      if (!rec.trailer.ok || rec.trailer.received !== payloadUp) {
        fail('wrong bytes at the upstream', `${tag}: its trailer says ${rec.trailer.ok ? 'OK' : 'NO'}, ${rec.trailer.received} of ${payloadUp} bytes`);
      } else clean = true;
    }
    if (!clean) {
      excusable.push({
        what: 'a connection that should end cleanly did not',
        detail: `${tag}: got ${rec.down} of ${expectedDown(h)} bytes, end ${rec.ended}, error ${rec.error}`,
        start: rec.start, end: rec.end, rec,
      });
    }
  } else if (h.kind === KIND.upstreamReset && rec.error !== 'ECONNRESET' && !rec.resetSeen) {
    excusable.push({ what: "an upstream's reset did not reach the client as a reset", detail: `${tag}: end ${rec.ended}, error ${rec.error}, ${rec.down} bytes`, start: rec.start, end: rec.end });
  } else if (rec.error === 'hung') {
    excusable.push({ what: 'a connection hung', detail: tag, start: rec.start, end: rec.end });
  }
  const kindStats = stats.byKind[name];
  if (clean) {
    // Proven whole both ways: the upstream received exactly what was sent (trailer or echo) and wrote
    // exactly what arrived.
    stats.clean++;
    kindStats.clean++;
    stats.lowUp += rec.sent;
    stats.highUp += rec.sent;
    stats.lowDown += rec.got;
    stats.highDown += rec.got;
    ledger.delete(h.id);
    return;
  }
  stats.cut++;
  kindStats.cut++;
  stats.highUp += rec.sent;
  stats.lowDown += rec.got;
  entry.rec = rec;
  if (entry.report) settleCut(rec, entry.report);
}

/** A cut connection with its upstream's report: what the upstream read and wrote bound the counters. */
function settleCut(rec, report) {
  rec.report = report;
  stats.lowUp += report.read;
  stats.highDown += report.written;
  ledger.delete(rec.h.id);
  if (rec.h.kind === KIND.clientReset && report.error === null) {
    excusable.push({
      what: "a client's reset reached the upstream as a clean end",
      detail: `connection ${rec.h.id}: the upstream saw end ${report.end}, no error`, start: rec.start, end: rec.end,
    });
  }
}

/** Cut connections whose upstream never reported (it was killed): the most it could have written. */
function settleUnreported() {
  for (const [id, entry] of ledger) {
    if (!entry.rec) continue;
    const { h } = entry.rec;
    stats.highDown += expectedDown(h);
    if (h.kind === KIND.clientReset) {
      // The upstream reports in batches every 200 ms: a kill just after the close loses the report.
      excusable.push({ what: 'no upstream report for a connection', detail: `connection ${id} (${KIND_NAME[h.kind]})`, start: entry.rec.start, end: entry.rec.end + 1000 });
    }
    ledger.delete(id);
  }
}

// The lanes: each runs one kind after another, paced so that two busy cores are not swamped.
const KiB = 1024;
const MiB = 1024 * KiB;
const LANES = [
  { n: 3, pause: 10, run: () => runConn(KIND.rr, { upSize: rng.size(1, 4 * KiB), downSize: rng.size(1, 64 * KiB) }) },
  { n: 2, pause: 50, run: () => runConn(KIND.keepalive, { upSize: rng.size(1, 2 * KiB), downSize: rng.size(1, 16 * KiB), param: rng.int(20, 200) }) },
  { n: 2, pause: 200, run: () => runConn(KIND.bulk, { upSize: rng.size(64 * KiB, 8 * MiB), downSize: rng.size(64 * KiB, 8 * MiB) }) },
  { n: 1, pause: 100, run: () => runConn(KIND.echo, { upSize: rng.size(1, 4 * MiB) }) },
  { n: 1, pause: 100, run: () => runConn(KIND.clientReset, { upSize: rng.size(1, 64 * KiB), downSize: 64 * MiB, param: rng.size(1, MiB) }) },
  { n: 1, pause: 100, run: () => runConn(KIND.upstreamReset, { upSize: rng.size(1, 64 * KiB), param: rng.size(1, MiB) }) },
  { n: 1, pause: 100, run: () => { const downSize = rng.size(KiB, 4 * MiB); return runConn(KIND.vanish, { upSize: rng.size(1, 4 * MiB), downSize, param: rng.int(0, downSize - 1) }); } },
  { n: 2, pause: 100, run: () => runConn(KIND.slow, { downSize: rng.size(64 * KiB, 2 * MiB), rate: rng.int(128 * KiB, 512 * KiB) }) },
];

function startLanes() {
  let running = true;
  const lanes = [];
  for (const lane of LANES) {
    for (let i = 0; i < lane.n; i++) {
      lanes.push((async () => {
        while (running) {
          await lane.run();
          await sleep(lane.pause);
        }
      })());
    }
  }
  return async () => {
    running = false;
    await Promise.all(lanes);
  };
}

/** CROWD connections open at once, each echoing once; held CROWD_HOLD_MS, then ended. */
async function crowd() {
  let release;
  const hold = new Promise((r) => (release = r));
  let echoed = 0;
  const started = Date.now();
  const members = [];
  for (let i = 0; i < CROWD; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(CROWD, i + 100); j++) {
      let told;
      const told$ = new Promise((r) => (told = r));
      const done = runConn(KIND.echo, { upSize: 64, hold, onEchoed: () => { echoed++; told(); } });
      members.push(done);
      batch.push(Promise.race([told$, done]));
    }
    await Promise.all(batch);
  }
  const c = await freshCounters();
  const entry = { at: Math.round((started - T0) / 1000), size: CROWD, echoed, activeSeen: c.active, openMs: Date.now() - started };
  stats.crowds.push(entry);
  log(`crowd: ${echoed} of ${CROWD} open and echoed in ${entry.openMs} ms; the proxy counts ${c.active} active`);
  await sleep(CROWD_HOLD_MS);
  release();
  await Promise.all(members);
}

/** Waits for the proxy to have no connection and fds/threads at or below `base` (or `ms` to pass). */
async function settleDown(base, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const c = counters();
    const pid = proxy.pid;
    const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
    const threads = fs.readdirSync(`/proc/${pid}/task`).length;
    // Spare pipes aside; the baseline's lingering sockets (ended connections whose last bytes were
    // still on their way) too, while any lingering now must be gone.
    const quiet = c && c.active === 0 && c.pipesInUse === 0 &&
      (!base || (fds - 2 * c.pipesPooled <= base.fds - 2 * base.pooled - base.lingering &&
        c.pipesPooled <= 2 * WORKERS && threads <= base.threads));
    if (quiet || Date.now() > end) return;
    await sleep(250);
  }
}

// ---------------------------------------------------------------------------------------------------
// The run.

let exitCode = 0;
try {
  log(`seed ${SEED}; ${MINUTES} min of load, upstream killed every ${KILL_EVERY_MS / 1000} s, crowd of ${CROWD}, -c ${MAX_CONNECTIONS}`);
  // systemd-socket-activate says when it listens; the first client is what makes it start the proxy.
  for (let i = 0; !/Listening on/.test(proxy.stderrText); i++) {
    if (i > 600 || proxyExit) throw new Error(`systemd-socket-activate did not listen: ${proxy.stderrText}`);
    await sleep(50);
  }
  const first = await runConn(KIND.rr, { upSize: 10, downSize: 10 });
  if (first.error || proxyExit) throw new Error(`first connection: ${first.error}; the proxy exited at start: ${JSON.stringify(proxyExit)}: ${proxy.stderrText}`);
  if (!/socket-proxyd/.test(fs.readFileSync(`/proc/${proxy.pid}/cmdline`, 'utf8'))) throw new Error(`pid ${proxy.pid} is not the proxy`);
  await notify.wait(/READY=1/, 30_000);
  log(`proxy pid ${proxy.pid} ready (first connection ${first.end - first.start} ms, ${first.error ?? "clean"})`);

  let stopLanes = startLanes();
  await sleep(WARMUP_MS);
  await stopLanes();
  await settleDown(null, 30_000);
  await sleep(3_000); // spare pipes unused for a second are closed
  const base = await sample('baseline');

  const loadStart = Date.now();
  stopLanes = startLanes();
  const sampler = setInterval(() => sample('load').catch((e) => fail('sampling', e.message)), SAMPLE_EVERY_MS);
  // Kills every KILL_EVERY_MS, a crowd half-way between kills; never both at once.
  for (let k = 1; ; k++) {
    const crowdAt = loadStart + (k - 0.5) * KILL_EVERY_MS;
    const killAt = loadStart + k * KILL_EVERY_MS;
    if (crowdAt >= loadStart + LOAD_MS - CROWD_HOLD_MS - 2000) break;
    await sleep(crowdAt - Date.now());
    if (CROWD > 0) await crowd();
    if (killAt >= loadStart + LOAD_MS - 3000) break;
    await sleep(killAt - Date.now());
    await killUpstream();
  }
  await sleep(loadStart + LOAD_MS - Date.now());
  log('load stops');
  await stopLanes();
  clearInterval(sampler);
  await settleDown(base, 30_000);
  await sleep(1000); // the upstream's last reports
  const last = await sample('idle end');
  settleUnreported();
  const c = await freshCounters();

  // -------------------------------------------------------------------------------------------------
  // Checks.
  const checks = [];
  const check = (name, ok, detail) => checks.push({ name, ok: Boolean(ok), detail });
  clearInterval(memorySampler);
  for (const e of excusable) {
    if (excusedByKill(e.start, e.end)) stats.excused++;
    else if (excusedByMemory(e.start, e.end)) stats.excusedByMemory.push(`${e.what}: ${e.detail}`);
    else fail(e.what, e.detail, e.rec);
  }
  const kernelAborts = memoryAborts.at(-1).count - memoryAborts[0].count;
  check('every byte arrived right (both directions, every connection)', !failures.some((f) => /wrong/.test(f.what)),
    `${stats.clean} clean connections checked whole, ${stats.cut} cut ones checked up to the cut`);
  check('the soak upstream never died but when killed', !failures.some((f) => /upstream died/.test(f.what)), `${kills.length} kills, no other death`);
  check('no connection failed or hung outside an upstream kill (or a kernel reset for want of TCP memory)', !failures.some((f) => !/wrong|sampling|upstream died/.test(f.what)),
    `${stats.excused} excused by ${kills.length} kills` + (kernelAborts ? `; the kernel reset ${kernelAborts} closes for want of TCP memory (TCPAbortOnMemory), ${stats.excusedByMemory.length} failures excused by it: ${stats.excusedByMemory.slice(0, 3).join('; ')}` : ''));
  // The pipe pool keeps up to two spare pipes per worker for good (README, How it works); a worker
  // may not have had them yet at the baseline. Those aside, every fd must be gone.
  const poolFloor = 2 * WORKERS;
  check(`fds back to the baseline once idle (spare pipes aside: at most ${poolFloor}, ${2 * poolFloor} fds; no socket left lingering)`,
    last.fds - 2 * last.pooled <= base.fds - 2 * base.pooled - base.lingering && last.pooled <= poolFloor,
    `${base.fds} → ${last.fds}; without the ${base.pooled} → ${last.pooled} spare pipes and the baseline's ${base.lingering} lingering sockets: ` +
    `${base.fds - 2 * base.pooled - base.lingering} → ${last.fds - 2 * last.pooled} (${last.lingering} lingering at the end)`);
  check('threads back to the baseline once idle', last.threads <= base.threads, `${base.threads} → ${last.threads}`);
  const growthMiB = (last.rssKiB - base.rssKiB) / 1024;
  const asanNote = ASAN_QUARANTINE_MIB ? ` + ${ASAN_QUARANTINE_MIB} MiB ASan quarantine` : '';
  check(`RSS grew by at most ${RSS_BOUND_MIB} MiB${asanNote} (idle baseline → idle end)`, growthMiB <= RSS_LIMIT_MIB,
    `${(base.rssKiB / 1024).toFixed(1)} → ${(last.rssKiB / 1024).toFixed(1)} MiB (${growthMiB >= 0 ? '+' : ''}${growthMiB.toFixed(1)})`);
  const loadSamples = samples.filter((s) => s.phase === 'load');
  if (MINUTES >= 3 && loadSamples.length >= 4) {
    const drift = (loadSamples.at(-1).rssKiB - loadSamples[0].rssKiB) / 1024;
    check(`RSS drift under load at most ${RSS_BOUND_MIB / 2} MiB${asanNote} (first → last load sample)`, drift <= RSS_BOUND_MIB / 2 + ASAN_QUARANTINE_MIB, `${drift.toFixed(1)} MiB`);
  }
  const within = (v, lo, hi) => v >= lo && v <= hi;
  const closedSum = c.closedClientEnd + c.closedUpstreamEnd + c.closedClientReset + c.closedUpstreamReset + c.closedError +
    c.closedDrain + c.idleTimeouts + c.upstreamFailed;
  check('accepted = closed (every cause) + active', c.accepted === closedSum + c.active,
    `${c.accepted} = ${closedSum} + ${c.active} (client end ${c.closedClientEnd}, upstream end ${c.closedUpstreamEnd}, client reset ${c.closedClientReset}, upstream reset ${c.closedUpstreamReset}, error ${c.closedError}, drain ${c.closedDrain}, idle ${c.idleTimeouts}, upstream failed ${c.upstreamFailed})`);
  // A client whose handshake completed can still see its connect fail: the proxy accepted it, found the
  // killed upstream refusing, and reset it before the client's connect completion ran (libuv reads
  // SO_ERROR: ECONNRESET). Such a client is one of the connect failures, each excused only by a kill.
  check('accepted + refused = connections the clients made (+ at most the connects that failed at a kill)',
    within(c.accepted + c.refused, stats.made, stats.made + stats.connectFailed),
    `${c.accepted} + ${c.refused} = ${stats.made}${stats.connectFailed ? ` + up to ${stats.connectFailed} failed connect${stats.connectFailed > 1 ? 's' : ''}` : ''}`);
  check('nothing refused at the limit, nothing active at the end', c.refused === 0 && c.active === 0, `refused ${c.refused}, active ${c.active}`);
  check('bytes to upstream = what the peers prove', within(c.bytesToUpstream, stats.lowUp, stats.highUp),
    `${stats.lowUp} ≤ ${c.bytesToUpstream} ≤ ${stats.highUp}`);
  check('bytes to clients = what the peers prove', within(c.bytesToClient, stats.lowDown, stats.highDown),
    `${stats.lowDown} ≤ ${c.bytesToClient} ≤ ${stats.highDown}`);
  await sleep(1500); // STATUS= is refreshed once a second
  const status = lastStatus();
  check('STATUS= shows the counters', status.includes(`0 of ${MAX_CONNECTIONS} connections open, ${c.accepted} served`), status);
  const crowdOk = stats.crowds.length > 0 && stats.crowds.every((x) => x.echoed === CROWD && x.activeSeen >= CROWD);
  check(`${CROWD} connections open at once, each forwarded`, CROWD === 0 || crowdOk,
    stats.crowds.map((x) => `${x.echoed} echoed, ${x.activeSeen} active at ${x.at}s`).join('; '));
  const idleKinds = Object.entries(stats.byKind).filter(([k, v]) => v.made < 3 || (CLEAN_KINDS.has(KIND[k]) && v.clean === 0));
  check('every kind of load ran', idleKinds.length === 0, Object.entries(stats.byKind).map(([k, v]) => `${k} ${v.made}`).join(', '));
  check('the upstream was SIGKILLed and restarted', kills.length >= 1 && kills.every((k) => k.ready < Infinity), `${kills.length} kills`);
  check('the proxy stayed up', proxyExit === null, proxyExit ? JSON.stringify(proxyExit) : 'running');
  proxy.kill('SIGTERM');
  const exit = await Promise.race([proxy.exited, sleep(30_000).then(() => null)]);
  check('SIGTERM: exit status 0', exit && exit.code === 0, JSON.stringify(exit));

  // -------------------------------------------------------------------------------------------------
  // Report.
  const MiBs = (b) => (b / MiB).toFixed(0);
  const rows = [
    '| t (s) | phase | fds | threads | RSS (MiB) | active | accepted | upstream failed | MiB to upstream | MiB to clients | pipes in use/pooled | clients open |',
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...samples.map((s) => `| ${s.t} | ${s.phase} | ${s.fds} | ${s.threads} | ${(s.rssKiB / 1024).toFixed(1)} | ${s.active} | ${s.accepted} | ${s.upstreamFailed} | ${MiBs(s.bytesToUpstream)} | ${MiBs(s.bytesToClient)} | ${s.pipes} | ${s.clientsOpen} |`),
  ];
  const kindsLine = Object.entries(stats.byKind).map(([k, v]) => `${k} ${v.made} (${v.clean} clean, ${v.cut} cut)`).join(', ');
  console.log(`\n## Soak: ${MINUTES} min, seed ${SEED}, ${os.cpus().length} CPUs, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
  console.log(rows.join('\n'));
  console.log(`\nConnections: ${stats.made} (${kindsLine}); ${kills.length} upstream kills; crowds ${stats.crowds.map((x) => `${x.echoed}@${x.at}s`).join(', ')}.`);
  console.log(`Counters: ${JSON.stringify(c)}\n`);
  console.log('| check | result | detail |\n|---|---|---|');
  for (const x of checks) console.log(`| ${x.name} | ${x.ok ? 'PASS' : '**FAIL**'} | ${x.detail} |`);
  if (failures.length) {
    const groups = Map.groupBy ? Map.groupBy(failures, (f) => f.what) : failures.reduce((m, f) => m.set(f.what, [...(m.get(f.what) ?? []), f]), new Map());
    console.log(`\n${failures.length} failures:`);
    for (const [what, list] of groups) console.log(`- ${list.length} × ${what}; e.g. ${list.slice(0, 3).map((f) => f.detail + evidence(f)).join('; ')}`);
  }
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ seed: SEED, minutes: MINUTES, samples, checks, stats, counters: c, failures: failures.map((f) => ({ what: f.what, detail: f.detail + evidence(f) })) }, null, 2));
  if (checks.some((x) => !x.ok)) exitCode = 1;
} catch (error) {
  console.error(`soak: ${error.stack ?? error}`);
  console.error(`proxy stderr:\n${proxy.stderrText.slice(-4000)}`);
  exitCode = 1;
} finally {
  stopping = true;
  if (proxy.exitCode === null && proxy.signalCode === null) proxy.kill('SIGKILL');
  upstream?.kill('SIGKILL');
  await notify.close().catch(() => {});
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(exitCode);
