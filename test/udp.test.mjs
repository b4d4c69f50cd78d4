// Datagram forwarding (issue 10), with real processes and the real kernel: dig (bind9-dnsutils)
// through the socket-activated proxy to NSD serving a generated zone on loopback, IPv4 and IPv6;
// Node UDP peers for what dig cannot show (sizes, counters, sessions, reply addresses). The CLI is
// started as systemd starts it: `systemd-socket-activate --datagram -l ADDR` (it execs the proxy on
// the first datagram, which stays queued for it), or python3 passing several sockets at once
// (activateSockets: systemd-socket-activate applies --datagram to every -l, so a stream and a
// datagram socket together, as one .socket unit with ListenStream= and ListenDatagram= passes
// them, need it).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { SocketProxy } from '../dist/index.js';
import {
  CLI, activate, activateSockets, closed, connectTo, fdCount, notifyReceiver, pattern, sha256, waitFor, within,
} from './helpers.mjs';
import {
  dig, freeDualPort, hostA, hostName, hostTxt, requireTools, startNsd, udpClient, udpEchoServer, udpRequest, udpSocketsTo,
  waitUdpBound,
} from './udp-helpers.mjs';

requireTools(); // dig, nsd, python3, systemd-socket-activate: loudly, never a skip

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-udp-'));
let tmpSeq = 0;
const tmpPath = (name) => path.join(TMP, `${++tmpSeq}-${name}`);

let nsd;
before(async () => {
  nsd = await startNsd({ names: 256 });
});
after(async () => {
  await nsd?.close();
  fs.rmSync(TMP, { recursive: true, force: true });
});

const alive = (child) => child.exitCode === null && child.signalCode === null;
const children = new Set();
after(() => {
  for (const c of children) if (alive(c)) c.kill('SIGKILL');
});

/** The test runner's environment without anything a service manager may have set for it. */
function cleanEnv(extra = {}) {
  const env = { ...process.env };
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'JOURNAL_STREAM']) delete env[k];
  return { ...env, ...extra };
}

/** Lines the proxy wrote (after systemd-socket-activate's own lines). */
const proxyLines = (child) => {
  const all = child.stderrText.split('\n').filter(Boolean);
  const i = all.findIndex((l) => l.startsWith('Execing '));
  return all.slice(i + 1);
};

/**
 * Starts our CLI as systemd does for ListenDatagram=ADDR: `systemd-socket-activate --datagram -l
 * ADDR node bin/socket-proxyd ARGS…` (`extra`: more of its options; the proxy gets only the variables
 * named with -E, as a service gets only its unit's). Resolves {child, port, host} once the socket is bound (the
 * proxy itself is exec'd by the first datagram sent to it).
 */
async function activateDatagram(args, { host = '127.0.0.1', extra = [] } = {}) {
  const port = await freeDualPort();
  const listen = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
  const child = activate(listen, process.execPath, [CLI, ...args], { extra: ['--datagram', ...extra], env: cleanEnv() });
  children.add(child);
  child.exited.catch(() => {});
  const ok = await waitFor(() => /Listening on/.test(child.stderrText) || !alive(child), 10_000);
  if (!ok || !alive(child)) throw new Error(`systemd-socket-activate did not bind ${listen}:\n${child.stderrText}`);
  return { child, port, host };
}

/** The pid of the proxy once systemd-socket-activate exec'd it (same pid, node is the executable). */
async function proxyRunning(child) {
  const node = fs.realpathSync(process.execPath);
  const ok = await waitFor(() => {
    try {
      return fs.readlinkSync(`/proc/${child.pid}/exe`) === node;
    } catch {
      return false;
    }
  }, 15_000);
  if (!ok) throw new Error(`the proxy was not exec'd:\n${child.stderrText}`);
  return child.pid;
}

/** SIGTERMs a child and asserts it exits 0. */
async function stopOk(child) {
  if (alive(child)) child.kill('SIGTERM');
  const r = await within(child.exited, 15_000, `did not stop:\n${child.stderrText}`);
  assert.deepEqual(r, { code: 0, signal: null }, child.stderrText);
}

