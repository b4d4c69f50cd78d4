// Monitoring (issue 12), with real processes and sockets: --metrics scraped over
// HTTP (TCP and a UNIX path) while traffic flows and checked by promtool and
// against the traffic each test made, counted exactly; --access-log, one test
// for each way a connection ends; the access log's rate limit under a flood;
// the library's metrics() and 'access' events.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  CLI, activateNow, closed, connect, connectTo, echoServer, exchange, freePort, hostsNamespace, notifyReceiver, startServer,
  waitFor, within,
} from './helpers.mjs';
import { blackhole } from './fault-helpers.mjs';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-monitoring-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));
let seq = 0;
const tmpPath = (name) => path.join(TMP, `${++seq}-${name}`);

const env = () => {
  const e = { ...process.env };
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'NOTIFY_SOCKET', 'WATCHDOG_USEC', 'JOURNAL_STREAM', 'SYSTEMD_LOG_LEVEL']) delete e[k];
  return e;
};

/** Adds lines()/waitLine()/stop() to a child whose stderr is collected in stderrText. */
function withLines(child) {
  child.lines = () => child.stderrText.split('\n').filter(Boolean);
  child.waitLine = async (re, ms = 15_000) => {
    const line = await Promise.race([
      waitFor(() => child.lines().find((l) => re.test(l)), ms),
      child.exited.then(() => child.lines().find((l) => re.test(l))),
    ]);
    if (!line) throw new Error(`no line matching ${re} within ${ms} ms; stderr:\n${child.stderrText}`);
    return line;
  };
  child.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    return within(child.exited, 15_000, `proxy did not exit on SIGTERM; stderr:\n${child.stderrText}`);
  };
  return child;
}

/**
 * The CLI socket-activated the way systemd does it, at once (no probe connection: every count is
 * the test's own), on a fresh port; resolves once it logged that it listens.
 */
async function proxy(args) {
  const port = await freePort();
  const child = withLines(activateNow(port, process.execPath, [CLI, ...args], { env: env() }));
  child.exited.catch(() => {});
  try {
    await child.waitLine(/Listening on/);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  return { child, port };
}

/** The CLI run directly under an argv prefix (a hosts or network namespace), with --listen in `args`. */
async function proxyUnder(wrapper, args) {
  const child = spawn(wrapper[0], [...wrapper.slice(1), process.execPath, CLI, ...args], { env: env(), stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderrText = '';
  child.stderr.on('data', (d) => (child.stderrText += d));
  child.exited = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.exited.catch(() => {});
  withLines(child);
  await child.waitLine(/Listening on/);
  return child;
}

/** GET over HTTP: `where` is a TCP port on 127.0.0.1 or a UNIX socket path. Resolves {status, type, body}. */
function get(where, urlPath = '/metrics') {
  return within(
    new Promise((resolve, reject) => {
      const target = typeof where === 'number' ? { host: '127.0.0.1', port: where } : { socketPath: where };
      const req = http.get({ ...target, path: urlPath, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body }));
      });
      req.on('error', reject);
    }),
    15_000,
    `no HTTP answer from ${where}${urlPath}`,
  );
}

/** Parses the text format into a Map "name{labels}" → number (labels as printed). */
function parseMetrics(text) {
  const map = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+) (\S+)$/.exec(line);
    assert.ok(m, `unparsable sample line: ${line}`);
    map.set(m[1], Number(m[2]));
  }
  return map;
}

async function scrape(where) {
  const r = await get(where);
  assert.equal(r.status, 200, r.body);
  assert.equal(r.type, 'text/plain; version=0.0.4; charset=utf-8');
  return { text: r.body, m: parseMetrics(r.body) };
}

/** One sample, which must be there. */
function sample(m, key) {
  assert.ok(m.has(key), `no sample ${key}`);
  return m.get(key);
}

/** Scrapes until `ok(m)` holds (the workers count as connections end); returns the last scrape. */
async function scrapeUntil(where, ok, what, ms = 15_000) {
  let last;
  const done = await waitFor(async () => {
    last = await scrape(where);
    return ok(last.m);
  }, ms, 50);
  assert.ok(done, `${what}; last scrape:\n${last.text.split('\n').filter((l) => l.startsWith('socket_proxyd_') && !l.includes('_bucket')).join('\n')}`);
  return last;
}

