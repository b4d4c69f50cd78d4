// Plumbing for the lifecycle tests: bursts of short connections, a port
// check, child Node processes running the library.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';
import { ROOT, connectOptions, waitFor } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { addon } = require(path.join(ROOT, 'dist', 'native.js'));

/** The engine's busyPeriods counter (times the active count left 0), read from native memory. */
export function busyPeriods(proxy) {
  return Number(proxy.counters[addon.COUNTERS.busyPeriods]);
}

/** Resolves true if nothing holds host:port (we could listen on it), false on EADDRINUSE. */
export function portIsFree(port, host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (e) => (e.code === 'EADDRINUSE' ? resolve(false) : reject(e)));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** Opens a connection to `address` and closes it as soon as it connects; resolves true if it connected. */
export function touch(address) {
  return new Promise((resolve) => {
    const socket = net.connect(connectOptions(address));
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * `clients` loops at once, each opening and at once closing `each`
 * connections to `address`, one after the other. Resolves how many connected.
 */
export async function burst(address, { clients = 8, each = 50 } = {}) {
  let connected = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      for (let i = 0; i < each; i++) if (await touch(address)) connected++;
    }),
  );
  return connected;
}

/**
 * Runs `source` (an ES module, as a string) in a child Node process; the
 * child prints lines on stdout. Returns the child with `lines` (what it
 * printed so far), `exited` ({code, signal}) and waitLine(re, ms).
 */
export function nodeChild(source) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.out = '';
  child.err = '';
  child.stdout.on('data', (d) => (child.out += d));
  child.stderr.on('data', (d) => (child.err += d));
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.waitLine = async (re, ms = 10_000) => {
    const line = await waitFor(() => child.out.split('\n').find((l) => re.test(l)), ms);
    if (!line) throw new Error(`child printed no line matching ${re}; stdout:\n${child.out}\nstderr:\n${child.err}`);
    return line;
  };
  return child;
}

/** The dist/ entry point, for nodeChild() sources. */
export const DIST_INDEX = path.join(ROOT, 'dist', 'index.js');
