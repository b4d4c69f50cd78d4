// Property-based tests (fast-check) of what parses user input: time spans against systemd-analyze as the
// oracle, target and --listen addresses, whole command lines (in-process, then the real CLI for a
// sample), and LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES. Each run draws new inputs from a seed that is
// printed (PROPERTY_SEED=… reproduces a run); inputs that once found a bug are ordinary tests in
// found-by-properties.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import fc from 'fast-check';
import { CLI, ROOT, activateNow, echoServer, exchange, connect, freePort, waitFor, within } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { parseTimespan, formatTimespan, TimespanError, USEC_INFINITY } = require(path.join(ROOT, 'dist', 'timespan.js'));
const { parseAddress, parseListenAddress, formatAddress } = require(path.join(ROOT, 'dist', 'target.js'));
const { parseCommandLine, UsageError, PROGRAM } = require(path.join(ROOT, 'dist', 'options.js'));
const { listenFds, ActivationError } = require(path.join(ROOT, 'dist', 'activation.js'));

const SEED = process.env.PROPERTY_SEED ? Number(process.env.PROPERTY_SEED) : Date.now() % 2 ** 31;
const runs = (numRuns) => ({ seed: SEED, numRuns, endOnFailure: false });
const seedNote = `PROPERTY_SEED=${SEED}`;

/** Runs a command to completion without blocking the event loop; {code, stdout, stderr}. */
function run(command, args, { env = process.env, timeout = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.once('error', (e) => reject(e.code === 'ENOENT' ? new Error(`${command} is missing`) : e));
    // 'close', not 'exit': only then has all of stdout and stderr been read.
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** `tasks` (functions returning promises) run `width` at a time; resolves their results in order. */
async function pool(tasks, width) {
  const results = new Array(tasks.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]();
    }
  }));
  return results;
}

/** A clean environment for the CLI: no activation or journal variables from whoever runs the tests. */
function cleanEnv(extra = {}) {
  const env = { ...process.env };
  for (const k of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'JOURNAL_STREAM', 'SYSTEMD_LOG_LEVEL']) delete env[k];
  return { ...env, ...extra };
}

// ---------------------------------------------------------------------------------------------------
// Time spans: ours against systemd-analyze timespan (parse_time() with seconds as the default unit).

const UNITS = ['usec', 'us', 'µs', 'μs', 'msec', 'ms', 's', 'sec', 'second', 'seconds', 'm', 'min', 'minute', 'minutes',
  'h', 'hr', 'hour', 'hours', 'd', 'day', 'days', 'w', 'week', 'weeks', 'M', 'month', 'months', 'y', 'year', 'years'];
const NEAR_UNITS = ['', '', '', 'mins', 'secs', 'msecs', 'usecs', 'hrs', 'Min', 'S', 'H', 'D', 'W', 'Y', 'ns', 'x', 'sx', 'mo', 'yr', 'µ', '.', 'infinity'];
// Where overflow checks bite: 2^63 (strtoll), USEC_INFINITY / multiplier for each unit, and around them.
const BOUNDARIES = [2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n,
  ...[1n, 1000n, 1000000n, 60000000n, 3600000000n, 86400000000n, 604800000000n, 2629800000000n, 31557600000000n]
    .map((m) => (2n ** 64n - 1n) / m)];

const digitString = (min, max) => fc.array(fc.constantFrom(...'0123456789'), { minLength: min, maxLength: max }).map((a) => a.join(''));
const number = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 100_000 }).map(String) },
  { weight: 2, arbitrary: fc.tuple(digitString(0, 4), digitString(0, 8)).map(([a, b]) => `${a}.${b}`) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...BOUNDARIES), fc.integer({ min: -2, max: 2 })).map(([b, d]) => String(b + BigInt(d))) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('+', '-', '0', '00', '+0', '.'), fc.integer({ min: 0, max: 999 })).map(([p, n]) => `${p}${n}`) },
  { weight: 1, arbitrary: digitString(1, 25) },
);
const space = fc.constantFrom('', '', '', ' ', '  ', '\t', '\n');
const unit = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...UNITS) }, { weight: 2, arbitrary: fc.constantFrom(...NEAR_UNITS) });
const term = fc.tuple(number, space, unit, space).map((parts) => parts.join(''));
const wellFormed = fc.tuple(space, fc.array(term, { minLength: 1, maxLength: 4 })).map(([s, t]) => s + t.join(''));
const junk = fc.array(fc.constantFrom(...'0123456789 .+-smhdwyMuµμinfty\t'), { maxLength: 12 }).map((a) => a.join(''));
const infinityish = fc.tuple(space, fc.constantFrom('infinity', 'Infinity', 'infinit', 'infinity5', 'infinity s', '5 infinity', 'infinityinfinity'), space)
  .map((p) => p.join(''));