const CLOSE_CAUSES = ['client_end', 'upstream_end', 'client_reset', 'upstream_reset', 'error', 'drain', 'idle_timeout'];
const FAIL_CAUSES = ['refused', 'timeout', 'unreachable', 'resolve', 'other'];

/** [accepted, open + upstream failures + closed by every cause]: equal when each connection is counted once. */
function accounting(m) {
  const closedSum = CLOSE_CAUSES.reduce((a, c) => a + sample(m, `socket_proxyd_connections_closed_total{cause="${c}"}`), 0);
  const failedSum = FAIL_CAUSES.reduce((a, c) => a + sample(m, `socket_proxyd_upstream_failures_total{cause="${c}"}`), 0);
  return [sample(m, 'socket_proxyd_connections_accepted_total'), sample(m, 'socket_proxyd_connections_open') + failedSum + closedSum];
}

/**
 * Whether a scrape is settled: a worker counts a connection's end (cause, duration) before it lowers
 * the open count, and a scrape reads the counters one by one, so a scrape taken just as a connection
 * ends can see it both open and ended. Scrapes that are asserted on wait for this as well.
 */
function accounted(m) {
  const [accepted, rest] = accounting(m);
  return accepted === rest;
}

/** accepted = open + upstream failures + closed by every cause: each connection once. */
function assertAccounted(m) {
  const [accepted, rest] = accounting(m);
  assert.equal(accepted, rest, 'accepted = open + failed + closed');
}

/** promtool check metrics: the text must parse; lint complaints are allowed only for prom-client's nodejs_* names. */
function promtool(text) {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (r.error?.code === 'ENOENT') throw new Error('promtool is missing: apt-get install -y prometheus');
  const out = `${r.stdout}${r.stderr}`;
  assert.ok(r.status === 0 || r.status === 3, `promtool check metrics failed (${r.status}):\n${out}`);
  assert.doesNotMatch(out, /error while linting|parsing error/, out);
  const complaints = out.split('\n').filter(Boolean);
  const ours = complaints.filter((l) => !/^nodejs_\S+ /.test(l));
  assert.deepEqual(ours, [], `promtool lint complaints about socket-proxyd's or process metrics:\n${out}`);
}

