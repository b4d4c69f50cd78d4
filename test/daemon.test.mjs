// The daemon's lifecycle, with real processes and sockets: socket activation
// through systemd-socket-activate, --listen without systemd, sd_notify
// (READY=1, STATUS=, STOPPING=1, WATCHDOG=1) received on a real UNIX datagram
// socket, idle exit, graceful stop, signals, journal log prefixes, log
// levels, and hostname targets resolved by the real resolver (glibc reading a
// hosts file bind-mounted over /etc/hosts in a private mount namespace).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  ACTIVATE, CLI, REFERENCE, abstractEchoServer, activateSockets, abstractName, abstractRoundTrip, activate, activateProxy, closed,
  collect, connect, connectTo, echoServer, exchange, freePort, notifyReceiver, pattern, sha256, startServer, stop, waitFor, waitForPort, within,
} from './helpers.mjs';
import { burst, request, supervise } from './lifecycle-helpers.mjs';
import { freezeThread } from './fault-helpers.mjs';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-daemon-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));
let tmpSeq = 0;
const tmpPath = (name) => path.join(TMP, `${++tmpSeq}-${name}`);

/** The test runner's environment without anything a service manager may have set for it. */
function baseEnv(extra = {}) {
  const env = { ...process.env };
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'JOURNAL_STREAM', 'SYSTEMD_LOG_LEVEL']) delete env[k];
  return { ...env, ...extra };
}

/**
 * Wraps a spawned process: collected stderr, `exited` ({code, signal}, also
 * rejecting loudly when the program is missing), waitLine(re).
 */
function track(child) {
  child.stderrText = '';
  child.stderr?.on('data', (d) => (child.stderrText += d));
  child.stdout?.on('data', () => {});
  child.exited = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.exited.catch(() => {});
  return withLines(child);
}

/** Adds lines() and waitLine(re, ms) over child.stderrText (as track() and helpers.mjs's activate() collect it). */
function withLines(child) {
  child.lines = () => child.stderrText.split('\n').filter(Boolean);
  child.waitLine = async (re, ms = 10000) => {
    const line = await Promise.race([
      waitFor(() => child.lines().find((l) => re.test(l)), ms),
      child.exited.then(() => child.lines().find((l) => re.test(l))),
    ]);
    if (!line) throw new Error(`no line matching ${re} within ${ms} ms; stderr:\n${child.stderrText}`);
    return line;
  };
  return child;
}

/** Runs the CLI directly (not socket-activated). */
function runCli(args, { env = {}, stdio = ['ignore', 'ignore', 'pipe'] } = {}) {
  return track(spawn(process.execPath, [CLI, ...args], { env: baseEnv(env), stdio }));
}

/** Runs `program args…` with fd 3 = stdio[3], LISTEN_FDS=1 and LISTEN_PID = `pid` ("self" = its own pid). */
function runWithFd3(program, args, fd3, { pid = 'self', env = {} } = {}) {
  const listenPid = pid === 'self' ? '$$' : String(pid);
  return track(
    spawn('sh', ['-c', `LISTEN_PID=${listenPid} LISTEN_FDS=1 exec "$0" "$@"`, program, ...args], {
      env: baseEnv(env),
      stdio: ['ignore', 'ignore', 'pipe', fd3],
    }),
  );
}

/** activateProxy() (helpers.mjs), with lines()/waitLine() on the child. */
async function activated(args, options) {
  const { child, port } = await activateProxy(args, options);
  return { child: withLines(child), port };
}

/** Starts the CLI with --listen on a fresh port (plus `args`); resolves {child, port} once it logged its startup line. */
async function listenProxy(args, options = {}) {
  const port = await freePort();
  const child = runCli([`--listen=127.0.0.1:${port}`, ...args], options);
  await child.waitLine(/Listening on/);
  return { child, port };
}

/** Sends `text`, half-closes, resolves everything read back. */
async function roundTrip(port, text, host = '127.0.0.1') {
  const c = await connect(port, host);
  const done = closed(c);
  c.end(text);
  const r = await within(done, 10000, `no reply through port ${port}`);
  return r.data.toString();
}

/** Greets every connection with `word`, answers each chunk with `word` + chunk, ends when the client ends. */
const greeter = (word) => (s) => {
  s.on('error', () => {});
  s.write(word);
  s.on('data', (d) => s.write(`${word}${d}`));
};
const wordServer = (word, host) => startServer(greeter(word), host);

const expectExit = async (child, code, ms = 10000) => {
  const r = await within(child.exited, ms, `process still running after ${ms} ms; stderr:\n${child.stderrText}`);
  assert.deepEqual(r, { code, signal: null }, child.stderrText);
};

const alive = (child) => child.exitCode === null && child.signalCode === null;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));


/**
 * Waits until `count` WATCHDOG=1 pings arrived after `message` (datagrams keep their order).
 * The daemon sends one every 100 ms (WATCHDOG_USEC=200000) from the same event loop as its
 * other timers, so they prove that much of its time has passed: a clock for "nothing else
 * happened meanwhile" that holds however slow the machine is.
 */
async function pingsAfter(notify, message, count, ms = 60_000) {
  const after = () => notify.messages.slice(notify.messages.indexOf(message) + 1);
  const ok = await waitFor(() => after().filter((m) => m.text === 'WATCHDOG=1').length >= count, ms, 20);
  if (!ok) throw new Error(`fewer than ${count} WATCHDOG=1 after ${JSON.stringify(message.text)} within ${ms} ms`);
  return after();
}

/** Fields of a notification ("READY=1\nSTATUS=…") as an object. */
const fields = (text) => Object.fromEntries(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));

// ---------------------------------------------------------------------------
// Socket activation

