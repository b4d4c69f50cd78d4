// Datagram plumbing for the UDP suite and the bench's dns workload: a real DNS server (NSD, run
// in the foreground from a temporary directory with a zone generated here), dig, Node UDP echo
// servers and clients. Nothing here skips: a missing program is a loud error.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { waitFor, within } from './helpers.mjs';

/** Debian packages the datagram tests need, and the programs each must provide. */
export const UDP_TOOLS = [
  ['dig', 'bind9-dnsutils'],
  ['nsd', 'nsd'],
  ['python3', 'python3'],
  ['systemd-socket-activate', 'systemd'],
];

/** Absolute path of `program` on PATH (or /usr/sbin, /sbin), or null. */
export function which(program) {
  const dirs = (process.env.PATH || '').split(':').concat(['/usr/sbin', '/sbin', '/usr/local/sbin']);
  for (const d of dirs) {
    const p = path.join(d, program);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

/** Throws, naming the Debian package, when any program is missing. */
export function requireTools(tools = UDP_TOOLS) {
  const missing = tools.filter(([program]) => !which(program));
  if (missing.length) {
    throw new Error(`missing: ${missing.map(([p, pkg]) => `${p} (apt-get install -y ${pkg})`).join(', ')}; .ci/run installs them`);
  }
}

// ---------------------------------------------------------------------------
// The zone: NAMES names, each with one A record and one TXT record derived from its index, so
// every client can check it got the answer to its own question.

export const ZONE = 'example.test';
export const hostName = (i) => `h${i}.${ZONE}`;
export const hostA = (i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
export const hostTxt = (i) => `answer for host ${i}`;

/** The zone file text for `names` hosts. */
export function zoneText(names) {
  const lines = [
    `$ORIGIN ${ZONE}.`,
    '$TTL 300',
    `@ IN SOA ns.${ZONE}. admin.${ZONE}. 1 3600 600 86400 300`,
    `@ IN NS ns.${ZONE}.`,
    'ns IN A 127.0.0.1',
  ];
  for (let i = 0; i < names; i++) lines.push(`h${i} IN A ${hostA(i)}`, `h${i} IN TXT "${hostTxt(i)}"`);
  return lines.join('\n') + '\n';
}

/**
 * Writes an NSD configuration serving the zone on 127.0.0.1 and ::1 at `port` (UDP and TCP) into
 * `dir`: no privilege drop, no chroot, no database, no remote control, no response rate limit
 * (NSD's default 200 answers/s per /24 would throttle the benchmark), one server process.
 * Returns the argv that runs it in the foreground.
 */
export function nsdConfig(dir, port, { names = 256, ipv6 = true } = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const zoneFile = path.join(dir, `${ZONE}.zone`);
  fs.writeFileSync(zoneFile, zoneText(names));
  const conf = path.join(dir, 'nsd.conf');
  fs.writeFileSync(
    conf,
    `server:
  ip-address: 127.0.0.1
${ipv6 ? '  ip-address: ::1\n' : ''}  port: ${port}
  username: ""
  chroot: ""
  zonesdir: "${dir}"
  pidfile: "${dir}/nsd.pid"
  xfrdfile: "${dir}/xfrd.state"
  zonelistfile: "${dir}/zone.list"
  database: ""
  logfile: "${dir}/nsd.log"
  server-count: 1
  verbosity: 1
  hide-version: yes
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: "${ZONE}"
  zonefile: "${zoneFile}"
`,
  );
  return { conf, zoneFile, argv: [which('nsd') ?? 'nsd', '-d', '-c', conf] };
}

/** A port free for TCP and UDP on 127.0.0.1 and ::1 a moment ago (NSD binds all four). */
export async function freeDualPort() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const u4 = dgram.createSocket('udp4');
    u4.bind(0, '127.0.0.1');
    await once(u4, 'listening');
    const { port } = u4.address();
    const held = [u4];
    try {
      const u6 = dgram.createSocket({ type: 'udp6', ipv6Only: true });
      u6.on('error', () => {});
      u6.bind(port, '::1');
      await once(u6, 'listening');
      held.push(u6);
      for (const host of ['127.0.0.1', '::1']) {
        const t = net.createServer().listen(port, host);
        await once(t, 'listening');
        held.push(t);
      }
      return port;
    } catch {
      // taken for one of them: try another
    } finally {
      for (const s of held) s.close();
    }
  }
  throw new Error('no port free for TCP and UDP on both loopbacks');
}

/**
 * Starts NSD on a fresh port of 127.0.0.1 and ::1 with `names` hosts; resolves once dig gets an
 * answer from it on both. {port, dir, close(), log()}.
 */
export async function startNsd({ names = 256 } = {}) {
  requireTools([['nsd', 'nsd'], ['dig', 'bind9-dnsutils']]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-nsd-'));
  const port = await freeDualPort();
  const { argv } = nsdConfig(dir, port, { names });
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const log = () => `${stderr}${fs.existsSync(path.join(dir, 'nsd.log')) ? fs.readFileSync(path.join(dir, 'nsd.log'), 'utf8') : ''}`;
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await within(exited, 10_000, 'nsd did not stop').catch(() => child.kill('SIGKILL'));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const up = await waitFor(async () => {
    if (child.exitCode !== null) return false;
    const [a, b] = await Promise.all([dig('127.0.0.1', port, hostName(0), 'A', { time: 1 }), dig('::1', port, hostName(0), 'A', { time: 1 })]);
    return a.answers[0] === hostA(0) && b.answers[0] === hostA(0);
  }, 15_000, 100);
  if (!up) {
    const text = log();
    await close();
    throw new Error(`nsd did not answer on port ${port}:\n${text}`);
  }
  return { port, dir, close, log };
}

/**
 * Runs `dig @server -p port name type +short` (one try, `time` seconds); resolves {code, answers
 * (lines of the answer, TXT quotes removed), stdout, stderr}. `extra` are more dig arguments.
 */
export function dig(server, port, name, type = 'A', { time = 5, extra = [] } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn('dig', [`@${server}`, '-p', String(port), name, type, '+short', '+tries=1', `+time=${time}`, ...extra], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', (e) => reject(e.code === 'ENOENT' ? new Error('dig is missing: apt-get install -y bind9-dnsutils') : e));
    child.once('close', (code) => {
      const answers = stdout.split('\n').filter((l) => l && !l.startsWith(';')).map((l) => l.replace(/^"(.*)"$/, '$1'));
      resolve({ code, answers, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------
// Node UDP peers

const familyOf = (host) => (net.isIPv6(host) ? 'udp6' : 'udp4');

/**
 * A UDP echo server on `host` (port 0 unless given) that answers each datagram with `prefix` +
 * the datagram, from the address it was sent to. Records every datagram: {port, target, senders
 * ("addr:port" of each, in order), log ({from, size, text} of each; text for those up to 256
 * bytes), received, close()}.
 */
export async function udpEchoServer(host = '127.0.0.1', { port = 0, prefix = '' } = {}) {
  const socket = dgram.createSocket({ type: familyOf(host), ipv6Only: net.isIPv6(host), recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
  const senders = [];
  const log = [];
  const head = Buffer.from(prefix);
  socket.on('message', (msg, rinfo) => {
    const from = `${rinfo.address}:${rinfo.port}`;
    senders.push(from);
    log.push({ from, size: msg.length, text: msg.length <= 256 ? msg.toString() : null });
    if (!server.silent) socket.send(head.length ? Buffer.concat([head, msg]) : msg, rinfo.port, rinfo.address);
  });
  socket.on('error', () => {});
  socket.bind(port, host);
  await once(socket, 'listening');
  const bound = socket.address().port;
  const server = {
    /** Set: record datagrams without answering them. */
    silent: false,
    port: bound,
    target: net.isIPv6(host) ? `[${host}]:${bound}` : `${host}:${bound}`,
    senders,
    log,
    /** The sender of the datagram whose text was `text` (the last one). */
    from: (text) => log.findLast((e) => e.text === text)?.from,
    get received() {
      return senders.length;
    },
    close: () => new Promise((r) => socket.close(r)),
  };
  return server;
}

/** A UDP client socket bound to an ephemeral port of `host`'s family. */
export async function udpClient(host = '127.0.0.1') {
  const socket = dgram.createSocket({ type: familyOf(host), recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
  socket.on('error', () => {});
  socket.bind(0, net.isIPv6(host) ? '::' : '0.0.0.0');
  await once(socket, 'listening');
  return socket;
}

/**
 * Sends `payload` from `socket` to host:port and resolves the first datagram back ({msg, rinfo});
 * rejects after `ms`. Unconnected on purpose: a reply from a wrong address is shown, not dropped.
 */
export async function udpRequest(socket, payload, port, host = '127.0.0.1', ms = 10_000) {
  let onMessage;
  const reply = new Promise((resolve) => {
    onMessage = (msg, rinfo) => resolve({ msg, rinfo });
    socket.once('message', onMessage);
  });
  socket.send(payload, port, host);
  try {
    return await within(reply, ms, `no reply from ${host}:${port} within ${ms} ms`);
  } finally {
    socket.off('message', onMessage);
  }
}

// ---------------------------------------------------------------------------
// What the kernel says about a process's UDP sockets (/proc/net/udp, /proc/net/udp6)

/** Rows of /proc/net/udp and udp6: {localPort, remotePort, inode}. */
function udpTable() {
  const rows = [];
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    for (const line of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      rows.push({ localPort: parseInt(f[1].split(':')[1], 16), remotePort: parseInt(f[2].split(':')[1], 16), inode: Number(f[9]) });
    }
  }
  return rows;
}

/** True once some UDP socket is bound to `port` (any address). */
export const udpBound = (port) => udpTable().some((r) => r.localPort === port && r.remotePort === 0);

/** Resolves once a UDP socket is bound to `port`; throws after `ms`. */
export async function waitUdpBound(port, ms = 10_000) {
  if (!(await waitFor(() => udpBound(port), ms))) throw new Error(`nothing bound UDP port ${port} within ${ms} ms`);
}

/** How many of process `pid`'s fds are UDP sockets connected to port `remotePort` (its upstream sockets). */
export function udpSocketsTo(pid, remotePort) {
  const inodes = new Set(udpTable().filter((r) => r.remotePort === remotePort).map((r) => r.inode));
  let n = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m && inodes.has(Number(m[1]))) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}
