// --proxy-protocol=v1|v2 (issue 9): the PROXY protocol header (HAProxy's
// proxy-protocol.txt) sent to the upstream before any client byte. Checked
// against real parsers (nginx's `listen … proxy_protocol` and HAProxy's
// `bind … accept-proxy`, Debian's, run here as child processes), and byte by
// byte by a parser of our own written from the spec; a server that speaks
// first gets the header before the client says anything; bytes after the
// header are exact. The CLI runs as systemd runs it (systemd-socket-activate).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { SocketProxy } from '../dist/index.js';
import {
  CLI, activate, closed, connectTo, freePort, pattern, sha256, stop, tcpListening, waitFor, waitForPort, within,
} from './helpers.mjs';
import { reap } from './fault-helpers.mjs';

const MiB = 1024 * 1024;
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-pp-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));
let seq = 0;
const tmpPath = (name) => path.join(TMP, `${++seq}-${name}`);

// ---------------------------------------------------------------------------
// A PROXY protocol parser of our own, from proxy-protocol.txt

const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const V1_MAX = 107; // "the maximum line lengths the receiver must support including the CRLF"

/** An IPv6 address as 8 full groups ("0:0:0:0:0:0:0:1"), whatever form it came in. */
function expandV6(text) {
  assert.ok(net.isIPv6(text), `not an IPv6 address: ${text}`);
  let groups;
  if (text.includes('::')) {
    const [head, tail] = text.split('::');
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  } else {
    groups = text.split(':');
  }
  return groups.map((g) => parseInt(g, 16).toString(16)).join(':');
}

const v6FromBytes = (b) => Array.from({ length: 8 }, (_, i) => b.readUInt16BE(2 * i).toString(16)).join(':');
const v6ToBytes = (text) => Buffer.from(expandV6(text).split(':').map((g) => g.padStart(4, '0')).join(''), 'hex');
const v4ToBytes = (text) => Buffer.from(text.split('.').map(Number));

/**
 * Parses a PROXY header at the start of `buf`. Returns null while it is
 * incomplete; throws (an assertion) on anything the spec does not allow.
 * Result: {version, command ('PROXY' | 'LOCAL'), family ('TCP4' | 'TCP6' |
 * 'UNKNOWN' | 'UNSPEC'), src, dst (IPv4 dotted, IPv6 expanded), srcPort,
 * dstPort, length (bytes of the header), tlvs}.
 */
