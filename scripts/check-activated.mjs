// Forwards connections through a CLI that runs somewhere other than this Node: under
// qemu-user (scripts/test-arm64.sh) or in an old-glibc chroot (scripts/test-old-glibc.sh).
// The host's systemd-socket-activate starts COMMAND on the first connection (qemu, and
// unshare + chroot, exec in the same process, so LISTEN_PID matches); it forwards to an
// echo server in this process, whose address replaces {target} in ARGS.
//
//   node scripts/check-activated.mjs LABEL PREBUILD [--maps PATH]... -- COMMAND ARGS...
// PREBUILD (as the host sees the path) must be mapped by the forwarding process, and so
// must every --maps PATH (e.g. the chroot's libc).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { activate, assertEchoes, echoServer, freePort, waitForPort, connect, collect, stop } from '../test/helpers.mjs';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
assert.ok(dash >= 2 && dash < argv.length - 1, 'usage: check-activated.mjs LABEL PREBUILD [--maps PATH]... -- COMMAND ARGS...');
const [label, prebuild, ...rest] = argv.slice(0, dash);
const mustMap = [prebuild];
for (let i = 0; i < rest.length; i += 2) {
  assert.equal(rest[i], '--maps', `unknown option ${rest[i]}`);
  mustMap.push(rest[i + 1]);
}
const [command, ...template] = argv.slice(dash + 1);
const say = (msg) => console.log(`${label}: ${msg}`);

const echo = await echoServer();
const port = await freePort();
const child = activate(`127.0.0.1:${port}`, command, template.map((a) => a.replaceAll('{target}', echo.target)));
try {
  // node starts slowly under emulation
  await waitForPort(port, '127.0.0.1', 60000);

  const bytes = await assertEchoes(port, 4 << 20, 3);
  say(`${bytes} bytes echoed intact through the CLI`);

  // several at once, spread over the worker threads
  const small = await Promise.all(Array.from({ length: 32 }, async (_, i) => {
    const s = await connect(port);
    const c = collect(s, { keep: true });
    s.end(`hello ${i}`);
    return (await c).data.toString();
  }));
  assert.deepEqual(small, Array.from({ length: 32 }, (_, i) => `hello ${i}`));
  say('32 concurrent connections echoed');

  // qemu maps guest files with the host's mmap; a chrooted process's maps show host paths
  const maps = readFileSync(`/proc/${child.pid}/maps`, 'utf8');
  for (const p of mustMap) assert.ok(maps.includes(p), `the CLI (pid ${child.pid}) did not map ${p}`);
  say(`the CLI (pid ${child.pid}) mapped ${mustMap.join(', ')}`);
} catch (err) {
  err.message += `\n--- CLI stderr\n${child.stderrText}`;
  throw err;
} finally {
  await stop(child);
  await echo.close();
}
