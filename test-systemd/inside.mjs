// Runs inside the container, as the oneshot socket-proxyd-systemd-test.service
// under systemd 252 as PID 1 (booted by systemd.test.mjs). Each case installs
// the units it needs the way an administrator would (copies into
// /etc/systemd/system, daemon-reload, systemctl), drives them, and writes
// RESULTS/<id>.json: its checks ({name, ok, detail}) and what systemd showed
// (evidence). The host side reports each case as its own test. Every wait is
// a condition with a deadline.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

import { ROOT, pattern, sha256, waitFor, within } from '../test/helpers.mjs';
import { freezeThread } from '../test/fault-helpers.mjs';

const RESULTS = process.argv[2];
const CONFIG = JSON.parse(fs.readFileSync(path.join(RESULTS, 'config.json'), 'utf8'));
const UNITS = path.join(ROOT, 'units');
const ETC = '/etc/systemd/system';
const WWW = '/srv/www';
const PROXY = 'proxy-to-nginx.service';
const SOCKET = 'proxy-to-nginx.socket';
const PAGE = `socket-proxyd under systemd, boot ${CONFIG.token}\n`;

// ---------------------------------------------------------------------------
// Commands

/** Runs a command; resolves {code, stdout, stderr} (never rejects on a non-zero exit). */
function run(cmd, args, { timeout = 30_000 } = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : String(error.code ?? error.signal)) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs a command that must succeed; resolves its stdout. */
async function must(cmd, ...args) {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

const systemctl = (...args) => must('systemctl', ...args);

/** `systemctl show -p …` as an object. */
async function show(unit, ...props) {
  const out = await systemctl('show', unit, ...props.flatMap((p) => ['-p', p]));
  return Object.fromEntries(out.trim().split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

const state = async (unit) => {
  const s = await show(unit, 'ActiveState', 'SubState');
  return `${s.ActiveState} (${s.SubState})`;
};

/** `systemctl status` as a person sees it (exit status 3 for an inactive unit is fine). */
async function status(...units) {
  const r = await run('systemctl', ['status', '--no-pager', '--full', '--lines=0', ...units]);
  return r.stdout.trimEnd();
}

/** Journal entries (objects) for journalctl's `args`. */
async function journal(...args) {
  const out = await must('journalctl', '--no-pager', '-o', 'json', ...args);
  return out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** journalctl's --since for a Date.now() value. */
const since = (ms) => `--since=@${(ms / 1000).toFixed(3)}`;

/** The journal as text (short-monotonic), for the evidence. */
async function journalText(...args) {
  const r = await run('journalctl', ['--no-pager', '-o', 'short-monotonic', ...args]);
  return r.stdout.trimEnd();
}

/** Polls `fn` (every 50 ms) until truthy; throws naming `what` (and the last value) at the deadline. */
async function until(what, fn, ms = 20_000) {
  let last;
  const ok = await waitFor(async () => (last = await fn()), ms, 50);
  if (!ok) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
  return last;
}

/** Waits for journal entries matching `match` (an object of field → RegExp) under journalctl's `args`. */
function journalHas(what, match, args, ms) {
  return until(`journal: ${what}`, async () => {
    const found = (await journal(...args)).filter((e) => Object.entries(match).every(([k, re]) => re.test(String(e[k] ?? ''))));
    return found.length ? found : null;
  }, ms);
}

/** HTTP GET through 127.0.0.1:`port`; resolves {code, body, bytes, sha256}; `onData(bytes)` as data arrives. */
function get(port, urlPath, { onData } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 30_000 }, (res) => {
      const hash = createHash('sha256');
      const chunks = [];
      let bytes = 0;
      res.on('data', (d) => {
        bytes += d.length;
        hash.update(d);
        if (chunks.length < 16) chunks.push(d);
        onData?.(bytes);
      });
      res.on('end', () => resolve({ code: res.statusCode, bytes, sha256: hash.digest('hex'), body: Buffer.concat(chunks).toString('latin1'), at: Date.now() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath} on port ${port}: no answer in 30 s`)));
    req.on('error', reject);
  });
}

/** curl, as the manual does it; resolves {code (curl's exit), http, body}. */
async function curl(port, urlPath = '/', maxTime = 20) {
  const r = await run('curl', ['-sS', '--max-time', String(maxTime), '-w', '\n%{http_code}', `http://localhost:${port}${urlPath}`], { timeout: (maxTime + 5) * 1000 });
  const nl = r.stdout.lastIndexOf('\n');
  return { code: r.code, http: r.stdout.slice(nl + 1), body: r.stdout.slice(0, Math.max(nl, 0)), stderr: r.stderr.trim() };
}

// ---------------------------------------------------------------------------
// Installing the units and nginx's configuration

/** What Debian's nginx package has in /var (empty in this volatile root) and a page to serve. */
function prepareNginx() {
  for (const dir of ['/var/log/nginx', '/var/lib/nginx', '/etc/nginx', `${WWW}/slow`]) fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(`${WWW}/index.html`, PAGE);
  fs.writeFileSync(`${WWW}/slow/a.bin`, pattern(1 << 20, 1));
  fs.writeFileSync(`${WWW}/slow/b.bin`, pattern(1 << 20, 2));
  fs.writeFileSync(`${WWW}/big.bin`, pattern(16 << 20, 3));
}

/** Debian's nginx.service reads /etc/nginx/nginx.conf; this one listens on `listen`. */
function writeNginxConf(listen) {
  fs.writeFileSync('/etc/nginx/nginx.conf', `user nobody nogroup;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
  access_log off;
  default_type application/octet-stream;
  server {
    listen ${listen};
    root ${WWW};
    location /slow/ { limit_rate 400k; }
  }
}
`);
}

let installed = null;

/**
 * Installs one of the shipped examples (units/<dir>/) as an administrator would: the pair into
 * /etc/systemd/system, the nginx.service drop-in, nginx.conf, then `systemctl enable --now
 * proxy-to-nginx.socket`. Idempotent; switching examples stops and removes the other first.
 */
async function installExample(dir, listen) {
  if (installed === dir) return;
  if (installed) await uninstallExample();
  writeNginxConf(listen);
  fs.mkdirSync(ETC, { recursive: true });
  for (const f of [SOCKET, PROXY]) fs.copyFileSync(path.join(UNITS, dir, f), path.join(ETC, f));
  fs.mkdirSync(`${ETC}/nginx.service.d`, { recursive: true });
  fs.copyFileSync(path.join(UNITS, dir, 'nginx.service.d/proxy-to-nginx.conf'), `${ETC}/nginx.service.d/proxy-to-nginx.conf`);
  await systemctl('daemon-reload');
  await systemctl('enable', '--now', SOCKET);
  installed = dir;
}

async function uninstallExample() {
  await run('systemctl', ['disable', '--now', SOCKET]);
  await run('systemctl', ['stop', PROXY, 'nginx.service']);
  await run('systemctl', ['reset-failed']);
  for (const f of [SOCKET, PROXY, 'nginx.service.d', `${PROXY}.d`]) fs.rmSync(path.join(ETC, f), { recursive: true, force: true });
  await systemctl('daemon-reload');
  installed = null;
}

/** Adds (or with `text` null removes) drop-in `name` of proxy-to-nginx.service, and reloads. */
async function dropIn(name, text) {
  const dir = `${ETC}/${PROXY}.d`;
  fs.mkdirSync(dir, { recursive: true });
  if (text === null) fs.rmSync(`${dir}/${name}`, { force: true });
  else fs.writeFileSync(`${dir}/${name}`, text);
  await systemctl('daemon-reload');
}

const example1 = () => installExample('nginx-unix-socket', 'unix:/run/nginx/socket');
const example2 = () => installExample('nginx-shared-namespace', '127.0.0.1:8080');

/** The proxy's main process, once it is active (running). */
async function runningPid(unit = PROXY) {
  const s = await until(`${unit} active (running)`, async () => {
    const p = await show(unit, 'ActiveState', 'SubState', 'MainPID');
    return p.ActiveState === 'active' && p.SubState === 'running' && p.MainPID !== '0' ? p : null;
  });
  return Number(s.MainPID);
}

// ---------------------------------------------------------------------------
// Cases

class Case {
  constructor(id, title) {
    this.id = id;
    this.title = title;
    this.checks = [];
    this.evidence = {};
  }

  check(name, ok, detail = '') {
    this.checks.push({ name, ok: Boolean(ok), detail: typeof detail === 'string' ? detail : JSON.stringify(detail) });
    return ok;
  }

  /** Checks `actual` === `expected`. */
  equal(name, actual, expected) {
    return this.check(name, actual === expected, `got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
  }

  show(key, text) {
    this.evidence[key] = text;
  }
}

const CASES = [];
const defineCase = (id, title, fn) => CASES.push({ id, title, fn });

defineCase('example-1', "The manual's first example: socket activation, Type=notify, STATUS=", async (c) => {
  prepareNginx();
  await example1();
  // PID 1 logs each notification message and state change at debug level.
  await systemctl('log-level', 'debug');
  try {
    c.equal('before the first connection: proxy-to-nginx.service', await state(PROXY), 'inactive (dead)');
    c.equal('before the first connection: nginx.service', await state('nginx.service'), 'inactive (dead)');
    c.equal('before the first connection: proxy-to-nginx.socket', await state(SOCKET), 'active (listening)');
    const first = await curl(80);
    c.show('curl http://localhost:80/', `exit ${first.code}, HTTP ${first.http}: ${JSON.stringify(first.body)} ${first.stderr}`);
    c.check('the first curl gets nginx\'s page', first.code === 0 && first.http === '200' && first.body === PAGE.trimEnd() + '\n', first);
    const pid = await runningPid();
    c.equal('nginx.service started through Requires=/After=', await state('nginx.service'), 'active (running)');
    const props = await show(PROXY, 'Type', 'StatusText', 'NotifyAccess', 'InvocationID');
    c.equal('Type', props.Type, 'notify');
    // The order PID 1 did things in: the READY=1 datagram, then start -> running.
    const pid1 = await journalHas('READY=1 from the proxy', { MESSAGE: /READY=1/ }, ['_PID=1', `UNIT=${PROXY}`], 10_000);
    const lines = (await journal('_PID=1', `UNIT=${PROXY}`)).filter((e) => /notification message|Changed start -> running|Started /.test(e.MESSAGE));
    c.show('PID 1 about the proxy (debug)', lines.map((e) => e.MESSAGE).join('\n'));
    // One journal file, entries in the order PID 1 wrote them.
    const readyAt = lines.findIndex((e) => /READY=1/.test(e.MESSAGE));
    const runningAt = lines.findIndex((e) => /Changed start -> running/.test(e.MESSAGE));
    c.check('READY=1 came from the main process', new RegExp(`PID ${pid}\\b`).test(pid1[0].MESSAGE), pid1[0].MESSAGE);
    c.check('active (running) only after READY=1: "start -> running" follows the READY=1 message',
      readyAt >= 0 && runningAt > readyAt, lines.map((e) => e.MESSAGE));
    const st = await until('STATUS= with one connection served', async () => {
      const text = await status(PROXY);
      return /Status: "Forwarding to \/run\/nginx\/socket: \d+ of 256 connections open, 1 served"/.test(text) ? text : null;
    }, 10_000).catch(async () => status(PROXY));
    c.show('systemctl status proxy-to-nginx.service', st);
    c.check('systemctl status shows the STATUS= text', /Status: "Forwarding to \/run\/nginx\/socket: \d+ of 256 connections open, 1 served"/.test(st), st);
  } finally {
    await systemctl('log-level', 'info');
  }
});

defineCase('reference', "The first example with /lib/systemd/systemd-socket-proxyd (252) as ExecStart=", async (c) => {
  prepareNginx();
  await example1();
  // The same pair as units/nginx-unix-socket/, but the reference daemon, on port 8081.
  const unit = 'proxy-to-nginx-reference.service';
  const sock = 'proxy-to-nginx-reference.socket';
  const service = fs.readFileSync(path.join(UNITS, 'nginx-unix-socket', PROXY), 'utf8')
    .replace(/^ExecStart=\/usr\/local\/bin\/socket-proxyd /m, 'ExecStart=/lib/systemd/systemd-socket-proxyd ')
    .replaceAll(SOCKET, sock);
  const socket = fs.readFileSync(path.join(UNITS, 'nginx-unix-socket', SOCKET), 'utf8').replace(/^ListenStream=80$/m, 'ListenStream=8081');
  c.check('the unit differs from the shipped one only in ExecStart= and the socket', service.includes('ExecStart=/lib/systemd/systemd-socket-proxyd /run/nginx/socket') && socket.includes('ListenStream=8081'));
  fs.writeFileSync(`${ETC}/${unit}`, service);
  fs.writeFileSync(`${ETC}/${sock}`, socket);
  // The default TimeoutStartSec= is 90 s; 5 s shows the same end sooner.
  fs.mkdirSync(`${ETC}/${unit}.d`, { recursive: true });
  fs.writeFileSync(`${ETC}/${unit}.d/timeout.conf`, '[Service]\nTimeoutStartSec=5s\n');
  await systemctl('daemon-reload');
  await systemctl('start', sock);
  try {
    const t0 = Date.now();
    const served = await curl(8081, '/', 10);
    c.show('curl http://localhost:8081/ (first connection)', `exit ${served.code}, HTTP ${served.http}: ${JSON.stringify(served.body)} ${served.stderr}`);
    c.check('the reference forwards the first connection while the unit is still starting', served.code === 0 && served.http === '200' && served.body === PAGE.trimEnd() + '\n', served);
    const during = await show(unit, 'ActiveState', 'SubState', 'MainPID', 'StatusText');
    c.show('state right after the curl', JSON.stringify(during));
    c.check('it stays "activating (start)": no READY=1 from systemd-socket-proxyd 252', during.ActiveState === 'activating' && during.SubState === 'start', during);
    c.show('systemctl status while activating', await status(unit));
    const timedOut = await journalHas('PID 1 timing the start out', { MESSAGE: /start operation timed out/ }, ['_PID=1', `UNIT=${unit}`], 40_000);
    c.show('after the start timeout', `${timedOut[0].MESSAGE} (${Date.now() - t0} ms after the first connection)`);
    // Restart=on-failure (as shipped) takes a start timeout for a failure: it starts it again.
    const restarted = await until('the restart after the timeout', async () => {
      const s = await show(unit, 'ActiveState', 'SubState', 'Result', 'NRestarts', 'ExecMainCode', 'ExecMainStatus');
      return Number(s.NRestarts) >= 1 && s.SubState === 'start' ? s : null;
    }, 20_000);
    c.show('after the restart', JSON.stringify(restarted));
    const failed = await journal('_PID=1', `UNIT=${unit}`);
    c.check("PID 1: \"Failed with result 'timeout'\", then \"Scheduled restart job\"",
      failed.some((e) => /Failed with result 'timeout'/.test(e.MESSAGE)) && failed.some((e) => /Scheduled restart job/.test(e.MESSAGE)),
      failed.map((e) => e.MESSAGE));
    c.check('Restart=on-failure starts it again, and again it is only "activating (start)"', restarted.ActiveState === 'activating', restarted);
    c.show('journal of the unit', await journalText('-u', unit));
    c.show('systemctl status after the timeout and restart', await status(unit, sock));
    c.equal('the socket unit keeps listening', await state(sock), 'active (listening)');
  } finally {
    await run('systemctl', ['stop', sock, unit]);
    await run('systemctl', ['reset-failed', sock, unit]);
  }
});

defineCase('watchdog', 'WatchdogSec=: a frozen forwarding thread gets the service restarted', async (c) => {
  prepareNginx();
  await example1();
  await dropIn('watchdog.conf', '[Service]\nWatchdogSec=3s\nRestart=on-watchdog\n');
  try {
    await systemctl('restart', PROXY);
    const pid = await runningPid();
    const before = await show(PROXY, 'NRestarts', 'WatchdogUSec', 'Restart');
    c.show('before', JSON.stringify({ MainPID: pid, ...before }));
    c.equal('WatchdogSec=3s reached the unit', before.WatchdogUSec, '3s');
    const first = await curl(80);
    c.check('forwards before the freeze', first.http === '200', first);
    const frozen = await freezeThread(pid, 'proxyd-wrk0');
    const stoppedAt = Date.now();
    try {
      const fired = await journalHas('PID 1 on the watchdog', { MESSAGE: /Watchdog timeout/ }, ['_PID=1', `UNIT=${PROXY}`], 30_000);
      c.show('PID 1', `${fired[0].MESSAGE} (${Date.now() - stoppedAt} ms after proxyd-wrk0 was stopped)`);
      // systemd sent SIGABRT (WatchdogSignal=); a thread held in ptrace-stop keeps the process
      // from dying until the tracer lets go, which a thread that is merely stuck would not.
      await frozen.close();
      const after = await until('NRestarts to grow and a new main process to run', async () => {
        const s = await show(PROXY, 'NRestarts', 'MainPID', 'ActiveState', 'SubState');
        return Number(s.NRestarts) > Number(before.NRestarts) && s.MainPID !== '0' && Number(s.MainPID) !== pid && s.SubState === 'running' ? s : null;
      }, 30_000);
      c.show('after', `${JSON.stringify(after)} (${Date.now() - stoppedAt} ms after proxyd-wrk0 was stopped)`);
      c.check('NRestarts grew', Number(after.NRestarts) === Number(before.NRestarts) + 1, after);
    } finally {
      await frozen.close();
    }
    const proxyLines = await journalHas('the proxy saying why it withheld the ping', { MESSAGE: /forwarding thread did not answer/ }, [`_PID=${pid}`], 10_000);
    c.equal('the proxy logged it at priority 3 (err)', proxyLines[0].PRIORITY, '3');
    const pid1 = (await journal('_PID=1', `UNIT=${PROXY}`)).filter((e) => Number(e.__REALTIME_TIMESTAMP) / 1000 >= stoppedAt - 1000);
    c.check("PID 1: watchdog timeout, SIGABRT, result 'watchdog', restart",
      /Watchdog timeout/.test(pid1.map((e) => e.MESSAGE).join('\n')) && pid1.some((e) => /Failed with result 'watchdog'/.test(e.MESSAGE)) && pid1.some((e) => /Scheduled restart job/.test(e.MESSAGE)),
      pid1.map((e) => e.MESSAGE));
    c.show('journal', await journalText('-u', PROXY, since(stoppedAt - 3000)));
    const again = await curl(80);
    c.check('the restarted proxy forwards', again.http === '200' && again.body === PAGE.trimEnd() + '\n', again);
  } finally {
    await dropIn('watchdog.conf', null);
    await run('systemctl', ['restart', PROXY]);
  }
});

defineCase('stop', 'systemctl stop during transfers: drained, inactive (dead), result success, journal priorities', async (c) => {
  prepareNginx();
  await example1();
  await curl(80);
  const pid = await runningPid();
  const drainMs = 5000; // the default --drain-timeout
  const progress = { a: 0, b: 0 };
  const a = get(80, '/slow/a.bin', { onData: (n) => (progress.a = n) });
  const b = get(80, '/slow/b.bin', { onData: (n) => (progress.b = n) });
  // A connection that never finishes (nginx waits for a request): it is cut at the drain timeout.
  const idle = net.connect({ host: '127.0.0.1', port: 80 });
  idle.on('error', () => {});
  const idleClosed = new Promise((resolve) => idle.on('close', () => resolve(Date.now())));
  await until('both downloads under way', () => progress.a >= 65536 && progress.b >= 65536);
  await until('the proxy to hold 3 connections (STATUS=)', async () => /^Forwarding to \S+: 3 of 256 connections open/.test((await show(PROXY, 'StatusText')).StatusText), 10_000);
  const stopAt = Date.now();
  await systemctl('stop', '--no-block', PROXY);
  const end = await until('the unit to stop', async () => {
    const s = await show(PROXY, 'ActiveState', 'SubState', 'Result', 'ExecMainCode', 'ExecMainStatus');
    return s.ActiveState === 'inactive' || s.ActiveState === 'failed' ? { ...s, at: Date.now() } : null;
  }, 30_000);
  const [ra, rb] = await within(Promise.all([a, b]), 10_000, 'the downloads did not end');
  const idleAt = await within(idleClosed, 10_000, 'the idle connection was not closed');
  const ms = (t) => `${t - stopAt} ms`;
  c.show('timeline after systemctl stop', `a.bin done ${ms(ra.at)}, b.bin done ${ms(rb.at)}, idle connection closed ${ms(idleAt)}, unit ${end.ActiveState} ${ms(end.at)}`);
  for (const [name, r, seed] of [['a.bin', ra, 1], ['b.bin', rb, 2]]) {
    c.check(`${name}: all 1 MiB arrived intact`, r.code === 200 && r.bytes === 1 << 20 && r.sha256 === sha256(pattern(1 << 20, seed)), { code: r.code, bytes: r.bytes });
    c.check(`${name}: finished within the drain timeout`, r.at - stopAt < drainMs && r.at <= end.at, ms(r.at));
  }
  c.check('the idle connection was closed at the drain timeout', idleAt - stopAt >= drainMs - 250 && idleAt <= end.at + 250, ms(idleAt));
  c.check('the unit stopped within drain timeout + 3 s', end.at - stopAt < drainMs + 3000, ms(end.at));
  c.check('inactive (dead), Result=success, exit status 0',
    end.ActiveState === 'inactive' && end.SubState === 'dead' && end.Result === 'success' && end.ExecMainStatus === '0', end);
  c.show('systemctl status proxy-to-nginx.service', await status(PROXY));
  // The proxy's own lines, by its PID: every priority, then journalctl -p warning.
  const all = await journalHas('the warning about the cut connection', { MESSAGE: /^Closing 1 connection still open after 5s\.$/ }, [`_PID=${pid}`], 10_000)
    .then(() => journal(`_PID=${pid}`));
  const warnings = await journal(`_PID=${pid}`, '-p', 'warning');
  c.show("the proxy's lines (PRIORITY MESSAGE)", all.map((e) => `${e.PRIORITY} ${e.MESSAGE}`).join('\n'));
  c.show(`journalctl _PID=${pid} -p warning`, await journalText(`_PID=${pid}`, '-p', 'warning'));
  c.check('no line keeps its <N> prefix', all.every((e) => !/^<\d>/.test(e.MESSAGE)));
  c.check('SIGTERM is logged at info (6)', all.some((e) => e.PRIORITY === '6' && /^Received SIGTERM; no longer accepting, waiting up to 5s for 3 open connections to finish\.$/.test(e.MESSAGE)));
  c.check('-p warning shows only priorities 0-4', warnings.length > 0 && warnings.every((e) => Number(e.PRIORITY) <= 4), warnings.map((e) => e.PRIORITY));
  c.check('-p warning shows the cut connection (4) and none of the info lines',
    warnings.some((e) => e.PRIORITY === '4' && /^Closing 1 connection still open after 5s\.$/.test(e.MESSAGE)) && !warnings.some((e) => /Received SIGTERM/.test(e.MESSAGE)));
});

defineCase('sandbox', 'The hardened unit forwards bytes; systemd-analyze security and verify', async (c) => {
  prepareNginx();
  await example1();
  const big = await get(80, '/big.bin');
  c.check('16 MiB through the sandboxed proxy, intact', big.code === 200 && big.bytes === 16 << 20 && big.sha256 === sha256(pattern(16 << 20, 3)), { code: big.code, bytes: big.bytes });
  const pid = await runningPid();
  const proc = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name) => (proc.match(new RegExp(`^${name}:\\s*(.*)$`, 'm')) ?? [])[1];
  c.show(`/proc/${pid}/status`, ['Uid', 'Gid', 'NoNewPrivs', 'Seccomp', 'CapEff', 'CapPrm', 'CapBnd'].map((f) => `${f}: ${field(f)}`).join('\n'));
  const uid = Number(field('Uid').split(/\s+/)[0]);
  c.check('runs as a dynamic user (61184-65519)', uid >= 61184 && uid <= 65519, uid);
  c.equal('NoNewPrivs', field('NoNewPrivs'), '1');
  c.equal('Seccomp filter on', field('Seccomp'), '2');
  c.equal('no capabilities, not even in the bounding set', `${field('CapEff')} ${field('CapBnd')}`, '0000000000000000 0000000000000000');
  const netns = (p) => fs.readlinkSync(`/proc/${p}/ns/net`);
  c.check('PrivateNetwork=: a network namespace of its own', netns(pid) !== netns(1), netns(pid));
  const sec = await run('systemd-analyze', ['security', '--no-pager', PROXY]);
  c.show('systemd-analyze security proxy-to-nginx.service', sec.stdout.trimEnd());
  const score = sec.stdout.match(/Overall exposure level for proxy-to-nginx\.service: ([\d.]+) (\S+)/);
  c.check('systemd-analyze security rates it', score, sec.stdout.slice(-300) + sec.stderr);
  c.show('exposure', score ? `${score[1]} ${score[2]}` : 'none');
  for (const dir of ['nginx-unix-socket', 'nginx-shared-namespace']) {
    const files = [SOCKET, PROXY].map((f) => path.join(UNITS, dir, f));
    // --man=no: man(1) fails in this volatile root (no /etc/manpath.config), whatever the page.
    const v = await run('systemd-analyze', ['verify', '--man=no', ...files]);
    const said = (v.stdout + v.stderr).trim();
    c.show(`systemd-analyze verify --man=no units/${dir}`, `exit ${v.code}${said ? `\n${said}` : ''}`);
    c.check(`systemd-analyze verify units/${dir}: exit 0, nothing said about the pair`, v.code === 0 && !/proxy-to-nginx/.test(said), said);
  }
  // MemoryDenyWriteExecute=yes: what Node does under it, with and without its JIT.
  for (const [name, exec] of [['node', ['/usr/local/bin/socket-proxyd']], ['node --jitless', ['/usr/bin/node', '--jitless', '/usr/local/bin/socket-proxyd']]]) {
    const unit = `mdwe-probe-${name.includes('jitless') ? 'jitless' : 'jit'}.service`;
    const r = await run('systemd-run', ['--unit', unit, '-p', 'Type=notify', '-p', 'MemoryDenyWriteExecute=yes', '-p', 'DynamicUser=yes',
      '-p', 'TimeoutStartSec=20s', ...exec, '--listen=127.0.0.1:8090', '/run/nginx/socket'], { timeout: 40_000 });
    const s = await show(unit, 'ActiveState', 'SubState', 'Result', 'ExecMainCode', 'ExecMainStatus');
    let served = null;
    if (s.ActiveState === 'active') served = await get(8090, '/');
    c.show(`MemoryDenyWriteExecute=yes, ${name}`, `systemd-run exit ${r.code} ${r.stderr.trim()}\n${JSON.stringify(s)}${served ? `\nserved: HTTP ${served.code}` : ''}\n${await journalText('-u', unit)}`);
    if (name === 'node') c.check('MemoryDenyWriteExecute=yes: node with its JIT does not start', s.ActiveState !== 'active', s);
    await run('systemctl', ['stop', unit]);
    await run('systemctl', ['reset-failed', unit]);
  }
});

defineCase('example-2', "The manual's second example: JoinsNamespaceOf=, idle exit, StopWhenUnneeded=", async (c) => {
  prepareNginx();
  await example2();
  await dropIn('idle.conf', '[Service]\nExecStart=\nExecStart=/usr/local/bin/socket-proxyd --exit-idle-time=3s 127.0.0.1:8080\n');
  c.equal('before the first connection: nginx.service', await state('nginx.service'), 'inactive (dead)');
  // PID 1 says why it stops nginx only at debug level.
  await systemctl('log-level', 'debug');
  const first = await curl(80);
  c.show('first curl http://localhost:80/', `exit ${first.code}, HTTP ${first.http}: ${JSON.stringify(first.body)} ${first.stderr}`);
  c.check("the first curl gets nginx's page", first.code === 0 && first.http === '200' && first.body === PAGE.trimEnd() + '\n', first);
  const pid = await runningPid();
  const nginxPid = await runningPid('nginx.service');
  const netns = (p) => fs.readlinkSync(`/proc/${p}/ns/net`);
  c.show('network namespaces', `PID 1 ${netns(1)}, nginx ${netns(nginxPid)}, proxy ${netns(pid)}`);
  c.check("the proxy is in nginx's network namespace (JoinsNamespaceOf=)", netns(pid) === netns(nginxPid) && netns(pid) !== netns(1));
  const outside = await curl(8080, '/', 5);
  c.check("nginx's 127.0.0.1:8080 is not reachable outside that namespace", outside.code !== 0, outside);
  const ids = { proxy: (await show(PROXY, 'InvocationID')).InvocationID, nginx: (await show('nginx.service', 'InvocationID')).InvocationID };
  const t0 = Date.now();
  const idle = await until('the proxy and nginx to stop when idle', async () => {
    const p = await show(PROXY, 'ActiveState', 'SubState', 'Result', 'ExecMainStatus');
    const n = await show('nginx.service', 'ActiveState', 'SubState');
    return p.ActiveState === 'inactive' && n.ActiveState === 'inactive' ? { proxy: p, nginx: n, ms: Date.now() - t0 } : null;
  }, 30_000);
  c.show('idle', JSON.stringify(idle));
  c.check('the proxy exited 0 (Result=success)', idle.proxy.Result === 'success' && idle.proxy.ExecMainStatus === '0', idle.proxy);
  const exited = await journalHas('the proxy saying it exits when idle', { MESSAGE: /^Exiting after 3s without connections\.$/ }, [`_PID=${pid}`], 10_000);
  c.equal('logged at info (6)', exited[0].PRIORITY, '6');
  await systemctl('log-level', 'info');
  const pid1 = (await journal('_PID=1', 'UNIT=nginx.service')).filter((e) => Number(e.__REALTIME_TIMESTAMP) / 1000 >= t0 && !/Got message/.test(e.MESSAGE));
  c.show('PID 1 on nginx.service (debug) once the proxy is idle', pid1.map((e) => e.MESSAGE).join('\n'));
  c.check('PID 1 stopped nginx because it was not needed (StopWhenUnneeded=)',
    pid1.some((e) => /Unit is not needed anymore/.test(e.MESSAGE)) && pid1.some((e) => /^Stopped nginx\.service/.test(e.MESSAGE)), pid1.map((e) => e.MESSAGE));
  c.show('journal', await journalText('-u', PROXY, '-u', 'nginx.service', '--grep', '^(?!.*Got message)', since(t0 - 2500)));
  const second = await curl(80);
  c.check("the next connection starts both again and gets nginx's page", second.code === 0 && second.http === '200' && second.body === PAGE.trimEnd() + '\n', second);
  await runningPid();
  await runningPid('nginx.service');
  const ids2 = { proxy: (await show(PROXY, 'InvocationID')).InvocationID, nginx: (await show('nginx.service', 'InvocationID')).InvocationID };
  c.check('both are new invocations', ids2.proxy !== ids.proxy && ids2.nginx !== ids.nginx, { before: ids, after: ids2 });
  c.show('systemctl status after the second connection', await status(PROXY, 'nginx.service'));
});

// ---------------------------------------------------------------------------

const wanted = CONFIG.cases ?? CASES.map((k) => k.id);
for (const { id, title, fn } of CASES.filter((k) => wanted.includes(k.id))) {
  const c = new Case(id, title);
  const started = Date.now();
  console.log(`case ${id}: ${title}`);
  try {
    await within(fn(c), CONFIG.caseTimeoutMs ?? 90_000, `case ${id} timed out`);
  } catch (error) {
    c.error = error?.stack ?? String(error);
    console.log(`case ${id}: ${c.error}`);
  }
  c.ms = Date.now() - started;
  fs.writeFileSync(path.join(RESULTS, `${id}.json`), JSON.stringify(c, null, 2));
  console.log(`case ${id}: ${c.error || c.checks.some((k) => !k.ok) ? 'FAILED' : 'passed'} in ${c.ms} ms`);
}
fs.writeFileSync(path.join(RESULTS, 'journal.txt'), (await journalText('-b')) + '\n');
fs.writeFileSync(path.join(RESULTS, 'done'), '');
