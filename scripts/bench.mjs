#!/usr/bin/env node
// Benchmark: socket-proxyd against systemd-socket-proxyd (the reference) and other TCP proxies; for
// datagrams (the dns, udp-64 and udp-1400 workloads, which the reference cannot forward), against socat
// and no proxy.
//
//   npm run bench [-- --rounds N] [--quick] [--only WORKLOAD,..] [--proxies a,b] [--json FILE]
//   npm run bench -- --only coldstart     # the cold-start row alone (~20 s)
//
// Every workload runs in interleaved rounds: each round runs every proxy once per workload, in an order
// that rotates from round to round, and the table shows medians. Every figure is also printed as a
// ratio to systemd-socket-proxyd measured in the same run. Both socket-proxyd and the reference are
// socket-activated by systemd-socket-activate, the way systemd starts them. Progress goes to stderr,
// the report (markdown) to stdout. Not part of `npm test`.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import dgram from 'node:dgram';

import { hostName, nsdConfig } from '../test/udp-helpers.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const HERE = path.join(ROOT, 'scripts', 'bench');
const REFERENCE_BIN = '/lib/systemd/systemd-socket-proxyd';
const APT = 'apt-get install -y iperf3 wrk nginx-light haproxy socat';
const APT_DNS = 'apt-get install -y nsd dnsperf bind9-dnsutils';

// ---------------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: node scripts/bench.mjs [options]
  --rounds N          interleaved rounds (default 3; medians are reported)
  --quick             2 rounds of 2 s instead of 3 s (a smoke run; figures are noisier)
  --duration S        seconds per iperf3/wrk/stream run (default 3)
  --only W[,W..]      workloads: ${'WORKLOADS'} (default: all)
  --proxies P[,P..]   proxies: ${'PROXIES'} (default: all; the reference is always included)
  --idle N            idle connections to hold (default 10000, lowered to what RLIMIT_NOFILE allows)
  --samples N         cold starts per proxy, spread over the rounds (default 15)
  --json FILE         also write every sample and the summary as JSON
  --baseline ADDON    also run socket-proxyd with this addon build (e.g. one made from main before a
                      change), as the proxy "baseline", to compare two builds in the same run
  -h, --help`;

const PROXIES = [
  { id: 'direct', name: 'no proxy' },
  { id: 'systemd', name: 'systemd-socket-proxyd' },
  { id: 'ours', name: 'socket-proxyd' },
  { id: 'baseline', name: 'socket-proxyd (baseline addon)' },
  // socket-proxyd with one feature on, against 'ours' without it (issue 9's rows): only on the
  // request/response workloads, where a per-connection or per-transfer cost would show.
  { id: 'ours-pp2', name: 'socket-proxyd --proxy-protocol=v2', args: ['--proxy-protocol=v2'], only: ['keepalive-1k', 'newconn'] },
  { id: 'ours-idle', name: 'socket-proxyd --idle-timeout=5min', args: ['--idle-timeout=5min'], only: ['keepalive-1k', 'newconn'] },
  { id: 'ours-ka', name: 'socket-proxyd --keepalive=60s', args: ['--keepalive=60s'], only: ['keepalive-1k', 'newconn'] },
  // Monitoring (issue 12): the access log (to a file, as the journal would take it) and a metrics
  // endpoint scraped every second during the runs.
  { id: 'ours-mon', name: 'socket-proxyd --metrics --access-log', args: ['--access-log'], metrics: true, stderrToFile: true, only: ['keepalive-1k', 'newconn'] },
  { id: 'haproxy', name: 'HAProxy (tcp, splice-auto)' },
  { id: 'socat', name: 'socat' },
  { id: 'node', name: 'Node net pipe' },
  // scripts/bench/fd3-forwarder.cjs, socket-activated: what any Node.js forwarder's cold start costs
  { id: 'floor', name: 'Node net.Server({fd: 3}) (floor)', only: ['coldstart'] },
];
const REF = 'systemd';

// Workloads. `rows` are the table rows each produces; `proxies` limits who takes part.
const WORKLOADS = [
  { id: 'bulk', rows: [{ id: 'bulk', label: 'iperf3 bulk client→server, Gbit/s', fmt: 'gbps', better: 'higher', target: 1.10 }] },
  { id: 'bulk-reverse', rows: [{ id: 'bulk-reverse', label: 'iperf3 -R bulk server→client, Gbit/s', fmt: 'gbps', better: 'higher', target: 1.10 }] },
  { id: 'keepalive-1k', rows: [{ id: 'keepalive-1k', label: 'wrk -t2 -c64 nginx 1 KiB keep-alive, req/s', fmt: 'int', better: 'higher', target: 2.0 }] },
  { id: 'mib', rows: [{ id: 'mib', label: 'wrk -t2 -c16 nginx 1 MiB keep-alive, req/s', fmt: 'int', better: 'higher', target: 1.0 }] },
  { id: 'newconn', rows: [{ id: 'newconn', label: 'wrk -t2 -c32 new connection per request (1 KiB), conn/s', fmt: 'int', better: 'higher', target: 1.8 }] },
  {
    id: 'idle',
    proxies: ['systemd', 'ours', 'baseline', 'haproxy', 'node'],
    rows: [
      { id: 'idle-fds', label: 'idle connections: fds per connection (proxy process; lower is better)', fmt: 'fds', better: 'lower', targetAbs: 2 },
      { id: 'idle-rss', label: 'idle connections: RSS per connection, KiB (lower is better)', fmt: 'kib', better: 'lower' },
    ],
  },
  {
    id: 'cpu',
    proxies: ['systemd', 'ours', 'baseline', 'haproxy', 'socat', 'node'],
    derived: true, // measured during the bulk and bulk-reverse runs
    rows: [{ id: 'cpu', label: 'CPU seconds per GiB forwarded, iperf3 both directions (lower is better)', fmt: 'cpu', better: 'lower', target: 1.0 }],
  },
  {
    id: 'bulk300',
    proxies: ['direct', 'systemd', 'ours', 'baseline'],
    rows: [{ id: 'bulk300', label: '300 concurrent bulk streams, proxy as nobody, aggregate Gbit/s', fmt: 'gbps', better: 'higher', target: 1.0 }],
  },
  // Datagrams (issue 10). The reference cannot forward UDP (it exits at start with a datagram socket):
  // its column says so, and these rows' ratios are to socat instead. `vs` are the targets.
  {
    id: 'dns',
    udp: true,
    proxies: ['direct', 'ours', 'baseline', 'socat'],
    rows: [
      { id: 'dns-qps', label: 'dnsperf -c100 -q200 to NSD over UDP, queries/s', fmt: 'int', better: 'higher', vs: [['socat', 3.0], ['direct', 0.6]] },
      { id: 'dns-p99', label: 'dnsperf -c100 -q200 to NSD: p99 latency, ms (lower is better)', fmt: 'ms', better: 'lower' },
      { id: 'dns-rate-p99', label: "dnsperf -Q at socat's queries/s (same round): p99 latency, ms (lower is better)", fmt: 'ms', better: 'lower' },
      { id: 'dns-rate-lost', label: "dnsperf -Q at socat's queries/s (same round): queries lost (lower is better)", fmt: 'count', better: 'lower', zero: true },
      // From 100 source ports new to the proxy each run (no warm-up): what a burst of new clients meets.
      { id: 'dns-cold-qps', label: 'dnsperf -c100 -q200 from new source ports each run (cold), queries/s', fmt: 'int', better: 'higher' },
      { id: 'dns-cold-lost', label: 'dnsperf from new source ports each run (cold): queries lost (lower is better)', fmt: 'count', better: 'lower' },
    ],
  },
  {
    id: 'udp-64',
    udp: true,
    proxies: ['direct', 'ours', 'baseline', 'socat'],
    rows: [
      { id: 'udp-64', label: 'udpload 100 source ports × 8 in flight, 64-byte datagrams echoed, datagrams/s', fmt: 'int', better: 'higher' },
      { id: 'udp-64-lost', label: 'udpload 64-byte: lost, % of sent (lower is better)', fmt: 'pct', better: 'lower' },
    ],
  },
  {
    id: 'udp-1400',
    udp: true,
    proxies: ['direct', 'ours', 'baseline', 'socat'],
    rows: [
      { id: 'udp-1400', label: 'udpload 100 source ports × 8 in flight, 1,400-byte datagrams echoed, datagrams/s', fmt: 'int', better: 'higher' },
      { id: 'udp-1400-lost', label: 'udpload 1,400-byte: lost, % of sent (lower is better)', fmt: 'pct', better: 'lower' },
    ],
  },
  {
    // --exit-idle-time: the proxy starts on the first client after each idle period
    id: 'coldstart',
    proxies: ['systemd', 'ours', 'baseline', 'floor'],
    rows: [{ id: 'coldstart', label: 'first byte after socket activation (client in the backlog, spawn to echoed reply), ms (lower is better)', fmt: 'ms', better: 'lower', targetOverFloor: 10 }],
  },
];
const UDP_RATIO_TO = 'socat';

let opts;
try {
  opts = parseArgs({
    options: {
      rounds: { type: 'string' },
      quick: { type: 'boolean' },
      duration: { type: 'string' },
      only: { type: 'string' },
      proxies: { type: 'string' },
      idle: { type: 'string' },
      samples: { type: 'string' },
      json: { type: 'string' },
      baseline: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (e) {
  console.error(`${e.message}\n${usage()}`);
  process.exit(2);
}
function usage() {
  return USAGE.replace('WORKLOADS', WORKLOADS.map((w) => w.id).join(','))
    .replace('PROXIES', PROXIES.map((p) => p.id).join(','));
}
if (opts.help) {
  console.log(usage());
  process.exit(0);
}
const die = (msg, code = 2) => {
  console.error(`bench: ${msg}`);
  process.exit(code);
};
const ROUNDS = opts.rounds ? Number(opts.rounds) : opts.quick ? 2 : 3;
const DURATION = opts.duration ? Number(opts.duration) : opts.quick ? 2 : 3;
if (!(Number.isInteger(ROUNDS) && ROUNDS >= 1)) die(`--rounds must be a positive integer`);
if (!(Number.isInteger(DURATION) && DURATION >= 1)) die(`--duration must be a whole number of seconds (wrk takes no fractions)`);
const IDLE_WANTED = opts.idle ? Number(opts.idle) : 10000;
if (!(Number.isInteger(IDLE_WANTED) && IDLE_WANTED >= 1)) die('--idle must be a positive integer');
const COLD_SAMPLES = opts.samples ? Number(opts.samples) : 15;
if (!(Number.isInteger(COLD_SAMPLES) && COLD_SAMPLES >= 1)) die('--samples must be a positive integer');

let selectedWorkloads = WORKLOADS.map((w) => w.id);
if (opts.only) {
  selectedWorkloads = opts.only.split(',').map((s) => s.trim()).filter(Boolean);
  for (const w of selectedWorkloads) {
    if (!WORKLOADS.find((x) => x.id === w)) die(`unknown workload "${w}" (known: ${WORKLOADS.map((x) => x.id).join(', ')})`);
  }
}
const BASELINE_ADDON = opts.baseline ? path.resolve(opts.baseline) : null;
if (BASELINE_ADDON && !fs.existsSync(BASELINE_ADDON)) die(`--baseline: ${BASELINE_ADDON} does not exist`);
let selectedProxies = PROXIES.map((p) => p.id).filter((id) => id !== 'baseline' || BASELINE_ADDON);
if (opts.proxies) {
  selectedProxies = opts.proxies.split(',').map((s) => s.trim()).filter(Boolean);
  for (const p of selectedProxies) {
    if (!PROXIES.find((x) => x.id === p)) die(`unknown proxy "${p}" (known: ${PROXIES.map((x) => x.id).join(', ')})`);
  }
  if (!selectedProxies.includes(REF)) selectedProxies.unshift(REF); // ratios need the reference
  if (selectedProxies.includes('baseline') && !BASELINE_ADDON) die('proxy "baseline" needs --baseline ADDON');
  selectedProxies = PROXIES.map((p) => p.id).filter((id) => selectedProxies.includes(id)); // table order
}
const wantW = (id) => selectedWorkloads.includes(id);
// The CPU figure comes from the bulk runs: asking for it runs them.
const runBulk = wantW('bulk') || wantW('cpu');
const runBulkR = wantW('bulk-reverse') || wantW('cpu');
const proxiesFor = (wid) => {
  const w = WORKLOADS.find((x) => x.id === wid);
  const only = (p) => PROXIES.find((x) => x.id === p).only;
  return selectedProxies.filter((p) => (!w.proxies || w.proxies.includes(p)) && (!only(p) || only(p).includes(wid)));
};
const FEATURE_VARIANTS = PROXIES.filter((p) => p.args).map((p) => p.id);

// ---------------------------------------------------------------------------------------------------
// Processes: every child gets its own process group, and all of them are killed on any exit.

const children = new Set();
let tmpDir = null;
function killGroup(child, sig) {
  try {
    process.kill(-child.pid, sig);
  } catch {}
}
function cleanup() {
  for (const c of children) killGroup(c, 'SIGKILL');
  children.clear();
  if (tmpDir) {
    try {
      fs.rmSync(tmpDir, { recursive: true, force: true });
    } catch {}
    tmpDir = null;
  }
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\nbench: ${sig}, stopping every process it started`);
    process.exit(130);
  });
}

