// The command line, run as a real process: --help, --version, bad inputs
// (compared with systemd-socket-proxyd where it has the same option), the
// target syntaxes it accepts; and the systemd.time(7) span grammar, checked
// against systemd-analyze (the same parser systemd's tools use).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';
import { CLI, REFERENCE, ROOT, echoServer, freePort, within } from './helpers.mjs';

const require = createRequire(import.meta.url);
const timespan = require(path.join(ROOT, 'dist', 'timespan.js'));

/** Runs a program to completion; {code, signal, stdout, stderr}. */
function runSync(command, args, { env = {}, timeout = 15000 } = {}) {
  const base = { ...process.env };
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'NOTIFY_SOCKET', 'JOURNAL_STREAM', 'SYSTEMD_LOG_LEVEL']) delete base[k];
  const r = spawnSync(command, args, { env: { ...base, ...env }, encoding: 'utf8', timeout });
  if (r.error) throw r.error; // a missing program fails loudly
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const cli = (args, options) => runSync(process.execPath, [CLI, ...args], options);
const reference = (args, options) => runSync(REFERENCE, args, options);

/** Stderr as lines (a trailing newline ends the last one). */
const lines = (text) => text.split('\n').filter((l, i, all) => !(l === '' && i === all.length - 1));

// ---------------------------------------------------------------------------
// --help and --version

/** The long options declared in OPTIONS of src/options.ts, and their short forms. */
function declaredOptions() {
  const source = fs.readFileSync(path.join(ROOT, 'src', 'options.ts'), 'utf8');
  const block = /const OPTIONS[^=]*=\s*\[([\s\S]*?)\n\];/.exec(source);
  assert.ok(block, 'OPTIONS array not found in src/options.ts');
  const specs = [...block[1].matchAll(/\{\s*long:\s*'([^']+)'(?:,\s*short:\s*'([^']+)')?/g)].map((m) => ({ long: m[1], short: m[2] }));
  assert.ok(specs.length >= 4, `too few options parsed from src/options.ts: ${JSON.stringify(specs)}`);
  return specs;
}

