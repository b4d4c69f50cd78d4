// The npm tarball: what it holds, and that it installs and forwards on a box with
// no compiler (the prebuild is loaded; nothing is compiled).
//
// `npm pack` runs prepack, which compiles dist/ and the prebuilds (scripts/prebuild.sh
// all), so a missing prebuild is rebuilt here, and a broken one fails this test.
// Installing the tarball's dependencies (node-addon-api, node-gyp-build, prom-client) needs the
// npm registry, or npm's cache: the installs prefer the cache (filled by the project's own
// npm ci) and retry a failed fetch, so a registry hiccup does not fail the run.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, ACTIVATE, assertEchoes, echoServer, freePort, waitForPort, stop } from './helpers.mjs';

const ARCH_DIR = `linux-${process.arch}`;
const PREBUILD = `prebuilds/${ARCH_DIR}/socket-proxyd.glibc.node`;
const ELF_MACHINE = { 0x3e: 'x64', 0xb7: 'arm64' };

// Children get a plain environment: no addon override or sanitizer runtime (this
// test is about the prebuild, also when the suite runs against the ASan build),
// and none of the npm_* variables of the `npm test` that started us.
function plainEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(npm_|SOCKET_PROXYD_|LD_PRELOAD$|ASAN_|UBSAN_|LSAN_|NODE_OPTIONS$)/i.test(k)) continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

/** npm settings for the installs: packages from the cache when there, fetches retried. */
const NPM_RESILIENT = { npm_config_prefer_offline: 'true', npm_config_fetch_retries: '5' };

function run(cmd, args, options) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...options });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}${r.error ? `, ${r.error.message}` : ''})\n` +
      `--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  }
  return r;
}