const log = (...a) => console.error(...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts a long-running child; keeps the last 8 KiB of its output for error messages. */
function startChild(cmd, args, { env, stdin = 'ignore', onStdout, stderrFile } = {}) {
  // stderrFile: the child writes its stderr there itself (a chatty child, such as one writing an access
  // log, costs this process nothing); `tail` then reads the file's end when an error message needs it.
  const errFd = stderrFile ? fs.openSync(stderrFile, 'a') : null;
  const child = spawn(which(cmd) || cmd, args, { detached: true, stdio: [stdin, 'pipe', errFd ?? 'pipe'], env: env ?? process.env });
  if (errFd !== null) fs.closeSync(errFd);
  children.add(child);
  child.kept = '';
  Object.defineProperty(child, 'tail', { get: () => (stderrFile ? fileTail(stderrFile) + child.kept : child.kept).slice(-8192) });
  const keep = (d) => {
    child.kept = (child.kept + d.toString()).slice(-8192);
  };
  if (onStdout) child.stdout.on('data', onStdout);
  else child.stdout.on('data', keep);
  child.stderr?.on('data', keep);
  child.exited = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      children.delete(child);
      child.exitInfo = { code, signal };
      resolve(child.exitInfo);
    }),
  );
  child.on('error', (e) => {
    child.kept += `\nspawn error: ${e.message}`;
  });
  return child;
}

/** The last 8 KiB of a file ('' if it cannot be read). */
function fileTail(file) {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(Math.min(size, 8192));
      fs.readSync(fd, buf, 0, buf.length, size - buf.length);
      return buf.toString();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}

/** GET http://127.0.0.1:port/metrics; resolves the body (rejects on an error or a status other than 200). */
function scrapeMetrics(port) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.setTimeout(5000, () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
  });
}

/** Runs a command to completion (tracked, so it is killed on exit too). */
function run(cmd, args, { timeoutMs = 120000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(which(cmd) || cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '',
      stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), timeoutMs);
    child.on('error', (e) => (stderr += `spawn error: ${e.message}`));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

async function stopChild(child, graceMs = 1500) {
  if (!children.has(child)) return;
  killGroup(child, 'SIGTERM');
  const t = sleep(graceMs).then(() => 'timeout');
  if ((await Promise.race([child.exited, t])) === 'timeout') killGroup(child, 'SIGKILL');
  await child.exited;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function tryConnect(port, holdMs = 0) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('connect', () => setTimeout(() => (s.destroy(), resolve(true)), holdMs));
    s.on('error', () => resolve(false));
  });
}

async function waitListening(port, child, what, timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (child && child.exitInfo) throw new Error(`${what} exited (${JSON.stringify(child.exitInfo)}):\n${child.tail}`);
    if (await tryConnect(port)) return;
    await sleep(50);
  }
  throw new Error(`${what} is not listening on 127.0.0.1:${port} after ${timeoutMs} ms:\n${child ? child.tail : ''}`);
}

/** Resolves with the first stdout line of child that matches (JSON-parsed when asked). */
function lineReader(child) {
  const rl = readline.createInterface({ input: child.stdout });
  const queue = [];
  const waiters = [];
  rl.on('line', (line) => (waiters.length ? waiters.shift()(line) : queue.push(line)));
  return (timeoutMs = 60000) =>
    new Promise((resolve, reject) => {
      if (queue.length) return resolve(queue.shift());
      const t = setTimeout(() => reject(new Error(`no answer from ${child.spawnargs.join(' ')}:\n${child.tail}`)), timeoutMs);
      waiters.push((line) => (clearTimeout(t), resolve(line)));
    });
}

// ---------------------------------------------------------------------------------------------------
// Environment checks

