// npm run test:systemd: the shipped units (units/) under a real systemd 252
// as PID 1. One boot of a systemd-nspawn container (--volatile=yes: an empty
// tmpfs root over this machine's /usr, so /usr/bin/node, nginx, curl and
// /lib/systemd/systemd-socket-proxyd are there; --private-network: only its
// own loopback). The project is bound in where `npm install -g` would put it
// (/usr/local/lib/node_modules/socket-proxyd, /usr/local/bin/socket-proxyd),
// the oneshot socket-proxyd-systemd-test.service runs inside.mjs, which
// writes one result file per case into a bound directory and powers off.
// Each case is reported here as its own test, with what systemd showed.
// Needs root, systemd-container, nginx-light, curl and python3 (.ci/run
// installs them); a missing one fails the run.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ROOT } from '../test/helpers.mjs';

const UNIT = 'socket-proxyd-systemd-test.service';
const CASES = [
  ['example-1', "the manual's first example: the first curl activates proxy and nginx, active only after READY=1, STATUS= in systemctl status"],
  ['reference', 'the same with /lib/systemd/systemd-socket-proxyd (252): Type=notify never becomes active and times out'],
  ['watchdog', 'WatchdogSec= + Restart=on-watchdog: a forwarding thread frozen with ptrace gets the service restarted'],
  ['stop', 'systemctl stop during transfers: they finish within the drain timeout, inactive (dead), success; journal priorities'],
  ['sandbox', 'the hardened unit forwards bytes; systemd-analyze security and verify; MemoryDenyWriteExecute='],
  ['example-2', "the manual's second example: JoinsNamespaceOf=, idle exit stops the proxy and nginx, the next connection starts both"],
];
// SOCKET_PROXYD_SYSTEMD_CASES=stop,sandbox runs only those (while working on one).
const only = process.env.SOCKET_PROXYD_SYSTEMD_CASES?.split(',').filter(Boolean);
const selected = only ? CASES.filter(([id]) => only.includes(id)) : CASES;
const BOOT_TIMEOUT_MS = 9 * 60_000;

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-systemd-'));
const RESULTS = path.join(TMP, 'results');
let keep = false;
after(() => {
  if (keep) console.log(`# kept for a look: ${TMP}`);
  else fs.rmSync(TMP, { recursive: true, force: true });
});

/** Fails loudly when a tool is missing, saying how .ci/run gets it. */
function need(file, pkg) {
  const found = file.startsWith('/') ? fs.existsSync(file) : process.env.PATH.split(':').some((d) => fs.existsSync(path.join(d, file)));
  assert.ok(found, `${file} is missing: apt-get install -y ${pkg} (.ci/run installs it)`);
}

/**
 * /usr/local for the container: bin/socket-proxyd as npm -g links it, a mount point for the
 * project, and the test unit in /usr/local/lib/systemd/system (on systemd's unit path).
 */
function localTree() {
  const local = path.join(TMP, 'local');
  fs.mkdirSync(path.join(local, 'bin'), { recursive: true });
  fs.mkdirSync(path.join(local, 'lib/node_modules/socket-proxyd'), { recursive: true });
  fs.mkdirSync(path.join(local, 'lib/systemd/system'), { recursive: true });
  fs.symlinkSync('../lib/node_modules/socket-proxyd/bin/socket-proxyd', path.join(local, 'bin/socket-proxyd'));
  fs.copyFileSync(path.join(ROOT, 'test-systemd', UNIT), path.join(local, 'lib/systemd/system', UNIT));
  return local;
}

function machineId() {
  const file = path.join(TMP, 'machine-id');
  fs.writeFileSync(file, `${randomBytes(16).toString('hex')}\n`);
  return file;
}