/** The library proxy on `udp:HOST:0`; runs fn(proxy, port, host), closes it. */
async function withUdpProxy(options, fn, host = '127.0.0.1') {
  const listen = net.isIPv6(host) ? `udp:[${host}]:0` : `udp:${host}:0`;
  const proxy = new SocketProxy({ listen: [listen], workers: 2, ...options });
  await proxy.start();
  try {
    const m = /:(\d+)$/.exec(proxy.listening[0]);
    assert.ok(m, `no port in ${JSON.stringify(proxy.listening)}`);
    return await fn(proxy, Number(m[1]), host);
  } finally {
    await proxy.close();
  }
}

/** Several clients, each its own source port. */
const clients = async (n, host = '127.0.0.1') => Promise.all(Array.from({ length: n }, () => udpClient(host)));
const closeAll = (sockets) => sockets.forEach((s) => s.close());

// ---------------------------------------------------------------------------
// dig through the socket-activated proxy to NSD

test('dig through the socket-activated proxy (ListenDatagram=127.0.0.1:PORT) to NSD: A and TXT answers', async () => {
  const { child, port } = await activateDatagram([`127.0.0.1:${nsd.port}`]);
  try {
    for (const i of [0, 1, 77, 255]) {
      // The first query also starts the proxy (exec'd by that datagram): a generous timeout for it.
      const a = await dig('127.0.0.1', port, hostName(i), 'A', { time: i === 0 ? 15 : 5 });
      assert.equal(a.code, 0, a.stdout + a.stderr);
      assert.deepEqual(a.answers, [hostA(i)]);
      const t = await dig('127.0.0.1', port, hostName(i), 'TXT');
      assert.deepEqual(t.answers, [hostTxt(i)]);
    }
    // A name the zone does not have: NXDOMAIN comes back through the proxy as well.
    const nx = await dig('127.0.0.1', port, 'nope.example.test', 'A', { extra: ['+noshort', '+noall', '+comments'] });
    assert.match(nx.stdout, /status: NXDOMAIN/);
    const exec = proxyLines(child);
    assert.ok(exec.some((l) => /Listening on fd 3/.test(l)), child.stderrText);
    await stopOk(child);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
  }
});

test('dig over IPv6: ListenDatagram=[::1]:PORT to NSD at [::1]:PORT', async () => {
  const { child, port } = await activateDatagram([`[::1]:${nsd.port}`], { host: '::1' });
  try {
    for (const i of [3, 200]) {
      // The first query also starts the proxy (exec'd by that datagram): a generous timeout for it.
      const a = await dig('::1', port, hostName(i), 'A', { time: i === 3 ? 15 : 5 });
      assert.equal(a.code, 0, a.stdout + a.stderr);
      assert.deepEqual(a.answers, [hostA(i)]);
      const t = await dig('::1', port, hostName(i), 'TXT');
      assert.deepEqual(t.answers, [hostTxt(i)]);
    }
    await stopOk(child);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
  }
});

test('50 concurrent dig clients through a hostname target (localhost:PORT): each its own answer and its own upstream socket', async () => {
  const { child, port } = await activateDatagram([`localhost:${nsd.port}`]);
  try {
    // Each dig from its own source address (all of 127.0.0.0/8 is loopback): a dig that has exited
    // frees its random source port, and a later one could get it back and join its session, so
    // distinct ports alone do not make one session each. The first query also starts the proxy
    // (exec'd by that datagram): a generous timeout for it.
    const first = await dig('127.0.0.1', port, hostName(100), 'TXT', { time: 15, extra: ['-b', '127.0.0.2'] });
    assert.deepEqual(first.answers, [hostTxt(100)], first.stdout + first.stderr);
    const pid = await proxyRunning(child);
    const n = 50;
    const results = await Promise.all(Array.from({ length: n }, (_, i) =>
      dig('127.0.0.1', port, hostName(i), i % 2 ? 'TXT' : 'A', { time: 10, extra: ['-b', `127.0.0.${10 + i}`] })));
    results.forEach((r, i) => assert.deepEqual(r.answers, [i % 2 ? hostTxt(i) : hostA(i)], `client ${i}: ${r.stdout}${r.stderr}`));
    // Every dig is its own client (source address and port), so each has its own connected
    // upstream socket, open until --udp-timeout (30 s by default).
    assert.equal(udpSocketsTo(pid, nsd.port), n + 1, 'upstream sockets of the proxy');
    await stopOk(child);
  } finally {
    if (alive(child)) child.kill('SIGKILL');
  }
});

