// Deliberate check for scripts/test-sanitized.sh: with the sanitizer environment
// set, (1) this process loads the ASan/UBSan addon named by SOCKET_PROXYD_ADDON
// with both runtimes mapped, and (2) the CLI socket-activated by
// systemd-socket-activate, started the way the tests start it (no -E of our own),
// loads it too and forwards bytes. systemd-socket-activate hands the command only
// PATH/HOME/USER/TERM/LISTEN_* plus what -E names: this proves the wrapper that
// test-sanitized.sh mounts over it forwards the sanitizer variables.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, activate, echoServer, freePort, waitForPort, connect, collect, stop } from '../test/helpers.mjs';

const VARS = ['SOCKET_PROXYD_ADDON', 'LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS'];
const addonPath = path.resolve(process.env.SOCKET_PROXYD_ADDON ?? '');
for (const v of VARS) assert.ok(process.env[v], `${v} is not set`);

const mapped = (pid) => new Set(
  readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').map((l) => l.split(/\s+/)[5]).filter(Boolean));
const check = (pid, who) => {
  const libs = [...mapped(pid)];
  assert.ok(libs.includes(addonPath), `${who}: ${addonPath} is not mapped`);
  assert.ok(libs.some((l) => /\/libasan\.so/.test(l)), `${who}: libasan is not mapped`);
  assert.ok(libs.some((l) => /\/libubsan\.so/.test(l)), `${who}: libubsan is not mapped`);
  console.log(`check-sanitized-load: ${who} (pid ${pid}) maps ${addonPath} + libasan + libubsan`);
};

createRequire(import.meta.url)(path.join(ROOT, 'dist', 'native.js'));
check(process.pid, 'test process');

const echo = await echoServer();
const port = await freePort();
const child = activate(`127.0.0.1:${port}`, process.execPath, [path.join(ROOT, 'bin', 'socket-proxyd'), echo.target]);
try {
  await waitForPort(port);
  const socket = await connect(port);
  const got = collect(socket, { keep: true });
  socket.end('sanitized hello');
  assert.equal((await got).data.toString(), 'sanitized hello');
  check(child.pid, 'socket-activated CLI');
} finally {
  await stop(child);
  await echo.close();
}
if (child.stderrText.includes('Sanitizer')) throw new Error(`sanitizer output from the CLI:\n${child.stderrText}`);