/** An access log line's fields: "client=… up=12 end=client-fin" → {client, up, end, …}. */
function fields(line) {
  const body = line.replace(/^<\d>/, '');
  return Object.fromEntries(body.split(' ').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

const accessLines = (child) => child.lines().filter((l) => / end=/.test(l));

/** Waits for the access log line of the connection from local port `clientPort` (it comes in a batch). */
async function accessLine(child, clientPort) {
  const line = await child.waitLine(new RegExp(`^client=127\\.0\\.0\\.1:${clientPort} `));
  return fields(line);
}

/** A seconds field ("0.000412s") as a number, checked to be one. */
function seconds(text) {
  assert.match(text, /^\d+\.\d{6}s$/);
  return Number(text.slice(0, -1));
}

// ---------------------------------------------------------------------------
// --metrics

test('--metrics: a scrape while traffic flows passes promtool; every counter, gauge and histogram count matches the traffic made, exactly', async () => {
  const upstream = await echoServer();
  const mport = await freePort();
  const { child, port } = await proxy([`--metrics=127.0.0.1:${mport}`, '-c', '3', '--workers=2', upstream.target]);
  try {
    await child.waitLine(new RegExp(`Serving metrics at http://127\\.0\\.0\\.1:${mport}/metrics`));
    assert.equal((await get(mport, '/')).status, 404);
    assert.equal((await get(mport, '/metricsx')).status, 404);

    // Five echoes of known sizes, each ended by the client first.
    const sizes = [1, 1000, 65_536, 300_000, 7];
    for (const size of sizes) {
      const c = await connect(port);
      const done = closed(c);
      c.end(Buffer.alloc(size, 0x61));
      assert.equal((await within(done, 15_000)).data.length, size);
    }
    const echoed = sizes.reduce((a, b) => a + b, 0);

    // Two connections held open mid-conversation, then the limit: three clients refused.
    const held = [];
    for (const text of ['held-one', 'held-two']) {
      const c = await connect(port);
      await exchange(c, text);
      held.push(c);
    }
    const third = await connect(port);
    await exchange(third, 'x');
    for (let i = 0; i < 3; i++) {
      const c = await connect(port);
      const r = await within(closed(c), 15_000, 'a client past the limit was not closed');
      assert.equal(r.data.length, 0);
    }
    third.end();
    await within(closed(third), 15_000);

    // Traffic still in flight: two open.
    // The third's end is counted before the open count is lowered: wait for both (a settled scrape).
    const during = await scrapeUntil(mport, (m) => sample(m, 'socket_proxyd_connections_closed_total{cause="client_end"}') === 6 &&
      sample(m, 'socket_proxyd_connections_open') === 2 && accounted(m),
      'six connections never counted as ended by the client, with two left open');
    promtool(during.text);
    const m = during.m;
    const heldBytes = 'held-one'.length + 'held-two'.length + 1;
    assert.equal(sample(m, 'socket_proxyd_connections_accepted_total'), 8);
    assert.equal(sample(m, 'socket_proxyd_connections_refused_total'), 3);
    assert.equal(sample(m, 'socket_proxyd_connections_open'), 2);
    assert.equal(sample(m, 'socket_proxyd_connections_max'), 3);
    assert.equal(sample(m, 'socket_proxyd_workers'), 2);
    assert.equal(sample(m, 'socket_proxyd_bytes_total{direction="to_upstream"}'), echoed + heldBytes);
    assert.equal(sample(m, 'socket_proxyd_bytes_total{direction="to_client"}'), echoed + heldBytes);
    for (const cause of FAIL_CAUSES) assert.equal(sample(m, `socket_proxyd_upstream_failures_total{cause="${cause}"}`), 0, cause);
    for (const cause of CLOSE_CAUSES.filter((c) => c !== 'client_end')) {
      assert.equal(sample(m, `socket_proxyd_connections_closed_total{cause="${cause}"}`), 0, cause);
    }
    assert.equal(sample(m, 'socket_proxyd_connections_retried_total'), 0);
    assert.ok(sample(m, 'socket_proxyd_reads_total{path="copy"}') + sample(m, 'socket_proxyd_reads_total{path="splice"}') > 0);
    assert.ok(sample(m, 'socket_proxyd_pipes{state="in_use"}') >= 0 && sample(m, 'socket_proxyd_pipes{state="pooled"}') >= 0);
    // Histograms: every connected connection's connect time; the ended ones' durations.
    assert.equal(sample(m, 'socket_proxyd_upstream_connect_duration_seconds_count'), 8);
    assert.equal(sample(m, 'socket_proxyd_upstream_connect_duration_seconds_bucket{le="+Inf"}'), 8);
    assert.equal(sample(m, 'socket_proxyd_connection_duration_seconds_count'), 6);
    assert.equal(sample(m, 'socket_proxyd_connection_duration_seconds_bucket{le="+Inf"}'), 6);
    assert.ok(sample(m, 'socket_proxyd_connection_duration_seconds_sum') > 0);
    for (const h of ['upstream_connect_duration_seconds', 'connection_duration_seconds']) {
      const buckets = [...m].filter(([k]) => k.startsWith(`socket_proxyd_${h}_bucket{`)).map(([, v]) => v);
      assert.ok(buckets.length > 2, `${h}: buckets`);
      for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i] >= buckets[i - 1], `${h}: buckets are cumulative`);
    }
    // prom-client's process metrics are there too.
    for (const name of ['process_open_fds', 'process_resident_memory_bytes', 'process_cpu_seconds_total', 'nodejs_eventloop_lag_seconds']) {
      assert.ok(m.has(name), `no ${name}`);
    }
    assertAccounted(m);

    for (const c of held) {
      const done = closed(c);
      c.end();
      await within(done, 15_000);
    }
    const quiet = await scrapeUntil(mport, (x) => sample(x, 'socket_proxyd_connections_open') === 0 &&
      sample(x, 'socket_proxyd_connection_duration_seconds_count') === 8 &&
      sample(x, 'socket_proxyd_connections_closed_total{cause="client_end"}') === 8 && accounted(x), 'the held connections never closed');
    assert.equal(sample(quiet.m, 'socket_proxyd_connections_closed_total{cause="client_end"}'), 8);
    assertAccounted(quiet.m);
    assert.deepEqual(await child.stop(), { code: 0, signal: null });
  } finally {
    child.kill('SIGKILL');
    await upstream.close();
  }
});