function parseProxyHeader(buf) {
  const sigPart = Math.min(buf.length, V2_SIGNATURE.length);
  if (buf.subarray(0, sigPart).equals(V2_SIGNATURE.subarray(0, sigPart)) && sigPart > 0 && buf[0] === 0x0d) {
    if (buf.length < 16) return null;
    const verCmd = buf[12];
    assert.equal(verCmd >> 4, 2, `v2: version nibble ${verCmd >> 4}`);
    const command = { 0: 'LOCAL', 1: 'PROXY' }[verCmd & 0x0f];
    assert.ok(command, `v2: command ${verCmd & 0x0f}`);
    const famByte = buf[13];
    const len = buf.readUInt16BE(14);
    if (buf.length < 16 + len) return null;
    const body = buf.subarray(16, 16 + len);
    let out;
    let addrLen;
    if (famByte === 0x11) {
      addrLen = 12;
      assert.ok(len >= addrLen, `v2 TCP4: length ${len}`);
      out = {
        family: 'TCP4', src: [...body.subarray(0, 4)].join('.'), dst: [...body.subarray(4, 8)].join('.'),
        srcPort: body.readUInt16BE(8), dstPort: body.readUInt16BE(10),
      };
    } else if (famByte === 0x21) {
      addrLen = 36;
      assert.ok(len >= addrLen, `v2 TCP6: length ${len}`);
      out = {
        family: 'TCP6', src: v6FromBytes(body.subarray(0, 16)), dst: v6FromBytes(body.subarray(16, 32)),
        srcPort: body.readUInt16BE(32), dstPort: body.readUInt16BE(34),
      };
    } else {
      assert.equal(famByte, 0x00, `v2: family/transport byte 0x${famByte.toString(16)} (expected TCP4, TCP6 or UNSPEC)`);
      addrLen = len; // UNSPEC: the receiver skips whatever follows
      out = { family: 'UNSPEC' };
    }
    // Whatever follows the addresses is a list of TLVs that exactly fills the length.
    const tlvs = [];
    for (let i = addrLen; i < len;) {
      assert.ok(i + 3 <= len, `v2: truncated TLV at ${i}`);
      const t = body[i];
      const l = body.readUInt16BE(i + 1);
      assert.ok(i + 3 + l <= len, `v2: TLV 0x${t.toString(16)} overruns the header`);
      tlvs.push({ type: t, value: body.subarray(i + 3, i + 3 + l) });
      i += 3 + l;
    }
    return { version: 2, command, ...out, length: 16 + len, tlvs };
  }
  const crlf = buf.indexOf('\r\n');
  if (crlf < 0) {
    assert.ok(buf.length < V1_MAX, `v1: no CRLF within ${V1_MAX} bytes: ${JSON.stringify(buf.subarray(0, V1_MAX).toString('latin1'))}`);
    assert.ok('PROXY '.startsWith(buf.subarray(0, 6).toString('latin1')), `not a PROXY header: ${JSON.stringify(buf.subarray(0, 16).toString('latin1'))}`);
    return null;
  }
  assert.ok(crlf + 2 <= V1_MAX, `v1: line of ${crlf + 2} bytes, more than ${V1_MAX}`);
  const line = buf.subarray(0, crlf).toString('latin1');
  const words = line.split(' ');
  assert.equal(words[0], 'PROXY', `v1: ${JSON.stringify(line)}`);
  if (words[1] === 'UNKNOWN') return { version: 1, command: 'PROXY', family: 'UNKNOWN', length: crlf + 2, line, tlvs: [] };
  assert.equal(words.length, 6, `v1: exactly six words separated by single spaces: ${JSON.stringify(line)}`);
  const [, family, src, dst, sport, dport] = words;
  assert.ok(family === 'TCP4' || family === 'TCP6', `v1: protocol ${family}`);
  const isAddress = family === 'TCP4' ? net.isIPv4 : net.isIPv6;
  for (const a of [src, dst]) assert.ok(isAddress(a), `v1 ${family}: address ${JSON.stringify(a)}`);
  for (const p of [sport, dport]) assert.match(p, /^(0|[1-9][0-9]{0,4})$/, `v1: port ${JSON.stringify(p)}`);
  for (const p of [sport, dport]) assert.ok(Number(p) <= 65535, `v1: port ${p}`);
  const norm = (a) => (family === 'TCP6' ? expandV6(a) : a);
  return {
    version: 1, command: 'PROXY', family, src: norm(src), dst: norm(dst), srcPort: Number(sport), dstPort: Number(dport),
    length: crlf + 2, line, tlvs: [],
  };
}

/** The header the spec prescribes for a TCP connection from src to dst (no TLVs), or for a UNIX client (null). */
function expectedHeader(version, conn) {
  if (version === 1) {
    if (!conn) return Buffer.from('PROXY UNKNOWN\r\n');
    return Buffer.from(`PROXY ${conn.family} ${conn.src} ${conn.dst} ${conn.srcPort} ${conn.dstPort}\r\n`);
  }
  if (!conn) return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  const bytes = conn.family === 'TCP4' ? v4ToBytes : v6ToBytes;
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(conn.srcPort, 0);
  ports.writeUInt16BE(conn.dstPort, 2);
  const addrs = Buffer.concat([bytes(conn.src), bytes(conn.dst), ports]);
  const head = Buffer.from([0x21, conn.family === 'TCP4' ? 0x11 : 0x21, 0, addrs.length]);
  return Buffer.concat([V2_SIGNATURE, head, addrs]);
}

