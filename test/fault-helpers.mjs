// Plumbing for the fault tests (engine-review.test.mjs): a proxy engine in a
// child process that the test can freeze, trace and inspect; a process that
// holds duplicates of another process's fds; strace fault injection; epoll
// registrations read from /proc. Real processes and the real kernel only.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ROOT, waitFor, within } from './helpers.mjs';

/** Reads lines from a stream and calls `fn` on each complete one. */
function onLines(stream, fn) {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (d) => {
    buffered += d;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      fn(line);
    }
  });
}

/** Spawns a tool; its `exited` rejects loudly (with how to get it) when it is not installed. */
export function spawnTool(command, args, options, hint) {
  const child = spawn(command, args, options);
  child.exited = new Promise((resolve, reject) => {
    child.once('error', (e) => reject(e.code === 'ENOENT' ? new Error(`${command} is missing: ${hint}`) : e));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.exited.catch(() => {});
  return child;
}

const alive = (child) => child.exitCode === null && child.signalCode === null;

/** Ends a child: SIGTERM, then SIGKILL if it has not exited within `ms`. */
export async function reap(child, ms = 5000) {
  if (!child || !alive(child)) return;
  child.kill('SIGTERM');
  try {
    await within(child.exited, ms);
  } catch {
    if (alive(child)) child.kill('SIGKILL');
    await child.exited.catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// The native engine in a child process

const CHILD_SCRIPT = `
const fs = require('fs');
const readline = require('readline');
const { addon } = require(process.argv[1]);
const spec = JSON.parse(process.argv[2]);
const send = (m) => process.stdout.write(JSON.stringify(m) + '\\n');
const epolls = () => fs.readdirSync('/proc/self/fd').filter((fd) => {
  try { return fs.readlinkSync('/proc/self/fd/' + fd) === 'anon_inode:[eventpoll]'; } catch { return false; }
}).map(Number);
const before = new Set(epolls());
const listeners = spec.listen.map((ep) => addon.bindListener(ep, spec.backlog ?? 128));
const options = { listeners, targets: spec.targets, workers: spec.workers ?? 1, logLevel: spec.logLevel ?? 7 };
for (const k of ['connectTimeoutMs', 'maxConnections', 'pipeSize', 'proxyProtocol', 'connectRetryMs', 'idleTimeoutMs', 'keepaliveIdle', 'keepaliveInterval', 'keepaliveCount']) if (spec[k] !== undefined) options[k] = spec[k];
const engine = new addon.Engine(options);
engine.start((kind, level, message) => { if (kind === 1) send({ log: { level, message } }); });
const K = addon.COUNTERS;
const stats = () => Object.fromEntries(Object.entries(K).filter(([k]) => k !== 'firstWorkerPing').map(([k, i]) => [k, Number(engine.counters[i])]));
send({ ready: {
  pid: process.pid,
  epolls: epolls().filter((fd) => !before.has(fd)),
  listeners: listeners.map((fd) => ({ fd, address: addon.inspectFd(fd).address, file: fs.readlinkSync('/proc/self/fd/' + fd) })),
} });
let seq = 0;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const { id, cmd } = JSON.parse(line);
  const reply = (value) => send({ id, value });
  if (cmd === 'stats') return reply(stats());
  if (cmd === 'stopAccepting') { const t = Date.now(); engine.stopAccepting(); return reply({ ms: Date.now() - t }); }
  if (cmd === 'close') { engine.close(); return reply(true); }
  if (cmd === 'ping') {
    const s = ++seq;
    engine.ping(s);
    const poll = () => {
      for (let i = K.firstWorkerPing; i < engine.counters.length; i++) if (engine.counters[i] !== BigInt(s)) return setTimeout(poll, 10);
      reply(true);
    };
    return poll();
  }
  reply({ error: 'unknown command ' + cmd });
});
process.stdin.on('end', () => { engine.close(); process.exit(0); });
`;

/**
 * Runs a native Engine in a child node process (same addon: SOCKET_PROXYD_ADDON
 * is inherited). `spec`: {listen: [NativeEndpoint], targets, workers?, logLevel? (default 7),
 * connectTimeoutMs?, maxConnections?, pipeSize?, backlog?, proxyProtocol?, connectRetryMs?,
 * idleTimeoutMs?, keepaliveIdle?, keepaliveInterval?, keepaliveCount? (seconds)}.
 * Resolves {pid, child, epolls (the engine's epoll fds), listeners [{fd, address, file}],
 * logs [{level, message}], request(cmd), close()}.
 */
export async function engineChild(spec) {
  const native = path.join(ROOT, 'dist', 'native.js');
  const child = spawnTool(process.execPath, ['-e', CHILD_SCRIPT, native, JSON.stringify(spec)], {
    env: process.env,
    stdio: ['pipe', 'pipe', 'pipe'],
  }, 'node');
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const logs = [];
  const pending = new Map();
  let nextId = 0;
  let ready;
  const isReady = new Promise((resolve) => (ready = resolve));
  onLines(child.stdout, (line) => {
    const m = JSON.parse(line);
    if (m.log) logs.push(m.log);
    else if (m.ready) ready(m.ready);
    else if (pending.has(m.id)) {
      pending.get(m.id)(m.value);
      pending.delete(m.id);
    }
  });
  const died = child.exited.then(({ code, signal }) => {
    throw new Error(`engine child exited (${code ?? signal}): ${stderr}`);
  });
  died.catch(() => {});
  const info = await within(Promise.race([isReady, died]), 20_000, `engine child did not start: ${stderr}`);
  const request = (cmd, ms = 30_000) => {
    const id = ++nextId;
    const answer = new Promise((resolve) => pending.set(id, resolve));
    child.stdin.write(`${JSON.stringify({ id, cmd })}\n`);
    return within(Promise.race([answer, died]), ms, `engine child did not answer ${cmd}`);
  };
  return {
    ...info,
    child,
    logs,
    stderr: () => stderr,
    alive: () => alive(child),
    request,
    stats: () => request('stats'),
    /** Closes the engine and lets the child exit (SIGKILL if it does not). */
    close: async () => {
      if (!alive(child)) return;
      child.stdin.end();
      try {
        await within(child.exited, 10_000);
      } catch {
        await reap(child, 100);
      }
    },
  };
}

// ---------------------------------------------------------------------------
// /proc

/** The registrations of an epoll instance: [{tfd, events, data}] from /proc/PID/fdinfo/FD. */
export function epollRegistrations(pid, epfd) {
  const text = fs.readFileSync(`/proc/${pid}/fdinfo/${epfd}`, 'utf8');
  return text
    .split('\n')
    .filter((l) => l.startsWith('tfd:'))
    .map((l) => {
      const m = /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)/.exec(l);
      assert.ok(m, `unexpected fdinfo line: ${l}`);
      return { tfd: Number(m[1]), events: m[2], data: m[3] };
    });
}

/** fd number → link text ("socket:[123]", "pipe:[45]", …) for every open fd of `pid`. */
export function fdLinks(pid) {
  const out = new Map();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(fd), fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** The thread id of the thread named `comm` in process `pid`. */
export function threadId(pid, comm) {
  const tid = fs.readdirSync(`/proc/${pid}/task`).find((t) => {
    try {
      return fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim() === comm;
    } catch {
      return false;
    }
  });
  assert.ok(tid, `no thread named ${comm} in process ${pid}`);
  return Number(tid);
}

/** CPU time (utime + stime, in clock ticks) a process has used so far. */
export function cpuTicks(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Clock ticks per second (USER_HZ): 100 on every Linux ABI this runs on. */
export const TICKS_PER_SECOND = 100;

// ---------------------------------------------------------------------------
// Holding another process's fds: python3 with pidfd_getfd(2)

const HOLDER_SCRIPT = `
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_pidfd_getfd = 438
held = []
print('ready', flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == 'dup':
        pidfd = os.pidfd_open(int(words[1]))
        failed = []
        for w in words[2:]:
            fd = libc.syscall(ctypes.c_long(SYS_pidfd_getfd), ctypes.c_long(pidfd), ctypes.c_long(int(w)), ctypes.c_long(0))
            if fd < 0:
                failed.append(w + '=' + os.strerror(ctypes.get_errno()))
            else:
                held.append(fd)
        os.close(pidfd)
        print('ok', len(held), *failed, flush=True)
    elif words[0] == 'release':
        for fd in held:
            os.close(fd)
        held = []
        print('ok', 0, flush=True)
`;

/**
 * A python3 process that duplicates fds of another process into itself
 * (pidfd_getfd, needs root or ptrace rights) and holds them until released.
 */
export async function fdHolder() {
  const child = spawnTool('python3', ['-c', HOLDER_SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] }, 'apt-get install -y python3 (3.9+)');
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const lines = [];
  const waiting = [];
  onLines(child.stdout, (line) => {
    if (waiting.length) waiting.shift()(line);
    else lines.push(line);
  });
  const nextLine = () =>
    within(
      Promise.race([
        new Promise((resolve) => (lines.length ? resolve(lines.shift()) : waiting.push(resolve))),
        child.exited.then((r) => { throw new Error(`fd holder exited (${r.code ?? r.signal}): ${stderr}`); }),
      ]),
      10_000,
      `fd holder did not answer: ${stderr}`,
    );
  assert.equal(await nextLine(), 'ready');
  let count = 0;
  return {
    held: () => count,
    /** Duplicates fds of `pid`; resolves how many are held now. Throws if any could not be taken. */
    async dup(pid, fds) {
      child.stdin.write(`dup ${pid} ${fds.join(' ')}\n`);
      const [ok, n, ...failed] = (await nextLine()).split(' ');
      assert.equal(ok, 'ok');
      assert.deepEqual(failed, [], `pidfd_getfd failed for ${failed.join(', ')}`);
      count = Number(n);
      return count;
    },
    async release() {
      child.stdin.write('release\n');
      await nextLine();
      count = 0;
    },
    close: async () => {
      child.stdin.end();
      try {
        await within(child.exited, 5000);
      } catch {
        await reap(child, 100);
      }
    },
  };
}

// ---------------------------------------------------------------------------
// Stopping one thread: ptrace from python3

const FREEZE_SCRIPT = `
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
tid = int(sys.argv[1])
def ptrace(request, name):
    if libc.ptrace(request, tid, None, None) != 0:
        sys.exit(name + ': ' + os.strerror(ctypes.get_errno()))
ptrace(0x4206, 'PTRACE_SEIZE')
ptrace(0x4207, 'PTRACE_INTERRUPT')
os.waitpid(tid, 0x40000000)  # __WALL: the thread has stopped
print('stopped', time.time() * 1000, flush=True)
sys.stdin.readline()  # until told (or until the test goes away)
before = time.time() * 1000
ptrace(17, 'PTRACE_DETACH')
print('resumed', before, flush=True)
`;

/**
 * Stops thread `comm` of `pid` with ptrace until resume() is called. Resolves
 * once the thread is stopped: {stoppedAt, resume() (resolves once it runs again), close()};
 * after resume(), resumedAt. Both are the ptrace helper's own clock (ms since the epoch),
 * taken once the thread had stopped and just before it was let go.
 */
export async function freezeThread(pid, comm) {
  const tid = threadId(pid, comm);
  const child = spawnTool('python3', ['-c', FREEZE_SCRIPT, String(tid)], { stdio: ['pipe', 'pipe', 'pipe'] }, 'apt-get install -y python3');
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const line = (word) => new RegExp(`^${word} ([0-9.]+)\n`, 'm').exec(out);
  const saw = (word) =>
    Promise.race([
      waitFor(() => line(word), 15_000, 10),
      child.exited.then(() => line(word)),
    ]).then((ok) => assert.ok(ok, `ptrace helper: no "${word}" (${err})`));
  const stamp = (word) => Number(line(word)[1]);
  await saw('stopped');
  return {
    tid,
    stoppedAt: stamp('stopped'),
    resumedAt: undefined,
    async resume() {
      child.stdin.end();
      await saw('resumed');
      this.resumedAt = stamp('resumed');
    },
    close: async () => {
      child.stdin.end();
      await reap(child);
    },
  };
}

// ---------------------------------------------------------------------------
// strace fault injection

/** The thread ids of every forwarding thread (proxyd-wrk0, proxyd-wrk1, …) of `pid`. */
export function workerThreadIds(pid) {
  const tids = fs.readdirSync(`/proc/${pid}/task`).filter((t) => {
    try {
      return /^proxyd-wrk\d+$/.test(fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim());
    } catch {
      return false;
    }
  }).map(Number);
  assert.ok(tids.length > 0, `no proxyd-wrk thread in process ${pid}`);
  return tids;
}

/**
 * Attaches strace to thread ids `tids` (not following new threads) with the
 * given -e options; resolves once attached. output() is what strace logged
 * (one line per traced syscall, "(INJECTED)" marks an injected fault); stop()
 * detaches.
 */
export async function straceAttach(tids, eArgs) {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-strace-')), 'trace');
  const args = ['-o', out, ...eArgs.flatMap((e) => ['-e', e]), ...tids.flatMap((t) => ['-p', String(t)])];
  const child = spawnTool('strace', args, { stdio: ['ignore', 'ignore', 'pipe'] }, 'apt-get install -y strace');
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const attached = () => tids.every((t) => stderr.includes(`Process ${t} attached`));
  const ok = await Promise.race([waitFor(attached, 15_000, 10), child.exited.then(() => false)]);
  if (!ok) {
    await reap(child);
    throw new Error(`strace did not attach: ${stderr}`);
  }
  const output = () => {
    try {
      return fs.readFileSync(out, 'utf8');
    } catch {
      return '';
    }
  };
  return {
    output,
    stop: async () => {
      await reap(child);
      const text = output();
      fs.rmSync(path.dirname(out), { recursive: true, force: true });
      return text;
    },
  };
}

// ---------------------------------------------------------------------------
// Upstreams that never answer

/**
 * A TCP port on 127.0.0.1 that answers nothing: a listener with backlog 0
 * (never accepted) whose accept queue is full, so further SYNs are dropped
 * and a connect to it stays in progress until it times out.
 */
export async function blackhole() {
  const { addon } = await import('../dist/native.js');
  const net = await import('node:net');
  const fd = addon.bindListener({ host: '127.0.0.1', port: 0 }, 0);
  const port = Number(addon.inspectFd(fd).address.split(':').pop());
  const fillers = [];
  const tryConnect = (ms) =>
    new Promise((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.on('error', () => {});
      fillers.push(s);
      const timer = setTimeout(() => resolve(false), ms);
      s.once('connect', () => { clearTimeout(timer); resolve(true); });
    });
  let filled = false;
  for (let i = 0; i < 8 && !filled; i++) filled = !(await tryConnect(300));
  assert.ok(filled, `could not fill the accept queue of 127.0.0.1:${port}: cannot test a connect timeout`);
  let open = true;
  return {
    port,
    target: `127.0.0.1:${port}`,
    endpoint: { host: '127.0.0.1', port },
    close() {
      if (!open) return;
      open = false;
      for (const s of fillers) s.destroy();
      addon.closeFd(fd);
    },
  };
}

// ---------------------------------------------------------------------------
// An upstream that holds bytes back

const HOLDING_ECHO_SCRIPT = `
import faulthandler, os, selectors, signal, socket, sys
faulthandler.register(signal.SIGUSR1)  # a stack dump on stderr, for a test that finds it stuck
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(4096)
srv.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ, 'accept')
sel.register(0, selectors.EVENT_READ, 'stdin')
conns = {}  # socket -> [bytes to echo (bytearray), saw its end]
echo_buffer = int(sys.argv[2])  # reads stop while this much waits to be echoed
going = False
accepted = 0
print('listening', flush=True)
def arm(c):
    out, eof = conns[c]
    if eof and not out:
        c.shutdown(socket.SHUT_WR)  # everything echoed, and read to its end: a clean close
        sel.unregister(c)
        c.close()
        del conns[c]
        return
    ev = 0
    if going and not eof and len(out) < echo_buffer:
        ev |= selectors.EVENT_READ
    if out:
        ev |= selectors.EVENT_WRITE
    try:
        if ev:
            sel.modify(c, ev) if sel.get_map().get(c) else sel.register(c, ev)
        elif sel.get_map().get(c):
            sel.unregister(c)
    except KeyError:
        sel.register(c, ev)
while True:
    for key, mask in sel.select():
        if key.data == 'accept':
            while True:
                try:
                    c, _ = srv.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                conns[c] = [bytearray(), False]
                accepted += 1
                arm(c)
                print('accepted', accepted, flush=True)
        elif key.data == 'stdin':
            d = os.read(0, 4096)
            if not d:
                sys.exit(0)
            if b'go' in d and not going:
                going = True
                for c in list(conns):
                    arm(c)
                print('going', flush=True)
        else:
            c = key.fileobj
            st = conns[c]
            try:
                if mask & selectors.EVENT_READ:
                    d = c.recv(262144)
                    if d:
                        st[0] += d
                    else:
                        st[1] = True
                if mask & selectors.EVENT_WRITE and st[0]:
                    n = c.send(st[0])
                    del st[0][:n]
            except BlockingIOError:
                pass
            except OSError:
                sel.unregister(c)
                c.close()
                del conns[c]
                continue
            arm(c)
`;

/**
 * An echo upstream (python3, on a UNIX socket path) that reads nothing until
 * go(). A UNIX stream socket buffers only its sender's SO_SNDBUF (about
 * 200 KiB, no autotuning), so a connection sending a few hundred KiB more
 * than that keeps bytes in the proxy (in a pipe) until then. Each connection
 * echoes what it reads and half-closes at its end; it stops reading while
 * `echoBuffer` bytes wait to be echoed (like a blocking echo server, with a
 * small one).
 */
export async function holdingEchoServer({ echoBuffer = 1 << 20 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-hold-'));
  const sock = path.join(dir, 'upstream.sock');
  const child = spawnTool('python3', ['-c', HOLDING_ECHO_SCRIPT, sock, String(echoBuffer)], { stdio: ['pipe', 'pipe', 'pipe'] }, 'apt-get install -y python3');
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  let listening = false;
  let accepted = 0;
  let going = false;
  onLines(child.stdout, (line) => {
    const [word, n] = line.split(' ');
    if (word === 'listening') listening = true;
    if (word === 'accepted') accepted = Number(n);
    if (word === 'going') going = true;
  });
  const up = await Promise.race([waitFor(() => listening, 10_000, 10), child.exited.then(() => false)]);
  assert.ok(up, `holding echo server did not start: ${stderr}`);
  return {
    target: sock,
    accepted: () => accepted,
    async go() {
      child.stdin.write('go\n');
      if (!(await waitFor(() => going, 10_000, 10))) {
        child.kill('SIGUSR1');
        await waitFor(() => stderr.includes('File'), 2000, 10);
        assert.fail(`holding echo server did not go (${accepted} accepted): ${stderr}`);
      }
    },
    close: async () => {
      child.stdin.end();
      await reap(child, 2000);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------
// A client that tells a reset from an end

const READER_SCRIPT = `
import errno, hashlib, json, socket, sys, time
host, port, text, half_close, ticks, tick_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == '1', int(sys.argv[5]), int(sys.argv[6])
c = socket.create_connection((host, port))
t0 = time.monotonic()
print(json.dumps({'connected': c.getsockname()[1]}), flush=True)
h = hashlib.sha256()
n = 0
outcome = 'EOF'
class Ended(Exception):
    pass
def read_until(want):
    global n
    while n < want:
        d = c.recv(262144)
        if not d:
            raise Ended()
        n += len(d)
        h.update(d)
try:
    c.sendall(text.encode())
    if half_close:
        c.shutdown(socket.SHUT_WR)
    if ticks:
        # Busy: one byte every tick_ms, each echoed before the next; then a close of our own.
        want = len(text)
        read_until(want)
        for i in range(ticks):
            time.sleep(tick_ms / 1000)
            c.sendall(b'.')
            want += 1
            read_until(want)
        outcome = 'ALIVE'
    else:
        while True:
            d = c.recv(262144)
            if not d:
                break
            n += len(d)
            h.update(d)
except Ended:
    outcome = 'EOF'
except OSError as e:
    outcome = errno.errorcode.get(e.errno, str(e.errno))
ms = (time.monotonic() - t0) * 1000
print(json.dumps({'outcome': outcome, 'bytes': n, 'sha256': h.hexdigest(), 'ms': ms}), flush=True)
`;

/**
 * Starts resetAwareClient's python3 client and returns at once: {child,
 * connected (resolves the client's local port once connected), result
 * (resolves like resetAwareClient)}. `wrapper` is an argv prefix (e.g. a
 * network namespace's `ip netns exec NAME`).
 */
export function resetAwareClientProcess(host, port, text, { halfClose = false, ticks = 0, tickMs = 200, wrapper = [], timeoutMs = 30_000 } = {}) {
  const argv = [...wrapper, 'python3', '-c', READER_SCRIPT, host, String(port), text, halfClose ? '1' : '0', String(ticks), String(tickMs)];
  const child = spawnTool(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }, 'apt-get install -y python3');
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const messages = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const connected = Promise.race([
    waitFor(() => messages().find((m) => 'connected' in m), timeoutMs, 10),
    child.exited.then(() => messages().find((m) => 'connected' in m)),
  ]).then((m) => {
    if (!m) throw new Error(`the python client did not connect to ${host}:${port}: ${err}`);
    return m.connected;
  });
  connected.catch(() => {});
  const result = within(child.exited, timeoutMs, 'the python client did not finish').then(({ code }) => {
    assert.equal(code, 0, `python client failed: ${err}`);
    return messages().find((m) => 'outcome' in m);
  });
  result.catch(() => {});
  return { child, connected, result };
}

/**
 * Connects to host:port with python3, sends `text`, reads until the end or an
 * error. Resolves {outcome: 'EOF' | 'ECONNRESET' | …, bytes, sha256, ms (from
 * connect to the end)}.
 * (A Node client cannot tell: libuv reports a reset that arrives while bytes
 * are still queued as a clean end, uv__stream_io's POLLHUP short cut.)
 * Options: halfClose (shut down the sending side after `text`); ticks and
 * tickMs (busy: after the echo of `text`, send one byte every tickMs, each
 * echoed before the next, `ticks` times, then close: outcome 'ALIVE' when
 * all went through); wrapper (argv prefix); timeoutMs.
 */
export async function resetAwareClient(host, port, text, options = {}) {
  return resetAwareClientProcess(host, port, text, options).result;
}

// ---------------------------------------------------------------------------
// An echo upstream that tells how each connection ended

const OUTCOME_ECHO_SCRIPT = `
import errno, json, select, socket, sys, threading, time
host, half_open = sys.argv[1], sys.argv[2]  # '': never; '*': always; else a prefix of the first bytes
srv = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, int(sys.argv[3])))
srv.listen(128)
lock = threading.Lock()
def say(**m):
    with lock:
        print(json.dumps(m), flush=True)
say(listening=srv.getsockname()[1])
def serve(c, peer):
    n = 0
    first = b''
    outcome = 'EOF'
    try:
        while True:
            d = c.recv(262144)
            if not d:
                break
            if len(first) < 64:
                first = (first + d)[:64]
            n += len(d)
            c.sendall(d)
            say(received=peer, first=first.decode('latin-1'), bytes=n)
        if half_open == '*' or (half_open and first.startswith(half_open.encode())):
            # The client's end came; ours is never sent: wait for a reset (POLLERR/POLLHUP).
            p = select.poll()
            p.register(c, select.POLLERR | select.POLLHUP)
            while not p.poll(1000):
                pass
            err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            outcome = errno.errorcode.get(err, str(err)) if err else 'HUP'
        else:
            c.shutdown(socket.SHUT_WR)
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
    say(closed=peer, first=first.decode('latin-1'), outcome=outcome, bytes=n, t=time.monotonic())
    c.close()
while True:
    c, a = srv.accept()
    say(accepted=a[1])
    threading.Thread(target=serve, args=(c, a[1]), daemon=True).start()
`;

/**
 * An echo upstream (python3, one thread per connection) that reports how each
 * connection ended: 'EOF', 'ECONNRESET', … (Node cannot always tell a reset
 * from an end, see resetAwareClient). With halfOpen it never ends its own
 * side after the client's end (the connection stays half-closed until reset);
 * halfOpen may be a string: only connections whose first bytes start with it.
 * Listens on host:port (port 0: any; `wrapper` an argv prefix, e.g. `ip netns
 * exec NAME`). Resolves {port, target, ended (list of {first (the first 64
 * bytes it read), outcome, bytes}), received(first) (resolves once a
 * connection whose first bytes start with `first` was read from),
 * end(first, ms) (resolves that connection's end), close()}.
 */
export async function outcomeEchoServer({ host = '127.0.0.1', port = 0, halfOpen = false, wrapper = [] } = {}) {
  const mode = halfOpen === true ? '*' : halfOpen || '';
  const argv = [...wrapper, 'python3', '-c', OUTCOME_ECHO_SCRIPT, host, mode, String(port)];
  const child = spawnTool(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }, 'apt-get install -y python3');
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const events = [];
  onLines(child.stdout, (line) => events.push({ ...JSON.parse(line), at: Date.now() }));
  const listening = await Promise.race([
    waitFor(() => events.find((e) => 'listening' in e), 10_000, 10),
    child.exited.then(() => null),
  ]);
  assert.ok(listening, `outcome echo server did not listen: ${stderr}`);
  const find = async (key, first, ms) => {
    const e = await Promise.race([
      waitFor(() => events.find((x) => key in x && x.first.startsWith(first)), ms, 10),
      child.exited.then(() => null),
    ]);
    assert.ok(e, `upstream: no ${key} event for a connection starting with ${JSON.stringify(first)} within ${ms} ms (${stderr})`);
    return e;
  };
  return {
    port: listening.listening,
    target: `${host.includes(':') ? `[${host}]` : host}:${listening.listening}`,
    events,
    ended: () => events.filter((e) => 'closed' in e),
    accepted: () => events.filter((e) => 'accepted' in e).length,
    received: (first, ms = 15_000) => find('received', first, ms),
    end: (first, ms = 15_000) => find('closed', first, ms),
    close: () => reap(child, 2000),
  };
}

// ---------------------------------------------------------------------------
// Socket options of another process's sockets: python3 with pidfd_getfd(2)

const SOCKOPTS_SCRIPT = `
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = int(sys.argv[1])
pidfd = os.pidfd_open(pid)
out = []
for name in os.listdir('/proc/%d/fd' % pid):
    try:
        if not os.readlink('/proc/%d/fd/%s' % (pid, name)).startswith('socket:'):
            continue
    except OSError:
        continue
    fd = libc.syscall(ctypes.c_long(438), ctypes.c_long(pidfd), ctypes.c_long(int(name)), ctypes.c_long(0))
    if fd < 0:
        continue
    s = socket.socket(fileno=fd)
    try:
        if s.type != socket.SOCK_STREAM or s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            continue
        o = {'fd': int(name), 'family': {socket.AF_INET: 'inet', socket.AF_INET6: 'inet6', socket.AF_UNIX: 'unix'}.get(s.family, str(s.family))}
        try:
            local, peer = s.getsockname(), s.getpeername()
        except OSError:
            continue
        o['keepalive'] = s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if s.family == socket.AF_UNIX:
            o['local'], o['peer'] = str(local), str(peer)
        else:
            o['local'], o['peer'] = [local[0], local[1]], [peer[0], peer[1]]
            o['keepidle'] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            o['keepintvl'] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            o['keepcnt'] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            o['user_timeout'] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        out.append(o)
    finally:
        s.close()  # our duplicate only
print(json.dumps(out))
`;

/**
 * The connected stream sockets of process `pid` (duplicated with
 * pidfd_getfd, needs root): [{fd, family ('inet' | 'inet6' | 'unix'), local,
 * peer ([address, port] or a path), keepalive (SO_KEEPALIVE), and for TCP
 * keepidle, keepintvl, keepcnt (s) and user_timeout (ms)}].
 */
export async function socketOptions(pid) {
  const child = spawnTool('python3', ['-c', SOCKOPTS_SCRIPT, String(pid)], { stdio: ['ignore', 'pipe', 'pipe'] }, 'apt-get install -y python3 (3.9+)');
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const { code } = await within(child.exited, 15_000, 'the socket inspector did not finish');
  assert.equal(code, 0, `socket inspector failed: ${err}`);
  return JSON.parse(out);
}

// ---------------------------------------------------------------------------
// A pair of network namespaces joined by a veth link

/** Runs a command to completion; throws with its stderr when it fails. */
async function run(argv) {
  const child = spawnTool(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] }, 'apt-get install -y iproute2');
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const { code } = await within(child.exited, 15_000, `${argv.join(' ')} did not finish`);
  if (code !== 0) throw new Error(`${argv.join(' ')} failed (${code}): ${err}`);
}

let netnsSeq = 0;

/**
 * Two fresh network namespaces, "a" and "b", joined by a veth pair: a has
 * 10.203.9.1/24 on its end, b has 10.203.9.2/24; both have lo up. Nothing
 * outside them changes (needs root). Returns {a, b, close()}, each side
 * {name, address, dev, exec (an argv prefix that runs a command in it),
 * run(...argv) (runs a command in it to completion)}; plus cut(side) (that
 * side's link goes down: the other end sees no carrier and nothing passes).
 * (Loss, rate limits, delay and reordering: test/network-faults.test.mjs; the
 * kernel here has no sch_netem.) close() deletes both namespaces (and so the link and every socket there).
 */
export async function netnsPair() {
  const tag = `${process.pid % 100000}-${++netnsSeq}`;
  const mk = (letter, address) => {
    const name = `sp-${letter}-${tag}`;
    const exec = ['ip', 'netns', 'exec', name];
    return { name, address, dev: `veth-${letter}`, exec, run: (...argv) => run([...exec, ...argv]) };
  };
  const a = mk('a', '10.203.9.1');
  const b = mk('b', '10.203.9.2');
  const made = [];
  const close = async () => {
    for (const ns of made.splice(0)) await run(['ip', 'netns', 'del', ns]).catch(() => {});
  };
  try {
    for (const side of [a, b]) {
      await run(['ip', 'netns', 'add', side.name]);
      made.push(side.name);
      await side.run('ip', 'link', 'set', 'lo', 'up');
    }
    await a.run('ip', 'link', 'add', a.dev, 'type', 'veth', 'peer', 'name', b.dev, 'netns', b.name);
    for (const side of [a, b]) {
      await side.run('ip', 'addr', 'add', `${side.address}/24`, 'dev', side.dev);
      await side.run('ip', 'link', 'set', side.dev, 'up');
    }
  } catch (e) {
    await close();
    throw e;
  }
  return {
    a,
    b,
    cut: (side) => side.run('ip', 'link', 'set', side.dev, 'down'),
    close,
  };
}