test('--metrics: upstream failures counted by cause (refused, timeout, resolve) with the access log line saying why', async () => {
  // Refused: a port nothing listens on.
  {
    const dead = await freePort();
    const mport = await freePort();
    const { child, port } = await proxy([`--metrics=127.0.0.1:${mport}`, '--access-log', `127.0.0.1:${dead}`]);
    try {
      for (let i = 0; i < 3; i++) {
        const c = await connect(port);
        const clientPort = c.localPort;
        await within(closed(c), 15_000);
        const f = await accessLine(child, clientPort);
        assert.equal(f.end, 'connect-failed:refused');
        assert.equal(f.upstream, `127.0.0.1:${dead}`);
        assert.equal(f.up, '0');
        assert.equal(f.connect, undefined);
      }
      const { m, text } = await scrapeUntil(mport, (x) => sample(x, 'socket_proxyd_upstream_failures_total{cause="refused"}') === 3 &&
        sample(x, 'socket_proxyd_connection_duration_seconds_count') === 3 && accounted(x), 'three refusals, each with a duration, settled');
      promtool(text);
      for (const cause of FAIL_CAUSES.filter((c) => c !== 'refused')) {
        assert.equal(sample(m, `socket_proxyd_upstream_failures_total{cause="${cause}"}`), 0, cause);
      }
      assert.equal(sample(m, 'socket_proxyd_connection_duration_seconds_count'), 3, 'failed connections have a duration');
      assert.equal(sample(m, 'socket_proxyd_upstream_connect_duration_seconds_count'), 0, 'and no connect time');
      assertAccounted(m);
    } finally {
      await child.stop();
    }
  }
  // Timeout: an upstream whose accept queue is full.
  {
    const hole = await blackhole();
    const mport = await freePort();
    const { child, port } = await proxy([`--metrics=127.0.0.1:${mport}`, '--access-log', '--connect-timeout=200ms', hole.target]);
    try {
      for (let i = 0; i < 2; i++) {
        const c = await connect(port);
        const clientPort = c.localPort;
        await within(closed(c), 15_000);
        const f = await accessLine(child, clientPort);
        assert.equal(f.end, 'connect-failed:timeout');
        assert.equal(f.upstream, hole.target);
        assert.ok(seconds(f.duration) >= 0.19, `duration ${f.duration} shorter than the connect timeout`);
      }
      const { m } = await scrapeUntil(mport, (x) => sample(x, 'socket_proxyd_upstream_failures_total{cause="timeout"}') === 2 && accounted(x),
        'two timeouts, settled');
      assert.equal(sample(m, 'socket_proxyd_upstream_failures_total{cause="refused"}'), 0);
      assertAccounted(m);
    } finally {
      await child.stop();
      hole.close();
    }
  }
  // Resolve: a name the (private) hosts file does not have.
  {
    const hosts = tmpPath('hosts');
    fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
    const port = await freePort();
    const mport = await freePort();
    const child = await proxyUnder(hostsNamespace(hosts),
      [`--listen=127.0.0.1:${port}`, `--metrics=127.0.0.1:${mport}`, '--access-log', 'nowhere.socket-proxyd-test.invalid:80']);
    try {
      await child.waitLine(/Failed to resolve nowhere\.socket-proxyd-test\.invalid/);
      for (let i = 0; i < 2; i++) {
        const c = await connect(port);
        const clientPort = c.localPort;
        await within(closed(c), 15_000);
        const f = await accessLine(child, clientPort);
        assert.equal(f.end, 'connect-failed:no-address');
        assert.equal(f.upstream, '-');
      }
      const { m } = await scrapeUntil(mport, (x) => sample(x, 'socket_proxyd_upstream_failures_total{cause="resolve"}') === 2 && accounted(x),
        'two resolve failures, settled');
      assert.equal(sample(m, 'socket_proxyd_upstream_failures_total{cause="other"}'), 0);
      assertAccounted(m);
    } finally {
      await child.stop();
    }
  }
});

