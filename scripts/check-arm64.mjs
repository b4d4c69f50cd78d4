// Run by scripts/test-arm64.sh on the host: forwards connections through the
// linux-arm64 prebuild running under qemu-user. The CLI (an arm64 Node from
// Debian, in a sysroot) is socket-activated by the host's systemd-socket-activate
// (qemu-aarch64 runs the guest in the same process, so LISTEN_PID matches) and
// forwards to an echo server in this process.
//
//   node scripts/check-arm64.mjs <package dir> <sysroot>
// <package dir> holds bin/, dist/, node_modules and prebuilds/linux-arm64/ only
// (no build/), so node-gyp-build has to pick the prebuild.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { activate, assertEchoes, echoServer, freePort, waitForPort, connect, collect, stop } from '../test/helpers.mjs';

const [pkg, sysroot] = process.argv.slice(2).map((p) => path.resolve(p));
assert.ok(pkg && sysroot, 'usage: check-arm64.mjs <package dir> <sysroot>');
const prebuild = path.join(pkg, 'prebuilds', 'linux-arm64', 'socket-proxyd.glibc.node');

const echo = await echoServer();
const port = await freePort();
const child = activate(`127.0.0.1:${port}`, 'qemu-aarch64',
  ['-L', sysroot, path.join(sysroot, 'usr', 'bin', 'node'), path.join(pkg, 'bin', 'socket-proxyd'), echo.target]);
try {
  // node starts slowly under emulation
  await waitForPort(port, '127.0.0.1', 60000);

  const bytes = await assertEchoes(port, 4 << 20, 3);
  console.log(`check-arm64: ${bytes} bytes echoed intact through the arm64 CLI`);

  // several at once, spread over the worker threads
  const small = await Promise.all(Array.from({ length: 32 }, async (_, i) => {
    const s = await connect(port);
    const c = collect(s, { keep: true });
    s.end(`hello ${i}`);
    return (await c).data.toString();
  }));
  assert.deepEqual(small, Array.from({ length: 32 }, (_, i) => `hello ${i}`));
  console.log('check-arm64: 32 concurrent connections echoed');

  // the emulated process mapped the arm64 prebuild (qemu maps guest files with the host's mmap)
  const maps = readFileSync(`/proc/${child.pid}/maps`, 'utf8');
  assert.ok(maps.includes(prebuild), `the CLI under qemu did not map ${prebuild}`);
  console.log(`check-arm64: the CLI under qemu (pid ${child.pid}) mapped ${prebuild}`);
} catch (err) {
  err.message += `\n--- CLI stderr\n${child.stderrText}`;
  throw err;
} finally {
  await stop(child);
  await echo.close();
}