function which(cmd) {
  if (cmd.includes('/')) return fs.existsSync(cmd) ? cmd : null;
  const dirs = (process.env.PATH || '').split(':').concat(['/usr/sbin', '/sbin', '/usr/local/sbin']);
  for (const d of dirs) {
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

function checkTools() {
  const need = [];
  const anyOf = (...ids) => ids.some((id) => selectedWorkloads.some((w) => proxiesFor(w).includes(id)));
  if (runBulk || runBulkR) need.push(['iperf3', APT]);
  if (['keepalive-1k', 'mib', 'newconn'].some(wantW)) need.push(['wrk', APT], ['nginx', APT]);
  if (anyOf('haproxy')) need.push(['haproxy', APT]);
  if (anyOf('socat')) need.push(['socat', APT]);
  need.push(['systemd-socket-activate', 'apt-get install -y systemd'], [REFERENCE_BIN, 'apt-get install -y systemd']);
  if (wantW('bulk300')) need.push(['cc', 'apt-get install -y gcc'], ['setpriv', 'apt-get install -y util-linux']);
  if (wantW('dns')) need.push(['nsd', APT_DNS], ['dnsperf', APT_DNS]);
  if (wantW('udp-64') || wantW('udp-1400')) need.push(['cc', 'apt-get install -y gcc']);
  const missing = need.filter(([cmd]) => !which(cmd));
  if (missing.length) {
    for (const [cmd, how] of missing) console.error(`bench: missing tool: ${cmd} — install it with: ${how}`);
    process.exit(3);
  }
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli.js'))) {
    console.error('bench: dist/cli.js is missing — build first: npm ci (or npm run build)');
    process.exit(3);
  }
}

function nofileLimit() {
  const r = spawnSync('sh', ['-c', 'ulimit -Sn; ulimit -Hn'], { encoding: 'utf8' });
  const [soft, hard] = r.stdout.trim().split('\n').map((s) => (s === 'unlimited' ? Infinity : Number(s)));
  // Raising the hard limit needs CAP_SYS_RESOURCE (bit 24 of CapEff).
  const capEff = BigInt('0x' + (fs.readFileSync('/proc/self/status', 'utf8').match(/CapEff:\s*([0-9a-f]+)/) || [, '0'])[1]);
  const canRaise = (capEff & (1n << 24n)) !== 0n && which('prlimit');
  return { soft, hard, canRaise };
}

function capture(cmd, args, which = 'stdout') {
  try {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
    return ((which === 'stderr' ? r.stderr : r.stdout + r.stderr) || '').trim().split('\n')[0] || '?';
  } catch {
    return '?';
  }
}

const clean = (line, re) => (line.match(re) || [, line.trim()])[1];

function environment() {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const rev = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
  const dirty = spawnSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src', 'native', 'bin'], { encoding: 'utf8' }).stdout.trim();
  const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [, '?'])[1];
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    machine: { nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length, kernel: os.release(), cpu, memGiB: +(os.totalmem() / 2 ** 30).toFixed(1), loadavg: os.loadavg().map((x) => +x.toFixed(2)) },
    versions: {
      node: process.version,
      'socket-proxyd': `${pkg.version} (${rev || '?'}${dirty ? ', uncommitted changes' : ''})`,
      systemd: clean(capture(REFERENCE_BIN, ['--version']), /^systemd\s+(.*)$/),
      haproxy: clean(capture('haproxy', ['-v']), /version\s+(\S+)/),
      nginx: clean(capture('nginx', ['-v'], 'stderr'), /nginx\/(\S+)/),
      iperf3: clean(capture('iperf3', ['-v']), /iperf\s+(\S+)/),
      wrk: clean(capture('wrk', ['-v']), /wrk\s+(\S+)/),
      socat: clean((spawnSync('socat', ['-V'], { encoding: 'utf8' }).stdout || '').split('\n').find((l) => /socat version/.test(l)) || '?', /version\s+(\S+)/),
      ...(wantW('dns') && {
        nsd: clean(capture(which('nsd') || 'nsd', ['-v'], 'stderr'), /NSD version\s+(\S+)/),
        dnsperf: clean(((r) => `${r.stdout}${r.stderr}`)(spawnSync('dnsperf', ['-h'], { encoding: 'utf8' })).split('\n').find((l) => /^Version/.test(l)) || '?', /Version\s+(\S+)/),
      }),
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Upstream services

async function startIperf3() {
  const port = await freePort();
  const child = startChild('iperf3', ['-s', '-B', '127.0.0.1', '-p', String(port)]);
  await waitListening(port, child, 'iperf3 -s');
  return { port, child };
}

async function startNginx() {
  const dir = path.join(tmpDir, 'nginx');
  const www = path.join(dir, 'www');
  fs.mkdirSync(www, { recursive: true });
  fs.writeFileSync(path.join(www, '1k'), Buffer.alloc(1024, 'a'));
  fs.writeFileSync(path.join(www, '1m'), Buffer.alloc(1024 * 1024, 'b'));
  for (const d of [tmpDir, dir, www]) fs.chmodSync(d, 0o755); // workers run as nobody when started as root
  const port = await freePort();
  const proxyPort = await freePort(); // the same site behind PROXY protocol, for --proxy-protocol
  const conf = `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    root ${www};
    location / { }
  }
  server {
    listen 127.0.0.1:${proxyPort} backlog=4096 proxy_protocol;
    root ${www};
    location / { }
  }
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child = startChild('nginx', ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off;']);
  await waitListening(port, child, 'nginx');
  await waitListening(proxyPort, child, 'nginx (proxy_protocol)');
  return { port, proxyPort, child };
}

async function startSink() {
  const bin = path.join(tmpDir, 'streams');
  const r = spawnSync('cc', ['-O2', '-o', bin, path.join(HERE, 'streams.c')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc failed building scripts/bench/streams.c:\n${r.stderr}`);
  const port = await freePort();
  const child = startChild(bin, ['sink', String(port)], { onStdout: () => {} });
  child.stdout.removeAllListeners('data');
  const next = lineReader(child);
  if ((await next(10000)) !== 'ready') throw new Error('streams sink did not start');
  return { port, child, bin, next };
}

/** NSD serving the test suite's generated zone (test/udp-helpers.mjs) on 127.0.0.1, and dnsperf's query file. */
async function startNsd() {
  const dir = path.join(tmpDir, 'nsd');
  const port = await freeUdpPort();
  const { argv } = nsdConfig(dir, port, { names: 256, ipv6: false });
  const queries = path.join(dir, 'queries.txt');
  fs.writeFileSync(queries, Array.from({ length: 256 }, (_, i) => `${hostName(i)} ${i % 2 ? 'TXT' : 'A'}`).join('\n') + '\n');
  const child = startChild(argv[0], argv.slice(1));
  await udpRoundTrip(port, dnsQuery(hostName(0)), child, 'nsd');
  return { port, child, queries, probe: dnsQuery(hostName(1)) };
}

/** A DNS query (A, recursion desired) as bytes. */
function dnsQuery(name, id = 0x1234) {
  const labels = name.split('.').flatMap((l) => [Buffer.from([l.length]), Buffer.from(l)]);
  return Buffer.concat([Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

/** scripts/bench/udpload.c, built once; its echo mode as the datagram workloads' upstream. */
async function startUdpEcho() {
  const bin = path.join(tmpDir, 'udpload');
  const r = spawnSync('cc', ['-O2', '-o', bin, path.join(HERE, 'udpload.c')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc failed building scripts/bench/udpload.c:\n${r.stderr}`);
  const port = await freeUdpPort();
  const child = startChild(bin, ['echo', String(port)], { onStdout: () => {} });
  child.stdout.removeAllListeners('data');
  const next = lineReader(child);
  if ((await next(10000)) !== 'ready') throw new Error('udpload echo did not start');
  return { port, child, bin, probe: Buffer.from('probe') };
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.on('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Sends `payload` to 127.0.0.1:port every 200 ms until a datagram comes back (a socket-activated proxy
 * is exec'd by the first one); throws after `timeoutMs` or when `child` exits.
 */
async function udpRoundTrip(port, payload, child, what, timeoutMs = 15000) {
  const s = dgram.createSocket('udp4');
  s.on('error', () => {});
  try {
    const got = new Promise((resolve) => s.once('message', () => resolve(true)));
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (child && child.exitInfo) throw new Error(`${what} exited (${JSON.stringify(child.exitInfo)}):\n${child.tail}`);
      s.send(payload, port, '127.0.0.1');
      if (await Promise.race([got, sleep(200).then(() => false)])) return;
    }
    throw new Error(`${what} did not answer a datagram on 127.0.0.1:${port} within ${timeoutMs} ms:\n${child ? child.tail : ''}`);
  } finally {
    s.close();
  }
}

async function startIdleHolder(wrap) {
  const child = startChild(...wrap(process.execPath, [path.join(HERE, 'idle.mjs')]), { stdin: 'pipe', onStdout: () => {} });
  child.stdout.removeAllListeners('data');
  const next = lineReader(child);
  const { port } = JSON.parse(await next(10000));
  const ask = async (msg, timeoutMs = 120000) => {
    child.stdin.write(JSON.stringify(msg) + '\n');
    return JSON.parse(await next(timeoutMs));
  };
  return { port, child, ask };
}

// ---------------------------------------------------------------------------------------------------
// Proxies

let NOFILE = 0; // the RLIMIT_NOFILE every proxy runs with
let raiseNofile = false;
const wrapLimit = (cmd, args) => (raiseNofile ? ['prlimit', [`--nofile=${NOFILE}:${NOFILE}`, cmd, ...args]] : [cmd, args]);
const UNPRIV = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'];

async function startProxy(id, upstreamPort, { unprivileged = false } = {}) {
  if (id === 'direct') return { id, port: upstreamPort, pid: null };
  const port = await freePort();
  const spec = PROXIES.find((p) => p.id === id);
  const metricsPort = spec.metrics ? await freePort() : null;
  const target = `127.0.0.1:${upstreamPort}`;
  const listen = `127.0.0.1:${port}`;
  let cmd, args;
  switch (id) {
    case 'systemd':
      cmd = 'systemd-socket-activate';
      args = ['-l', listen, REFERENCE_BIN, '--connections-max=60000', target];
      break;
    case 'ours':
    case 'baseline':
    case 'ours-pp2':
    case 'ours-idle':
    case 'ours-ka':
    case 'ours-mon':
      cmd = 'systemd-socket-activate';
      args = ['-l', listen, process.execPath, path.join(ROOT, 'bin', 'socket-proxyd'), '--connections-max=60000',
        ...(PROXIES.find((p) => p.id === id).args ?? []), ...(spec.metrics ? [`--metrics=127.0.0.1:${metricsPort}`] : []), target];
      // systemd-socket-activate passes its child only the variables named with -E
      if (id === 'baseline') args.unshift(`-ESOCKET_PROXYD_ADDON=${BASELINE_ADDON}`);
      break;
    case 'haproxy': {
      // HAProxy refuses to start unless RLIMIT_NOFILE covers its maxconn (2 fds each + splice pipes).
      const haMaxconn = Math.min(60000, Math.floor((NOFILE - 200) / 3));
      const cfg = path.join(tmpDir, `haproxy-${port}.cfg`);
      fs.writeFileSync(
        cfg,
        `global
  nbthread 2
  maxconn ${haMaxconn}
defaults
  mode tcp
  option splice-auto
  maxconn ${haMaxconn}
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend in
  bind ${listen}
  default_backend out
backend out
  server upstream ${target}
`,
      );
      cmd = 'haproxy';
      args = ['-db', '-f', cfg];
      break;
    }
    case 'socat':
      cmd = 'socat';
      args = [`TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr`, `TCP:${target}`];
      break;
    case 'node':
      cmd = process.execPath;
      args = [path.join(HERE, 'node-pipe.mjs'), listen, target];
      break;
    default:
      throw new Error(id);
  }
  if (unprivileged) [cmd, args] = [UNPRIV[0], [...UNPRIV.slice(1), cmd, ...args]];
  // systemd starts services with SIGPIPE ignored (IgnoreSIGPIPE=yes); systemd-socket-proxyd relies on
  // it (it splices into sockets whose peer may be gone) and dies without it. Emulate that for all.
  [cmd, args] = ['sh', ['-c', 'trap "" PIPE; exec "$@"', 'sh', cmd, ...args]];
  [cmd, args] = wrapLimit(cmd, args);
  const child = startChild(cmd, args, { stderrFile: spec.stderrToFile ? path.join(tmpDir, `${id}-${port}.stderr`) : undefined });
  const name = spec.name;
  await waitListening(port, child, name);
  // Warm up: socket activation execs the proxy on the first connection. Hold one connection until the
  // proxy runs (exe is no longer systemd-socket-activate), so no measurement pays for its start.
  const ourCli = id === 'ours' || id === 'baseline' || FEATURE_VARIANTS.includes(id);
  const activated = id === 'systemd' || ourCli;
  await tryConnect(port, activated ? 300 : 50);
  if (activated) {
    const end = Date.now() + 10000;
    for (;;) {
      let exe = '';
      try {
        exe = fs.readlinkSync(`/proc/${child.pid}/exe`);
      } catch {}
      if (exe && exe === fs.realpathSync(ourCli ? process.execPath : REFERENCE_BIN)) break;
      if (child.exitInfo || Date.now() > end) throw new Error(`${name} did not start:\n${child.tail}`);
      await sleep(50);
    }
    await sleep(ourCli ? 700 : 200);
    await tryConnect(port, 50);
  }
  await sleep(200);
  if (child.exitInfo) throw new Error(`${name} exited:\n${child.tail}`);
  if (metricsPort) {
    // The endpoint must answer with the proxy's figures; then it is scraped every second, as a
    // (busy) Prometheus would, for as long as the bench runs.
    const text = await scrapeMetrics(metricsPort).catch((e) => {
      throw new Error(`${name}: no metrics at 127.0.0.1:${metricsPort}/metrics: ${e.message}\n${child.tail}`);
    });
    if (!/^socket_proxyd_connections_accepted_total \d+$/m.test(text)) throw new Error(`${name}: unexpected metrics:\n${text.slice(0, 2000)}`);
    setInterval(() => scrapeMetrics(metricsPort).catch(() => {}), 1000).unref();
  }
  return { id, port, pid: child.pid, child };
}

/**
 * A datagram proxy on a fresh 127.0.0.1 port in front of 127.0.0.1:upstreamPort, answered a probe
 * datagram through it before it is used. socket-proxyd: `systemd-socket-activate --datagram -l …` (as
 * ListenDatagram=); socat: `UDP-LISTEN:PORT,fork,reuseaddr UDP:…` (one process per client address).
 */
async function startUdpProxy(id, upstreamPort, probe) {
  if (id === 'direct') return { id, port: upstreamPort, pid: null };
  const port = await freeUdpPort();
  const target = `127.0.0.1:${upstreamPort}`;
  let cmd, args;
  switch (id) {
    case 'ours':
    case 'baseline':
      cmd = 'systemd-socket-activate';
      args = ['--datagram', '-l', `127.0.0.1:${port}`, process.execPath, path.join(ROOT, 'bin', 'socket-proxyd'), target];
      if (id === 'baseline') args.unshift(`-ESOCKET_PROXYD_ADDON=${BASELINE_ADDON}`);
      break;
    case 'socat':
      // -T 300: a child whose peer is silent for 5 min exits (longer than the gaps between runs, so the
      // measured runs find the children the warm-up made; it only tidies up).
      cmd = 'socat';
      args = ['-T', '300', `UDP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr`, `UDP:${target}`];
      break;
    default:
      throw new Error(`${id} has no datagram proxy here`);
  }
  [cmd, args] = ['sh', ['-c', 'trap "" PIPE; exec "$@"', 'sh', cmd, ...args]];
  [cmd, args] = wrapLimit(cmd, args);
  const child = startChild(cmd, args);
  const name = PROXIES.find((p) => p.id === id).name;
  const end = Date.now() + 10000;
  while (!udpPortBound(port)) {
    if (child.exitInfo || Date.now() > end) throw new Error(`${name} did not bind UDP 127.0.0.1:${port}:\n${child.tail}`);
    await sleep(50);
  }
  await udpRoundTrip(port, probe, child, name);
  if (id !== 'socat') await sleep(700); // as for TCP: past the proxy's start-up
  if (child.exitInfo) throw new Error(`${name} exited:\n${child.tail}`);
  return { id, port, pid: child.pid, child };
}

/** True when an unconnected UDP socket is bound to 127.0.0.1:port or 0.0.0.0:port (/proc/net/udp). */
function udpPortBound(port) {
  const want = port.toString(16).toUpperCase().padStart(4, '0');
  return fs.readFileSync('/proc/net/udp', 'utf8').split('\n').some((l) => {
    const f = l.trim().split(/\s+/);
    return f[1]?.split(':')[1] === want && f[2] === '00000000:0000';
  });
}

/**
 * Datagrams the kernel dropped on process `pid`'s UDP sockets so far (full receive buffers: the
 * "drops" column of /proc/net/udp, summed over the sockets whose inode the process holds).
 */
function udpSocketDrops(pid) {
  const inodes = new Set();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {}
  }
  let drops = 0;
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    for (const l of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = l.trim().split(/\s+/);
      if (f.length >= 13 && inodes.has(f[9])) drops += Number(f[12]);
    }
  }
  return drops;
}

/**
 * The reference with a datagram socket, once: it refuses it at start-up. Resolves the line it wrote,
 * for the notes (so "cannot forward UDP" in the table is a fact of this run, not an assumption).
 */
async function referenceRefusesUdp() {
  const port = await freeUdpPort();
  const child = startChild('systemd-socket-activate', ['--datagram', '-l', `127.0.0.1:${port}`, REFERENCE_BIN, '127.0.0.1:9']);
  const end = Date.now() + 10000;
  while (!udpPortBound(port) && Date.now() < end && !child.exitInfo) await sleep(50);
  const s = dgram.createSocket('udp4');
  s.on('error', () => {});
  s.send('x', port, '127.0.0.1');
  const exit = await Promise.race([child.exited, sleep(10000).then(() => null)]);
  s.close();
  if (!exit) await stopChild(child);
  const line = child.tail.split('\n').filter(Boolean).filter((l) => !/^(Listening on|Communication attempt|Execing)/.test(l)).pop() || '';
  return { exit, line };
}

function procCpuSeconds(pid) {
  // utime, stime, cutime, cstime (fields 14-17); cutime/cstime count socat's reaped children.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  return ticks / CLK_TCK;
}
const CLK_TCK = Number((spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout || '').trim()) || 100;

function procFds(pid) {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}
function procRssKiB(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s*(\d+)\s*kB/);
  return m ? Number(m[1]) : NaN;
}

// ---------------------------------------------------------------------------------------------------
// Workload runners; each returns { value, ... } or { value: null, error }

async function runIperf3(proxy, reverse) {
  const args = ['-c', '127.0.0.1', '-p', String(proxy.port), '-t', String(DURATION), '-J'];
  if (reverse) args.push('-R');
  const cpu0 = proxy.pid ? procCpuSeconds(proxy.pid) : 0;
  const r = await run('iperf3', args, { timeoutMs: (DURATION + 30) * 1000 });
  await sleep(100); // let socat reap its child so cstime counts it
  const cpu = proxy.pid ? procCpuSeconds(proxy.pid) - cpu0 : null;
  let j;
  try {
    j = JSON.parse(r.stdout);
  } catch {
    return { value: null, error: `iperf3: ${r.stderr || r.stdout}`.slice(0, 300) };
  }
  if (j.error) return { value: null, error: `iperf3: ${j.error}` };
  const recv = j.end.sum_received;
  return { value: recv.bits_per_second / 1e9, bytes: recv.bytes, cpu };
}

async function runWrk(proxy, { threads, conns, file, close }) {
  const args = [`-t${threads}`, `-c${conns}`, `-d${DURATION}s`];
  if (close) args.push('-H', 'Connection: close');
  args.push(`http://127.0.0.1:${proxy.port}/${file}`);
  const r = await run('wrk', args, { timeoutMs: (DURATION + 30) * 1000 });
  const m = r.stdout.match(/Requests\/sec:\s*([\d.]+)/);
  if (!m) return { value: null, error: `wrk: ${(r.stderr || r.stdout).slice(0, 300)}` };
  const se = r.stdout.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  const non2xx = r.stdout.match(/Non-2xx or 3xx responses: (\d+)/);
  const out = { value: Number(m[1]) };
  if (se) out.socketErrors = { connect: +se[1], read: +se[2], write: +se[3], timeout: +se[4] };
  if (non2xx) out.non2xx = Number(non2xx[1]);
  return out;
}

async function runIdle(proxy, holder, n) {
  const fds0 = procFds(proxy.pid);
  const rss0 = procRssKiB(proxy.pid);
  const opened = await holder.ask({ cmd: 'open', port: proxy.port, n });
  await sleep(1000); // let allocations settle
  const fds1 = procFds(proxy.pid);
  const rss1 = procRssKiB(proxy.pid);
  const closed = await holder.ask({ cmd: 'close' });
  await sleep(500);
  if (!opened.ok || opened.opened !== n || opened.upstream < n) {
    return { value: null, error: `held ${opened.upstream} of ${n} upstream (${opened.opened} opened, ${opened.failed} failed)`, closed };
  }
  return {
    value: { fds: (fds1 - fds0) / n, rss: (rss1 - rss0) / n },
    raw: { n, fds0, fds1, rss0, rss1 },
    closedOk: closed.ok,
  };
}

async function runStreams(proxy, sink, n) {
  const warm = 1;
  const src = startChild(sink.bin, ['source', '127.0.0.1', String(proxy.port), String(n), String(warm + DURATION + 0.5)], { onStdout: () => {} });
  src.stdout.removeAllListeners('data');
  const nextSrc = lineReader(src);
  await sleep(warm * 1000);
  const sample = async () => {
    process.kill(sink.child.pid, 'SIGUSR1');
    const [t, b] = (await sink.next(5000)).split(' ').map(Number);
    return { t, b };
  };
  const a = await sample();
  await sleep(DURATION * 1000);
  const b = await sample();
  const report = JSON.parse(await nextSrc((DURATION + 30) * 1000));
  await src.exited;
  await sleep(500); // connections close
  const value = ((b.b - a.b) * 8) / ((b.t - a.t) / 1e9) / 1e9;
  if (report.connected !== n) return { value: null, error: `${report.connected} of ${n} streams connected (${report.failed} failed)`, report };
  return { value, report };
}

/** The p-th percentile (0..100) of numbers, nearest rank. */
function percentile(values, p) {
  if (!values.length) return null;
  const v = Float64Array.from(values).sort();
  return v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))];
}

/**
 * dnsperf -c 100 -q 200 against the proxy for DURATION s (-Q `rate`: at most that many queries/s).
 * -v prints each answer's latency, which gives the p99 (dnsperf 2.10 reports only the average);
 * a query unanswered after 2 s (-t 2) is lost.
 */
async function runDnsperf(proxy, nsd, rate = null, seconds = DURATION) {
  const args = ['-s', '127.0.0.1', '-p', String(proxy.port), '-d', nsd.queries, '-l', String(seconds), '-c', '100', '-q', '200', '-t', '2', '-v'];
  if (proxy.srcBase) args.push('-x', String(proxy.srcBase));
  if (rate) args.push('-Q', String(Math.max(1, Math.round(rate))));
  const cpu0 = proxy.pid ? procCpuSeconds(proxy.pid) : 0;
  const r = await run('dnsperf', args, { timeoutMs: (DURATION + 30) * 1000 });
  const cpu = proxy.pid ? procCpuSeconds(proxy.pid) - cpu0 : null;
  const num = (re) => {
    const m = r.stdout.match(re);
    return m ? Number(m[1]) : null;
  };
  const qps = num(/Queries per second:\s*([\d.]+)/);
  const sent = num(/Queries sent:\s*(\d+)/);
  const completed = num(/Queries completed:\s*(\d+)/);
  const lost = num(/Queries lost:\s*(\d+)/);
  if (qps == null || sent == null) return { value: null, error: `dnsperf: ${(r.stderr || r.stdout).slice(-300)}` };
  const latencies = [];
  for (const m of r.stdout.matchAll(/^> \S+ \S+ \S+ ([\d.]+)$/gm)) latencies.push(Number(m[1]));
  const noerror = num(/NOERROR (\d+)/);
  return {
    value: qps,
    p99ms: latencies.length ? percentile(latencies, 99) * 1000 : null,
    p50ms: latencies.length ? percentile(latencies, 50) * 1000 : null,
    sent,
    completed,
    lost,
    noerror,
    answersTimed: latencies.length,
    cpu,
    rate,
  };
}

/** scripts/bench/udpload against the proxy: `size`-byte datagrams from 100 source ports, 8 in flight each. */
async function runUdpLoad(proxy, echo, size, seconds = DURATION) {
  const cpu0 = proxy.pid ? procCpuSeconds(proxy.pid) : 0;
  const r = await run(echo.bin, ['load', '127.0.0.1', String(proxy.port), String(size), String(seconds), '100', '8', String(proxy.srcBase)], { timeoutMs: (seconds + 30) * 1000 });
  const cpu = proxy.pid ? procCpuSeconds(proxy.pid) - cpu0 : null;
  const drops = proxy.pid ? udpSocketDrops(proxy.pid) : null;
  let j;
  try {
    j = JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return { value: null, error: `udpload: ${(r.stderr || r.stdout).slice(-300)}` };
  }
  if (j.truncated) return { value: null, error: `udpload: ${j.truncated} replies of the wrong size`, ...j };
  return { value: j.rate, lostPct: j.sent ? (100 * j.lost) / j.sent : 0, ...j, cpu, kernelDrops: drops };
}

/** An echo server in this process: the upstream of the cold-start runs. */
async function startEcho() {
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => {});
    s.pipe(s);
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  return { server, port: server.address().port };
}

const COLD_LABEL = { 'node-e0': '`node -e 0`' };

/**
 * One cold start: systemd-socket-activate listens (its own start is not counted); then a client
 * connects — the kernel puts it in the backlog — and sends a line, the connection makes
 * systemd-socket-activate exec the proxy, and the time runs until the echo of that line is back.
 * For `node-e0`: spawn to exit of `node -e 0`, for scale.
 */
async function coldSample(id, echoPort) {
  if (id === 'node-e0') {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    const [code] = await once(child, 'exit');
    if (code !== 0) throw new Error(`node -e 0 exited ${code}`);
    return performance.now() - t0;
  }
  const port = await freePort();
  const target = `127.0.0.1:${echoPort}`;
  const program = {
    systemd: [REFERENCE_BIN, target],
    ours: [process.execPath, path.join(ROOT, 'bin', 'socket-proxyd'), target],
    baseline: [process.execPath, path.join(ROOT, 'bin', 'socket-proxyd'), target],
    floor: [process.execPath, path.join(HERE, 'fd3-forwarder.cjs'), target],
  }[id];
  const extra = id === 'baseline' ? [`-ESOCKET_PROXYD_ADDON=${BASELINE_ADDON}`] : [];
  // SIGPIPE ignored, as under systemd (see startProxy)
  const child = startChild('sh', ['-c', 'trap "" PIPE; exec "$@"', 'sh', 'systemd-socket-activate', ...extra, '-l', `127.0.0.1:${port}`, ...program]);
  const name = PROXIES.find((p) => p.id === id).name;
  try {
    await deadline(new Promise((resolve, reject) => {
      const check = () => child.tail.includes('Listening on') && resolve();
      child.stderr.on('data', check);
      child.exited.then(() => reject(new Error(`systemd-socket-activate exited:\n${child.tail}`)));
    }), 10000, `systemd-socket-activate for ${name} did not listen`);
    const t0 = performance.now();
    const client = net.connect({ host: '127.0.0.1', port, noDelay: true });
    client.on('error', () => {});
    client.write('cold start\n');
    let got = '';
    await deadline(new Promise((resolve, reject) => {
      client.on('data', (d) => (got += d) === 'cold start\n' && resolve());
      client.on('close', () => reject(new Error(`${name} closed the connection (got ${JSON.stringify(got)}):\n${child.tail}`)));
    }), 20000, `${name}: no echo within 20 s:\n${child.tail}`);
    const ms = performance.now() - t0;
    client.destroy();
    return ms;
  } finally {
    killGroup(child, 'SIGKILL');
    await child.exited;
  }
}

function deadline(promise, ms, message) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)))]).finally(() => clearTimeout(timer));
}

