// Idle-connection holder for scripts/bench.mjs: an upstream that accepts and holds connections, and a
// client that opens N connections through a proxy and keeps them open. Commands arrive as JSON lines on
// stdin, answers go to stdout as JSON lines:
//   {"cmd":"open","port":P,"n":N}  -> {"ok":true,"opened":N,"upstream":N}  once the upstream holds all N
//   {"cmd":"close"}                -> {"ok":true,"upstream":0}              once the upstream holds none
// usage: node idle.mjs   (prints {"port":UPSTREAM_PORT} first)
import net from 'node:net';
import readline from 'node:readline';

const held = new Set();
const upstream = net.createServer((s) => {
  held.add(s);
  s.on('error', () => {});
  s.on('close', () => held.delete(s));
});
upstream.maxConnections = 1e6;
let clients = [];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

function connectOne(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('connect', () => resolve(s));
    s.on('error', () => resolve(null));
  });
}

async function open(port, n) {
  let opened = 0, failed = 0;
  const batch = 100; // at most this many connects in flight
  for (let i = 0; i < n; i += batch) {
    const got = await Promise.all(Array.from({ length: Math.min(batch, n - i) }, () => connectOne(port)));
    for (const s of got) {
      if (s) { clients.push(s); opened++; s.on('error', () => {}); } else failed++;
    }
  }
  const ok = await until(() => held.size >= opened, 30000);
  return { ok, opened, failed, upstream: held.size };
}

async function close() {
  for (const s of clients) s.destroy();
  clients = [];
  const ok = await until(() => held.size === 0, 30000);
  return { ok, upstream: held.size };
}

upstream.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => {
  process.stdout.write(JSON.stringify({ port: upstream.address().port }) + '\n');
});
const rl = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on('line', (line) => {
  const m = JSON.parse(line);
  queue = queue.then(async () => {
    const r = m.cmd === 'open' ? await open(m.port, m.n) : await close();
    process.stdout.write(JSON.stringify(r) + '\n');
  });
});
rl.on('close', () => process.exit(0));
