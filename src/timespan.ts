// systemd.time(7) time spans, parsed exactly like systemd's parse_time()
// (src/basic/time-util.c): "5min 20s", "1h30m", "1.5s", "2 days", "infinity",
// a bare number in the default unit (seconds for parse_sec). Values are
// microseconds as bigint; USEC_INFINITY stands for "infinity".

/** systemd's USEC_INFINITY: (uint64_t) -1. */
export const USEC_INFINITY = (1n << 64n) - 1n;

export const USEC_PER_MSEC = 1_000n;
export const USEC_PER_SEC = 1_000_000n;
export const USEC_PER_MINUTE = 60n * USEC_PER_SEC;
export const USEC_PER_HOUR = 60n * USEC_PER_MINUTE;
export const USEC_PER_DAY = 24n * USEC_PER_HOUR;
export const USEC_PER_WEEK = 7n * USEC_PER_DAY;
/** 30.44 days, as systemd counts a month. */
export const USEC_PER_MONTH = 2_629_800n * USEC_PER_SEC;
/** 365.25 days, as systemd counts a year. */
export const USEC_PER_YEAR = 31_557_600n * USEC_PER_SEC;

// Order matters: the first suffix that prefixes the rest of the input wins
// ("ms" before "m", "min" before "m", "M" is months, "m" minutes).
const UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ['seconds', USEC_PER_SEC],
  ['second', USEC_PER_SEC],
  ['sec', USEC_PER_SEC],
  ['s', USEC_PER_SEC],
  ['minutes', USEC_PER_MINUTE],
  ['minute', USEC_PER_MINUTE],
  ['min', USEC_PER_MINUTE],
  ['months', USEC_PER_MONTH],
  ['month', USEC_PER_MONTH],
  ['M', USEC_PER_MONTH],
  ['msec', USEC_PER_MSEC],
  ['ms', USEC_PER_MSEC],
  ['m', USEC_PER_MINUTE],
  ['hours', USEC_PER_HOUR],
  ['hour', USEC_PER_HOUR],
  ['hr', USEC_PER_HOUR],
  ['h', USEC_PER_HOUR],
  ['days', USEC_PER_DAY],
  ['day', USEC_PER_DAY],
  ['d', USEC_PER_DAY],
  ['weeks', USEC_PER_WEEK],
  ['week', USEC_PER_WEEK],
  ['w', USEC_PER_WEEK],
  ['years', USEC_PER_YEAR],
  ['year', USEC_PER_YEAR],
  ['y', USEC_PER_YEAR],
  ['usec', 1n],
  ['us', 1n],
  ['\u03bcs', 1n], // GREEK SMALL LETTER MU
  ['\u00b5s', 1n], // MICRO SIGN
];

const WHITESPACE = ' \t\n\r';
const INT64_MAX = (1n << 63n) - 1n;

const isSpace = (c: string | undefined) => c !== undefined && c !== '' && WHITESPACE.includes(c);
const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';

export class TimespanError extends Error {
  constructor(readonly value: string, readonly reason: 'invalid' | 'range') {
    super(`${reason === 'range' ? 'time span out of range' : 'invalid time span'}: "${value}"`);
    this.name = 'TimespanError';
  }
}

function skipSpace(s: string, i: number): number {
  while (i < s.length && isSpace(s[i])) i++;
  return i;
}

/**
 * Parses a systemd time span into microseconds (USEC_INFINITY for
 * "infinity"). A number without a unit is in `defaultUnit` (seconds unless
 * told). Throws TimespanError for anything systemd would refuse.
 */
export function parseTimespan(text: string, defaultUnit: bigint = USEC_PER_SEC): bigint {
  const fail = (reason: 'invalid' | 'range' = 'invalid'): never => {
    throw new TimespanError(text, reason);
  };
  let p = skipSpace(text, 0);
  if (text.startsWith('infinity', p)) {
    if (skipSpace(text, p + 'infinity'.length) !== text.length) fail();
    return USEC_INFINITY;
  }
  let usec = 0n;
  let something = false;
  for (;;) {
    p = skipSpace(text, p);
    if (p >= text.length) {
      if (!something) fail();
      break;
    }
    if (text[p] === '-') fail('range'); // no "-0" either

    // strtoll(p, &e, 10): optional sign (only "+" survives the check above), digits.
    let e = p;
    let q = p;
    if (text[q] === '+') q++;
    const digitsStart = q;
    while (isDigit(text[q])) q++;
    let whole = 0n;
    if (q > digitsStart) {
      whole = BigInt(text.slice(digitsStart, q));
      if (whole > INT64_MAX) fail('range'); // strtoll's ERANGE
      e = q;
    }

    const hasFraction = text[e] === '.';
    if (hasFraction) {
      p = e + 1;
      while (isDigit(text[p])) p++;
    } else if (e === p) {
      fail();
    } else {
      p = e;
    }

    let multiplier = defaultUnit;
    const unitStart = skipSpace(text, p);
    let s = unitStart;
    for (const [suffix, value] of UNITS) {
      if (text.startsWith(suffix, unitStart)) {
        multiplier = value;
        s = unitStart + suffix.length;
        break;
      }
    }
    // No unit right after the number: only the end or whitespace may follow
    // (rejects "12.34.56" and "5x", accepts "12.34 .56" and "5s3").
    if (s === p && s < text.length) fail();
    p = s;

    if (whole >= USEC_INFINITY / multiplier) fail('range');
    let k = whole * multiplier;
    if (k >= USEC_INFINITY - usec) fail('range');
    usec += k;
    something = true;

    if (hasFraction) {
      let m = multiplier / 10n;
      let b = e + 1;
      for (; isDigit(text[b]); b++, m /= 10n) {
        k = BigInt(text.charCodeAt(b) - 48) * m;
        if (k >= USEC_INFINITY - usec) fail('range');
        usec += k;
      }
      if (b === e + 1) fail(); // "3.", "3.sec", "3. 1"
    }
  }
  return usec;
}

/** Milliseconds for timers: Infinity for USEC_INFINITY, fractions of a millisecond kept. */
export function timespanToMs(usec: bigint): number {
  if (usec === USEC_INFINITY) return Infinity;
  return Number(usec) / 1000;
}

const FORMAT_UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ['y', USEC_PER_YEAR],
  ['month', USEC_PER_MONTH],
  ['w', USEC_PER_WEEK],
  ['d', USEC_PER_DAY],
  ['h', USEC_PER_HOUR],
  ['min', USEC_PER_MINUTE],
  ['s', USEC_PER_SEC],
  ['ms', USEC_PER_MSEC],
  ['us', 1n],
];

/** Formats like systemd's format_timespan() with full accuracy: "5min 20s", "1.5s" is "1s 500ms", "infinity". */
export function formatTimespan(usec: bigint): string {
  if (usec === USEC_INFINITY) return 'infinity';
  if (usec === 0n) return '0';
  const parts: string[] = [];
  let rest = usec;
  for (const [name, size] of FORMAT_UNITS) {
    if (rest >= size) {
      parts.push(`${rest / size}${name}`);
      rest %= size;
    }
  }
  return parts.join(' ');
}