test('--help lists every option, on stdout, and exits 0', () => {
  for (const flag of ['--help', '-h']) {
    const r = cli([flag]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    for (const { long, short } of declaredOptions()) {
      assert.match(r.stdout, new RegExp(`--${long}\\b`), `--${long} missing from ${flag}`);
      if (short) assert.match(r.stdout, new RegExp(`(^|\\s)-${short}\\s`, 'm'), `-${short} missing from ${flag}`);
    }
    // Every option systemd-socket-proxyd's own --help names is there too.
    const theirs = reference(['--help']);
    assert.equal(theirs.code, 0);
    for (const m of theirs.stdout.matchAll(/\s(--[a-z-]+)/g)) assert.ok(r.stdout.includes(m[1]), `${m[1]} missing`);
  }
  // --help wins even with a target and other options around it, as getopt stops there.
  const r = cli(['-c', '5', '127.0.0.1:80', '--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--connections-max/);
});

test('--version prints the package version and exits 0', () => {
  const { version } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const r = cli(['--version']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.equal(lines(r.stdout).length, 1);
  assert.ok(r.stdout.includes(version), `"${r.stdout}" lacks ${version}`);
});

test('--help and --version into a full disk or a closed pipe: exit 0, no crash', async () => {
  for (const flag of ['--help', '--version']) {
    const full = fs.openSync('/dev/full', 'w');
    try {
      const r = spawnSync(process.execPath, [CLI, flag], { stdio: ['ignore', full, 'pipe'], encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '');
    } finally {
      fs.closeSync(full);
    }
    // A reader that is gone before anything is written (like `| true`).
    const child = spawn(process.execPath, [CLI, flag], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const [code, signal] = await once(child, 'exit');
    assert.deepEqual({ code, signal, stderr }, { code: 0, signal: null, stderr: '' });
  }
});

test('a bad command line under the journal (JOURNAL_STREAM names stderr) is logged as an error: <3>', () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'socket-proxyd-cli-')), 'stderr');
  try {
    for (const [argv, line] of [[['-c', '0', '127.0.0.1:80'], 'Connection limit is too low.'], [['--exit-idle-time=5x', 'x:1'], 'Failed to parse --exit-idle-time= argument: 5x']]) {
      const fd = fs.openSync(file, 'w');
      const st = fs.fstatSync(fd, { bigint: true });
      const r = spawnSync(process.execPath, [CLI, ...argv], { stdio: ['ignore', 'ignore', fd], env: { ...process.env, JOURNAL_STREAM: `${st.dev}:${st.ino}` } });
      fs.closeSync(fd);
      assert.equal(r.status, 1);
      assert.equal(fs.readFileSync(file, 'utf8'), `<3>${line}\n`);
    }
  } finally {
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// Bad command lines: exactly one line on stderr, exit status 1.

const BAD = [
  // [argv, expected message, also run the reference?]
  [[], /^Not enough parameters\.$/, true],
  [['127.0.0.1:80', '127.0.0.1:81'], /^Too many parameters\.$/, true],
  [['--bogus', '127.0.0.1:80'], /unrecognized option '--bogus'/, true],
  [['-x', '127.0.0.1:80'], /invalid option -- 'x'/, true],
  [['127.0.0.1:80', '-c'], /option requires an argument -- 'c'/, true],
  [['-c', '0', '127.0.0.1:80'], /^Connection limit is too low\.$/, true],
  [['--connections-max=0', '127.0.0.1:80'], /^Connection limit is too low\.$/, true],
  [['-c', 'garbage', '127.0.0.1:80'], /^Failed to parse --connections-max= argument: garbage$/, true],
  [['-c', '-5', '127.0.0.1:80'], /^Failed to parse --connections-max= argument: -5$/, true],
  [['--exit-idle-time=5x', '127.0.0.1:80'], /^Failed to parse --exit-idle-time= argument: 5x$/, true],
  [['--exit-idle-time', 'garbage', '127.0.0.1:80'], /^Failed to parse --exit-idle-time= argument: garbage$/, true],
  [['--version=1'], /doesn't allow an argument/, true],
  // Our extensions.
  [['--listen=nonsense', '127.0.0.1:80'], /^Failed to parse --listen= argument: .*nonsense/, false],
  [['--listen=127.0.0.1:99999', '127.0.0.1:80'], /^Failed to parse --listen= argument: .*99999/, false],
  [['--listen=127.0.0.1:http', '127.0.0.1:80'], /^Failed to parse --listen= argument: .*http/, false],
  [['--listen=', '127.0.0.1:80'], /^Failed to parse --listen= argument/, false],
  [['--drain-timeout=soon', '127.0.0.1:80'], /^Failed to parse --drain-timeout= argument: soon$/, false],
  [['--resolve-interval=0', '127.0.0.1:80'], /--resolve-interval=.*0/, false],
  [['--connect-timeout=infinity', '127.0.0.1:80'], /--connect-timeout=.*infinity/, false],
  [['--log-level=chatty', '127.0.0.1:80'], /^Failed to parse --log-level= argument: chatty$/, false],
  [['--workers=0', '127.0.0.1:80'], /--workers=.*0/, false],
  [['--workers=lots', '127.0.0.1:80'], /^Failed to parse --workers= argument: lots$/, false],
  // Issue 9's options.
  [['--proxy-protocol=v3', '127.0.0.1:80'], /^Failed to parse --proxy-protocol= argument.*: v3$/, false],
  [['--proxy-protocol=V1', '127.0.0.1:80'], /^Failed to parse --proxy-protocol= argument.*: V1$/, false],
  [['--proxy-protocol=', '127.0.0.1:80'], /^Failed to parse --proxy-protocol= argument/, false],
  [['--connect-retry=soon', '127.0.0.1:80'], /^Failed to parse --connect-retry= argument: soon$/, false],
  [['--connect-retry=-1s', '127.0.0.1:80'], /^Failed to parse --connect-retry= argument: -1s$/, false],
  [['--connect-retry=infinity', '127.0.0.1:80'], /--connect-retry=.*infinity/, false],
  [['--idle-timeout=x', '127.0.0.1:80'], /^Failed to parse --idle-timeout= argument: x$/, false],
  [['--idle-timeout=5parsecs', '127.0.0.1:80'], /^Failed to parse --idle-timeout= argument: 5parsecs$/, false],
  [['--user-timeout=soon', '127.0.0.1:80'], /^Failed to parse --user-timeout= argument: soon$/, false],
  [['--udp-timeout=infinity', '127.0.0.1:80'], /--udp-timeout= must be finite: infinity/, false],
  [['--udp-sessions-max=0', '127.0.0.1:80'], /--udp-sessions-max= must be at least 1: 0/, false],
  [['--listen=udp:/run/x.sock', '127.0.0.1:80'], /^Failed to parse --listen= argument: a UDP address needs HOST:PORT/, false],
  [['--keepalive=', '127.0.0.1:80'], /^Failed to parse --keepalive= argument/, false],
  [['--keepalive=fast', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: fast$/, false],
  [['--keepalive=0', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 0$/, false],
  [['--keepalive=infinity', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: infinity$/, false],
  [['--keepalive=10s,0', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 10s,0$/, false],
  [['--keepalive=10s,1s,0', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 10s,1s,0$/, false],
  [['--keepalive=10s,1s,128', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 10s,1s,128$/, false],
  [['--keepalive=10s,1s,1.5', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 10s,1s,1\.5$/, false],
  [['--keepalive=40000s', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 40000s$/, false],
  [['--keepalive=10s,1s,2,3', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 10s,1s,2,3$/, false],
  [['--keepalive=10s,,3', '127.0.0.1:80'], /^Failed to parse --keepalive= argument.*: 10s,,3$/, false],
  // Targets that can never work.
  [['127.0.0.1:notaport'], /^Failed to parse target "127\.0\.0\.1:notaport"/, false],
  [['127.0.0.1:70000'], /^Failed to parse target "127\.0\.0\.1:70000"/, false],
  [['127.0.0.1:0'], /^Failed to parse target "127\.0\.0\.1:0"/, false],
  [[':80'], /^Failed to parse target ":80"/, false],
  [['[::1'], /^Failed to parse target "\[::1"/, false],
  [['[::1]x'], /^Failed to parse target "\[::1\]x"/, false],
  [['[not-ipv6]:80'], /^Failed to parse target "\[not-ipv6\]:80"/, false],
  [['@'], /^Failed to parse target "@"/, false],
  [[''], /^Failed to parse target ""/, false],
];

for (const [argv, message, compare] of BAD) {
  test(`bad command line ${JSON.stringify(argv)}: one line, exit 1`, () => {
    const r = cli(argv);
    assert.equal(r.code, 1, `exit status for ${JSON.stringify(argv)}; stderr: ${r.stderr}`);
    assert.equal(r.stdout, '');
    const out = lines(r.stderr);
    assert.equal(out.length, 1, `expected one line, got ${JSON.stringify(r.stderr)}`);
    assert.match(out[0], message);
    if (compare) {
      // The reference says the same (getopt's complaints name the program, which differs).
      const ref = reference(argv);
      assert.equal(ref.code, 1, `reference exit status for ${JSON.stringify(argv)}: ${ref.stderr}`);
      const refLines = lines(ref.stderr);
      assert.equal(refLines.length, 1, `reference said ${JSON.stringify(ref.stderr)}`);
      const strip = (l) => l.replace(/^[^:]*(socket-proxyd): /, '');
      assert.equal(strip(out[0]), strip(refLines[0]));
    }
  });
}

// ---------------------------------------------------------------------------
// Good targets: accepted; the startup line names what the proxy forwards to.

/** Starts the CLI with --listen on a free port; resolves {child, port, line} once it logged its startup line. */
async function startListening(args) {
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, `--listen=127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = once(child, 'exit');
  const line = await within(
    new Promise((resolve, reject) => {
      const check = () => {
        const m = /^Listening on .*$/m.exec(stderr);
        if (m) resolve(m[0]);
      };
      child.stderr.on('data', check);
      exited.then(([code]) => reject(new Error(`exited with ${code}: ${stderr}`)));
    }),
    10000,
    'no startup line',
  );
  return { child, port, line, exited, stderr: () => stderr };
}

async function stopChild(s) {
  s.child.kill('SIGTERM');
  const [code, signal] = await s.exited;
  assert.equal(signal, null);
  assert.equal(code, 0, s.stderr());
}

test('HOST without a port means port 80', async () => {
  const s = await startListening(['localhost']);
  try {
    assert.match(s.line, /forwarding to localhost:80\.$/);
  } finally {
    await stopChild(s);
  }
});

test('[::1]:PORT and ::1:PORT are both accepted and forward to ::1', async () => {
  const upstream = await echoServer('::1');
  try {
    for (const target of [`[::1]:${upstream.port}`, `::1:${upstream.port}`]) {
      const s = await startListening([target]);
      try {
        assert.match(s.line, new RegExp(`forwarding to \\[::1\\]:${upstream.port}\\.$`));
        const net = await import('node:net');
        const c = net.connect({ port: s.port, host: '127.0.0.1' });
        c.end('over v6');
        const chunks = [];
        c.on('data', (d) => chunks.push(d));
        await within(once(c, 'end'), 10000, `no echo through ${target}`);
        assert.equal(Buffer.concat(chunks).toString(), 'over v6');
      } finally {
        await stopChild(s);
      }
    }
  } finally {
    await upstream.close();
  }
});

test('issue 9\'s options take good values (both option forms, systemd.time spans) and the proxy forwards with them', async () => {
  const upstream = await echoServer();
  try {
    for (const args of [
      ['--idle-timeout=5min', '--keepalive=60s', '--connect-retry=500ms'],
      ['--idle-timeout', 'infinity', '--keepalive', '2s,1s,2', '--connect-retry', '0'],
      ['--idle-timeout=0', '--keepalive=1min 30s,10s', '--connect-retry=1h'],
      ['--user-timeout=5min', '--udp-timeout=10s', '--udp-sessions-max=10'],
    ]) {
      const s = await startListening([...args, upstream.target]);
      try {
        const net = await import('node:net');
        const c = net.connect({ port: s.port, host: '127.0.0.1' });
        c.end('with options');
        const chunks = [];
        c.on('data', (d) => chunks.push(d));
        await within(once(c, 'end'), 10000, `no echo with ${args.join(' ')}`);
        assert.equal(Buffer.concat(chunks).toString(), 'with options', args.join(' '));
      } finally {
        await stopChild(s);
      }
    }
  } finally {
    await upstream.close();
  }
});

test('the reference accepts ::1:PORT too, and options after the target (getopt permutes)', () => {
  // Without sockets both get as far as the activation check: the command line was fine.
  for (const argv of [['::1:8080'], ['127.0.0.1:8080', '-c', '3'], ['-c5', 'localhost'], ['--exit-idle-time=5min 20s', '/run/x.sock'], ['--', '@abstract']]) {
    for (const r of [cli(argv), reference(argv)]) {
      assert.equal(r.code, 1);
      assert.deepEqual(lines(r.stderr), ["Didn't get any sockets passed in."], JSON.stringify(argv));
    }
  }
  // Abbreviated long options, as getopt_long allows.
  const r = cli(['--conn=2', '--exit-idle=1s', '127.0.0.1:80']);
  assert.deepEqual(lines(r.stderr), ["Didn't get any sockets passed in."]);
});

// ---------------------------------------------------------------------------
// systemd.time(7) spans (dist/timespan.js)

const { parseTimespan, USEC_INFINITY } = timespan;
const S = 1_000_000n;

test('timespan: unitless seconds, combinations, fractions, infinity', () => {
  assert.equal(parseTimespan('5'), 5n * S);
  assert.equal(parseTimespan('0'), 0n);
  assert.equal(parseTimespan(' 7 '), 7n * S);
  assert.equal(parseTimespan('1.5'), 1_500_000n);
  assert.equal(parseTimespan('5min 20s'), 320n * S);
  assert.equal(parseTimespan('1h30m'), 5400n * S);
  assert.equal(parseTimespan('1h 30min 5s 20ms'), 5405n * S + 20_000n);
  assert.equal(parseTimespan('1.5s'), 1_500_000n);
  assert.equal(parseTimespan('0.25 min'), 15n * S);
  assert.equal(parseTimespan('infinity'), USEC_INFINITY);
  assert.equal(parseTimespan('  infinity  '), USEC_INFINITY);
});

test('timespan: every unit spelling', () => {
  const units = {
    usec: 1n, us: 1n, 'µs': 1n, 'μs': 1n,
    msec: 1000n, ms: 1000n,
    s: S, sec: S, second: S, seconds: S,
    m: 60n * S, min: 60n * S, minute: 60n * S, minutes: 60n * S,
    h: 3600n * S, hr: 3600n * S, hour: 3600n * S, hours: 3600n * S,
    d: 86400n * S, day: 86400n * S, days: 86400n * S,
    w: 604800n * S, week: 604800n * S, weeks: 604800n * S,
    M: 2_629_800n * S, month: 2_629_800n * S, months: 2_629_800n * S,
    y: 31_557_600n * S, year: 31_557_600n * S, years: 31_557_600n * S,
  };
  for (const [unit, usec] of Object.entries(units)) {
    assert.equal(parseTimespan(`3${unit}`), 3n * usec, `3${unit}`);
    assert.equal(parseTimespan(`3 ${unit}`), 3n * usec, `3 ${unit}`);
  }
});

test('timespan: garbage is rejected', () => {
  for (const bad of ['', ' ', 'x', '5x', 'abc', 's', '-1', '-0', '-5s', '1.2.3', '3.', '3.s', '5min x', 'infinityx', 'infinity 5s', '1 2 3 q', '5 lightyears', '99999999999999999999', '0x10']) {
    assert.throws(() => parseTimespan(bad), { name: 'TimespanError' }, JSON.stringify(bad));
  }
});

test('timespan: agrees with systemd-analyze timespan', () => {
  const inputs = ['5', '5min 20s', '1h30m', '1.5s', '1.5', 'infinity', '2M', '1y', '3 weeks 2d', '5s3', '12.34 .56', '+5s', ' 7 ', '10 µs', '10μs', '1.000001s',
    '5x', 'x', '3.', '', '-0', '1 2 q', '1min1', '0.5ms'];
  for (const input of inputs) {
    const r = runSync('systemd-analyze', ['timespan', '--', input]);
    const m = /μs: (\d+)/.exec(r.stdout);
    if (r.code === 0 && m) {
      assert.equal(parseTimespan(input), BigInt(m[1]), JSON.stringify(input));
    } else {
      assert.notEqual(r.code, 0, `systemd-analyze: ${r.stdout}${r.stderr}`);
      assert.throws(() => parseTimespan(input), { name: 'TimespanError' }, `${JSON.stringify(input)} (systemd-analyze refuses it)`);
    }
  }
});
