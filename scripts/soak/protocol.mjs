// The soak's wire protocol, shared by its clients (scripts/soak.mjs) and its upstream
// (scripts/soak/upstream.mjs). Every connection opens with a 32-byte header that tells the upstream
// what to do; every payload byte in either direction comes from one known stream, so each side checks
// each byte as it arrives: a wrong, lost, repeated or reordered byte is caught where it lands.

/** Bytes before the pattern repeats: a prime, so it never lines up with buffer or pipe sizes. */
export const PERIOD = 1_048_573;
const SPAN = 1 << 20; // the longest slice handed out or checked at once
const BIG = Buffer.allocUnsafe(PERIOD + SPAN);
{
  let x = 0x9e3779b9;
  for (let i = 0; i + 4 <= PERIOD; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    BIG.writeUInt32LE(x, i);
  }
  for (let i = PERIOD - (PERIOD % 4); i < PERIOD; i++) BIG[i] = (i * 151) & 0xff;
  BIG.copy(BIG, PERIOD, 0, SPAN);
}

/** `n` (≤ 1 MiB) bytes of the stream `seed` from position `pos`, without copying. */
export function slice(seed, pos, n) {
  if (n > SPAN) throw new RangeError(`slice of ${n} bytes`);
  const off = (seed + pos) % PERIOD;
  return BIG.subarray(off, off + n);
}

/** Checks a stream as it arrives: `push(chunk)` returns false at the first byte that differs. */
export class Checker {
  constructor(seed) {
    this.seed = seed;
    this.pos = 0;
    this.ok = true;
  }

  push(chunk) {
    for (let at = 0; this.ok && at < chunk.length; ) {
      const n = Math.min(SPAN, chunk.length - at);
      if (!chunk.subarray(at, at + n).equals(slice(this.seed, this.pos, n))) this.ok = false;
      this.pos += n;
      at += n;
    }
    return this.ok;
  }
}

export const KIND = {
  rr: 1, // a request, a response, the end: a new connection per request
  keepalive: 2, // `param` rounds of request/response on one connection
  bulk: 3, // both directions at once, megabytes each
  echo: 4, // everything echoed; the upstream ends when the client has (half-close)
  clientReset: 5, // the upstream streams until the client resets (SO_LINGER 0)
  upstreamReset: 6, // the upstream sends `param` bytes, then resets
  vanish: 7, // the client closes mid-transfer, unread bytes and all
  slow: 8, // a download read at a trickle
};
export const KIND_NAME = Object.fromEntries(Object.entries(KIND).map(([k, v]) => [v, k]));

export const HEADER_SIZE = 32;
const MAGIC = 0x4b414f53; // "SOAK"

/** The header: {kind, id, seedUp, seedDown, upSize, downSize, param}. */
export function encodeHeader(h) {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt8(h.kind, 4);
  b.writeUInt32LE(h.id, 8);
  b.writeUInt32LE(h.seedUp, 12);
  b.writeUInt32LE(h.seedDown, 16);
  b.writeUInt32LE(h.upSize, 20);
  b.writeUInt32LE(h.downSize, 24);
  b.writeUInt32LE(h.param ?? 0, 28);
  return b;
}

export function decodeHeader(b) {
  if (b.length < HEADER_SIZE || b.readUInt32LE(0) !== MAGIC) return null;
  return {
    kind: b.readUInt8(4),
    id: b.readUInt32LE(8),
    seedUp: b.readUInt32LE(12),
    seedDown: b.readUInt32LE(16),
    upSize: b.readUInt32LE(20),
    downSize: b.readUInt32LE(24),
    param: b.readUInt32LE(28),
  };
}

/**
 * What the upstream sends after its payload, before its end, on the kinds that must arrive whole:
 * "OK" or "NO" (did every byte it received check out), then how many payload bytes it received.
 */
export const TRAILER_SIZE = 8;
export function encodeTrailer(ok, received) {
  const b = Buffer.alloc(TRAILER_SIZE);
  b.write(ok ? 'OK' : 'NO', 0, 'latin1');
  b.writeUInt32LE(received >>> 0, 4);
  return b;
}
export function decodeTrailer(b) {
  return { ok: b.toString('latin1', 0, 2) === 'OK', received: b.readUInt32LE(4) };
}

/** Writes `total` bytes of stream `seed` from position `from`, honouring backpressure; resolves false if the socket died. */
export async function writeStream(socket, seed, total, from = 0, piece = 256 * 1024) {
  for (let pos = from; pos < from + total; ) {
    if (socket.destroyed || socket.writableEnded) return false;
    const n = Math.min(piece, from + total - pos);
    const more = socket.write(slice(seed, pos, n));
    pos += n;
    if (!more) {
      const ok = await new Promise((resolve) => {
        const done = (v) => () => { socket.off('drain', onDrain); socket.off('close', onClose); resolve(v); };
        const onDrain = done(true);
        const onClose = done(false);
        socket.once('drain', onDrain);
        socket.once('close', onClose);
      });
      if (!ok) return false;
    }
  }
  return true;
}

/** A seeded PRNG (mulberry32): the run is reproducible from --seed. */
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  next.int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1));
  /** Log-uniform between lo and hi: small sizes as often as large ones. */
  next.size = (lo, hi) => Math.round(Math.exp(Math.log(lo) + next() * (Math.log(hi) - Math.log(lo))));
  return next;
}