test('--metrics on a UNIX path, no network: an unreachable upstream counted as such; UNIX clients logged as client=unix', async () => {
  // A private network namespace has only a down loopback: 192.0.2.1 is unreachable at once.
  // Paths cross network namespaces, so the test reaches both sockets.
  const listen = tmpPath('proxy.sock');
  const metricsPath = tmpPath('metrics.sock');
  const child = await proxyUnder(['unshare', '--net'], [`--listen=${listen}`, `--metrics=${metricsPath}`, '--access-log', '192.0.2.1:80']);
  try {
    await child.waitLine(new RegExp(`Serving metrics at ${metricsPath.replace(/[.]/g, '\\.')}`));
    for (let i = 0; i < 2; i++) {
      const c = await connectTo(listen);
      await within(closed(c), 15_000);
    }
    const lines = await waitFor(() => (accessLines(child).length >= 2 ? accessLines(child) : null));
    assert.ok(lines, `no access log lines; stderr:\n${child.stderrText}`);
    for (const line of lines) {
      const f = fields(line);
      assert.equal(f.client, 'unix');
      assert.equal(f.local, listen);
      assert.equal(f.upstream, '192.0.2.1:80');
      assert.equal(f.end, 'connect-failed:unreachable');
    }
    const { m, text } = await scrapeUntil(metricsPath, (x) => sample(x, 'socket_proxyd_upstream_failures_total{cause="unreachable"}') === 2 &&
      accounted(x), 'two unreachable, settled');
    promtool(text);
    assert.equal(sample(m, 'socket_proxyd_connections_accepted_total'), 2);
    assertAccounted(m);
    assert.deepEqual(await child.stop(), { code: 0, signal: null });
    // The metrics socket file goes with the proxy, so the next start can bind it again.
    assert.equal(fs.existsSync(metricsPath), false);
  } finally {
    await child.stop();
  }
});

test('--metrics that cannot be bound: one line naming the address and why, exit 1; a bad address is a usage error', async () => {
  const taken = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => taken.once('listening', r));
  const busy = taken.address().port;
  try {
    const port = await freePort();
    const child = spawn(process.execPath, [CLI, `--listen=127.0.0.1:${port}`, `--metrics=127.0.0.1:${busy}`, '127.0.0.1:9'], { env: env(), stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const [code] = await within(new Promise((r) => child.once('exit', (...a) => r(a))), 15_000, 'did not exit');
    assert.equal(code, 1);
    assert.equal(err, `Failed to listen for metrics on 127.0.0.1:${busy}: Address already in use\n`);
    // Nothing was left listening: the proxy's own port is free again.
    const probe = net.createServer().listen(port, '127.0.0.1');
    await new Promise((resolve, reject) => { probe.once('listening', resolve); probe.once('error', reject); });
    probe.close();
  } finally {
    taken.close();
  }
  const bad = spawnSync(process.execPath, [CLI, '--metrics=127.0.0.1:notaport', '127.0.0.1:9'], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.equal(bad.stderr, 'Failed to parse --metrics= argument: invalid port "notaport" in address "127.0.0.1:notaport"\n');
  const help = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' });
  assert.match(help.stdout, /--metrics=ADDRESS/);
  assert.match(help.stdout, /--access-log/);
});

// ---------------------------------------------------------------------------
// --access-log: one test for each way a connection ends

/** A proxy with --access-log in front of a server made by `onConnection`; runs `body({child, port})`. */
async function withAccessLog(onConnection, args, body) {
  const upstream = await startServer(onConnection);
  const { child, port } = await proxy(['--access-log', ...args, upstream.target]);
  try {
    await body({ child, port, upstream });
  } finally {
    await child.stop();
    await upstream.close();
  }
}

const echo = (s) => s.on('error', () => {}).pipe(s);

test('access log: client FIN first (end=client-fin), with addresses, bytes each way, connect time and duration', async () => {
  await withAccessLog(echo, [], async ({ child, port, upstream }) => {
    const c = await connect(port);
    const clientPort = c.localPort;
    const done = closed(c);
    c.end('hello, upstream');
    assert.equal((await within(done, 15_000)).data.toString(), 'hello, upstream');
    const f = await accessLine(child, clientPort);
    assert.equal(f.client, `127.0.0.1:${clientPort}`);
    assert.equal(f.local, `127.0.0.1:${port}`);
    assert.equal(f.upstream, upstream.target);
    assert.equal(f.up, '15');
    assert.equal(f.down, '15');
    assert.ok(seconds(f.connect) < 5);
    assert.ok(seconds(f.duration) >= seconds(f.connect));
    assert.equal(f.end, 'client-fin');
    // Not under the journal: no priority prefix.
    assert.match(child.lines().find((l) => l.includes(`:${clientPort} `)), /^client=/);
  });
});

test('access log: upstream FIN first (end=upstream-fin), journal priority <6> under JOURNAL_STREAM', async () => {
  const upstream = await startServer((s) => { s.on('error', () => {}); s.end('banner\n'); });
  // A journal-like stderr: JOURNAL_STREAM names the stream's device and inode (a file here).
  const logFile = tmpPath('journal.log');
  const fd = fs.openSync(logFile, 'w+');
  const st = fs.fstatSync(fd);
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, `--listen=127.0.0.1:${port}`, '--access-log', upstream.target], {
    env: { ...env(), JOURNAL_STREAM: `${st.dev}:${st.ino}` }, stdio: ['ignore', 'ignore', fd],
  });
  fs.closeSync(fd);
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const log = () => fs.readFileSync(logFile, 'utf8');
  try {
    assert.ok(await waitFor(() => /Listening on/.test(log()), 15_000), log());
    const c = await connect(port);
    const clientPort = c.localPort;
    const done = closed(c);
    assert.ok(await waitFor(() => c.bytesRead === 7), 'no banner');
    c.end();
    await within(done, 15_000);
    const line = await waitFor(() => log().split('\n').find((l) => l.includes(`client=127.0.0.1:${clientPort} `)), 15_000);
    assert.ok(line, log());
    assert.match(line, /^<6>client=/);
    const f = fields(line);
    assert.equal(f.end, 'upstream-fin');
    assert.equal(f.up, '0');
    assert.equal(f.down, '7');
  } finally {
    child.kill('SIGTERM');
    await within(exited, 15_000);
    await upstream.close();
  }
});