/** Boots the container once; resolves {code, signal, console, ms}. */
function boot() {
  fs.mkdirSync(RESULTS);
  fs.writeFileSync(path.join(RESULTS, 'config.json'), JSON.stringify({ token: randomBytes(8).toString('hex'), cases: selected.map(([id]) => id) }));
  const args = [
    '--directory=/', '--volatile=yes', '--private-network', '--register=no', '--keep-unit', '--console=read-only',
    `--machine=socket-proxyd-test-${process.pid}`,
    `--bind-ro=${localTree()}:/usr/local`,
    `--bind-ro=${ROOT}:/usr/local/lib/node_modules/socket-proxyd`,
    `--bind=${RESULTS}:/results`,
    // A machine ID, so this is not a first boot: no `systemctl preset-all` over the empty /etc
    // (it would enable every unit installed here, systemd-networkd-wait-online.service among them).
    `--bind-ro=${machineId()}:/etc/machine-id`,
    '--boot', 'systemd.firstboot=off', `systemd.unit=${UNIT}`,
  ];
  const started = Date.now();
  const child = spawn('systemd-nspawn', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let console_ = '';
  child.stdout.on('data', (d) => (console_ += d));
  child.stderr.on('data', (d) => (console_ += d));
  return new Promise((resolve, reject) => {
    // nspawn turns SIGTERM into a clean poweroff of the container; SIGKILL if that hangs too.
    const timer = setTimeout(() => {
      console_ += `\n[test: no poweroff after ${BOOT_TIMEOUT_MS} ms: SIGTERM to systemd-nspawn]\n`;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 20_000).unref();
    }, BOOT_TIMEOUT_MS);
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      fs.writeFileSync(path.join(TMP, 'console.log'), console_);
      resolve({ code, signal, console: console_, ms: Date.now() - started });
    });
  });
}

let booted;
before(async () => {
  assert.equal(process.getuid(), 0, 'test:systemd needs root (systemd-nspawn)');
  need('systemd-nspawn', 'systemd-container');
  need('/usr/sbin/nginx', 'nginx-light');
  need('/usr/bin/curl', 'curl');
  need('/usr/bin/python3', 'python3');
  need('/lib/systemd/systemd-socket-proxyd', 'systemd');
  assert.ok(fs.existsSync('/usr/bin/node'), 'the container has only /usr: node must be /usr/bin/node');
  assert.ok(fs.existsSync(path.join(ROOT, 'dist/cli.js')), 'dist/ is missing: npm run build:ts');
  // the container loads the same addon (build/ or prebuilds/) from the bound project
  createRequire(import.meta.url)('../dist/native.js');
  booted = await boot();
});

const tail = (text, lines = 60) => text.split('\n').slice(-lines).join('\n');

test('systemd 252 boots as PID 1 in systemd-nspawn, runs the cases and powers off', (t) => {
  t.diagnostic(`boot to poweroff: ${booted.ms} ms, systemd-nspawn exit ${booted.code ?? booted.signal}`);
  const banner = booted.console.match(/systemd (\d+)\S* running in system mode/);
  if (!fs.existsSync(path.join(RESULTS, 'done'))) keep = true;
  assert.ok(banner, `no systemd banner on the console:\n${tail(booted.console)}`);
  t.diagnostic(banner[0]);
  assert.equal(banner[1], '252');
  assert.ok(fs.existsSync(path.join(RESULTS, 'done')), `the test unit did not finish:\n${tail(booted.console)}`);
  assert.equal(booted.code, 0, `systemd-nspawn exit ${booted.code ?? booted.signal}:\n${tail(booted.console)}`);
});

for (const [id, title] of selected) {
  test(`${id}: ${title}`, (t) => {
    const file = path.join(RESULTS, `${id}.json`);
    if (!fs.existsSync(file)) {
      keep = true;
      assert.fail(`case ${id} wrote no result; console:\n${tail(booted.console)}`);
    }
    const c = JSON.parse(fs.readFileSync(file, 'utf8'));
    t.diagnostic(`${c.ms} ms inside the container`);
    for (const k of c.checks) t.diagnostic(`${k.ok ? 'ok' : 'NOT OK'}: ${k.name}${k.ok ? '' : ` (${k.detail})`}`);
    for (const [key, text] of Object.entries(c.evidence)) {
      t.diagnostic(`--- ${key}`);
      for (const line of String(text).split('\n')) t.diagnostic(`  ${line}`);
    }
    const failed = c.checks.filter((k) => !k.ok);
    if (c.error || failed.length) keep = true;
    assert.ok(!c.error, `case ${id} stopped: ${c.error}`);
    assert.deepEqual(failed, [], `case ${id}: checks failed`);
  });
}