test('our own PROXY parser: accepts the spec\'s examples, rejects malformed headers, waits for incomplete ones', () => {
  const v1 = parseProxyHeader(Buffer.from('PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /'));
  assert.deepEqual({ ...v1, line: undefined }, {
    version: 1, command: 'PROXY', family: 'TCP4', src: '192.168.0.1', dst: '192.168.0.11', srcPort: 56324, dstPort: 443,
    length: 47, line: undefined, tlvs: [],
  });
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP6 ::1 2001:db8::1 1 2\r\n')).dst, '2001:db8:0:0:0:0:0:1');
  assert.equal(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')).family, 'UNKNOWN');
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4')), null);
  assert.equal(parseProxyHeader(V2_SIGNATURE.subarray(0, 7)), null);
  for (const bad of ['PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n', 'PROXY TCP4 ::1 ::1 1 2\r\n', 'PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n', 'PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n', 'GET / HTTP/1.0\r\n']) {
    assert.throws(() => parseProxyHeader(Buffer.from(bad)), undefined, bad);
  }
  const v2 = expectedHeader(2, { family: 'TCP6', src: '::1', dst: 'fe80::2', srcPort: 1, dstPort: 65535 });
  assert.equal(v2.length, 52);
  assert.deepEqual(parseProxyHeader(v2), {
    version: 2, command: 'PROXY', family: 'TCP6', src: '0:0:0:0:0:0:0:1', dst: 'fe80:0:0:0:0:0:0:2', srcPort: 1, dstPort: 65535, length: 52, tlvs: [],
  });
  assert.equal(parseProxyHeader(v2.subarray(0, 40)), null);
  const withTlv = Buffer.concat([expectedHeader(2, { family: 'TCP4', src: '1.2.3.4', dst: '5.6.7.8', srcPort: 1, dstPort: 2 }), Buffer.from([4, 0, 1, 9])]);
  withTlv.writeUInt16BE(16, 14);
  assert.deepEqual(parseProxyHeader(withTlv).tlvs, [{ type: 4, value: Buffer.from([9]) }]);
  const badVersion = Buffer.from(v2);
  badVersion[12] = 0x11;
  assert.throws(() => parseProxyHeader(badVersion));
  assert.deepEqual(parseProxyHeader(expectedHeader(2, null)), { version: 2, command: 'LOCAL', family: 'UNSPEC', length: 16, tlvs: [] });
});

// ---------------------------------------------------------------------------
// The listeners a proxy under test has, and what a client of each should be announced as

/** Listen addresses of every kind: IPv4, IPv6, a dual-stack [::] and a UNIX path. */
async function listenSet() {
  const [p4, p6, pDual] = [await freePort('127.0.0.1'), await freePort('::1'), await freePort('::')];
  return { v4: `127.0.0.1:${p4}`, v6: `[::1]:${p6}`, dual: `[::]:${pDual}`, dualPort: pDual, unix: tmpPath('listen.sock') };
}

/**
 * The clients to run against a listenSet: [label, connect address, what the
 * header must say (null: a UNIX client, unknown/local)].
 */
function clientKinds(l) {
  const port = (a) => Number(a.split(':').pop());
  const tcp = (family, src, dst, listen) => (socket) => ({ family, src, dst, srcPort: socket.localPort, dstPort: port(listen) });
  return [
    ['IPv4 client', l.v4, tcp('TCP4', '127.0.0.1', '127.0.0.1', l.v4)],
    ['IPv6 client', l.v6, tcp('TCP6', '::1', '::1', l.v6)],
    ['IPv4 client of a dual-stack [::] listener (announced as TCP4)', `127.0.0.1:${l.dualPort}`, tcp('TCP4', '127.0.0.1', '127.0.0.1', l.dual)],
    ['IPv6 client of a dual-stack [::] listener', `[::1]:${l.dualPort}`, tcp('TCP6', '::1', '::1', l.dual)],
    ['UNIX-socket client', l.unix, () => null],
  ];
}

/**
 * Runs our CLI under systemd-socket-activate on every address of `l`,
 * forwarding to `target`; resolves once every socket is bound and listening
 * (systemd-socket-activate starts the proxy on the first connection).
 */
async function activateOn(l, args, target) {
  const child = activate([l.v4, l.v6, l.dual, l.unix], process.execPath, [CLI, ...args, target]);
  child.exited.catch(() => {});
  const ports = [l.v4, l.v6, l.dual].map((a) => Number(a.split(':').pop()));
  const up = await Promise.race([
    waitFor(async () => (await Promise.all(ports.map((p) => tcpListening(p)))).every(Boolean) && fs.existsSync(l.unix), 15_000),
    child.exited.then(() => false),
  ]);
  if (!up) {
    await stop(child);
    throw new Error(`systemd-socket-activate did not listen on ${[l.v4, l.v6, l.dual, l.unix]}: ${child.stderrText}`);
  }
  return child;
}

// ---------------------------------------------------------------------------
// nginx and HAProxy as upstreams

/** Runs `command args…` as a child with collected stderr; `exited` resolves {code, signal}. */
function spawnDaemon(command, args) {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderrText = '';
  child.stderr.on('data', (d) => (child.stderrText += d));
  child.exited = new Promise((resolve, reject) => {
    child.once('error', (e) => reject(e.code === 'ENOENT' ? new Error(`${command} is missing: apt-get install -y nginx-light haproxy`) : e));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.exited.catch(() => {});
  return child;
}

async function startedOn(child, port, name) {
  const up = await Promise.race([waitForPort(port, '127.0.0.1', 15_000).then(() => true), child.exited.then(() => false)]);
  if (!up) throw new Error(`${name} did not start: ${child.stderrText}`);
  return { port, child, close: () => reap(child) };
}

/**
 * nginx (http module: nginx-light has no stream module) listening with
 * proxy_protocol; every request is answered with the four addresses it parsed.
 */
async function startNginx() {
  const dir = fs.mkdtempSync(path.join(TMP, 'nginx-'));
  const port = await freePort();
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, `
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid ${dir}/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port} proxy_protocol;
    default_type text/plain;
    location / {
      return 200 "[$proxy_protocol_addr] [$proxy_protocol_port] [$proxy_protocol_server_addr] [$proxy_protocol_server_port]\\n";
    }
  }
}
`);
  return startedOn(spawnDaemon('nginx', ['-p', dir, '-c', conf]), port, 'nginx');
}

/** HAProxy in http mode with accept-proxy; answers src, src_port, dst, dst_port and whether a PROXY header came. */
async function startHaproxy() {
  const dir = fs.mkdtempSync(path.join(TMP, 'haproxy-'));
  const port = await freePort();
  const conf = path.join(dir, 'haproxy.cfg');
  fs.writeFileSync(conf, `
global
  maxconn 256
defaults
  mode http
  timeout client 30s
  timeout server 30s
  timeout connect 5s
frontend fe
  bind 127.0.0.1:${port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "[%[src]] [%[src_port]] [%[dst]] [%[dst_port]] [%[fc_rcvd_proxy]]\\n"
`);
  return startedOn(spawnDaemon('haproxy', ['-db', '-f', conf]), port, 'haproxy');
}

/** One HTTP/1.0 GET on `socket`; resolves the body (after the head), asserting status 200. */
async function httpGet(socket) {
  const done = closed(socket);
  socket.write('GET / HTTP/1.0\r\nHost: test\r\n\r\n');
  const { data, error } = await within(done, 15_000, 'no HTTP answer through the proxy');
  const text = data.toString('latin1');
  assert.match(text, /^HTTP\/1\.[01] 200 /, `answer: ${JSON.stringify(text)} (${error ?? 'no error'})`);
  return text.slice(text.indexOf('\r\n\r\n') + 4).trim();
}

const bracketed = (body) => [...body.matchAll(/\[([^\]]*)\]/g)].map((m) => m[1]);
const canonical = (a) => (net.isIPv6(a) ? expandV6(a) : a);

let nginx;
let haproxy;
before(async () => {
  nginx = await startNginx();
  haproxy = await startHaproxy();
});
after(async () => {
  await nginx?.close();
  await haproxy?.close();
});

for (const parser of ['nginx', 'haproxy']) {
  for (const version of ['v1', 'v2']) {
    test(`--proxy-protocol=${version} to ${parser}: IPv4, IPv6, dual-stack and UNIX-socket clients are announced as they are`, { timeout: 90_000 }, async () => {
      const upstream = parser === 'nginx' ? nginx : haproxy;
      const l = await listenSet();
      const proxy = await activateOn(l, [`--proxy-protocol=${version}`], `127.0.0.1:${upstream.port}`);
      try {
        for (const [label, address, expected] of clientKinds(l)) {
          const socket = await connectTo(address);
          const want = expected(socket);
          const got = bracketed(await httpGet(socket));
          if (want) {
            if (parser === 'nginx') {
              assert.deepEqual(got.map(canonical), [canonical(want.src), String(want.srcPort), canonical(want.dst), String(want.dstPort)], `${label}: nginx parsed ${JSON.stringify(got)}`);
            } else {
              assert.deepEqual(got.map(canonical), [canonical(want.src), String(want.srcPort), canonical(want.dst), String(want.dstPort), '1'], `${label}: haproxy parsed ${JSON.stringify(got)}`);
            }
          } else if (parser === 'nginx') {
            // PROXY UNKNOWN / LOCAL: accepted, and no address at all (nothing made up).
            assert.deepEqual(got, ['', '', '', ''], `${label}: nginx parsed ${JSON.stringify(got)}`);
          } else {
            // HAProxy keeps the connection's own addresses for UNKNOWN / LOCAL: the
            // proxy's real TCP connection to it (127.0.0.1 → its own port), nothing else.
            assert.equal(got.length, 5, JSON.stringify(got));
            assert.equal(got[0], '127.0.0.1', `${label}: src ${got[0]}`);
            assert.equal(got[2], '127.0.0.1', `${label}: dst ${got[2]}`);
            assert.equal(got[3], String(upstream.port), `${label}: dst_port ${got[3]}`);
            assert.equal(got[4], '1', `${label}: HAProxy saw no PROXY header`);
          }
        }
        assert.ok(upstream.child.exitCode === null, `${parser} died: ${upstream.child.stderrText}`);
      } finally {
        await stop(proxy);
      }
    });
  }
}

// ---------------------------------------------------------------------------
// Our own parser on the raw bytes

/**
 * An upstream (in this process) that parses the PROXY header of each
 * connection; `onHeader(socket, header, rest)` is called once it is whole.
 * conns: [{header, rest (Buffer, all bytes after the header so far), socket}].
 */
async function headerServer(onHeader = () => {}, address = '127.0.0.1') {
  const conns = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const conn = { socket, header: null, raw: Buffer.alloc(0), rest: Buffer.alloc(0), error: null, ended: false };
    conns.push(conn);
    socket.on('error', () => {});
    socket.on('end', () => (conn.ended = true));
    socket.on('data', (d) => {
      if (conn.header) {
        conn.rest = Buffer.concat([conn.rest, d]);
        return;
      }
      conn.raw = Buffer.concat([conn.raw, d]);
      try {
        conn.header = parseProxyHeader(conn.raw);
      } catch (e) {
        conn.error = e;
        socket.destroy();
        return;
      }
      if (conn.header) {
        conn.rest = conn.raw.subarray(conn.header.length);
        onHeader(socket, conn.header, conn);
      }
    });
  });
  await new Promise((resolve) => server.listen(0, address, resolve));
  return {
    conns,
    target: `${address}:${server.address().port}`,
    close: () => new Promise((resolve) => {
      for (const c of conns) c.socket.destroy();
      server.close(resolve);
    }),
  };
}

