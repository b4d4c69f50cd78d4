// Plumbing for the lifecycle tests: bursts of short connections, a port
// check, a supervisor that restarts the CLI like systemd does, child Node
// processes running the library.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';
import { CLI, ROOT, connectOptions, waitFor } from './helpers.mjs';

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

// A service manager in miniature: it binds 127.0.0.1:PORT once and keeps the
// listening socket for its whole life; each time the proxy exits it starts
// it again with the socket as fd 3 (LISTEN_FDS=1, LISTEN_PID = the child's
// pid, set between fork and exec as systemd does). A client that arrives
// while no proxy runs waits in the backlog for the next one. Prints
// "listening PORT", then "exit STATUS SIGNAL" per exit; stops at SIGTERM
// (killing the running proxy) or after `maxRuns` runs.
const SUPERVISOR = `
import os, signal, socket, sys
max_runs = int(sys.argv[1])
argv = sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(('127.0.0.1', 0))
s.listen(4096)
print('listening', s.getsockname()[1], flush=True)
child = 0
def stop(signum, frame):
    if child:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
for run in range(max_runs):
    child = os.fork()
    if child == 0:
        if s.fileno() == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(s.fileno(), 3)
        os.environ['LISTEN_FDS'] = '1'
        os.environ['LISTEN_PID'] = str(os.getpid())
        os.execvp(argv[0], argv)
    _, status = os.waitpid(child, 0)
    child = 0
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    print('exit', code, sig, flush=True)
`;

/**
 * Starts the supervisor around our CLI with `args`. Resolves {port, exits
 * (array of {code, signal}), stop(), stderr()} once it listens.
 */
export async function supervise(args, { maxRuns = 100_000, env = {} } = {}) {
  const child = spawn('python3', ['-c', SUPERVISOR, String(maxRuns), process.execPath, CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const exits = [];
  let port = null;
  let buffered = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buffered += d;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const [word, a, b] = buffered.slice(0, nl).split(' ');
      buffered = buffered.slice(nl + 1);
      if (word === 'listening') port = Number(a);
      if (word === 'exit') exits.push({ code: Number(a), signal: Number(b) });
    }
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  if (!(await waitFor(() => port !== null, 10_000))) {
    child.kill('SIGKILL');
    throw new Error(`supervisor did not listen: ${stderr}`);
  }
  return {
    port,
    exits,
    stderr: () => stderr,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * Sends `text` to 127.0.0.1:`port`, half-closes and resolves what came back
 * before the end of stream, or `error CODE` if the connection failed.
 */
export function request(port, text, timeoutMs = 60_000) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    const chunks = [];
    const timer = setTimeout(() => {
      socket.destroy();
      resolve('error timeout');
    }, timeoutMs);
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', (e) => {
      clearTimeout(timer);
      resolve(`error ${e.code}`);
    });
    socket.on('end', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString());
    });
    socket.end(text);
  });
}