// ---------------------------------------------------------------------------
// Whole datagrams

test('a 60,000-byte datagram and the largest ones (65,507 bytes over IPv4, 65,527 over IPv6) are forwarded whole, both ways', async () => {
  const echo4 = await udpEchoServer('127.0.0.1');
  const echo6 = await udpEchoServer('::1');
  // IPv4: socket-activated. IPv6: bound by the proxy itself (--listen=udp:[::1]:PORT).
  const { child, port } = await activateDatagram([echo4.target]);
  const port6 = await freeDualPort();
  const listener = spawn(process.execPath, [CLI, `--listen=udp:[::1]:${port6}`, echo6.target], { env: cleanEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(listener);
  listener.stderrText = '';
  listener.stderr.on('data', (d) => (listener.stderrText += d));
  listener.exited = new Promise((r) => listener.on('exit', (code, signal) => r({ code, signal })));
  const c4 = await udpClient('127.0.0.1');
  const c6 = await udpClient('::1');
  try {
    for (const [client, host, p, echo, sizes] of [
      [c4, '127.0.0.1', port, echo4, [60_000, 65_507, 1]],
      [c6, '::1', port6, echo6, [60_000, 65_527]],
    ]) {
      if (client === c6) {
        const up = await waitFor(() => /Listening on/.test(listener.stderrText) || !alive(listener), 10_000);
        assert.ok(up && alive(listener), `--listen=udp:[::1]:${port6} did not start:\n${listener.stderrText}`);
      }
      for (const size of sizes) {
        const payload = pattern(size, size);
        const before = echo.received;
        const { msg, rinfo } = await udpRequest(client, payload, p, host, 15_000);
        assert.equal(msg.length, size, `${host}: ${size} bytes sent, ${msg.length} came back`);
        assert.equal(sha256(msg), sha256(payload));
        assert.equal(rinfo.port, p);
        assert.equal(echo.received, before + 1, 'the upstream got it as one datagram');
      }
    }
    await stopOk(child);
    await stopOk(listener);
  } finally {
    c4.close();
    c6.close();
    for (const c of [child, listener]) if (alive(c)) c.kill('SIGKILL');
    await echo4.close();
    await echo6.close();
  }
});

// ---------------------------------------------------------------------------
// Sessions: counters, expiry, the limit (the library, whose stats are read directly)

test('library: 200 concurrent clients each get their own reply; one session each; counters add up; order within a session is kept', async () => {
  const echo = await udpEchoServer('127.0.0.1', { prefix: 'udp:' });
  const socks = await clients(200);
  try {
    await withUdpProxy({ target: echo.target }, async (proxy, port) => {
      const busy = once(proxy, 'busy');
      const replies = await Promise.all(socks.map((s, i) => udpRequest(s, `client ${i}`, port)));
      replies.forEach(({ msg, rinfo }, i) => {
        assert.equal(msg.toString(), `udp:client ${i}`);
        assert.equal(rinfo.port, port);
      });
      await within(busy, 5000, "no 'busy' with sessions open");
      const sent = socks.reduce((n, _, i) => n + `client ${i}`.length, 0);
      const s = proxy.stats;
      assert.equal(s.udpSessions, 200);
      assert.equal(s.udpSessionsOpened, 200);
      assert.equal(s.udpDatagramsToUpstream, 200);
      assert.equal(s.udpDatagramsToClient, 200);
      assert.equal(s.udpBytesToUpstream, sent);
      assert.equal(s.udpBytesToClient, sent + 4 * 200);
      assert.equal(s.udpDropped, 0);
      assert.equal(new Set(echo.senders).size, 200, 'one upstream source port per client');

      // One client, 300 numbered datagrams in bursts of 30: all back, in the order sent.
      const one = socks[0];
      const got = [];
      one.on('message', (m) => got.push(m.toString()));
      for (let burst = 0; burst < 10; burst++) {
        for (let k = 0; k < 30; k++) one.send(`seq ${burst * 30 + k}`, port, '127.0.0.1');
        const ok = await waitFor(() => got.length >= (burst + 1) * 30, 10_000, 5);
        assert.ok(ok, `burst ${burst}: ${got.length} replies of ${(burst + 1) * 30}; stats ${JSON.stringify(proxy.stats)}`);
      }
      assert.deepEqual(got, Array.from({ length: 300 }, (_, i) => `udp:seq ${i}`));
      assert.equal(proxy.stats.udpSessionsOpened, 200, 'the same session carried them');
      assert.equal(new Set(echo.senders).size, 200);
    });
  } finally {
    closeAll(socks);
    await echo.close();
  }
});

test('library: a session with no datagram for udpTimeout ends (udpSessionsExpired), then idle; the client starts a new one', async () => {
  const echo = await udpEchoServer('127.0.0.1');
  const socks = await clients(3);
  try {
    await withUdpProxy({ target: echo.target, udpTimeout: 500 }, async (proxy, port) => {
      const idle = once(proxy, 'idle');
      const t0 = Date.now();
      await Promise.all(socks.map((s, i) => udpRequest(s, `hello ${i}`, port)));
      assert.equal(proxy.stats.udpSessions, 3);
      const gone = await waitFor(() => proxy.stats.udpSessions === 0, 10_000);
      const took = Date.now() - t0;
      assert.ok(gone, `sessions still open: ${JSON.stringify(proxy.stats)}`);
      assert.ok(took >= 450, `expired after ${took} ms (udpTimeout 500)`);
      assert.equal(proxy.stats.udpSessionsExpired, 3);
      assert.equal(proxy.stats.udpSessionsEvicted, 0);
      await within(idle, 5000, "no 'idle' once the sessions expired");
      // Expired means forgotten: the same client gets a new session (and a new upstream socket).
      const { msg } = await udpRequest(socks[0], 'again', port);
      assert.equal(msg.toString(), 'again');
      assert.equal(proxy.stats.udpSessionsOpened, 4);
      assert.equal(new Set(echo.senders).size, 4);
    });
  } finally {
    closeAll(socks);
    await echo.close();
  }
});

test('library: udpSessionsMax=3 — a 4th client evicts the least recently active session (not the first created)', async () => {
  const echo = await udpEchoServer('127.0.0.1');
  const [a, b, c, d] = await clients(4);
  try {
    await withUdpProxy({ target: echo.target, udpSessionsMax: 3 }, async (proxy, port) => {
      // The upstream port the proxy used for a client's datagram: what echo saw last.
      const via = async (client, text) => {
        const { msg } = await udpRequest(client, text, port);
        assert.equal(msg.toString(), text);
        return echo.senders.at(-1);
      };
      // a, b, c, then a again in one burst (one batch for the proxy, one tick of its clock) to an
      // upstream that stays silent (so replies, which count as activity too, cannot reorder
      // them): the order within the tick must hold. Then the echo answers again.
      echo.silent = true;
      for (const [client, text] of [[a, 'a1'], [b, 'b1'], [c, 'c1'], [a, 'a2']]) client.send(text, port, '127.0.0.1');
      assert.ok(await waitFor(() => ['a1', 'b1', 'c1', 'a2'].every((t) => echo.from(t) !== undefined), 10_000), 'the burst did not arrive');
      echo.silent = false;
      const [pa, pb, pc] = ['a1', 'b1', 'c1'].map(echo.from);
      assert.equal(echo.from('a2'), pa, 'a kept its session');
      assert.equal(new Set([pa, pb, pc]).size, 3);
      // A full table: d takes the place of b, the least recently active (a was used after it).
      await via(d, 'd1');
      assert.equal(proxy.stats.udpSessionsEvicted, 1);
      assert.equal(proxy.stats.udpSessions, 3);
      assert.equal(proxy.stats.udpSessionsOpened, 4);
      assert.equal(await via(a, 'a3'), pa, 'a (active recently) was not evicted');
      assert.equal(await via(c, 'c2'), pc, 'c was not evicted');
      assert.equal(proxy.stats.udpSessionsOpened, 4);
      // b was: its next datagram opens a new session (another upstream port), evicting d now.
      assert.notEqual(await via(b, 'b2'), pb, 'b was evicted, so it comes from a new upstream socket');
      assert.equal(proxy.stats.udpSessionsOpened, 5);
      assert.equal(proxy.stats.udpSessionsEvicted, 2);
      assert.equal(proxy.stats.udpSessions, 3);
    });
  } finally {
    closeAll([a, b, c, d]);
    await echo.close();
  }
});

test('library: ICMP port unreachable from the upstream is counted (udpUpstreamRefused); the session lives on and works once the upstream is up', async () => {
  // A UDP port with nothing on it a moment ago.
  const probe = dgram.createSocket('udp4');
  probe.bind(0, '127.0.0.1');
  await once(probe, 'listening');
  const upstreamPort = probe.address().port;
  await new Promise((r) => probe.close(r));
  const client = await udpClient();
  let echo;
  try {
    await withUdpProxy({ target: `127.0.0.1:${upstreamPort}` }, async (proxy, port) => {
      client.send('anyone?', port, '127.0.0.1');
      const counted = await waitFor(() => proxy.stats.udpUpstreamRefused >= 1, 10_000);
      assert.ok(counted, `ICMP refusal not counted: ${JSON.stringify(proxy.stats)}`);
      assert.equal(proxy.stats.udpSessions, 1, 'the session is still open');
      assert.equal(proxy.stats.udpDatagramsToClient, 0);
      // Refused again (the connected socket keeps reporting), still one session.
      client.send('still nobody?', port, '127.0.0.1');
      await waitFor(() => proxy.stats.udpUpstreamRefused >= 2, 10_000);
      echo = await udpEchoServer('127.0.0.1', { port: upstreamPort });
      const { msg } = await udpRequest(client, 'now?', port);
      assert.equal(msg.toString(), 'now?');
      assert.equal(proxy.stats.udpSessionsOpened, 1, 'the same session, not a new one');
      assert.equal(echo.received, 1);
    });
  } finally {
    client.close();
    await echo?.close();
  }
});

// ---------------------------------------------------------------------------
// The daemon: expiry seen from outside, the limit on the command line, both kinds together,
// idle exit, wildcard binds, a bad socket

/** Fields of a notification ("READY=1\nSTATUS=…") as an object. */
const fields = (text) => Object.fromEntries(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));

test('CLI --udp-timeout=2s: sessions end after 2 s without a datagram (upstream sockets closed, fds back, STATUS= shows them open then gone)', async () => {
  const notify = await notifyReceiver(tmpPath('notify.sock'));
  const echo = await udpEchoServer('127.0.0.1');
  const { child, port } = await activateDatagram(['--udp-timeout=2s', echo.target], { extra: ['-E', `NOTIFY_SOCKET=${notify.address}`] });
  const socks = await clients(5);
  try {
    // The first datagram starts the proxy: one session, one upstream socket, until it expires.
    await udpRequest(socks[0], 'wake up', port, '127.0.0.1', 15_000);
    // Timed from before a second request in the same session: its reply, the session's last
    // datagram, comes later, so the session cannot end sooner than 2 s after t1 (the proxy's clock
    // counts whole milliseconds, hence the 5 ms), and not long after 2 s plus that round trip.
    const t1 = Date.now();
    await udpRequest(socks[0], 'still here', port);
    const pid = await proxyRunning(child);
    assert.equal(udpSocketsTo(pid, echo.port), 1);
    assert.ok(await waitFor(() => udpSocketsTo(pid, echo.port) === 0, 15_000), 'the session did not end');
    const took = Date.now() - t1;
    assert.ok(took >= 1995, `the session ended ${took} ms after the request before its last datagram (--udp-timeout=2s)`);
    assert.ok(took < 8000, `the session ended only ${took} ms after the request before its last datagram (--udp-timeout=2s)`);
    const base = await fdCount(pid);

    await Promise.all(socks.map((s, i) => udpRequest(s, `client ${i}`, port)));
    assert.equal(udpSocketsTo(pid, echo.port), 5);
    const open = await notify.wait(/^STATUS=.*\b5 UDP sessions\b/m);
    assert.match(fields(open.text).STATUS, /^Forwarding to /);
    assert.ok(await waitFor(() => udpSocketsTo(pid, echo.port) === 0, 10_000), 'the 5 sessions did not end');
    // At most the count before: Node may have held a short-lived fd of its own when that was taken.
    assert.ok(await waitFor(async () => (await fdCount(pid)) <= base, 5_000), `fds: ${await fdCount(pid)}, ${base} before the sessions`);
    await notify.wait(/^STATUS=.*\b0 UDP sessions\b/m);
    await stopOk(child);
  } finally {
    closeAll(socks);
    if (alive(child)) child.kill('SIGKILL');
    await notify.close();
    await echo.close();
  }
});

test('CLI --udp-sessions-max=2: a 3rd client evicts the oldest session (its upstream socket closes)', async () => {
  const echo = await udpEchoServer('127.0.0.1');
  const { child, port } = await activateDatagram(['--udp-sessions-max=2', echo.target]);
  const [a, b, c] = await clients(3);
  try {
    await udpRequest(a, 'a', port, '127.0.0.1', 15_000);
    const pa = echo.senders.at(-1);
    const pid = await proxyRunning(child);
    await udpRequest(b, 'b', port);
    assert.equal(udpSocketsTo(pid, echo.port), 2);
    await udpRequest(c, 'c', port);
    assert.equal(udpSocketsTo(pid, echo.port), 2, 'still two sessions: one was evicted for the third');
    await udpRequest(b, 'b again', port);
    await udpRequest(c, 'c again', port);
    assert.equal(new Set(echo.senders).size, 3, 'b and c kept their sessions');
    await udpRequest(a, 'a again', port);
    assert.notEqual(echo.senders.at(-1), pa, 'a was evicted: a new upstream socket');
    await stopOk(child);
  } finally {
    closeAll([a, b, c]);
    if (alive(child)) child.kill('SIGKILL');
    await echo.close();
  }
});

/** A TCP echo answering "tcp:" + data and a UDP echo answering "udp:" + datagram, on the same port number. */
async function twinEcho() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = await udpEchoServer('127.0.0.1', { prefix: 'udp:' });
    const tcp = net.createServer((s) => {
      s.on('error', () => {});
      s.on('data', (d) => s.write(`tcp:${d}`));
      s.on('end', () => s.end());
    });
    const ok = await new Promise((resolve) => {
      tcp.once('error', () => resolve(false));
      tcp.listen(udp.port, '127.0.0.1', () => resolve(true));
    });
    if (ok) return { port: udp.port, target: udp.target, udp, close: async () => { await udp.close(); await new Promise((r) => tcp.close(r)); } };
    await udp.close();
  }
  throw new Error('no port free for both TCP and UDP');
}

