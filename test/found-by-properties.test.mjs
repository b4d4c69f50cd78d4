// Inputs the property tests (properties.test.mjs) found bugs with, kept as ordinary tests: each failed
// before its fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { CLI, ROOT } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { parseAddress, parseListenAddress } = require(path.join(ROOT, 'dist', 'target.js'));

function run(argv, env = {}) {
  const base = { ...process.env };
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'NOTIFY_SOCKET', 'JOURNAL_STREAM', 'SYSTEMD_LOG_LEVEL']) delete base[k];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...argv], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stderr }));
  });
}

test('found: a host with ":" that is not an IPv6 address is refused, not accepted to fail every client', async () => {
  // "a.aa::1" split at the last colon made host "a.aa:", which no resolver can find; it did not
  // round-trip either (formatted as "[a.aa:]:1", which the bracket syntax refuses).
  for (const spec of ['a.aa::1', '::0:0:0:0:0.0.0.0]:1', 'host:name:80', '::1', '::%eth0]:1', 'a]:80']) {
    assert.throws(() => parseAddress(spec, 80), (e) => e instanceof Error && !e.message.includes('\n'), spec);
    assert.throws(() => parseListenAddress(spec), Error, spec);
  }
  // IPv6 literals without brackets still split at the last colon.
  assert.deepEqual(parseAddress('::1:8080', 80), { kind: 'inet', host: '::1', port: 8080 });
  assert.deepEqual(parseAddress('fe80::1%eth0:80', 80), { kind: 'inet', host: 'fe80::1%eth0', port: 80 });
  assert.deepEqual(parseAddress('::ffff:192.0.2.1:80', 80), { kind: 'inet', host: '::ffff:192.0.2.1', port: 80 });
  const r = await run(['a.aa::1']);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^Failed to parse target "a\.aa::1": .+\n$/);
});

test('found: a bad value with a newline in it is still one line on stderr', async () => {
  for (const argv of [['--exit-idle-time=1\nx', '127.0.0.1:9'], ['--listen=1.2.3.4:9\n9', '127.0.0.1:9'], ['127.0.0.1:\n9']]) {
    const r = await run(argv);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr.split('\n').length, 2, `${JSON.stringify(argv)}: ${JSON.stringify(r.stderr)}`);
    // Under systemd the whole message keeps its error priority (a second line would be logged as info).
    const j = await run(argv, { JOURNAL_STREAM: 'x' });
    assert.equal(j.stderr.split('\n').length, 2, JSON.stringify(j.stderr));
  }
});