/** systemd-socket-activate with exactly `env` (helpers' activate() adds our whole environment). */
function activatePlain(listen, command, args, env) {
  const child = spawn(ACTIVATE, ['-l', listen, command, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderrText = '';
  child.stderr.on('data', (d) => (child.stderrText += d));
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

const which = (name) => execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
const hasCommand = (name) => spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;

let tmp, tarball, files;

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-package-'));
  run('npm', ['pack', '--pack-destination', tmp], { cwd: ROOT, env: plainEnv() });
  const tgz = fs.readdirSync(tmp).filter((f) => f.endsWith('.tgz'));
  assert.equal(tgz.length, 1, `npm pack wrote ${tgz.join(', ')}`);
  tarball = path.join(tmp, tgz[0]);
  files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' })
    .split('\n').filter((f) => f && !f.endsWith('/')).map((f) => f.replace(/^package\//, '')).sort();
});

after(() => {
  if (tmp && !process.env.KEEP_PACKAGE_TEST) fs.rmSync(tmp, { recursive: true, force: true });
});

test('the tarball holds what a user needs, and nothing else', () => {
  const required = [
    'package.json', 'README.md', 'LICENSE', 'binding.gyp', 'CMakeLists.txt',
    'bin/socket-proxyd', 'dist/index.js', 'dist/index.d.ts', 'dist/native.js', 'dist/cli.js',
    PREBUILD,
  ];
  for (const f of required) assert.ok(files.includes(f), `${f} is not in the tarball:\n${files.join('\n')}`);
  for (const f of fs.readdirSync(path.join(ROOT, 'native'))) {
    assert.ok(files.includes(`native/${f}`), `native/${f} is not in the tarball`);
  }
  // the systemd units (test-systemd/ runs them under systemd)
  for (const f of fs.readdirSync(path.join(ROOT, 'units'), { recursive: true })) {
    if (fs.statSync(path.join(ROOT, 'units', f)).isFile()) assert.ok(files.includes(`units/${f}`), `units/${f} is not in the tarball`);
  }
  const allowed = /^(package\.json|README\.md|LICENSE|binding\.gyp|CMakeLists\.txt|bin\/[^/]+|dist\/[^/]+\.(js|d\.ts)|native\/[^/]+\.(cc|h)|prebuilds\/linux-(x64|arm64)\/socket-proxyd\.glibc\.node|units\/[^/]+\/(proxy-to-nginx\.(socket|service)|nginx\.service\.d\/[^/]+\.conf))$/;
  const extra = files.filter((f) => !allowed.test(f));
  assert.deepEqual(extra, [], `unexpected files in the tarball`);
  // every dist/*.js has its declarations
  for (const f of files.filter((f) => /^dist\/.*\.js$/.test(f))) {
    assert.ok(files.includes(f.replace(/\.js$/, '.d.ts')), `${f} has no .d.ts`);
  }
});

test('prebuilds are ELF objects for their platform folder', () => {
  const prebuilds = files.filter((f) => f.startsWith('prebuilds/'));
  assert.ok(prebuilds.length >= 1);
  // prepack cross-compiles linux-arm64 whenever the cross compiler is there
  if (process.arch === 'x64' && hasCommand('aarch64-linux-gnu-g++')) {
    assert.ok(files.includes('prebuilds/linux-arm64/socket-proxyd.glibc.node'), 'no linux-arm64 prebuild in the tarball');
  }
  for (const f of prebuilds) {
    const header = fs.readFileSync(path.join(ROOT, f)).subarray(0, 20);
    assert.equal(header.subarray(0, 4).toString('latin1'), '\x7fELF', `${f} is not ELF`);
    assert.equal(header[4], 2, `${f} is not ELF64`);
    const machine = ELF_MACHINE[header.readUInt16LE(18)];
    assert.equal(`linux-${machine}`, f.split('/')[1], `${f} has ELF machine 0x${header.readUInt16LE(18).toString(16)}`);
  }
});

test('binding.gyp and CMakeLists.txt compile the same sources', () => {
  // binding.gyp is a Python literal; this one is also JSON once comments are gone
  const gyp = JSON.parse(fs.readFileSync(path.join(ROOT, 'binding.gyp'), 'utf8').replace(/^\s*#.*$/gm, ''));
  const gypSources = gyp.targets.find((t) => t.target_name === 'socket_proxyd').sources.slice().sort();
  // CMakeLists.txt globs native/*.cc
  const cmakeSources = fs.readdirSync(path.join(ROOT, 'native')).filter((f) => f.endsWith('.cc')).map((f) => `native/${f}`).sort();
  assert.deepEqual(gypSources, cmakeSources);
});

test('installs with no compiler reachable and forwards a socket-activated connection', async () => {
  // A PATH with node and npm only, so cc/c++/gcc/g++/make/python cannot be found.
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(fs.realpathSync(which('npm')), path.join(bin, 'npm'));
  // npm runs install scripts with "sh" from PATH unless told where a shell is.
  const env = plainEnv({ PATH: bin, CC: 'false', CXX: 'false', npm_config_script_shell: '/bin/sh', ...NPM_RESILIENT });
  const probe = spawnSync('/bin/sh', ['-c', 'for t in cc c++ gcc g++ make python python3 node-gyp; do command -v $t; done; true'], { env, encoding: 'utf8' });
  assert.equal(probe.stdout, '', `tools reachable on the stripped PATH: ${probe.stdout}`);

  const app = path.join(tmp, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const install = run('npm', ['install', '--no-audit', '--no-fund', '--foreground-scripts', tarball], { cwd: app, env });

  const installed = path.join(app, 'node_modules', 'socket-proxyd');
  assert.ok(!fs.existsSync(path.join(installed, 'build')),
    `npm install compiled the addon (build/ exists):\n${install.stdout}\n${install.stderr}`);
  const resolved = run(path.join(bin, 'node'), ['-p', "require('node-gyp-build').resolve('node_modules/socket-proxyd')"], { cwd: app, env }).stdout.trim();
  assert.equal(resolved, path.join(installed, PREBUILD));

  const echo = await echoServer();
  const port = await freePort();
  // The installed CLI runs itself (#!/usr/bin/env node, found on the stripped PATH).
  const child = activatePlain(`127.0.0.1:${port}`, path.join(app, 'node_modules', '.bin', 'socket-proxyd'), [echo.target], env);
  try {
    await waitForPort(port);
    await assertEchoes(port, 3 << 20, 7);
    // the forwarding process mapped the installed prebuild
    const maps = fs.readFileSync(`/proc/${child.pid}/maps`, 'utf8');
    const mapped = [...new Set(maps.match(/\/\S+\.node$/gm) ?? [])];
    assert.ok(mapped.includes(path.join(installed, PREBUILD)), `the CLI did not load the installed prebuild; it maps ${mapped.join(', ') || 'no .node file'}`);
  } catch (err) {
    err.message += `\n--- proxy stderr\n${child.stderrText}`;
    throw err;
  } finally {
    await stop(child);
    await echo.close();
  }
  assert.ok(!fs.existsSync(path.join(installed, 'build')));
});

test('without a matching prebuild, install compiles the addon with node-gyp', async () => {
  // The same tarball less its prebuilds/ (as on a platform it has none for).
  const unpacked = path.join(tmp, 'unpacked');
  fs.mkdirSync(unpacked);
  run('tar', ['xzf', tarball, '-C', unpacked]);
  fs.rmSync(path.join(unpacked, 'package', 'prebuilds'), { recursive: true });
  const bare = path.join(tmp, 'no-prebuilds.tgz');
  run('tar', ['czf', bare, '-C', unpacked, 'package']);

  // node-gyp needs Node's headers: use the ones installed beside node, so nothing is downloaded
  const prefix = path.dirname(path.dirname(process.execPath));
  const headers = fs.existsSync(path.join(prefix, 'include', 'node', 'common.gypi')) ? { npm_config_nodedir: prefix } : {};
  const env = plainEnv({ ...headers, ...NPM_RESILIENT });
  const app = path.join(tmp, 'app-compiled');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const install = run('npm', ['install', '--no-audit', '--no-fund', '--foreground-scripts', bare], { cwd: app, env });

  const installed = path.join(app, 'node_modules', 'socket-proxyd');
  const built = path.join(installed, 'build', 'Release', 'socket_proxyd.node');
  assert.ok(fs.existsSync(built), `npm install did not compile the addon:\n${install.stdout}\n${install.stderr}`);
  const check = run(process.execPath, ['-e', `
    const { SocketProxy } = require('socket-proxyd');
    const p = new SocketProxy({ target: '127.0.0.1:9', listen: ['127.0.0.1:0'] });
    p.start().then(() => { console.log(require('node-gyp-build').resolve('node_modules/socket-proxyd'), p.listening.length); p.close(); });
  `], { cwd: app, env });
  assert.equal(check.stdout.trim(), `${built} 1`);
});