for (const version of ['v1', 'v2']) {
  test(`proxyProtocol '${version}' (library): the raw header is exactly what the spec prescribes, then the client's bytes`, { timeout: 60_000 }, async () => {
    const upstream = await headerServer();
    const l = await listenSet();
    const proxy = new SocketProxy({ target: upstream.target, listen: [l.v4, l.v6, l.dual, l.unix], proxyProtocol: version, workers: 2 });
    await proxy.start();
    try {
      // One client at a time: the n-th client's upstream connection is the n-th one.
      for (const [n, [label, address, expected]] of clientKinds(l).entries()) {
        const socket = await connectTo(address);
        socket.on('error', () => {});
        const want = expected(socket);
        const request = Buffer.from(`hello from the ${label}\n`);
        socket.write(request);
        const conn = await waitFor(() => {
          const c = upstream.conns[n];
          return c && (c.error || c.rest.length >= request.length) ? c : null;
        }, 15_000);
        assert.ok(conn, `${label}: the upstream got no header and request`);
        assert.equal(conn.error, null, `${label}: ${conn.error?.message}; raw ${JSON.stringify(conn.raw.toString('latin1'))}`);
        const h = conn.header;
        assert.equal(h.version, version === 'v1' ? 1 : 2);
        if (want) {
          assert.equal(h.command, 'PROXY', label);
          assert.deepEqual(
            { family: h.family, src: h.src, dst: h.dst, srcPort: h.srcPort, dstPort: h.dstPort },
            { ...want, src: canonical(want.src), dst: canonical(want.dst) }, label);
        } else if (version === 'v1') {
          assert.equal(h.family, 'UNKNOWN', label);
        } else {
          assert.deepEqual([h.command, h.family], ['LOCAL', 'UNSPEC'], label);
        }
        assert.deepEqual(h.tlvs, [], `${label}: no TLVs`);
        // Byte-exact: the header as the spec builds it (for v1 TCP6 the address text
        // may be any valid form; the parser checked the words), then the request.
        if (!(version === 'v1' && want?.family === 'TCP6')) {
          assert.equal(conn.raw.subarray(0, h.length).toString('hex'), expectedHeader(version === 'v1' ? 1 : 2, want).toString('hex'), label);
        }
        assert.equal(conn.rest.toString(), request.toString(), `${label}: the client's bytes right after the header`);
        socket.destroy();
      }
    } finally {
      proxy.close();
      await upstream.close();
    }
  });
}