/** n cold starts of each of `who` and of `node -e 0`, interleaved: the order rotates every sample. */
async function runColdStart(who, n, echoPort, say) {
  const order = [...who, 'node-e0'];
  const samples = Object.fromEntries(order.map((p) => [p, []]));
  const errors = [];
  for (let i = 0; i < n; i++) {
    const turn = order.slice(i % order.length).concat(order.slice(0, i % order.length));
    const line = [];
    for (const p of turn) {
      try {
        const ms = await coldSample(p, echoPort);
        samples[p].push(ms);
        line.push(`${p} ${ms.toFixed(1)}`);
      } catch (e) {
        errors.push(`${p}: ${e.message}`);
        line.push(`${p} FAILED`);
      }
      await sleep(50);
    }
    say(`${i + 1}/${n}: ${line.join(', ')} ms`);
  }
  return { samples, errors };
}

function coldStartNote(byProxy, nodeE0) {
  const m = (p) => median(p === 'node-e0' ? nodeE0 : byProxy[p] ?? []);
  const range = (xs) => (xs.length ? `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}` : '?');
  const parts = [];
  for (const p of [...proxiesFor('coldstart'), 'node-e0']) {
    const xs = p === 'node-e0' ? nodeE0 : byProxy[p] ?? [];
    if (!xs.length) continue;
    parts.push(`${COLD_LABEL[p] ?? PROXIES.find((x) => x.id === p).name} ${m(p).toFixed(1)} ms (median of ${xs.length}, range ${range(xs)})`);
  }
  const ours = m('ours'), ref = m('systemd'), floor = m('floor'), e0 = m('node-e0');
  const vs = [];
  if (ours != null && ref != null) vs.push(`${(ours - ref).toFixed(1)} ms more than systemd-socket-proxyd (${(ours / ref).toFixed(1)}×)`);
  if (ours != null && floor != null) vs.push(`${(ours - floor).toFixed(1)} ms over the bare Node forwarder`);
  if (e0 != null) vs.push(`for scale, \`node -e 0\` takes ${e0.toFixed(1)} ms from spawn to exit (its exit and -e evaluation included)`);
  return (
    'Cold start (--exit-idle-time starts the proxy on the first client after each idle period): systemd-socket-activate listens, a client connects ' +
    '(the kernel queues it in the backlog) and sends a line; the time from connect() to its echo, through a proxy exec\'d by that connection to an echo ' +
    `server in the bench process. All take turns sample by sample. ${parts.join('; ')}. socket-proxyd: ${vs.join('; ') || '—'}.`
  );
}