const spanText = fc.oneof({ weight: 7, arbitrary: wellFormed }, { weight: 2, arbitrary: junk }, { weight: 1, arbitrary: infinityish });

/**
 * systemd-analyze's verdict on each span: {usec} or {error: 'invalid' | 'range'}. It parses its
 * arguments in order and stops at the first it refuses, so each call settles everything up to and
 * including the first refused span.
 */
async function oracle(spans) {
  const verdicts = new Array(spans.length);
  // Several chains at once: each settles its own slice.
  const width = 4;
  const size = Math.ceil(spans.length / width);
  await Promise.all(Array.from({ length: width }, async (_, k) => {
    const slice = spans.slice(k * size, (k + 1) * size);
    if (slice.length === 0) return;
    const sub = await oracleChain(slice);
    sub.forEach((v, i) => (verdicts[k * size + i] = v));
  }));
  return verdicts;

  async function oracleChain(list) {
    const out = new Array(list.length);
    for (let from = 0; from !== null && from < list.length; ) {
      const r = await run('systemd-analyze', ['timespan', '--', ...list.slice(from)]);
      const values = [...r.stdout.matchAll(/^ {6}μs: (\d+)$/gm)].map((m) => ({ usec: BigInt(m[1]) }));
      values.forEach((v, i) => (out[from + i] = v));
      const at = from + values.length;
      if (r.code === 0) {
        assert.equal(at, list.length, `systemd-analyze printed ${values.length} values for ${list.length - from} spans`);
        break;
      }
      const m = /Failed to parse time span '[\s\S]*?': (Invalid argument|Numerical result out of range)/.exec(r.stderr);
      assert.ok(m && at < list.length, `systemd-analyze failed in an unexpected way (exit ${r.code}, ${values.length} values, next ${JSON.stringify(list[at])}): ${r.stderr}${r.stdout.slice(-300)}`);
      out[at] = { error: m[1] === 'Invalid argument' ? 'invalid' : 'range' };
      from = at + 1;
    }
    return out;
  }
}

/** One span through systemd-analyze, for inputs the batch did not cover (fast-check's shrinking). */
function oracleOne(span) {
  const r = spawnSync('systemd-analyze', ['timespan', '--', span], { encoding: 'utf8' });
  if (r.error) throw r.error;
  const v = /^ {6}μs: (\d+)$/m.exec(r.stdout);
  if (r.status === 0 && v) return { usec: BigInt(v[1]) };
  return { error: /Numerical result out of range/.test(r.stderr) ? 'range' : 'invalid' };
}

function ours(span) {
  try {
    return { usec: parseTimespan(span) };
  } catch (error) {
    if (!(error instanceof TimespanError)) throw error; // anything else is a crash
    return { error: error.reason };
  }
}

test(`time spans: ours agree with systemd-analyze on thousands of generated inputs (${seedNote})`, { timeout: 10 * 60_000 }, async (t) => {
  const N = 3000;
  const spans = fc.sample(spanText, { seed: SEED, numRuns: N });
  const verdicts = await oracle(spans);
  const known = new Map(spans.map((s, i) => [s, verdicts[i]]));
  const accepted = verdicts.filter((v) => 'usec' in v).length;
  t.diagnostic(`${N} spans, ${accepted} accepted and ${N - accepted} refused by systemd-analyze`);
  // Both outcomes are well represented, or the comparison proves little.
  assert.ok(accepted > N / 4 && N - accepted > N / 10, `${accepted} of ${N} accepted`);
  fc.assert(
    fc.property(spanText, (span) => {
      const theirs = known.get(span) ?? oracleOne(span); // shrunk inputs are new: asked one by one
      assert.deepEqual(ours(span), theirs, `span ${JSON.stringify(span)}`);
    }),
    runs(N),
  );
});