test('a stream and a datagram socket passed together (ListenStream= + ListenDatagram=): each forwarded by its own kind', async () => {
  const echo = await twinEcho();
  const [tcpPort, udpPort] = [await freeDualPort(), await freeDualPort()];
  const child = activateSockets(
    [
      { type: 'stream', host: '127.0.0.1', port: tcpPort, name: 'rcon' },
      { type: 'dgram', host: '127.0.0.1', port: udpPort, name: 'game' },
    ],
    process.execPath,
    [CLI, echo.target],
    { env: cleanEnv() },
  );
  children.add(child);
  child.exited.catch(() => {});
  const client = await udpClient();
  try {
    await waitUdpBound(udpPort);
    // The datagram socket was bound before the exec: this waits in it until the proxy reads it.
    const { msg } = await udpRequest(client, 'over udp', udpPort, '127.0.0.1', 15_000);
    assert.equal(msg.toString(), 'udp:over udp');
    const s = await connectTo(`127.0.0.1:${tcpPort}`);
    const done = closed(s);
    s.end('over tcp');
    assert.equal((await within(done, 10_000, 'no TCP reply')).data.toString(), 'tcp:over tcp');
    // The startup line reaches stderr through the JS thread, maybe after the replies.
    const line = await waitFor(() => child.stderrText.split('\n').find((l) => /Listening on/.test(l)), 10_000);
    assert.match(line ?? '', /fd 3 "rcon" \(127\.0\.0\.1:\d+\), fd 4 "game" \(127\.0\.0\.1:\d+\)/, child.stderrText);
    await stopOk(child);
  } finally {
    client.close();
    if (alive(child)) child.kill('SIGKILL');
    await echo.close();
  }
});