// ---------------------------------------------------------------------------------------------------
// Report

const median = (xs) => {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const FMT = {
  gbps: (v) => v.toFixed(1),
  int: (v) => Math.round(v).toLocaleString('en-US'),
  fds: (v) => v.toFixed(2),
  kib: (v) => v.toFixed(1),
  cpu: (v) => v.toFixed(3),
  ms: (v) => v.toFixed(2),
  count: (v) => Math.round(v).toLocaleString('en-US'),
  pct: (v) => `${v.toFixed(2)} %`,
};

function buildReport(env, samples, notes, cmdline) {
  const rows = [];
  for (const w of WORKLOADS) {
    if (!wantW(w.id)) continue;
    for (const row of w.rows) {
      const cells = {};
      for (const p of proxiesFor(w.id)) cells[p] = median((samples[row.id]?.[p] || []).map((s) => s));
      rows.push({ ...row, udp: !!w.udp, cells, ref: cells[w.udp ? UDP_RATIO_TO : REF] });
    }
  }
  // Bulk rows are shown when the CPU row asked for them too.
  const out = [];
  const anyUdp = rows.some((r) => r.udp);
  out.push(
    `Command: \`${cmdline}\` — ${ROUNDS} interleaved round${ROUNDS > 1 ? 's' : ''} of ${DURATION} s runs${opts.quick ? ' (--quick)' : ''}, medians; ratios are to systemd-socket-proxyd in the same run` +
      `${anyUdp ? ' (datagram rows: to socat, as systemd-socket-proxyd cannot forward UDP)' : ''}.`,
  );
  out.push('');
  out.push(`Date: ${env.date}`);
  out.push(
    `Machine: ${env.machine.nproc} CPUs (nproc), ${env.machine.cpu}, ${env.machine.memGiB} GiB, Linux ${env.machine.kernel}; load average at start ${env.machine.loadavg.join(' ')}`,
  );
  out.push(`Versions: ${Object.entries(env.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  out.push('');
  // a proxy in none of the rows shown (e.g. the floor, without the cold start) has no column
  const cols = selectedProxies.filter((p) => p === REF || rows.some((r) => p in r.cells));
  out.push(`| workload | ${cols.map((c) => PROXIES.find((p) => p.id === c).name).join(' | ')} |`);
  out.push(`|---|${cols.map(() => '---:').join('|')}|`);
  for (const r of rows) {
    const cells = cols.map((c) => {
      if (r.udp && c === REF) return 'cannot forward UDP';
      if (!(c in r.cells)) return '—';
      const v = r.cells[c];
      if (v == null) return 'failed';
      const ratio = r.ref && !['count', 'pct'].includes(r.fmt) ? ` (${(v / r.ref).toFixed(2)}×)` : '';
      return `${FMT[r.fmt](v)}${ratio}`;
    });
    out.push(`| ${r.label} | ${cells.join(' | ')} |`);
  }
  out.push('');
  const targets = [];
  if (selectedProxies.includes('ours')) {
    out.push(`Targets (socket-proxyd against systemd-socket-proxyd, same run${anyUdp ? '; datagram rows against socat and no proxy' : ''}):`);
    out.push('');
    for (const r of rows) {
      const v = r.cells.ours;
      if (r.vs || r.zero) {
        for (const [against, want] of r.vs ?? []) {
          const base = r.cells[against];
          const name = PROXIES.find((p) => p.id === against).name;
          const met = v == null || base == null || !(against in r.cells) ? null : v / base >= want - 1e-9;
          const text = met == null ? 'not measured' : `${(v / base).toFixed(3)}× ${name} (target ≥ ${want.toFixed(2)}×; ${FMT[r.fmt](v)} against ${FMT[r.fmt](base)})`;
          targets.push({ row: r.id, label: `${r.label}, against ${name}`, value: v, ref: base, met });
          out.push(`- ${met == null ? '?' : met ? 'MET' : 'MISSED'} — ${r.label}: ${text}`);
        }
        if (r.zero) {
          // Every round, not the median: one round with a loss misses it.
          const each = samples[r.id]?.ours ?? [];
          const met = each.length ? each.every((x) => x === 0) : null;
          targets.push({ row: r.id, label: r.label, value: v, ref: 0, met, each });
          out.push(`- ${met == null ? '?' : met ? 'MET' : 'MISSED'} — ${r.label}: ${met == null ? 'not measured' : `${each.join(', ')} in the ${each.length} round${each.length > 1 ? 's' : ''} (target 0 in each)`}`);
        }
        continue;
      }
      if (r.target == null && r.targetAbs == null && r.targetOverFloor == null) continue;
      let met, text;
      if (r.targetOverFloor != null) {
        const floor = r.cells.floor;
        met = v == null || floor == null ? null : v - floor <= r.targetOverFloor;
        text = met == null
          ? 'not measured (needs socket-proxyd and the floor)'
          : `${FMT[r.fmt](v - floor)} ms over the floor (target ≤ ${r.targetOverFloor} ms; ${FMT[r.fmt](v)} against the floor's ${FMT[r.fmt](floor)}` +
            `${r.ref != null ? ` and the reference's ${FMT[r.fmt](r.ref)}` : ''})`;
      } else if (v == null || (r.target != null && !r.ref)) {
        met = null;
        text = 'not measured';
      } else if (r.targetAbs != null) {
        met = v <= r.targetAbs;
        text = `${FMT[r.fmt](v)} (target ≤ ${r.targetAbs}; reference ${r.ref != null ? FMT[r.fmt](r.ref) : '?'})`;
      } else {
        const ratio = v / r.ref;
        met = r.better === 'higher' ? ratio >= r.target - 1e-9 : ratio <= r.target + 1e-9;
        text = `${ratio.toFixed(3)}× (target ${r.better === 'higher' ? '≥' : '≤'} ${r.target.toFixed(2)}×; ${FMT[r.fmt](v)} against ${FMT[r.fmt](r.ref)})`;
      }
      targets.push({ row: r.id, label: r.label, value: v, ref: r.ref, met });
      out.push(`- ${met == null ? '?' : met ? 'MET' : 'MISSED'} — ${r.label}: ${text}`);
    }
    out.push('');
  }
  const variants = FEATURE_VARIANTS.filter((id) => selectedProxies.includes(id));
  if (variants.length && selectedProxies.includes('ours') && rows.some((r) => variants.some((id) => id in r.cells))) {
    out.push('Options (socket-proxyd with the option against socket-proxyd without it, same run; target within 5%):');
    out.push('');
    for (const r of rows) {
      for (const id of variants) {
        if (!(id in r.cells)) continue;
        const v = r.cells[id], base = r.cells.ours;
        const name = PROXIES.find((p) => p.id === id).name.replace('socket-proxyd ', '');
        if (v == null || base == null) {
          targets.push({ row: r.id, label: `${r.label}, ${name}`, value: v, ref: base, met: null });
          out.push(`- ? — ${r.label}, ${name}: not measured`);
          continue;
        }
        const ratio = v / base;
        const met = r.better === 'higher' ? ratio >= 0.95 : ratio <= 1.05;
        targets.push({ row: r.id, label: `${r.label}, ${name}`, value: v, ref: base, met });
        out.push(`- ${met ? 'MET' : 'MISSED'} — ${r.label}, ${name}: ${ratio.toFixed(3)}× (${FMT[r.fmt](v)} against ${FMT[r.fmt](base)})`);
      }
    }
    out.push('');
  }
  if (notes.length) {
    out.push('Notes:');
    out.push('');
    for (const n of notes) out.push(`- ${n}`);
    out.push('');
  }
  return { text: out.join('\n'), rows, targets };
}