test(`time spans: what formatTimespan writes parses back to the same value (${seedNote})`, () => {
  // Up to 2^63 µs (292,000 years): nearer 2^64, parse_time()'s overflow checks refuse some values
  // below USEC_INFINITY, in systemd as here (systemd-analyze refuses "584542y", 2^64 - 1.45e12 µs).
  const usec = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 63n }), fc.bigInt({ min: 0n, max: 10n ** 12n }), fc.constant(USEC_INFINITY));
  fc.assert(fc.property(usec, (v) => assert.equal(parseTimespan(formatTimespan(v)), v)), runs(5000));
});

// ---------------------------------------------------------------------------------------------------
// Addresses.

const port = fc.integer({ min: 1, max: 65535 });
const ipv6 = fc.tuple(fc.ipV6(), fc.option(fc.constantFrom('eth0', 'lo', '1'), { nil: '' }))
  .map(([a, zone]) => (zone ? `${a}%${zone}` : a));
const host = fc.oneof(fc.ipV4(), ipv6, fc.domain(), fc.constantFrom('localhost', 'dualstack.test'));
const unixPath = fc.oneof(
  fc.string({ minLength: 1, maxLength: 40 }).map((s) => `/${s}`),
  fc.string({ minLength: 1, maxLength: 40 }).map((s) => `@${s}`),
);
/** Strings near the syntax: brackets, colons, ports, paths, and anything at all. */
const addressish = fc.oneof(
  fc.array(fc.constantFrom(...'[]:@/.%0123456789abcdefx-'), { maxLength: 16 }).map((a) => a.join('')),
  fc.tuple(host, fc.constantFrom(':', ']:', '', '::'), fc.oneof(port.map(String), fc.constantFrom('0', '65536', '', 'x', '-1', '080', '1e3', ' 80')))
    .map((p) => p.join('')),
  fc.string({ maxLength: 30 }),
  fc.constantFrom('udp:', 'udp:[::1]:5', 'udp:/x', 'udp:@x', 'udp:host'),
);

/** An error thrown for bad input: an Error, and one line whatever the input held. */
function assertOneLineError(error, input) {
  assert.ok(error instanceof Error, `not an Error for ${JSON.stringify(input)}: ${error}`);
  assert.ok(error.message.length > 0, `empty message for ${JSON.stringify(input)}`);
  if (!/[\n\r]/.test(input)) assert.doesNotMatch(error.message, /\n/, `a message over more than one line for ${JSON.stringify(input)}`);
}

test(`addresses: generated targets and --listen values round-trip parse → format → parse (${seedNote})`, () => {
  const inet = fc.record({ host, port });
  fc.assert(fc.property(inet, ({ host: h, port: p }) => {
    const a = parseAddress(formatAddress({ kind: 'inet', host: h, port: p }), 80);
    assert.deepEqual(a, { kind: 'inet', host: h, port: p });
    const l = parseListenAddress(formatAddress({ kind: 'inet', host: h, port: p, udp: true }));
    assert.deepEqual(l, { kind: 'inet', host: h, port: p, udp: true });
  }), runs(3000));
  fc.assert(fc.property(unixPath, (p) => {
    fc.pre(p !== '@');
    assert.deepEqual(parseAddress(formatAddress({ kind: 'unix', path: p })), { kind: 'unix', path: p });
  }), runs(1000));
});