test('access log: client reset (end=client-reset)', async () => {
  await withAccessLog(echo, [], async ({ child, port }) => {
    const c = await connect(port);
    const clientPort = c.localPort;
    await exchange(c, 'abc');
    c.resetAndDestroy();
    const f = await accessLine(child, clientPort);
    assert.equal(f.end, 'client-reset');
    assert.equal(f.up, '3');
    assert.equal(f.down, '3');
  });
});

test('access log: upstream reset (end=upstream-reset)', async () => {
  await withAccessLog((s) => { s.on('error', () => {}); s.once('data', () => s.resetAndDestroy()); }, [], async ({ child, port }) => {
    const c = await connect(port);
    const clientPort = c.localPort;
    const done = closed(c);
    c.write('boom');
    const r = await within(done, 15_000);
    assert.equal(r.error, 'ECONNRESET');
    const f = await accessLine(child, clientPort);
    assert.equal(f.end, 'upstream-reset');
    assert.equal(f.up, '4');
  });
});

test('access log and metrics: a client that resets while waiting for --connect-retry (end=client-reset, counted as retried)', async () => {
  const dead = await freePort();
  const mport = await freePort();
  const { child, port } = await proxy(['--access-log', '--connect-retry=30s', `--metrics=127.0.0.1:${mport}`, `127.0.0.1:${dead}`]);
  try {
    const c = await connect(port);
    const clientPort = c.localPort;
    c.write('early bytes');
    await scrapeUntil(mport, (m) => sample(m, 'socket_proxyd_connections_retried_total') === 1, 'the client never waited');
    c.resetAndDestroy();
    const f = await accessLine(child, clientPort);
    assert.equal(f.end, 'client-reset');
    assert.equal(f.connect, undefined);
    assert.ok(seconds(f.duration) < 25, `released at once, not at the retry deadline: ${f.duration}`);
    const { m } = await scrapeUntil(mport, (x) => sample(x, 'socket_proxyd_connections_open') === 0 &&
      sample(x, 'socket_proxyd_connections_closed_total{cause="client_reset"}') === 1 && accounted(x), 'the waiting client was not released');
    assert.equal(sample(m, 'socket_proxyd_connections_closed_total{cause="client_reset"}'), 1);
    for (const cause of FAIL_CAUSES) assert.equal(sample(m, `socket_proxyd_upstream_failures_total{cause="${cause}"}`), 0, cause);
    assertAccounted(m);
  } finally {
    await child.stop();
  }
});