for (const version of ['v1', 'v2']) {
  test(`--proxy-protocol=${version}: a server that speaks first gets the header though the client has sent nothing`, { timeout: 60_000 }, async () => {
    // Like SMTP: the upstream greets only after the header told it who the client is.
    const upstream = await headerServer((socket, header) => {
      socket.write(`220 hello ${header.family} ${header.src} ${header.srcPort}\r\n`);
    });
    const l = await listenSet();
    const proxy = await activateOn(l, [`--proxy-protocol=${version}`], upstream.target);
    try {
      for (const [label, address, expected] of clientKinds(l).filter(([label]) => /^(IPv4|IPv6) client$/.test(label))) {
        const socket = await connectTo(address);
        const want = expected(socket);
        const greeting = await within(new Promise((resolve, reject) => {
          let got = '';
          socket.on('data', (d) => {
            got += d;
            if (got.includes('\r\n')) resolve(got);
          });
          socket.on('error', reject);
          socket.on('close', () => reject(new Error(`closed; got ${JSON.stringify(got)}`)));
        }), 15_000, `${label}: no greeting: the header did not reach the upstream while the client was silent`);
        assert.equal(greeting, `220 hello ${want.family} ${canonical(want.src)} ${want.srcPort}\r\n`, label);
        const conn = upstream.conns.at(-1);
        assert.equal(conn.rest.length, 0, `${label}: nothing but the header came (the client sent nothing)`);
        // And the conversation goes on: the client's first bytes come after the header.
        socket.write('EHLO client\r\n');
        assert.ok(await waitFor(() => conn.rest.toString() === 'EHLO client\r\n', 10_000), `${label}: upstream got ${JSON.stringify(conn.rest.toString())}`);
        socket.destroy();
      }
    } finally {
      await stop(proxy);
      await upstream.close();
    }
  });
}

