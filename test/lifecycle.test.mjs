// SocketProxy's lifecycle, in-process, with real sockets and threads: 'busy'
// and 'idle' from the busyPeriods counter, drain(), option checks before
// anything is bound, start()/close() races, errors with a .code, ref/unref.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SocketProxy, parseAddress } from '../dist/index.js';
import {
  closed, connectTo, echoServer, fdCount, freePort, taskCount, waitFor, within,
} from './helpers.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-lifecycle-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** Sends `text` through `address`, half-closes, resolves what came back. */
async function roundTrip(address, text) {
  const socket = await connectTo(address);
  const done = closed(socket);
  socket.end(text);
  return (await within(done, 10_000, `no reply through ${address}`)).data.toString();
}

/** Counts 'busy' and 'idle' events, and checks they alternate (busy first). */
function countActivity(proxy) {
  const counts = { busy: 0, idle: 0, outOfOrder: 0 };
  proxy.on('busy', () => {
    if (counts.busy !== counts.idle) counts.outOfOrder++;
    counts.busy++;
  });
  proxy.on('idle', () => {
    counts.idle++;
    if (counts.busy !== counts.idle) counts.outOfOrder++;
  });
  return counts;
}

/** The fd and thread counts of this process, once what measuring them uses is warm. */
async function baseline() {
  await fdCount();
  await taskCount();
  return { fds: await fdCount(), tasks: await taskCount() };
}

/** Waits until the fd and thread counts are back at `base`; asserts they are. */
async function assertBackTo(base, what) {
  await waitFor(async () => (await fdCount()) === base.fds && (await taskCount()) === base.tasks, 5_000);
  assert.deepEqual({ fds: await fdCount(), tasks: await taskCount() }, base, `${what}: fds and threads left behind`);
}

// ---------------------------------------------------------------------------
// Parsed addresses and setters

test('target and listen as parsed Address objects forward like their strings', async () => {
  const upstream = await echoServer();
  const unixPath = path.join(tmp, 'listen.sock');
  try {
    const proxy = new SocketProxy({
      target: parseAddress(upstream.target),
      listen: [parseAddress('127.0.0.1:0', undefined, true), { kind: 'unix', path: unixPath }],
      workers: 1,
    });
    await proxy.start();
    try {
      assert.deepEqual(proxy.target, { kind: 'inet', host: '127.0.0.1', port: upstream.port });
      assert.equal(proxy.listening[1], unixPath);
      assert.equal(await roundTrip(proxy.listening[0], 'tcp'), 'tcp');
      assert.equal(await roundTrip(unixPath, 'unix'), 'unix');
    } finally {
      proxy.close();
    }
  } finally {
    await upstream.close();
  }
});