test(`addresses: any string parses, or fails with one line; what parses round-trips (${seedNote})`, () => {
  fc.assert(fc.property(addressish, (spec) => {
    for (const [parse, label] of [[(s) => parseAddress(s, 80), 'target'], [parseListenAddress, 'listen']]) {
      let a;
      try {
        a = parse(spec);
      } catch (error) {
        assertOneLineError(error, spec);
        continue;
      }
      assert.deepEqual(parse(formatAddress(a)), a, `${label} ${JSON.stringify(spec)} → ${JSON.stringify(a)} → ${JSON.stringify(formatAddress(a))}`);
      if (a.kind === 'inet') {
        assert.ok(Number.isInteger(a.port) && a.port >= (label === 'listen' ? 0 : 1) && a.port <= 65535, `port ${a.port}`);
        assert.notEqual(a.host, '');
      }
    }
  }), runs(5000));
});

// ---------------------------------------------------------------------------------------------------
// Command lines.

const LONG = ['help', 'version', 'connections-max', 'exit-idle-time', 'listen', 'drain-timeout', 'log-level', 'workers',
  'connect-timeout', 'resolve-interval', 'proxy-protocol', 'connect-retry', 'idle-timeout', 'keepalive', 'udp-timeout', 'udp-sessions-max'];
const value = fc.oneof(
  spanText,
  fc.integer({ min: -5, max: 5000 }).map(String),
  fc.constantFrom('0', '1', '256', '0x10', '010', '4294967296', '-0', 'v1', 'v2', 'v3', 'debug', 'info', '7', '8', '60s,10s,5', '1s,,', 'infinity', ''),
  addressish,
  fc.string({ maxLength: 12 }),
);
const optionToken = fc.oneof(
  fc.tuple(fc.constantFrom(...LONG), fc.integer({ min: 0, max: 20 }), value).map(([l, cut, v]) => `--${l.slice(0, Math.max(1, l.length - cut))}=${v}`),
  fc.tuple(fc.constantFrom(...LONG), fc.integer({ min: 0, max: 3 })).map(([l, cut]) => `--${l.slice(0, Math.max(1, l.length - cut))}`),
  fc.tuple(fc.constantFrom('-c', '-h', '-x', '-ch', '-hc', '-'), fc.option(fc.integer({ min: 0, max: 99 }), { nil: undefined }))
    .map(([o, n]) => (n === undefined ? o : `${o}${n}`)),
  fc.constantFrom('--', '--=', '---', '--listen'),
  value,
  fc.constantFrom('127.0.0.1:8080', '[::1]:80', '/run/x.sock', '@abstract', 'example.com'),
);
const commandLine = fc.array(optionToken, { maxLength: 7 });

/** What the CLI prints for a UsageError: getopt's own complaints carry the program name (src/cli.ts). */
const usageLine = (message) => (/^(unrecognized option|invalid option|option )/.test(message) ? `${PROGRAM}: ${message}` : message);

function parsed(argv) {
  try {
    return { result: parseCommandLine(argv) };
  } catch (error) {
    if (!(error instanceof UsageError)) throw error; // a crash, not a refusal
    return { error };
  }
}

test(`command lines: random options and values never crash the parser; refusals are one line (${seedNote})`, () => {
  let ran = 0;
  let refused = 0;
  fc.assert(fc.property(commandLine, (argv) => {
    const { result, error } = parsed(argv);
    if (error) {
      refused++;
      assertOneLineError(error, argv.join(' '));
      return;
    }
    if (result.action !== 'run') return;
    ran++;
    const o = result.options;
    assert.ok(Number.isInteger(o.maxConnections) && o.maxConnections >= 1 && o.maxConnections <= 0xffffffff);
    assert.ok(o.workers === undefined || (o.workers >= 1 && o.workers <= 256));
    for (const k of ['exitIdleTime', 'drainTimeout', 'connectTimeout', 'resolveInterval']) assert.equal(typeof o[k], 'bigint', k);
    assert.ok(o.connectTimeout >= 1000n && o.connectTimeout !== USEC_INFINITY);
    for (const k of ['connectRetry', 'idleTimeout', 'udpTimeout', 'udpSessionsMax']) assert.ok(Number.isSafeInteger(o[k]) && o[k] >= 0, `${k} ${o[k]}`);
    // The target and each listen address are what their own parsers make of them.
    assert.deepEqual(parseAddress(formatAddress(o.target), 80), o.target);
    for (const l of o.listen) assert.deepEqual(parseListenAddress(formatAddress(l)), l);
  }), runs(5000));
  assert.ok(ran > 100 && refused > 500, `${ran} command lines ran and ${refused} were refused: the generator misses one side`);
});