test('access log: idle timeout (end=idle-timeout)', async () => {
  await withAccessLog(echo, ['--idle-timeout=300ms'], async ({ child, port }) => {
    const c = await connect(port);
    const clientPort = c.localPort;
    const done = closed(c);
    await exchange(c, 'then silence');
    await within(done, 15_000, 'the idle connection was not closed');
    const f = await accessLine(child, clientPort);
    assert.equal(f.end, 'idle-timeout');
    assert.ok(seconds(f.duration) >= 0.29, f.duration);
    assert.equal(f.up, '12');
  });
});

test('access log: refused at the limit (end=limit, no upstream fields)', async () => {
  await withAccessLog(echo, ['-c', '1'], async ({ child, port }) => {
    const holder = await connect(port);
    await exchange(holder, 'mine');
    const c = await connect(port);
    const clientPort = c.localPort;
    await within(closed(c), 15_000);
    const line = await child.waitLine(new RegExp(`^client=127\\.0\\.0\\.1:${clientPort} `));
    assert.equal(line, `client=127.0.0.1:${clientPort} local=127.0.0.1:${port} end=limit`);
    holder.end();
  });
});

test('access log: connections cut by the drain timeout on SIGTERM (end=drain) are logged before exit', async () => {
  const upstream = await echoServer();
  const mport = await freePort();
  const { child, port } = await proxy(['--access-log', '--drain-timeout=200ms', `--metrics=127.0.0.1:${mport}`, upstream.target]);
  try {
    const c = await connect(port);
    const clientPort = c.localPort;
    const done = closed(c);
    await exchange(c, 'open at stop');
    assert.deepEqual(await child.stop(), { code: 0, signal: null });
    await within(done, 15_000);
    const line = child.lines().find((l) => l.startsWith(`client=127.0.0.1:${clientPort} `));
    assert.ok(line, `no access log line for the cut connection before exit; stderr:\n${child.stderrText}`);
    assert.equal(fields(line).end, 'drain');
    assert.equal(fields(line).up, '12');
  } finally {
    child.kill('SIGKILL');
    await upstream.close();
  }
});

test('access log: a flood is cut at 1000 lines a second per thread, and the lines left out are counted exactly', async () => {
  const upstream = await echoServer();
  const mport = await freePort();
  const { child, port } = await proxy(['--access-log', '-c', '1', '--workers=1', `--metrics=127.0.0.1:${mport}`, upstream.target]);
  // The cut needs more than 1000 refusals inside one second: how fast the flood goes depends on the
  // machine and its load, so it goes on until the proxy reports lines left out (bounded by a deadline
  // and a count), and the accounting is checked against the clients actually made.
  const DEADLINE_MS = 60_000;
  const MAX_CLIENTS = 60_000;
  const leftOut = () => child.lines().map((l) => /^access log: (\d+) lines left out \(more than 1000 per second\)$/.exec(l)).filter(Boolean)
    .reduce((a, mm) => a + Number(mm[1]), 0);
  const limitLines = () => child.lines().filter((l) => / end=limit$/.test(l)).length;
  try {
    const holder = await connect(port);
    await exchange(holder, 'hold');
    const started = Date.now();
    let made = 0;
    let enough = false;
    const one = async () => {
      while (!enough && made < MAX_CLIENTS && Date.now() - started < DEADLINE_MS) {
        made++;
        const s = net.connect({ port, host: '127.0.0.1' });
        await within(closed(s), 30_000, 'a refused client was not closed');
      }
    };
    const flood = Promise.all(Array.from({ length: 50 }, one));
    let flooding = true;
    flood.finally(() => (flooding = false)).catch(() => {});
    await waitFor(() => leftOut() > 0 || !flooding, DEADLINE_MS + 30_000, 100);
    enough = true;
    await flood;
    const elapsed = (Date.now() - started) / 1000;
    const { m } = await scrapeUntil(mport, (x) => sample(x, 'socket_proxyd_connections_refused_total') === made, `every one of ${made} clients refused`);
    assert.equal(sample(m, 'socket_proxyd_connections_accepted_total'), 1);
    // Every refusal is either a line or counted in a "left out" line.
    const complete = await waitFor(() => limitLines() + leftOut() === made, 15_000);
    assert.ok(complete, `${limitLines()} lines + ${leftOut()} left out != ${made} clients`);
    assert.ok(leftOut() > 0, `nothing left out of ${made} refusals in ${elapsed.toFixed(2)} s`);
    assert.ok(limitLines() <= 1000 * Math.ceil(elapsed + 1), `${limitLines()} lines in ${elapsed.toFixed(2)} s`);
    holder.end();
  } finally {
    await child.stop();
    await upstream.close();
  }
});