test('socket-activated: forwards bytes both ways and logs what it listens on', async () => {
  const upstream = await echoServer();
  const { child, port } = await activateProxy([upstream.target]);
  try {
    const payload = pattern(1 << 20, 7);
    const c = await connect(port);
    const reply = collect(c);
    c.end(payload);
    const r = await within(reply, 15000, 'no echo');
    assert.equal(r.bytes, payload.length);
    assert.equal(r.sha256, sha256(payload));
    await waitFor(() => /Listening on fd 3/.test(child.stderrText));
    assert.match(child.stderrText, new RegExp(`Listening on fd 3 \\(127\\.0\\.0\\.1:${port}\\); forwarding to ${upstream.target.replace(/\./g, '\\.')}\\.`));
    assert.deepEqual(await stop(child), { code: 0, signal: null }, child.stderrText);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

test('LISTEN_FDNAMES (--fdname=) names the sockets in the startup line; both forward', async () => {
  const upstream = await echoServer();
  const [p1, p2] = [await freePort(), await freePort()];
  const child = activate([`127.0.0.1:${p1}`, `127.0.0.1:${p2}`], process.execPath, [CLI, upstream.target], { extra: ['--fdname=web:api'] });
  try {
    await waitForPort(p1);
    const line = await withLines(child).waitLine(/^Listening on fd 3/);
    assert.match(line, new RegExp(`Listening on fd 3 "web" \\(127\\.0\\.0\\.1:${p1}\\), fd 4 "api" \\(127\\.0\\.0\\.1:${p2}\\); forwarding to`));
    assert.equal(await roundTrip(p1, 'one'), 'one');
    assert.equal(await roundTrip(p2, 'two'), 'two');
    assert.deepEqual(await stop(child), { code: 0, signal: null }, child.stderrText);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

/** The lines a program wrote after systemd-socket-activate's own "Execing …" line. */
const linesAfterExec = (text) => {
  const all = text.split('\n').filter(Boolean);
  const i = all.findIndex((l) => l.startsWith('Execing '));
  assert.ok(i >= 0, `systemd-socket-activate did not exec: ${text}`);
  return all.slice(i + 1);
};

test('a passed datagram socket that is not UDP (AF_UNIX): one error line, exit 1 (the reference refuses it too)', async () => {
  // A UDP socket is forwarded now (test/udp.test.mjs; the differential suite shows the reference
  // refusing it); a UNIX datagram socket is not something to forward to an IP or stream target.
  for (const program of [[process.execPath, CLI], [REFERENCE]]) {
    const child = withLines(activateSockets([{ type: 'dgram', path: tmpPath('dgram.sock') }], program[0], [...program.slice(1), '127.0.0.1:9'], { env: baseEnv() }));
    const r = await within(child.exited, 10000, 'did not exit');
    assert.deepEqual(r, { code: 1, signal: null }, child.stderrText);
    const out = child.lines();
    assert.equal(out.length, 1, child.stderrText);
    if (program[0] === process.execPath) assert.match(out[0], /^Passed in datagram socket is not a UDP socket: fd 3 is /);
    else assert.match(out[0], /^Passed in socket is not a stream socket/);
  }
});

test('a passed datagram socket: the reference refuses it (one error line, exit 1); ours forwards its datagrams', async () => {
  const upstream = dgram.createSocket('udp4');
  upstream.on('message', (m, r) => upstream.send(Buffer.concat([Buffer.from('echo '), m]), r.port, r.address));
  await new Promise((resolve) => upstream.bind(0, '127.0.0.1', resolve));
  const target = `127.0.0.1:${upstream.address().port}`;
  try {
    for (const program of [[REFERENCE], [process.execPath, CLI]]) {
      const port = await freePort();
      const child = track(spawn(ACTIVATE, ['--datagram', '-l', `127.0.0.1:${port}`, ...program, target], { env: baseEnv(), stdio: ['ignore', 'ignore', 'pipe'] }));
      await waitFor(() => /Listening on/.test(child.stderrText));
      const udp = dgram.createSocket('udp4');
      const replies = [];
      udp.on('message', (m) => replies.push(m.toString()));
      try {
        if (program[0] === REFERENCE) {
          udp.send('wake up', port, '127.0.0.1');
          const r = await within(child.exited, 10000, 'did not exit');
          assert.deepEqual(r, { code: 1, signal: null }, child.stderrText);
          const out = linesAfterExec(child.stderrText);
          assert.equal(out.length, 1, child.stderrText);
          assert.match(out[0], /^Passed in socket is not a stream socket/);
        } else {
          // The first datagram makes systemd-socket-activate exec the proxy; it is forwarded too.
          udp.send('wake up', port, '127.0.0.1');
          assert.ok(await waitFor(() => replies.includes('echo wake up'), 10_000), child.stderrText);
          udp.send('again', port, '127.0.0.1');
          assert.ok(await waitFor(() => replies.includes('echo again'), 10_000), child.stderrText);
          assert.match(child.stderrText, /Listening on fd 3 \(127\.0\.0\.1:\d+\)/);
          await stop(child);
        }
      } finally {
        udp.close();
      }
    }
  } finally {
    upstream.close();
  }
});

test('a passed socket that is not listening, or not a socket: one error line, exit 1 (like the reference)', async () => {
  // stdio 'pipe' is a connected UNIX stream socket pair (libuv).
  for (const [fd3, what] of [['pipe', /fd 3 is a stream socket that is not listening/], [() => fs.openSync(os.devNull, 'r'), /fd 3 is not a socket/]]) {
    for (const program of [[process.execPath, CLI], [REFERENCE]]) {
      const fd = typeof fd3 === 'function' ? fd3() : fd3;
      const child = runWithFd3(program[0], [...program.slice(1), '127.0.0.1:9'], fd);
      try {
        const r = await within(child.exited, 10000, 'did not exit');
        assert.deepEqual(r, { code: 1, signal: null }, child.stderrText);
      } finally {
        if (typeof fd === 'number') fs.closeSync(fd);
      }
      const out = child.lines();
      assert.equal(out.length, 1, child.stderrText);
      if (program[0] === process.execPath) assert.match(out[0], what);
      else assert.ok(out[0].length > 0);
    }
  }
});

test('no sockets at all: "Didn\'t get any sockets passed in.", exit 1 (like the reference)', async () => {
  for (const program of [[process.execPath, CLI], [REFERENCE]]) {
    const child = track(spawn(program[0], [...program.slice(1), '127.0.0.1:9'], { env: baseEnv(), stdio: ['ignore', 'ignore', 'pipe'] }));
    await expectExit(child, 1);
    assert.deepEqual(child.lines(), ["Didn't get any sockets passed in."]);
  }
});

test('LISTEN_PID of another process: the passed fds are ignored', async () => {
  // fd 3 is a connected socket: taken as passed in, it would be an error.
  const child = runWithFd3(process.execPath, [CLI, '127.0.0.1:9'], 'pipe', { pid: 1 });
  await expectExit(child, 1);
  assert.deepEqual(child.lines(), ["Didn't get any sockets passed in."]);

  // With --listen it starts, and does not mention fd 3.
  const upstream = await echoServer();
  const port = await freePort();
  const withListen = runWithFd3(process.execPath, [CLI, `--listen=127.0.0.1:${port}`, upstream.target], 'pipe', { pid: 1 });
  try {
    const line = await withListen.waitLine(/Listening on/);
    assert.equal(line, `Listening on 127.0.0.1:${port}; forwarding to ${upstream.target}.`);
    assert.equal(await roundTrip(port, 'ignored fd 3'), 'ignored fd 3');
    withListen.kill('SIGTERM');
    await expectExit(withListen, 0);
  } finally {
    if (alive(withListen)) withListen.kill('SIGKILL');
    await upstream.close();
  }
});

test('LISTEN_FDS=2147483644 (more than the fd limit allows): one error line and exit 1 at once, like the reference', async () => {
  for (const program of [[process.execPath, CLI], [REFERENCE]]) {
    const child = track(
      spawn('sh', ['-c', 'LISTEN_PID=$$ LISTEN_FDS=2147483644 exec "$0" "$@"', ...program, '127.0.0.1:1'], {
        env: baseEnv(),
        stdio: ['ignore', 'ignore', 'pipe'],
      }),
    );
    try {
      await expectExit(child, 1, 15_000);
    } finally {
      if (alive(child)) child.kill('SIGKILL');
    }
    const out = child.lines();
    assert.equal(out.length, 1, child.stderrText);
    assert.match(out[0], /^Failed to receive sockets from parent/);
    if (program[0] === process.execPath) {
      assert.match(out[0], /^Failed to receive sockets from parent: LISTEN_FDS=2147483644 is more than the file descriptor limit allows \(\d+, so at most \d+ from fd 3 on\)$/);
    }
  }
});

// ---------------------------------------------------------------------------
// --listen without systemd

test('--listen without systemd: HOST:PORT, /path and @abstract, all forwarding', async () => {
  const upstream = await echoServer();
  const port = await freePort();
  const unixPath = tmpPath('listen.sock');
  const abstract = abstractName('listen');
  const child = runCli([`--listen=127.0.0.1:${port}`, `--listen=${unixPath}`, `--listen=${abstract}`, upstream.target]);
  try {
    const line = await child.waitLine(/Listening on/);
    assert.equal(line, `Listening on 127.0.0.1:${port}, ${unixPath}, ${abstract}; forwarding to ${upstream.target}.`);
    assert.equal(await roundTrip(port, 'tcp'), 'tcp');
    const u = await connectTo(unixPath);
    const done = closed(u);
    u.end('unix path');
    assert.equal((await within(done, 10000)).data.toString(), 'unix path');
    const payload = pattern(100_000, 3);
    const r = await abstractRoundTrip(abstract, payload);
    assert.equal(r.sha256, sha256(payload));
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

test('--listen to an abstract target and a port already in use', async () => {
  const upstream = await abstractEchoServer(abstractName('target'));
  const { child, port } = await listenProxy([upstream.target]);
  try {
    assert.equal(await roundTrip(port, 'to abstract'), 'to abstract');
    // A second instance cannot bind the same port: one line, exit 1.
    const second = runCli([`--listen=127.0.0.1:${port}`, upstream.target]);
    await expectExit(second, 1);
    assert.equal(second.lines().length, 1, second.stderrText);
    assert.match(second.stderrText, /127\.0\.0\.1:\d+|address already in use/i);
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// sd_notify


test('sd_notify: READY=1 once the port accepts, STATUS= follows live counts at most once a second and only on change, STOPPING=1 on SIGTERM', async () => {
  const upstream = await echoServer();
  const notify = await notifyReceiver(tmpPath('notify.sock'));
  const port = await freePort();
  // The moment READY=1 arrives, the port must take a connection.
  let probe = null;
  notify.onMessage((m) => {
    if (!probe && /^READY=1$/m.test(m.text)) {
      probe = new Promise((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1' });
        s.once('connect', () => { s.destroy(); resolve('accepted'); });
        s.once('error', (e) => resolve(e.code));
      });
    }
  });
  // The watchdog's pings serve as the daemon's clock (pingsAfter).
  const child = runCli([`--listen=127.0.0.1:${port}`, '-c', '10', upstream.target], { env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '200000' } });
  const clients = [];
  try {
    const ready = await notify.wait(/^READY=1$/m);
    assert.equal(await probe, 'accepted');
    assert.match(fields(ready.text).STATUS, new RegExp(`^Forwarding to ${upstream.target}: 0 of 10 connections open, 0 served$`));

    // The probe was served: 0 open, 1 served.
    await notify.wait(/^STATUS=.*: 0 of 10 connections open, 1 served$/m);
    for (let i = 0; i < 3; i++) {
      const c = await connect(port);
      const done = closed(c);
      c.write('x');
      clients.push({ c, done });
    }
    await notify.wait(/^STATUS=.*: 3 of 10 connections open, 4 served$/m);
    for (const { c } of clients) c.end();
    for (const { done } of clients) await within(done, 10000);
    const last = await notify.wait(/^STATUS=.*: 0 of 10 connections open, 4 served$/m);
    // Nothing changes now: no more STATUS= over 25 pings (at least 2.4 s, two status refreshes).
    const since = await pingsAfter(notify, last, 25);
    assert.deepEqual(since.filter((m) => m.text !== 'WATCHDOG=1').map((m) => m.text), []);

    // Never the same status twice in a row, never two within a second.
    const statuses = notify.messages.filter((m) => fields(m.text).STATUS !== undefined);
    for (let i = 1; i < statuses.length; i++) {
      assert.notEqual(fields(statuses[i].text).STATUS, fields(statuses[i - 1].text).STATUS);
      const gap = statuses[i].t - statuses[i - 1].t;
      assert.ok(gap >= 850, `STATUS= twice within ${gap.toFixed(0)} ms: ${JSON.stringify(statuses.map((s) => s.text))}`);
    }
    assert.equal(notify.messages.filter((m) => /^READY=1$/m.test(m.text)).length, 1);

    child.kill('SIGTERM');
    const stopping = await notify.wait(/^STOPPING=1$/m);
    assert.match(fields(stopping.text).STATUS, /^Stopping to /);
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await notify.close();
    await upstream.close();
  }
});

test('NOTIFY_SOCKET naming nothing: one warning, and it serves anyway', async () => {
  const upstream = await echoServer();
  try {
    const { child, port } = await listenProxy([upstream.target], { env: { NOTIFY_SOCKET: tmpPath('nobody-listens.sock') } });
    try {
      assert.equal(await roundTrip(port, 'served'), 'served');
      child.kill('SIGTERM');
      await expectExit(child, 0);
      const warnings = child.lines().filter((l) => /Failed to notify the service manager/.test(l));
      assert.equal(warnings.length, 1, child.stderrText);
    } finally {
      if (alive(child)) child.kill('SIGKILL');
    }
  } finally {
    await upstream.close();
  }
});

test('sd_notify to an abstract @NOTIFY_SOCKET, socket-activated', async () => {
  const upstream = await echoServer();
  const name = abstractName('notify');
  const notify = await notifyReceiver(name);
  try {
    const { child, port } = await activated([upstream.target], { extra: ['-E', `NOTIFY_SOCKET=${name}`] });
    try {
      const ready = await notify.wait(/^READY=1$/m);
      assert.match(fields(ready.text).STATUS, / connections open, /);
      assert.equal(await roundTrip(port, 'hello'), 'hello');
      child.kill('SIGTERM');
      await notify.wait(/^STOPPING=1$/m);
      await expectExit(child, 0);
    } finally {
      if (alive(child)) child.kill('SIGKILL');
    }
  } finally {
    await notify.close();
    await upstream.close();
  }
});

test('watchdog: WATCHDOG_USEC=200000 → WATCHDOG=1 about every 100 ms; not when WATCHDOG_PID names another process', async () => {
  const upstream = await echoServer();
  const mine = await notifyReceiver(tmpPath('wd.sock'));
  const other = await notifyReceiver(tmpPath('wd-other.sock'));
  const a = runCli([`--listen=127.0.0.1:${await freePort()}`, upstream.target], { env: { NOTIFY_SOCKET: mine.address, WATCHDOG_USEC: '200000' } });
  const b = runCli([`--listen=127.0.0.1:${await freePort()}`, upstream.target], { env: { NOTIFY_SOCKET: other.address, WATCHDOG_USEC: '200000', WATCHDOG_PID: '1' } });
  try {
    const ready = await mine.wait(/^READY=1$/m);
    await other.wait(/^READY=1$/m);
    // 20 pings, then their rate: about one per 100 ms. A loaded machine delays timers (never
    // hastens them), so the bounds are wide on the slow side.
    const pings = (await pingsAfter(mine, ready, 20)).filter((m) => m.text === 'WATCHDOG=1');
    const gaps = pings.slice(1).map((p, i) => p.t - pings[i].t).sort((x, y) => x - y);
    const median = gaps[Math.floor(gaps.length / 2)];
    assert.ok(median >= 50 && median <= 400, `median gap ${median.toFixed(0)} ms`);
    const span = pings.at(-1).t - pings[0].t;
    assert.ok(span >= (pings.length - 1) * 50, `${pings.length} pings within ${span.toFixed(0)} ms`);
    for (const child of [a, b]) {
      child.kill('SIGTERM');
      await expectExit(child, 0);
    }
    // b never pinged: up to its STOPPING=1, which comes after anything it sent before.
    await other.wait(/^STOPPING=1$/m);
    assert.deepEqual(other.messages.filter((m) => /WATCHDOG=1/.test(m.text)), []);
  } finally {
    for (const child of [a, b]) if (alive(child)) child.kill('SIGKILL');
    await mine.close();
    await other.close();
    await upstream.close();
  }
});

/**
 * Stops one thread (not the process) of `pid` for `ms` with ptrace (PTRACE_SEIZE +
 * PTRACE_INTERRUPT act on a single thread), the way a stuck thread looks from outside.
 * Resolves {stopped, resumed} once the thread runs again: the ptrace helper's clock (ms
 * since the epoch) once the thread had stopped and just before it let it go.
 */
async function freezeThreadFor(pid, comm, ms) {
  const frozen = await freezeThread(pid, comm);
  await new Promise((resolve) => setTimeout(resolve, ms)); // the stall being simulated, not a wait for a condition
  await frozen.resume();
  await frozen.close();
  return { stopped: frozen.stoppedAt, resumed: frozen.resumedAt };
}

test('watchdog: a stuck forwarding thread withholds WATCHDOG=1 until it runs again', async () => {
  const upstream = await echoServer();
  const notify = await notifyReceiver(tmpPath('wd-stuck.sock'));
  const port = await freePort();
  const child = runCli([`--listen=127.0.0.1:${port}`, '--workers=2', upstream.target], {
    env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '200000' },
  });
  try {
    const ready = await notify.wait(/^READY=1$/m);
    await pingsAfter(notify, ready, 3);
    const { stopped, resumed } = await freezeThreadFor(child.pid, 'proxyd-wrk1', 4000);
    // By send time (the kernel's stamp on each datagram) against the ptrace helper's clock, and
    // counted rather than timed: a 4 s freeze at one ping per 100 ms would be ~40 pings; one at
    // most is right, for the ping the thread answered just before it stopped (the next tick
    // still finds it current), and one more is margin. (Arrival times in this process failed
    // once in CI: a ping sent before the stop was read more than a second after it.)
    const pings = (from, to) => notify.messages.filter((m) => m.text === 'WATCHDOG=1' && m.t > from && m.t < to).length;
    assert.ok(await waitFor(() => pings(resumed, Infinity) >= 3, 20_000), 'WATCHDOG=1 did not resume');
    const during = pings(stopped, resumed);
    assert.ok(during <= 2, `${during} WATCHDOG=1 sent while a forwarding thread was stopped for ${(resumed - stopped).toFixed(0)} ms`);
    await child.waitLine(/forwarding thread did not answer/);
    await child.waitLine(/watchdog pings resumed/);
    // The other thread kept forwarding all along, and both do now.
    const socket = await connectTo(`127.0.0.1:${port}`);
    const got = collect(socket);
    socket.end(pattern(100_000, 5));
    assert.equal((await got).bytes, 100_000);
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await notify.close();
    await upstream.close();
  }
});

test('WATCHDOG_USEC=1: one warning, a ping at most every 10 ms, and no line per stall', async () => {
  const upstream = await echoServer();
  const notify = await notifyReceiver(tmpPath('wd-tiny.sock'));
  const child = runCli([`--listen=127.0.0.1:${await freePort()}`, upstream.target], { env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '1' } });
  try {
    const ready = await notify.wait(/^READY=1$/m);
    // Two seconds of pings, by the receiver's clock.
    const pinged = await waitFor(() => {
      const last = notify.messages.findLast((m) => m.text === 'WATCHDOG=1');
      return last && last.t - ready.t >= 2000;
    }, 30_000);
    assert.ok(pinged, 'no pings for two seconds');
    child.kill('SIGTERM');
    await expectExit(child, 0);
    const pings = notify.messages.filter((m) => m.text === 'WATCHDOG=1');
    const gaps = pings.slice(1).map((p, i) => p.t - pings[i].t).sort((x, y) => x - y);
    assert.ok(gaps[Math.floor(gaps.length / 2)] >= 8, `median gap ${gaps[Math.floor(gaps.length / 2)]} ms`);
    const lines = child.lines();
    assert.equal(lines.filter((l) => l === 'WATCHDOG_USEC=1 is too short to ping every half of it; pinging every 10ms.').length, 1, child.stderrText);
    // A stall now and then on a loaded machine is possible; a line for each is not.
    assert.ok(lines.filter((l) => /did not answer/.test(l)).length <= 1, child.stderrText);
    assert.ok(lines.length <= 5, child.stderrText);
    assert.equal(lines.at(-1), 'Received SIGTERM; exiting.');
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await notify.close();
    await upstream.close();
  }
});

test('stall lines: the first one, then at most one per 10 s saying how many were left out; "resumed" only after a logged one', async () => {
  const { StallReporter } = await import('../dist/watchdog.js');
  const { Logger } = await import('../dist/log.js');
  const lines = [];
  let now = 0;
  const stalls = new StallReporter(new Logger({ journal: false, write: (l) => lines.push(l.trimEnd()) }), 10_000, () => now);
  for (let i = 0; i < 500; i++, now += 10) {
    stalls.onStall(true);
    stalls.onStall(false);
  }
  assert.deepEqual(lines, [
    'A forwarding thread did not answer in time; withholding the watchdog ping.',
    'Forwarding threads answer again; watchdog pings resumed.',
  ]);
  now = 10_000;
  stalls.onStall(true);
  assert.equal(lines.at(-1), 'A forwarding thread did not answer in time; withholding the watchdog ping (499 more such stalls since the last report).');
});

// ---------------------------------------------------------------------------
// --exit-idle-time

test('--exit-idle-time=1s with no clients: exits 0 about a second after start, saying STOPPING=1', async () => {
  const upstream = await echoServer();
  const notify = await notifyReceiver(tmpPath('idle-notify.sock'));
  try {
    const { child } = await listenProxy(['--exit-idle-time=1s', upstream.target], { env: { NOTIFY_SOCKET: notify.address } });
    await expectExit(child, 0);
    assert.match(child.stderrText, /Exiting after 1s without connections\./);
    // Between the daemon's own READY=1 and STOPPING=1, by the kernel's stamps: this process's
    // delays in reading its lines do not count.
    const ready = await notify.wait(/^READY=1$/m, 10_000);
    const stopping = await notify.wait(/^STOPPING=1$/m, 10_000);
    const dt = stopping.t - ready.t;
    assert.ok(dt >= 800 && dt < 5000, `STOPPING=1 came ${dt.toFixed(0)} ms after READY=1`);
  } finally {
    await notify.close();
    await upstream.close();
  }
});


test('--exit-idle-time: not while a connection is open; counted again from when it closes', async () => {
  const upstream = await echoServer();
  const notify = await notifyReceiver(tmpPath('idle-hold.sock'));
  try {
    const { child, port } = await listenProxy(['--exit-idle-time=1s', upstream.target], { env: { NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '200000' } });
    await notify.wait(/^READY=1$/m);
    const c = await connect(port);
    assert.equal(await exchange(c, 'hold'), 'hold');
    // 25 pings (at least 2.4 s of the daemon's time) with the connection open: no exit.
    await pingsAfter(notify, notify.messages.at(-1), 25);
    assert.ok(alive(child), `exited with a connection open: ${child.stderrText}`);
    assert.equal(await exchange(c, 'still here'), 'still here');
    const done = closed(c);
    // Before the end goes out: the daemon's second cannot start earlier than this.
    const t0 = Date.now();
    c.end();
    await within(done, 10000);
    await expectExit(child, 0);
    const dt = Date.now() - t0;
    assert.ok(dt >= 1000 && dt < 8000, `exited ${dt} ms after the connection was ended`);
  } finally {
    await notify.close();
    await upstream.close();
  }
});

test('--exit-idle-time=200ms: streams of very short connections never keep it from exiting once they stop', { timeout: 180_000 }, async () => {
  // Each connection ends as soon as its upstream connect is refused: busy periods far shorter
  // than the time their events take to reach JS.
  const nowhere = await freePort();
  for (let run = 0; run < 8; run++) {
    const { child, port } = await listenProxy(['--exit-idle-time=200ms', '-c', '10000', `127.0.0.1:${nowhere}`]);
    try {
      // Clients that come after it stopped accepting are refused: that is fine.
      await burst(`127.0.0.1:${port}`, { clients: 6, each: 40 });
      await expectExit(child, 0, 15_000);
    } finally {
      if (alive(child)) child.kill('SIGKILL');
    }
  }
});

test('--exit-idle-time=2ms under a supervisor that keeps the socket and restarts it: every client gets its answer', { timeout: 240_000 }, async () => {
  const upstream = await echoServer();
  const supervisor = await supervise(['--exit-idle-time=2ms', '--log-level=warning', upstream.target], { env: baseEnv() });
  const results = [];
  try {
    // Three clients, each sending a request every few ms, until the proxy has exited 200 times
    // (the old idle exit dropped about 1 request in 150 this way).
    let stop = false;
    const client = async (id) => {
      for (let i = 0; !stop; i++) {
        const text = `request ${id}-${i}`;
        results.push({ text, reply: await request(supervisor.port, text) });
        await new Promise((r) => setTimeout(r, 3 + (i % 5)));
      }
    };
    const clients = [client('a'), client('b'), client('c')];
    const enough = await waitFor(() => supervisor.exits.length >= 200, 180_000, 50);
    stop = true;
    await Promise.all(clients);
    assert.ok(enough, `only ${supervisor.exits.length} exits in 180 s; stderr:\n${supervisor.stderr()}`);
    const wrong = results.filter((r) => r.reply !== r.text);
    assert.deepEqual(wrong, [], `${wrong.length} of ${results.length} requests over ${supervisor.exits.length} exits not answered`);
    assert.ok(results.length >= 200, `only ${results.length} requests`);
    assert.deepEqual(supervisor.exits.filter((e) => e.code !== 0 || e.signal !== 0), [], supervisor.stderr());
  } finally {
    await supervisor.stop();
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Stopping

test('SIGTERM with a connection open: stops accepting, the connection carries on, its end lets the process exit 0', async () => {
  const upstream = await echoServer();
  const { child, port } = await activated(['--drain-timeout=1min', upstream.target]);
  try {
    await child.waitLine(/^Listening on fd 3/);
    const c = await connect(port);
    assert.equal(await exchange(c, 'before'), 'before');
    child.kill('SIGTERM');
    await child.waitLine(/Received SIGTERM; no longer accepting, waiting up to 1min for 1 open connection to finish\./);
    await assert.rejects(connect(port), { code: 'ECONNREFUSED' });
    assert.equal(await exchange(c, 'after'), 'after');
    assert.ok(alive(child));
    const done = closed(c);
    c.end();
    await within(done, 10000);
    await expectExit(child, 0);
    assert.match(child.stderrText, /All connections finished; exiting\./);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

test('--drain-timeout bounds the wait for open connections', async () => {
  const upstream = await echoServer();
  const { child, port } = await activated(['--drain-timeout=1s', upstream.target]);
  try {
    const c = await connect(port);
    assert.equal(await exchange(c, 'open'), 'open');
    const done = closed(c);
    child.kill('SIGTERM');
    const t0 = Date.now();
    await expectExit(child, 0);
    const dt = Date.now() - t0;
    assert.ok(dt >= 800 && dt < 6000, `exited ${dt} ms after SIGTERM`);
    await within(done, 5000, 'the open connection was not closed');
    assert.match(child.stderrText, /Closing 1 connection still open after 1s\./);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

test('--drain-timeout=0: SIGTERM with a connection open closes it and exits 0 at once', async () => {
  const upstream = await echoServer();
  const { child, port } = await activated(['--drain-timeout=0', upstream.target]);
  try {
    const c = await connect(port);
    assert.equal(await exchange(c, 'open'), 'open');
    const done = closed(c);
    child.kill('SIGTERM');
    await expectExit(child, 0);
    await within(done, 5000, 'the open connection was not closed');
    assert.match(child.stderrText, /Closing 1 connection still open after 0\./);
    assert.doesNotMatch(child.stderrText, /Error|at .*\.js:\d+/);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

test('a second SIGTERM (or SIGINT) exits at once with status 0', async () => {
  const upstream = await echoServer();
  try {
    for (const second of ['SIGTERM', 'SIGINT']) {
      const { child, port } = await activated(['--drain-timeout=1min', upstream.target]);
      const c = await connect(port);
      assert.equal(await exchange(c, 'open'), 'open');
      const done = closed(c);
      child.kill('SIGTERM');
      await child.waitLine(/no longer accepting/);
      child.kill(second);
      await expectExit(child, 0, 10_000);
      assert.deepEqual(child.lines().slice(-2), [
        'Received SIGTERM; no longer accepting, waiting up to 1min for 1 open connection to finish.',
        `Received ${second} again; closing 1 connection and exiting now.`,
      ], child.stderrText);
      assert.doesNotMatch(child.stderrText, /All connections finished/);
      await within(done, 5000, 'the open connection was not closed');
    }
  } finally {
    await upstream.close();
  }
});

test('SIGTERM the moment the startup line appears: a clean exit 0, every time', async () => {
  const upstream = await echoServer();
  try {
    for (let i = 0; i < 5; i++) {
      const port = await freePort();
      const child = runCli([`--listen=127.0.0.1:${port}`, upstream.target]);
      child.stderr.on('data', () => {
        if (/Listening on/.test(child.stderrText) && !child.signalled) {
          child.signalled = true;
          child.kill('SIGTERM');
        }
      });
      await expectExit(child, 0);
      assert.match(child.stderrText, /Received SIGTERM; exiting\./);
    }
  } finally {
    await upstream.close();
  }
});

test('SIGINT with no connection exits 0 at once', async () => {
  const upstream = await echoServer();
  try {
    const { child } = await listenProxy([upstream.target]);
    child.kill('SIGINT');
    await expectExit(child, 0, 10_000);
    assert.match(child.stderrText, /Received SIGINT; exiting\./);
  } finally {
    await upstream.close();
  }
});

test('SIGPIPE does not kill it, nor does a closed stderr', async () => {
  const upstream = await echoServer();
  try {
    const { child, port } = await listenProxy([upstream.target]);
    child.kill('SIGPIPE');
    await sleep(200);
    assert.ok(alive(child), `killed by ${child.signalCode}`);
    assert.equal(await roundTrip(port, 'after SIGPIPE'), 'after SIGPIPE');
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    await upstream.close();
  }

  // Every client fails upstream (nothing listens there) and is logged: into a closed pipe.
  const nowhere = await freePort();
  const { child, port } = await listenProxy([`127.0.0.1:${nowhere}`]);
  try {
    child.stderr.destroy();
    for (let i = 0; i < 3; i++) {
      const c = await connect(port);
      const r = await within(closed(c), 10000);
      assert.equal(r.data.length, 0);
      await sleep(100);
    }
    await sleep(1100); // past the 1/s log throttle: one more line into the closed pipe
    const c = await connect(port);
    await within(closed(c), 10000);
    await sleep(200);
    assert.ok(alive(child), `died: ${child.exitCode ?? child.signalCode}`);
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
  }
});

// ---------------------------------------------------------------------------
// Logging

/** Runs the CLI with stderr going to a file; resolves {child, file, dev, ino}. */
function runToFile(args, env = (st) => ({})) {
  const file = tmpPath('stderr.log');
  const fd = fs.openSync(file, 'w');
  const st = fs.fstatSync(fd, { bigint: true });
  const child = track(spawn(process.execPath, [CLI, ...args], { env: baseEnv(env(st)), stdio: ['ignore', 'ignore', fd] }));
  fs.closeSync(fd);
  child.text = () => fs.readFileSync(file, 'utf8');
  return child;
}

test('JOURNAL_STREAM naming stderr: lines carry <priority> prefixes; otherwise none', async () => {
  const journal = (st) => ({ JOURNAL_STREAM: `${st.dev}:${st.ino}` });
  // Errors are <3>.
  const failing = runToFile(['127.0.0.1:9'], journal);
  await expectExit(failing, 1);
  assert.equal(failing.text(), "<3>Didn't get any sockets passed in.\n");
  // Not our stderr (another inode), or not set: no prefix.
  for (const env of [(st) => ({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1n}` }), () => ({}), () => ({ JOURNAL_STREAM: 'garbage' })]) {
    const plain = runToFile(['127.0.0.1:9'], env);
    await expectExit(plain, 1);
    assert.equal(plain.text(), "Didn't get any sockets passed in.\n");
  }

  // Info lines are <6>, warnings <4>.
  const upstream = await echoServer();
  const port = await freePort();
  const nowhere = await freePort();
  const child = runToFile([`--listen=127.0.0.1:${port}`, `127.0.0.1:${nowhere}`], (st) => ({ ...journal(st), SYSTEMD_LOG_LEVEL: 'debug' }));
  try {
    await waitForPort(port); // its probe fails upstream: a warning
    await waitFor(() => /Failed to connect/.test(child.text()));
    child.kill('SIGTERM');
    await expectExit(child, 0);
    const lines = child.text().split('\n').filter(Boolean);
    for (const line of lines) assert.match(line, /^<[0-7]>/, `unprefixed line: ${line}`);
    assert.ok(lines.includes(`<6>Listening on 127.0.0.1:${port}; forwarding to 127.0.0.1:${nowhere}.`), lines.join('\n'));
    assert.ok(lines.some((l) => l.startsWith('<7>')), `no debug line: ${lines.join('\n')}`);
    assert.ok(lines.some((l) => /^<4>Failed to connect to 127\.0\.0\.1:\d+/.test(l)), lines.join('\n'));
    assert.equal(lines.at(-1), '<6>Received SIGTERM; exiting.');
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await upstream.close();
  }
});

test('SYSTEMD_LOG_LEVEL: debug shows debug lines, err hides info; --log-level wins', async () => {
  const upstream = await echoServer();
  try {
    const start = async (args, env) => {
      const port = await freePort();
      const child = runCli([`--listen=127.0.0.1:${port}`, ...args, upstream.target], { env });
      await waitForPort(port);
      await sleep(200);
      child.kill('SIGTERM');
      await expectExit(child, 0);
      return child.stderrText;
    };
    const debugRe = /^File descriptor limit: /m;
    const info = await start([], {});
    assert.match(info, /^Listening on /m);
    assert.doesNotMatch(info, debugRe);

    const debug = await start([], { SYSTEMD_LOG_LEVEL: 'debug' });
    assert.match(debug, debugRe);
    assert.match(debug, /^Listening on /m);

    assert.equal(await start([], { SYSTEMD_LOG_LEVEL: 'err' }), '');
    assert.equal(await start([], { SYSTEMD_LOG_LEVEL: '3' }), '');
    assert.match(await start(['--log-level=debug'], { SYSTEMD_LOG_LEVEL: 'err' }), debugRe);
    assert.equal(await start(['--log-level=warning'], { SYSTEMD_LOG_LEVEL: 'debug' }), '');

    const bogus = await start([], { SYSTEMD_LOG_LEVEL: 'chatty' });
    assert.match(bogus, /^Failed to parse log level 'chatty'\. Ignoring\.$/m);
    assert.match(bogus, /^Listening on /m);

    // Errors still show at err.
    const failing = runCli(['127.0.0.1:9'], { env: { SYSTEMD_LOG_LEVEL: 'err' } });
    await expectExit(failing, 1);
    assert.deepEqual(failing.lines(), ["Didn't get any sockets passed in."]);
  } finally {
    await upstream.close();
  }
});

// ---------------------------------------------------------------------------
// Hostname targets, resolved by the real resolver

test('an unresolvable target name: each client is closed with a log line, the proxy keeps running on all its listeners', async () => {
  const [p1, p2] = [await freePort(), await freePort()];
  const child = runCli([`--listen=127.0.0.1:${p1}`, `--listen=127.0.0.1:${p2}`, 'nonexistent.invalid:80']);
  try {
    await child.waitLine(/Listening on/);
    await child.waitLine(/Failed to resolve nonexistent\.invalid:80/);
    for (const port of [p1, p2, p1]) {
      const c = await connect(port);
      c.write('anyone?');
      const r = await within(closed(c), 10000, 'client not closed');
      assert.equal(r.data.length, 0);
      assert.ok(alive(child), child.stderrText);
    }
    await child.waitLine(/Failed to connect to upstream: no address to connect to/);
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
  }
});

/**
 * Runs `command args…` in a private mount namespace whose /etc/hosts is
 * `hostsFile` (bind-mounted; rewrite it in place to change what names
 * resolve to). The system's /etc/hosts is untouched.
 */
function withHosts(hostsFile, command, args, { env = {}, stdio = ['ignore', 'pipe', 'pipe'] } = {}) {
  return track(
    // Unprivileged, a user namespace (mapped to root) lets the mount happen.
    spawn('unshare', [...(process.getuid() === 0 ? [] : ['--map-root-user']), '--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hostsFile, command, ...args], {
      env: baseEnv(env),
      stdio,
    }),
  );
}

/** True if nothing accepts on host:port. */
const refused = (port, host) =>
  new Promise((resolve) => {
    const s = net.connect({ port, host });
    s.once('connect', () => { s.destroy(); resolve(false); });
    s.once('error', () => resolve(true));
  });

test('localhost:PORT resolving to ::1 and 127.0.0.1 reaches an upstream on either one alone (fallback to the next address)', async () => {
  const hosts = tmpPath('hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n::1 localhost\n');
  const getent = withHosts(hosts, 'getent', ['ahostsv4', 'localhost']);
  let out = '';
  getent.stdout.on('data', (d) => (out += d));
  assert.deepEqual(await getent.exited, { code: 0, signal: null }, getent.stderrText);
  assert.match(out, /^127\.0\.0\.1\s+STREAM localhost/m);
  const getent6 = withHosts(hosts, 'getent', ['ahosts', 'localhost']);
  let out6 = '';
  getent6.stdout.on('data', (d) => (out6 += d));
  await getent6.exited;
  const order = [...out6.matchAll(/^(\S+)\s+STREAM/gm)].map((m) => m[1]);
  assert.deepEqual([...order].sort(), ['127.0.0.1', '::1'], `localhost resolves to ${order}`);

  // Whichever address comes first, the one upstream that listens is reached;
  // for one of the two the first address is refused and the next one is used.
  for (const [host, other] of [['::1', '127.0.0.1'], ['127.0.0.1', '::1']]) {
    let upstream;
    for (let i = 0; i < 5; i++) {
      upstream = await wordServer(`hello from ${host}`, host);
      if (await refused(upstream.port, other)) break;
      await upstream.close();
      upstream = null;
    }
    assert.ok(upstream, `no port free on both ${host} and ${other}`);
    const port = await freePort();
    const child = withHosts(hosts, process.execPath, [CLI, `--listen=127.0.0.1:${port}`, `localhost:${upstream.port}`]);
    try {
      await child.waitLine(/Listening on/);
      for (let i = 0; i < 3; i++) assert.equal(await roundTrip(port, ''), `hello from ${host}`, `resolver order ${order}`);
      child.kill('SIGTERM');
      await expectExit(child, 0);
    } finally {
      if (alive(child)) child.kill('SIGKILL');
      await upstream.close();
    }
  }
});

test('DNS changes reach new connections within --resolve-interval (hosts file rewritten under a running proxy)', async () => {
  const hosts = tmpPath('hosts');
  fs.writeFileSync(hosts, '127.0.0.1 localhost\n');
  // Same port on two addresses: A on 127.0.0.1, B on 127.0.0.2.
  let a;
  let b;
  for (let i = 0; i < 5 && !b; i++) {
    a = await wordServer('A', '127.0.0.1');
    try {
      const server = net.createServer(greeter('B'));
      const open = new Set();
      server.on('connection', (c) => { open.add(c); c.on('close', () => open.delete(c)); });
      server.listen(a.port, '127.0.0.2');
      await once(server, 'listening');
      b = { close: () => new Promise((r) => { server.close(r); for (const c of open) c.destroy(); }) };
    } catch {
      await a.close();
      b = null;
    }
  }
  assert.ok(b, 'could not listen on the same port on 127.0.0.1 and 127.0.0.2');
  const port = await freePort();
  const name = 'svc.socket-proxyd-test.invalid';
  const child = withHosts(hosts, process.execPath, [CLI, `--listen=127.0.0.1:${port}`, '--resolve-interval=300ms', `${name}:${a.port}`]);
  try {
    await child.waitLine(/Listening on/);
    // Not resolvable yet: clients are closed, the proxy keeps trying.
    await child.waitLine(new RegExp(`Failed to resolve ${name.replace(/\./g, '\\.')}`));
    assert.equal(await roundTrip(port, ''), '');

    const answer = async (want) => {
      const got = await waitFor(async () => (await roundTrip(port, '')) === want, 5000, 50);
      assert.ok(got, `new connections never reached ${want}; stderr:\n${child.stderrText}`);
    };
    fs.writeFileSync(hosts, `127.0.0.1 localhost\n127.0.0.1 ${name}\n`);
    await answer('A');
    // A connection opened now stays with A while the name moves.
    const held = await connect(port);
    const heldDone = closed(held);
    assert.ok(await waitFor(() => held.bytesRead >= 1), 'no greeting from A');
    fs.writeFileSync(hosts, `127.0.0.1 localhost\n127.0.0.2 ${name}\n`);
    await answer('B');
    for (let i = 0; i < 3; i++) assert.equal(await roundTrip(port, ''), 'B');
    held.end('-still-here');
    assert.equal((await within(heldDone, 5000)).data.toString(), 'AA-still-here');
    child.kill('SIGTERM');
    await expectExit(child, 0);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
    await a.close();
    await b.close();
  }
});
