// The soak (scripts/soak.mjs) for one minute: the socket-activated CLI under the whole mixed load, its
// upstream SIGKILLed and restarted, 1,100 connections open at once; every check of the soak must pass.
// The soak runs in its own process under prlimit (the crowd needs more fds than the default 1024).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './helpers.mjs';

test('soak: one minute of mixed load leaves every byte right, fds and threads at the baseline, counters agreeing', { timeout: 8 * 60_000 }, async (t) => {
  const json = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'soak-test-')), 'soak.json');
  const child = spawn('prlimit', ['--nofile=16384:16384', process.execPath, path.join(ROOT, 'scripts', 'soak.mjs'), '--minutes', '1', '--json', json], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise((resolve, reject) => {
    child.once('error', (e) => reject(e.code === 'ENOENT' ? new Error('prlimit is missing: apt-get install -y util-linux') : e));
    child.once('exit', (c, signal) => resolve(c ?? signal));
  });
  const report = fs.existsSync(json) ? JSON.parse(fs.readFileSync(json, 'utf8')) : null;
  fs.rmSync(path.dirname(json), { recursive: true, force: true });
  assert.ok(report, `the soak wrote no report (exit ${code}):\n${out}\n${err.slice(-3000)}`);
  const failed = report.checks.filter((c) => !c.ok);
  // The failed checks and the failures first: CI shows only the head of a long message.
  const failures = (report.failures ?? []).slice(0, 20).map((f) => `  - ${f.what}: ${f.detail}`).join('\n');
  assert.deepEqual(failed, [], `soak checks failed:\n${failed.map((c) => `- ${c.name}: ${c.detail}`).join('\n')}\n${failures}\n\n${out}`);
  assert.equal(code, 0, out);
  for (const line of out.split('\n').filter((l) => l.startsWith('|') || l.startsWith('Connections'))) t.diagnostic(line);
  // It did soak: a minute of load, sampled, with the crowd and the kills.
  assert.ok(report.samples.filter((s) => s.phase === 'load').length >= 5, 'fewer than 5 load samples');
  assert.ok(report.stats.made > 1000, `only ${report.stats.made} connections`);
  assert.ok(report.stats.crowds.length >= 1 && report.stats.crowds.every((c) => c.echoed >= 1000), 'no crowd of 1,000+');
});