// ---------------------------------------------------------------------------------------------------
// Main

async function main() {
  checkTools();
  const cmdline = process.env.npm_lifecycle_event === 'bench'
    ? `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`
    : `node scripts/bench.mjs${process.argv.length > 2 ? ' ' + process.argv.slice(2).join(' ') : ''}`;
  const env = environment();
  const notes = [];
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-bench-'));

  // File descriptors: the reference holds 6 per connection (2 sockets, 2 pipes), so 10,000 idle
  // connections need LimitNOFILE above 60,000 for it (systemd's default soft limit is 1024).
  const lim = nofileLimit();
  const wantFds = 6 * IDLE_WANTED + 1000;
  if (lim.canRaise && lim.hard < wantFds) {
    NOFILE = wantFds;
    raiseNofile = true;
  } else {
    NOFILE = lim.hard;
    raiseNofile = lim.soft < lim.hard && !!which('prlimit');
  }
  let idleN = IDLE_WANTED;
  if (wantW('idle')) {
    const fit = Math.floor((NOFILE - 200) / 6 / 500) * 500; // what the reference can hold, in steps of 500
    if (fit < idleN) {
      notes.push(
        `Idle connections: ${fit.toLocaleString('en-US')} instead of ${IDLE_WANTED.toLocaleString('en-US')}: RLIMIT_NOFILE is ${NOFILE} here and cannot be raised (no CAP_SYS_RESOURCE); ` +
          `the reference needs 6 fds per connection, so ${IDLE_WANTED.toLocaleString('en-US')} connections need LimitNOFILE ≥ ${(6 * IDLE_WANTED + 100).toLocaleString('en-US')} for it ` +
          `(2 per connection for socket-proxyd). Per-connection figures barely depend on the count.`,
      );
      idleN = fit;
    }
    if (idleN < 100) die(`RLIMIT_NOFILE ${NOFILE} is too low for the idle workload`);
  }
  log(`bench: ${ROUNDS} round(s), ${DURATION} s runs; workloads ${selectedWorkloads.join(',')}; proxies ${selectedProxies.join(',')}; RLIMIT_NOFILE ${NOFILE}`);

  // Upstreams
  const up = {};
  if (runBulk || runBulkR) up.iperf3 = await startIperf3();
  if (['keepalive-1k', 'mib', 'newconn'].some(wantW)) up.nginx = await startNginx();
  if (wantW('idle')) up.idle = await startIdleHolder(wrapLimit);
  if (wantW('bulk300')) up.sink = await startSink();
  const echo = wantW('coldstart') ? await startEcho() : null;
  if (wantW('dns')) up.nsd = await startNsd();
  if (wantW('udp-64') || wantW('udp-1400')) up.udpecho = await startUdpEcho();
  const UDP_WORKLOADS = WORKLOADS.filter((w) => w.udp && wantW(w.id)).map((w) => w.id);
  if (UDP_WORKLOADS.length) {
    const { exit, line } = await referenceRefusesUdp();
    notes.push(
      `systemd-socket-proxyd cannot forward UDP: started by \`systemd-socket-activate --datagram\` it ${exit ? `exited ${exit.code ?? exit.signal}` : 'did not exit'} at the first datagram` +
        `${line ? ` ("${line}")` : ''}; its column shows that, and the datagram rows' ratios are to socat.`,
    );
  }

  // One proxy instance per (proxy, upstream); all started and warmed up before the first round.
  const inst = {};
  const get = (kind, p) => inst[`${kind}/${p}`];
  const need = [];
  const addNeed = (kind, wids, opts2) => {
    for (const p of selectedProxies) if (wids.some((w) => (w === 'bulk' ? runBulk : w === 'bulk-reverse' ? runBulkR : wantW(w)) && proxiesFor(w).includes(p))) need.push([kind, p, opts2]);
  };
  addNeed('iperf3', ['bulk', 'bulk-reverse']);
  addNeed('nginx', ['keepalive-1k', 'mib', 'newconn']);
  addNeed('sink', ['bulk300'], { unprivileged: true });
  for (const [kind, p, o] of need) {
    log(`bench: starting ${PROXIES.find((x) => x.id === p).name} → ${kind}${o?.unprivileged ? ' (as nobody)' : ''}`);
    // --proxy-protocol needs an upstream that expects the header.
    inst[`${kind}/${p}`] = await startProxy(p, p === 'ours-pp2' ? up[kind].proxyPort : up[kind].port, o);
  }
  let udpInstances = 0;
  const coldStarts = [];
  for (const [kind, wids] of [['nsd', ['dns']], ['udpecho', ['udp-64', 'udp-1400']]]) {
    for (const p of selectedProxies) {
      if (!wids.some((w) => wantW(w) && proxiesFor(w).includes(p))) continue;
      log(`bench: starting ${PROXIES.find((x) => x.id === p).name} → ${kind} (UDP)`);
      const px = await startUdpProxy(p, up[kind].port, up[kind].probe);
      // Each instance's clients always use the same 100 source ports (dnsperf -x, udpload BASEPORT), and a
      // 1 s warm-up run from them comes first: the measured runs see the proxy's steady state (its sessions,
      // or socat's per-client processes, already there), not its set-up. What the cold start cost is in
      // the notes.
      px.srcBase = 21000 + 200 * udpInstances++;
      const warm = kind === 'nsd' ? await runDnsperf(px, up.nsd, 2000, 1) : await runUdpLoad(px, up.udpecho, 64, 1);
      if (warm.value == null) throw new Error(`${p} (${kind}) warm-up failed: ${warm.error}`);
      coldStarts.push(`${PROXIES.find((x) => x.id === p).name} → ${kind === 'nsd' ? 'NSD, dnsperf -Q 2000' : 'udp echo, udpload 64-byte'}: ${Math.round(warm.value)}/s, ${warm.lost} lost of ${warm.sent}`);
      inst[`${kind}/${p}`] = px;
    }
  }

  const samples = {}; // row id -> proxy -> [values]
  const rawRuns = [];
  const push = (row, p, v) => ((samples[row] ??= {})[p] ??= []).push(v);
  const rotate = (list, r) => list.slice(r % list.length).concat(list.slice(0, r % list.length));
  const cpuAcc = {}; // per round, per proxy: { cpu, bytes }

  const steps = [];
  if (runBulk) steps.push({ w: 'bulk', kind: 'iperf3', fn: (px) => runIperf3(px, false) });
  if (runBulkR) steps.push({ w: 'bulk-reverse', kind: 'iperf3', fn: (px) => runIperf3(px, true) });
  if (wantW('keepalive-1k')) steps.push({ w: 'keepalive-1k', kind: 'nginx', fn: (px) => runWrk(px, { threads: 2, conns: 64, file: '1k' }) });
  if (wantW('mib')) steps.push({ w: 'mib', kind: 'nginx', fn: (px) => runWrk(px, { threads: 2, conns: 16, file: '1m' }) });
  if (wantW('newconn')) steps.push({ w: 'newconn', kind: 'nginx', fn: (px) => runWrk(px, { threads: 2, conns: 32, file: '1k', close: true }) });
  // Idle: a fresh proxy each time, so the baseline is a proxy that has not served anything yet (RSS
  // never shrinks back after earlier connections close).
  if (wantW('idle')) steps.push({ w: 'idle', kind: 'idle', fresh: true, fn: (px) => runIdle(px, up.idle, idleN) });
  if (wantW('bulk300')) steps.push({ w: 'bulk300', kind: 'sink', fn: (px) => runStreams(px, up.sink, 300) });
  // Cold start: every proxy (and `node -e 0`) in turn, sample after sample, in one step.
  const coldPerRound = Math.ceil(COLD_SAMPLES / ROUNDS);
  const nodeE0 = [];
  if (wantW('coldstart')) steps.push({ w: 'coldstart', all: true });
  // Datagrams. dns-rate runs right after dns in each round, every proxy at the queries/s socat reached in
  // that round's dns run (rate-limited with -Q), for the latency and the losses at a rate all can carry.
  let socatQps = null;
  const dnsShown = (r) => `${Math.round(r.value)} q/s${r.rate ? ` (-Q ${Math.round(r.rate)})` : ''}, p99 ${r.p99ms?.toFixed(2)} ms, lost ${r.lost} of ${r.sent}${r.cpu != null ? `, proxy CPU ${(r.cpu / DURATION).toFixed(2)} s/s` : ''}`;
  if (wantW('dns')) {
    steps.push({
      w: 'dns',
      kind: 'nsd',
      fn: async (px) => {
        if (px.id === 'socat') socatQps = null;
        const r = await runDnsperf(px, up.nsd);
        if (px.id === 'socat' && r.value) socatQps = r.value;
        return r;
      },
      rows: (r) => ({ 'dns-qps': r.value, 'dns-p99': r.p99ms }),
      show: dnsShown,
    });
    steps.push({
      w: 'dns-rate',
      of: 'dns',
      kind: 'nsd',
      fn: (px) => (socatQps ? runDnsperf(px, up.nsd, socatQps) : { value: null, error: "no socat queries/s measured in this round's dns run" }),
      rows: (r) => ({ 'dns-rate-p99': r.p99ms, 'dns-rate-lost': r.lost }),
      show: dnsShown,
    });
    steps.push({
      w: 'dns-cold',
      of: 'dns',
      kind: 'nsd',
      // Ephemeral source ports (no -x): 100 client addresses the proxy has not seen.
      fn: (px) => runDnsperf({ ...px, srcBase: null }, up.nsd),
      rows: (r) => ({ 'dns-cold-qps': r.value, 'dns-cold-lost': r.lost }),
      show: dnsShown,
    });
  }
  const udpShown = (r) =>
    `${Math.round(r.value)} datagrams/s, lost ${r.lost} of ${r.sent} (${r.lostPct.toFixed(2)} %)${r.cpu != null ? `, proxy CPU ${(r.cpu / DURATION).toFixed(2)} s/s` : ''}` +
    `${r.kernelDrops != null ? `, kernel drops ${r.kernelDrops} so far` : ''}`;
  for (const size of [64, 1400]) {
    if (!wantW(`udp-${size}`)) continue;
    steps.push({
      w: `udp-${size}`,
      kind: 'udpecho',
      fn: (px) => runUdpLoad(px, up.udpecho, size),
      rows: (r) => ({ [`udp-${size}`]: r.value, [`udp-${size}-lost`]: r.lostPct }),
      show: udpShown,
    });
  }

  const t0 = Date.now();
  for (let round = 0; round < ROUNDS; round++) {
    for (const step of steps) {
      const who = rotate(proxiesFor(step.of ?? step.w), round);
      if (step.all) {
        const res = await runColdStart(who, coldPerRound, echo.port, (line) => log(`[round ${round + 1}/${ROUNDS}] coldstart    ${line}`));
        for (const [p, values] of Object.entries(res.samples)) {
          for (const v of values) p === 'node-e0' ? nodeE0.push(v) : push('coldstart', p, v);
        }
        rawRuns.push({ round: round + 1, workload: 'coldstart', samples: res.samples, errors: res.errors, value: res.errors.length ? null : Object.values(res.samples).flat().length });
        for (const e of res.errors) notes.push(`round ${round + 1}, coldstart: ${e}`);
        continue;
      }
      for (const p of who) {
        const px = step.fresh ? await startProxy(p, up[step.kind].port) : get(step.kind, p);
        if (px.child && px.child.exitInfo) throw new Error(`${p} (${step.kind}) died: ${JSON.stringify(px.child.exitInfo)}\n${px.child.tail}`);
        const res = await step.fn(px);
        if (res.value == null && px.child && px.child.tail.trim()) res.error += ` — its last output: ${px.child.tail.trim().split('\n').slice(-3).join(' | ')}`;
        if (step.fresh) await stopChild(px.child);
        rawRuns.push({ round: round + 1, workload: step.w, proxy: p, ...res });
        let shown;
        if (res.value == null) {
          shown = `FAILED: ${res.error}`;
          notes.push(`round ${round + 1}, ${step.w}, ${p}: ${res.error}`);
        } else if (step.rows) {
          for (const [row, v] of Object.entries(step.rows(res))) if (v != null) push(row, p, v);
          shown = step.show(res);
        } else if (step.w === 'idle') {
          push('idle-fds', p, res.value.fds);
          push('idle-rss', p, res.value.rss);
          shown = `${res.value.fds.toFixed(2)} fds, ${res.value.rss.toFixed(1)} KiB per connection`;
        } else {
          push(step.w, p, res.value);
          shown = step.w.startsWith('bulk') ? `${res.value.toFixed(2)} Gbit/s` : `${Math.round(res.value)}/s`;
          if (res.socketErrors && Object.values(res.socketErrors).some((x) => x > 0)) shown += ` (socket errors ${JSON.stringify(res.socketErrors)})`;
          if (res.non2xx) shown += ` (${res.non2xx} non-2xx)`;
        }
        if ((step.w === 'bulk' || step.w === 'bulk-reverse') && res.cpu != null && res.bytes) {
          const a = ((cpuAcc[round] ??= {})[p] ??= { cpu: 0, bytes: 0, runs: 0 });
          a.cpu += res.cpu;
          a.bytes += res.bytes;
          a.runs++;
          shown += `, ${(res.cpu / (res.bytes / 2 ** 30)).toFixed(3)} CPU s/GiB`;
        }
        log(`[round ${round + 1}/${ROUNDS}] ${step.w.padEnd(12)} ${p.padEnd(8)} ${shown}`);
        await sleep(300);
      }
    }
    if (wantW('cpu')) {
      for (const [p, a] of Object.entries(cpuAcc[round] || {})) {
        if (a.runs === (runBulk ? 1 : 0) + (runBulkR ? 1 : 0)) push('cpu', p, a.cpu / (a.bytes / 2 ** 30));
      }
    }
    log(`bench: round ${round + 1} done after ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }
  // When RLIMIT_NOFILE kept the idle count below the wanted one, also hold as many as socket-proxyd
  // alone can (2 fds each), once, to show it holds them.
  if (wantW('idle') && idleN < IDLE_WANTED && selectedProxies.includes('ours')) {
    const maxN = Math.min(IDLE_WANTED, Math.floor((NOFILE - 200) / 2 / 500) * 500);
    if (maxN > idleN) {
      const px = await startProxy('ours', up.idle.port);
      const res = await runIdle(px, up.idle, maxN);
      await stopChild(px.child);
      rawRuns.push({ round: 'extra', workload: 'idle', proxy: 'ours', ...res });
      notes.push(
        res.value
          ? `socket-proxyd alone with ${maxN.toLocaleString('en-US')} idle connections (as many as RLIMIT_NOFILE ${NOFILE} allows at 2 fds each): ` +
              `${res.value.fds.toFixed(2)} fds and ${res.value.rss.toFixed(2)} KiB RSS per connection.`
          : `socket-proxyd alone with ${maxN.toLocaleString('en-US')} idle connections failed: ${res.error}`,
      );
      log(`[extra] idle ours at ${maxN}: ${res.value ? `${res.value.fds.toFixed(2)} fds, ${res.value.rss.toFixed(2)} KiB per connection` : res.error}`);
    }
  }
  // Bulk rows only asked for by the CPU row: show them anyway.
  if (wantW('cpu')) {
    if (!wantW('bulk')) selectedWorkloads.push('bulk');
    if (!wantW('bulk-reverse')) selectedWorkloads.push('bulk-reverse');
    selectedWorkloads = WORKLOADS.map((w) => w.id).filter((id) => selectedWorkloads.includes(id));
  }
  notes.push(
    'Proxies: systemd-socket-proxyd and socket-proxyd are started by `systemd-socket-activate -l 127.0.0.1:PORT … --connections-max=60000 127.0.0.1:UPSTREAM` ' +
      '(socket-proxyd with its default worker count); HAProxy: tcp mode, nbthread 2, option splice-auto; socat: `TCP-LISTEN:PORT,fork,reuseaddr TCP:…`; ' +
      'Node: scripts/bench/node-pipe.mjs (net.Socket.pipe()). Every proxy starts with SIGPIPE ignored, as systemd does (IgnoreSIGPIPE=yes; the reference dies of SIGPIPE without it). nginx: 1 worker, sendfile, keep-alive.',
  );
  notes.push(
    'CPU: utime+stime (+ reaped children, for socat\'s forks) of the proxy process from /proc/PID/stat over the bulk and bulk-reverse iperf3 runs, divided by the GiB received. ' +
      'Idle: /proc/PID/fd count and VmRSS with the connections open minus the same just before, over the count.',
  );
  if (UDP_WORKLOADS.length) {
    notes.push(
      'Datagrams: socket-proxyd is started by `systemd-socket-activate --datagram -l 127.0.0.1:PORT … 127.0.0.1:UPSTREAM` (ListenDatagram=; defaults: --udp-timeout=30s, ' +
        '--udp-sessions-max=4096); socat by `socat -T 300 UDP-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr UDP:127.0.0.1:UPSTREAM` (one process per client address). ' +
        'dns: NSD (one server process, no response rate limit) serving 256 names (A and TXT, test/udp-helpers.mjs); dnsperf -c 100 (100 source ports) -q 200 -t 2 -v, ' +
        'p99 from the per-query latencies -v prints (dnsperf 2.10 itself reports only the average); a query unanswered after 2 s is lost. ' +
        'dns-rate: the same at -Q = the queries/s socat reached in the same round. dns-cold: the dns run from ephemeral source ports, new to the proxy each time ' +
        '(socat forks a process per new client address and loses datagrams meanwhile; dnsperf\'s 200 outstanding queries then wait out -t 2). udp-64/udp-1400: scripts/bench/udpload.c, 100 connected client sockets keeping 8 datagrams ' +
        'in flight each against its own recvmmsg/sendmmsg echo; lost = sent − echoed (a datagram the kernel dropped on a full socket buffer anywhere on the way, ' +
        'or one the proxy dropped and counted). "proxy CPU s/s" in the progress lines: utime+stime of the proxy process per second of run (socat: the parent only); ' +
        '"kernel drops": datagrams dropped so far on full receive buffers of the proxy\'s own UDP sockets (/proc/net/udp).',
    );
    notes.push(`Warm-up runs (1 s, from 100 client ports new to the proxy; not in the table): ${coldStarts.join('; ')}.`);
  }
  if (wantW('bulk300')) {
    notes.push(
      `300 streams: scripts/bench/streams.c (one source process writing on 300 connections, one sink; iperf3 caps -P at 128), measured at the sink over ${DURATION} s after 1 s warm-up; ` +
        `the proxy runs as nobody (setpriv), so fs.pipe-user-pages-soft (${fs.readFileSync('/proc/sys/fs/pipe-user-pages-soft', 'utf8').trim()} pages here) applies to its pipes.`,
    );
  }

  if (wantW('coldstart')) notes.push(coldStartNote(samples.coldstart ?? {}, nodeE0));

  const report = buildReport(env, samples, notes, cmdline);
  // Stop everything before printing, in reverse start order.
  for (const k of Object.keys(inst).reverse()) if (inst[k].child) await stopChild(inst[k].child);
  for (const u of Object.values(up)) await stopChild(u.child);
  if (echo) echo.server.close();
  console.log('\n' + report.text);
  if (opts.json) {
    fs.writeFileSync(opts.json, JSON.stringify({ command: cmdline, rounds: ROUNDS, duration: DURATION, idleConnections: idleN, ...env, rows: report.rows, targets: report.targets, runs: rawRuns, notes }, null, 2) + '\n');
    log(`bench: wrote ${opts.json}`);
  }
  return rawRuns.filter((r) => r.value == null).length;
}

main().then(
  (failedRuns) => {
    if (failedRuns) console.error(`bench: ${failedRuns} run(s) failed (see the notes)`);
    process.exit(failedRuns ? 1 : 0);
  },
  (e) => {
    console.error(`bench: failed: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
