// Out of file descriptors: the proxy must neither spin nor drop a client,
// waiting in the backlog or mid-transfer; it logs each episode once and
// serves everyone when fds free up.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import { CLI, activate, echoServer, freePort, stop, waitFor, waitForPort } from './helpers.mjs';

const FD_LIMIT = 60; // the CLI holds ~28 fds at rest: room for about 15 connections, not 30

function cpuTicks(pid) {
  // utime and stime are fields 14 and 15; the command name may hold spaces.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

test('accept backs off while out of fds, logs once, then serves every waiting client', async () => {
  const upstream = await echoServer();
  const port = await freePort();
  const child = activate(`127.0.0.1:${port}`, '/usr/bin/prlimit', [`--nofile=${FD_LIMIT}:${FD_LIMIT}`, process.execPath, CLI, '-c', '1000', upstream.target]);
  try {
    await waitForPort(port);
    // Hold 30 connections open: far more than the fds allow.
    const clients = [];
    for (let i = 0; i < 30; i++) {
      const socket = net.connect({ port, host: '127.0.0.1' });
      socket.on('error', () => {});
      let echoed = '';
      socket.on('data', (d) => (echoed += d));
      socket.echoed = () => echoed;
      clients.push(socket);
      await once(socket, 'connect'); // the kernel's backlog accepts it even when the proxy can't
      socket.write(`hello ${i}\n`);
    }
    // Some clients are served, the rest wait.
    const served = await waitFor(() => clients.filter((s, i) => s.echoed() === `hello ${i}\n`).length >= 5, 20000);
    assert.ok(served, 'the first clients are served');
    await waitFor(() => child.stderrText.includes('Not accepting new connections'), 5000);
    const waiting = clients.filter((s, i) => s.echoed() !== `hello ${i}\n`);
    assert.ok(waiting.length > 0, 'some clients wait for fds');

    // While they wait, the proxy must not spin, nor log again. (systemd-socket-activate
    // and prlimit exec the proxy, so child.pid is the proxy's pid.)
    const pausedLines = () => child.stderrText.split('\n').filter((l) => l.includes('Not accepting new connections')).length;
    const linesBefore = pausedLines();
    const before = cpuTicks(child.pid);
    await new Promise((r) => setTimeout(r, 1500));
    const spent = cpuTicks(child.pid) - before;
    assert.ok(spent < 30, `proxy used ${spent} CPU ticks in 1.5 s while out of fds (should idle)`);
    assert.ok(linesBefore >= 1, child.stderrText);
    assert.equal(pausedLines(), linesBefore, `one line per episode, not per retry:\n${child.stderrText}`);

    // Free fds by ending served connections, batch after batch: every waiting
    // client is served in the end, none is dropped.
    const done = (s) => s.echoed() === `hello ${clients.indexOf(s)}\n`;
    const allServed = await waitFor(() => {
      for (const s of clients) if (done(s) && !s.writableEnded) s.end();
      return clients.every(done);
    }, 20000, 100);
    assert.ok(allServed, `${clients.filter((s) => !done(s)).length} waiting clients never got their echo:\n${child.stderrText}`);
    for (const s of clients) s.destroy();

    // A second after the last shortage the episode is over, and said so once.
    await new Promise((r) => setTimeout(r, 1200));
    const late = net.connect({ port, host: '127.0.0.1' });
    late.on('error', () => {});
    late.end('late\n');
    let lateEcho = '';
    late.on('data', (d) => (lateEcho += d));
    await once(late, 'close');
    assert.equal(lateEcho, 'late\n');
    // The worker logs before it forwards, but the line reaches stderr through
    // the proxy's JS thread: it may come after the echo.
    const againLines = () => child.stderrText.split('Accepting connections again').length - 1;
    await waitFor(() => againLines() >= 1, 10_000);
    assert.equal(againLines(), 1, child.stderrText);
  } finally {
    await stop(child);
    await upstream.close();
  }
});
