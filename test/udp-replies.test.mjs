// Datagram forwarding details found in review: where a reply comes from when
// the client sent to a broadcast address, and what the library refuses at
// start instead of dropping every datagram silently.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { SocketProxy } from '../dist/index.js';
import { waitFor } from './helpers.mjs';

async function udpEcho() {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (m, r) => socket.send(Buffer.concat([Buffer.from('echo '), m]), r.port, r.address));
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return { socket, target: `127.0.0.1:${socket.address().port}`, close: () => socket.close() };
}

test('UDP on a wildcard socket: a datagram sent to a broadcast address (127.255.255.255 on lo) gets its reply from a unicast address', { timeout: 30_000 }, async () => {
  // The kernel sets up "broadcast 127.255.255.255 dev lo" in its local table for lo's 127.0.0.1/8.
  const upstream = await udpEcho();
  const proxy = new SocketProxy({ target: upstream.target, listen: ['udp:0.0.0.0:0'], workers: 1 });
  await proxy.start();
  const client = dgram.createSocket('udp4');
  try {
    const port = Number(proxy.listening[0].split(':').pop());
    await new Promise((resolve) => client.bind(0, '127.0.0.1', resolve));
    client.setBroadcast(true);
    const replies = [];
    client.on('message', (m, r) => replies.push({ text: m.toString(), from: r.address }));
    client.send('to everyone', port, '127.255.255.255');
    assert.ok(await waitFor(() => replies.length === 1, 10_000), `no reply; stats ${JSON.stringify(proxy.stats)}`);
    assert.deepEqual(replies[0], { text: 'echo to everyone', from: '127.0.0.1' });
    assert.equal(proxy.stats.udpDropped, 0);
  } finally {
    client.close();
    proxy.close();
    upstream.close();
  }
});

/** Starts a SocketProxy on fd 3 in a child, fd 3 made by python (`make`); resolves its JSON report. */
function startOnFd3(make, target) {
  const script = `
    const { SocketProxy } = require(${JSON.stringify(path.resolve('dist/index.js'))});
    new SocketProxy({ target: ${JSON.stringify(target)}, fds: [3] }).start().then(
      () => { console.log(JSON.stringify({ started: true })); process.exit(0); },
      (e) => { console.log(JSON.stringify({ code: e.code, message: e.message })); process.exit(0); });`;
  const py = `import os, socket\n${make}\nos.dup2(s.fileno(), 3)\nos.set_inheritable(3, True)\nos.execvp(${JSON.stringify(process.execPath)}, ["node", "-e", ${JSON.stringify(script)}])`;
  return JSON.parse(execFileSync('python3', ['-c', py], { encoding: 'utf8', timeout: 20_000 }));
}

test('the library refuses, at start, datagram sockets it could not forward: unbound, UNIX, or towards a UNIX target', { timeout: 60_000 }, async () => {
  const unbound = startOnFd3('s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)', '127.0.0.1:9');
  assert.equal(unbound.code, 'ERR_INVALID_ARG_VALUE', JSON.stringify(unbound));
  assert.match(unbound.message, /not bound/);
  const unixPath = path.join(os.tmpdir(), `socket-proxyd-dgram-${process.pid}.sock`);
  try {
    const unix = startOnFd3(`s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(${JSON.stringify(unixPath)})`, '127.0.0.1:9');
    assert.equal(unix.code, 'ERR_INVALID_ARG_VALUE', JSON.stringify(unix));
    assert.match(unix.message, /only UDP/);
  } finally {
    fs.rmSync(unixPath, { force: true });
  }
  const toUnix = startOnFd3('s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(("127.0.0.1", 0))', '/run/no-such.sock');
  assert.equal(toUnix.code, 'ERR_INVALID_ARG_VALUE', JSON.stringify(toUnix));
  assert.match(toUnix.message, /HOST:PORT target/);
  assert.throws(() => new SocketProxy({ target: '127.0.0.1:9', listen: ['udp:/tmp/x.sock'] }), { code: 'ERR_INVALID_ARG_VALUE' });
});