for (const [version, size] of [['v1', 8 * MiB], ['v2', 8 * MiB]]) {
  test(`--proxy-protocol=${version}: a bulk transfer after the header (${size / MiB} MiB each way at once) is byte-exact`, { timeout: 120_000 }, async () => {
    const toUpstream = pattern(size, 91);
    const toClient = pattern(size, 92);
    const upstreamHash = createHash('sha256');
    let upstreamBytes = 0;
    let upstreamEnded;
    const upstreamEnd = new Promise((resolve) => (upstreamEnded = resolve));
    const upstream = await headerServer((socket, header, conn) => {
      // Count the bytes after the header (those in the header's packet, then the rest).
      upstreamHash.update(conn.rest);
      upstreamBytes += conn.rest.length;
      socket.removeAllListeners('data');
      socket.on('data', (d) => {
        upstreamHash.update(d);
        upstreamBytes += d.length;
      });
      socket.on('end', () => upstreamEnded());
      socket.end(toClient);
    });
    const l = await listenSet();
    const proxy = await activateOn(l, [`--proxy-protocol=${version}`], upstream.target);
    try {
      const socket = await connectTo(l.v4);
      const clientPort = socket.localPort;
      const reply = closed(socket);
      const wrote = new Promise((resolve) => socket.end(toUpstream, resolve));
      const [{ data, error }] = await within(Promise.all([reply, wrote, upstreamEnd]), 90_000, 'bulk transfer did not finish');
      assert.equal(error, null);
      assert.equal(data.length, toClient.length, 'bytes to the client');
      assert.equal(sha256(data), sha256(toClient), 'content to the client');
      assert.equal(upstreamBytes, toUpstream.length, 'bytes to the upstream after the header');
      assert.equal(upstreamHash.digest('hex'), sha256(toUpstream), 'content to the upstream after the header');
      assert.equal(upstream.conns.length, 1);
      assert.equal(upstream.conns[0].header.srcPort, clientPort);
    } finally {
      await stop(proxy);
      await upstream.close();
    }
  });
}