test('--exit-idle-time=1s with --udp-timeout=2s: no exit while a session is open; exit 0 once it expired', async () => {
  const echo = await udpEchoServer('127.0.0.1');
  const { child, port } = await activateDatagram(['--exit-idle-time=1s', '--udp-timeout=2s', echo.target]);
  const client = await udpClient();
  try {
    await udpRequest(client, 'start', port, '127.0.0.1', 15_000);
    await proxyRunning(child);
    // 3 s of traffic, a datagram every 300 ms: far past --exit-idle-time, the session keeps it up.
    const end = Date.now() + 3000;
    let last = Date.now();
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(alive(child), `exited with a session open:\n${child.stderrText}`);
      // Taken before the request: its reply, the session's last datagram, comes later.
      const sent = Date.now();
      await udpRequest(client, 'still here', port);
      last = sent;
    }
    const r = await within(child.exited, 15_000, `did not exit after the session expired:\n${child.stderrText}`);
    const after = Date.now() - last;
    assert.deepEqual(r, { code: 0, signal: null }, child.stderrText);
    assert.ok(after >= 1750, `exited ${after} ms after the last datagram: the session (2 s) was still open`);
  } finally {
    client.close();
    if (alive(child)) child.kill('SIGKILL');
    await echo.close();
  }
});