test('STATUS= counts resets and failures to connect', async () => {
  const notify = await notifyReceiver(tmpPath('notify.sock'));
  const upstream = await startServer((c) => { c.on('error', () => {}); c.once('data', () => c.resetAndDestroy()); });
  const port = await freePort();
  const child = withLines(activateNow(port, process.execPath, [CLI, upstream.target], { env: { ...env(), NOTIFY_SOCKET: notify.address } }));
  child.exited.catch(() => {});
  try {
    await notify.wait(/^READY=1$/m);
    for (let i = 0; i < 2; i++) {
      const c = await connect(port);
      const done = closed(c);
      c.write('reset me');
      assert.equal((await within(done, 15_000)).error, 'ECONNRESET');
    }
    await notify.wait(/^STATUS=Forwarding to .*: 0 of 256 connections open, 2 served, 2 reset$/m, 15_000);
    await upstream.close();
    const c = await connect(port);
    await within(closed(c), 15_000);
    await notify.wait(/^STATUS=Forwarding to .*: 0 of 256 connections open, 3 served, 1 failed to connect, 2 reset$/m, 15_000);
  } finally {
    await child.stop();
    await upstream.close();
    await notify.close();
  }
});

// ---------------------------------------------------------------------------
// The library

test('library: metrics() is the text --metrics serves, metricsRegistry() only socket_proxyd_*, and accessLog gives one "access" event per batch', async () => {
  const { SocketProxy } = await import('../dist/index.js');
  assert.throws(() => new SocketProxy({ target: '127.0.0.1:9', accessLog: 'yes' }), { code: 'ERR_INVALID_ARG_TYPE' });
  const upstream = await echoServer();
  const proxyLib = new SocketProxy({ target: upstream.target, listen: ['127.0.0.1:0'], accessLog: true, maxConnections: 7 });
  const batches = [];
  proxyLib.on('access', (lines) => batches.push(lines));
  try {
    await proxyLib.start();
    const port = Number(proxyLib.listening[0].split(':').pop());
    const clientPorts = [];
    await Promise.all(Array.from({ length: 5 }, async () => {
      const c = await connect(port);
      clientPorts.push(c.localPort);
      const done = closed(c);
      c.end('12345');
      await within(done, 15_000);
    }));
    assert.ok(await waitFor(() => batches.flat().length === 5, 15_000), JSON.stringify(batches));
    assert.ok(batches.length <= 5 && batches.every((b) => Array.isArray(b) && b.length >= 1));
    assert.deepEqual(batches.flat().map((l) => Number(fields(l).client.split(':')[1])).sort(), clientPorts.sort());
    for (const line of batches.flat()) assert.equal(fields(line).up, '5');
    const text = await proxyLib.metrics();
    promtool(text);
    const m = parseMetrics(text);
    assert.equal(m.get('socket_proxyd_connections_accepted_total'), 5);
    assert.equal(m.get('socket_proxyd_connections_max'), 7);
    assert.equal(m.get('socket_proxyd_bytes_total{direction="to_client"}'), 25);
    assert.ok(m.has('process_resident_memory_bytes'));
    proxyLib.setMaxConnections(9);
    assert.equal(parseMetrics(await proxyLib.metrics()).get('socket_proxyd_connections_max'), 9);
    const own = await proxyLib.metricsRegistry().metrics();
    assert.ok(own.split('\n').filter((l) => l && !l.startsWith('#')).every((l) => l.startsWith('socket_proxyd_')), own);
    const s = proxyLib.stats;
    assert.equal(s.closedClientEnd, 5);
    assert.equal(s.upstreamRefused + s.upstreamTimeout + s.upstreamUnreachable + s.upstreamNoAddress, 0);
  } finally {
    proxyLib.close();
    await upstream.close();
  }
});