test(`command lines: the real CLI exits 0 or 1 with one stderr line, as the parser says (${seedNote})`, { timeout: 10 * 60_000 }, async () => {
  // Command lines that would run the daemon with --listen are left out (they would bind and serve);
  // without sockets the daemon says so in one line and exits 1.
  const sample = fc.sample(commandLine, { seed: SEED + 1, numRuns: 400 })
    .filter((argv) => { const p = parsed(argv); return p.error || p.result.action !== 'run' || p.result.options.listen.length === 0; })
    .slice(0, 40);
  const results = await pool(sample.map((argv) => () => run(process.execPath, [CLI, ...argv], { env: cleanEnv() })), 4);
  results.forEach((r, i) => {
    const argv = sample[i];
    const where = `argv ${JSON.stringify(argv)}: exit ${r.code} ${r.signal ?? ''}, stderr ${JSON.stringify(r.stderr)}`;
    const { result, error } = parsed(argv);
    const lines = r.stderr.split('\n').filter((l, j, all) => !(l === '' && j === all.length - 1));
    if (error) {
      assert.equal(r.code, 1, where);
      assert.deepEqual(lines, [usageLine(error.message).replace(/\n/g, ' ')], where);
    } else if (result.action === 'help' || result.action === 'version') {
      assert.equal(r.code, 0, where);
      assert.equal(r.stderr, '', where);
      assert.match(r.stdout, result.action === 'help' ? /^socket-proxyd \[OPTIONS\.\.\.\] HOST:PORT/ : /^socket-proxyd \d/, where);
    } else {
      assert.equal(r.code, 1, where);
      assert.equal(lines.length, 1, where);
      assert.match(lines[0], /Didn't get any sockets passed in\./, where);
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// Socket activation variables.

const numberish = fc.oneof(
  fc.integer({ min: 0, max: 10 }).map(String),
  fc.integer({ min: -3, max: 2 ** 32 }).map(String),
  fc.constantFrom('', ' 1', '1 ', '+1', '0x1', '01', '1.0', '1e3', 'abc', '2147483645', '2147483646', '99999999999999999999', '-0'),
  fc.string({ maxLength: 6 }),
);
const fdNames = fc.oneof(fc.array(fc.string({ maxLength: 6 }), { maxLength: 5 }).map((a) => a.join(':')), fc.string({ maxLength: 20 }));

test(`LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES: random values give fds 3… named in order, nothing, or one error line (${seedNote})`, () => {
  const PID = 4242;
  const env = fc.record({
    LISTEN_PID: fc.option(fc.oneof(fc.constant(String(PID)), numberish), { nil: undefined }),
    LISTEN_FDS: fc.option(numberish, { nil: undefined }),
    LISTEN_FDNAMES: fc.option(fdNames, { nil: undefined }),
  }, { requiredKeys: [] });
  // Finite, as the daemon's is (the soft RLIMIT_NOFILE, or fs.nr_open's default when unlimited):
  // with no limit at all, LISTEN_FDS=2147483644 would make two billion entries.
  const limit = fc.oneof({ weight: 19, arbitrary: fc.integer({ min: 0, max: 70000 }) }, { weight: 1, arbitrary: fc.constant(2 ** 20) });
  fc.assert(fc.property(env, limit, (vars, fdLimit) => {
    const e = { ...vars, OTHER: 'kept' };
    for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k];
    let sockets;
    try {
      sockets = listenFds(e, PID, fdLimit);
    } catch (error) {
      assert.ok(error instanceof ActivationError, `not an ActivationError: ${error}`);
      assertOneLineError(error, JSON.stringify(vars));
      assert.ok(vars.LISTEN_PID !== undefined, 'an error without LISTEN_PID');
      return;
    } finally {
      // Read once, never inherited by a child.
      assert.deepEqual(Object.keys(e), ['OTHER']);
    }
    const forUs = vars.LISTEN_PID !== undefined && /^\s*0*4242\s*$/.test(vars.LISTEN_PID);
    if (!forUs || vars.LISTEN_FDS === undefined) {
      assert.deepEqual(sockets, [], 'sockets not meant for this process');
      return;
    }
    assert.ok(3 + sockets.length <= fdLimit, `${sockets.length} fds over the limit ${fdLimit}`);
    const names = vars.LISTEN_FDNAMES ? vars.LISTEN_FDNAMES.split(':') : [];
    sockets.forEach((s, i) => {
      assert.equal(s.fd, 3 + i);
      assert.equal(s.name, names[i] || 'unknown');
    });
    assert.equal(sockets.length, Number(vars.LISTEN_FDS.trim()));
  }), runs(5000));
});

test(`LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES: the real CLI with random values exits 1 with one line (${seedNote})`, { timeout: 5 * 60_000 }, async () => {
  // The variables name this very process (sh sets LISTEN_PID=$$ and execs node: same pid), but no
  // socket is passed: whatever they say, the start fails in one line.
  const sample = fc.sample(fc.record({ fds: numberish, names: fdNames }), { seed: SEED + 2, numRuns: 16 });
  const results = await pool(sample.map(({ fds, names }) => () => run('sh', ['-c', 'LISTEN_PID=$$ exec "$0" "$@"', process.execPath, CLI, '127.0.0.1:9'], {
    env: cleanEnv({ LISTEN_FDS: fds, LISTEN_FDNAMES: names }),
  })), 4);
  results.forEach((r, i) => {
    const where = `LISTEN_FDS=${JSON.stringify(sample[i].fds)} LISTEN_FDNAMES=${JSON.stringify(sample[i].names)}: exit ${r.code}, stderr ${JSON.stringify(r.stderr)}`;
    assert.equal(r.code, 1, where);
    assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, where);
    assert.match(r.stderr, /socket|LISTEN_FDS/, where);
  });
});

test(`LISTEN_FDNAMES: random names for a socket really passed: the log line names it, and it forwards (${seedNote})`, { timeout: 5 * 60_000 }, async () => {
  // python3 binds 127.0.0.1:PORT, puts it on fd 3 and execs the CLI with LISTEN_FDS=1 and its own pid;
  // LISTEN_FDNAMES is whatever was drawn (colons, newlines, any Unicode, empty).
  const upstream = await echoServer();
  try {
    const names = fc.sample(fc.oneof(fdNames, fc.string({ unit: 'grapheme', maxLength: 8 })), { seed: SEED + 3, numRuns: 6 });
    for (const names$ of names) {
      const port = await freePort();
      const child = activateNow(port, process.execPath, [CLI, upstream.target], { env: cleanEnv({ LISTEN_FDNAMES: names$ }) });
      const where = () => `LISTEN_FDNAMES=${JSON.stringify(names$)}: ${JSON.stringify(child.stderrText)}`;
      try {
        assert.ok(await waitFor(() => /Listening on/.test(child.stderrText) || child.exitCode !== null, 30_000), where());
        const name = names$ === '' ? '' : names$.split(':')[0];
        const label = name ? `fd 3 "${name.replace(/\n/g, ' ')}" (127.0.0.1:${port})` : `fd 3 (127.0.0.1:${port})`;
        assert.ok(child.stderrText.includes(`Listening on ${label}; forwarding to`), where());
        assert.equal(child.stderrText.split('\n').filter(Boolean).length, 1, where());
        const socket = await connect(port);
        assert.equal(await exchange(socket, 'named'), 'named');
        socket.destroy();
      } finally {
        child.kill('SIGTERM');
        const exit = await within(child.exited, 30_000, `no exit after SIGTERM: ${where()}`);
        assert.equal(exit.code, 0, where());
      }
    }
  } finally {
    await upstream.close();
  }
});