test('wildcard binds (0.0.0.0, and [::] dual-stack): the reply comes from the address the client sent to', async () => {
  const echo = await udpEchoServer('127.0.0.1');
  const [p4, p6] = [await freeDualPort(), await freeDualPort()];
  const child = activateSockets(
    [
      { type: 'dgram', host: '0.0.0.0', port: p4 },
      { type: 'dgram', host: '::', port: p6 },
    ],
    process.execPath,
    [CLI, echo.target],
    { env: cleanEnv() },
  );
  children.add(child);
  child.exited.catch(() => {});
  const socks = [];
  const client = async (host) => {
    const s = await udpClient(host);
    socks.push(s);
    return s;
  };
  const roundTrip = async (s, port, to) => {
    const { msg, rinfo } = await udpRequest(s, `to ${to}`, port, to, 15_000);
    assert.equal(msg.toString(), `to ${to}`);
    assert.deepEqual([rinfo.address.replace(/^::ffff:/, ''), rinfo.port], [to, port], `sent to ${to}:${port}, the reply came from another address`);
  };
  try {
    await waitUdpBound(p4);
    await waitUdpBound(p6);
    // A client each: 127.0.0.2 and 127.0.0.1 on 0.0.0.0; 127.0.0.3 (IPv4-mapped) and ::1 on [::].
    await roundTrip(await client('127.0.0.1'), p4, '127.0.0.2');
    await roundTrip(await client('127.0.0.1'), p4, '127.0.0.1');
    await roundTrip(await client('127.0.0.1'), p6, '127.0.0.3');
    await roundTrip(await client('::1'), p6, '::1');
    // dig checks the source of the reply too.
    const port = await freeDualPort();
    const nsdProxy = activateSockets([{ type: 'dgram', host: '0.0.0.0', port }], process.execPath, [CLI, `127.0.0.1:${nsd.port}`], { env: cleanEnv() });
    children.add(nsdProxy);
    nsdProxy.exited.catch(() => {});
    await waitUdpBound(port);
    // The first query to this proxy: a generous timeout while node starts.
    const r = await dig('127.0.0.2', port, hostName(42), 'A', { time: 15 });
    assert.deepEqual(r.answers, [hostA(42)], r.stdout + r.stderr);
    await stopOk(nsdProxy);
    // One client (one source address and port) sending to two addresses of the same socket:
    // each reply from the address that datagram was sent to.
    const both = await client('127.0.0.1');
    await roundTrip(both, p4, '127.0.0.4');
    await roundTrip(both, p4, '127.0.0.5');
    await stopOk(child);
  } finally {
    closeAll(socks);
    if (alive(child)) child.kill('SIGKILL');
    await echo.close();
  }
});

test('a passed datagram socket that is not bound: one error line, exit 1', async () => {
  const child = activateSockets([{ type: 'dgram', host: '127.0.0.1', port: 0, bind: false }], process.execPath, [CLI, '127.0.0.1:9'], { env: cleanEnv() });
  children.add(child);
  const r = await within(child.exited, 15_000, `still running:\n${child.stderrText}`);
  assert.deepEqual(r, { code: 1, signal: null }, child.stderrText);
  const lines = child.stderrText.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, child.stderrText);
  assert.match(lines[0], /fd 3/);
  assert.match(lines[0], /not bound|unbound/i);
});
