#!/usr/bin/env node
// Checks that a prebuild loads on every glibc from the floor on, the way auditwheel
// checks a manylinux wheel: by reading the ELF file's dynamic section, its symbol
// version needs (.gnu.version_r) and which symbol needs which version (.gnu.version).
//
//   node scripts/check-glibc.mjs [--max 2.28] [--arch x64|arm64] FILE.node...
//
// A file passes when
//   - it is an ELF64 little-endian shared object for --arch (when given);
//   - it needs (DT_NEEDED) only glibc's own libraries and libgcc_s.so.1 (the unwinder, which
//     every Node binary needs itself), no libstdc++.so.6;
//   - every symbol version it needs is GLIBC_x.y with x.y <= --max (default 2.28), or GCC_x.y
//     from libgcc_s.so.1 with x.y <= 4.2.0 (GCC 4.2, 2007): no GLIBCXX_*, CXXABI_* or
//     GLIBC_PRIVATE;
//   - every undefined symbol without a version is a Node-API one (napi_*, node_api_*: the Node
//     executable defines those) or weak: anything else would be a libc function the link did
//     not find, resolved at run time by chance.
// It prints, per file, the versions needed and the symbols that need the highest one, and exits
// 1 if any file fails. Reads the file itself (no binutils needed).
import fs from 'node:fs';
import { parseArgs } from 'node:util';

const GLIBC_LIBS = new Set([
  'libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2', 'librt.so.1',
  'ld-linux-x86-64.so.2', 'ld-linux-aarch64.so.1',
]);
const LIBGCC = 'libgcc_s.so.1';
const LIBGCC_MAX = '4.2.0';
const MACHINES = { 0x3e: 'x64', 0xb7: 'arm64' };
const SHT = { DYNAMIC: 6, DYNSYM: 11, VERNEED: 0x6ffffffe, VERSYM: 0x6fffffff };
const DT_NEEDED = 1;

/** The parts of an ELF64 LE shared object this check needs. */
export function readElf(buf) {
  if (buf.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  if (buf[4] !== 2 || buf[5] !== 1) throw new Error('not ELF64 little-endian');
  const type = buf.readUInt16LE(0x10);
  const machine = MACHINES[buf.readUInt16LE(0x12)] ?? `e_machine ${buf.readUInt16LE(0x12)}`;
  const shoff = Number(buf.readBigUInt64LE(0x28));
  const shentsize = buf.readUInt16LE(0x3a);
  const shnum = buf.readUInt16LE(0x3c);
  const sections = [];
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * shentsize;
    sections.push({
      type: buf.readUInt32LE(o + 4),
      offset: Number(buf.readBigUInt64LE(o + 0x18)),
      size: Number(buf.readBigUInt64LE(o + 0x20)),
      link: buf.readUInt32LE(o + 0x28),
    });
  }
  const byType = (t) => sections.find((s) => s.type === t);
  const str = (sec, off) => {
    const start = sec.offset + off;
    return buf.toString('latin1', start, buf.indexOf(0, start));
  };

  const needed = [];
  const dyn = byType(SHT.DYNAMIC);
  if (dyn) {
    for (let o = dyn.offset; o < dyn.offset + dyn.size; o += 16) {
      const tag = buf.readBigInt64LE(o);
      if (tag === 0n) break;
      if (tag === BigInt(DT_NEEDED)) needed.push(str(sections[dyn.link], Number(buf.readBigUInt64LE(o + 8))));
    }
  }

  // version index -> { name, file }
  const versions = new Map();
  const vn = byType(SHT.VERNEED);
  if (vn) {
    const strs = sections[vn.link];
    let o = vn.offset;
    for (;;) {
      const cnt = buf.readUInt16LE(o + 2);
      const file = str(strs, buf.readUInt32LE(o + 4));
      let a = o + buf.readUInt32LE(o + 8);
      for (let i = 0; i < cnt; i++) {
        versions.set(buf.readUInt16LE(a + 6), { name: str(strs, buf.readUInt32LE(a + 8)), file });
        const next = buf.readUInt32LE(a + 12);
        if (!next) break;
        a += next;
      }
      const next = buf.readUInt32LE(o + 12);
      if (!next) break;
      o += next;
    }
  }

  const symbols = [];
  const ds = byType(SHT.DYNSYM);
  const vs = byType(SHT.VERSYM);
  if (ds) {
    const strs = sections[ds.link];
    for (let i = 1; i < ds.size / 24; i++) {
      const o = ds.offset + i * 24;
      const info = buf[o + 4];
      const shndx = buf.readUInt16LE(o + 6);
      const ver = vs ? buf.readUInt16LE(vs.offset + i * 2) & 0x7fff : 1;
      symbols.push({
        name: str(strs, buf.readUInt32LE(o)),
        undefined: shndx === 0,
        weak: info >> 4 === 2,
        version: ver > 1 ? versions.get(ver)?.name ?? `#${ver}` : null,
      });
    }
  }
  return { type, machine, needed, versions: [...versions.values()], symbols };
}

const cmpVersion = (a, b) => {
  const x = a.split('.').map(Number), y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
};

/** Returns { problems: string[], glibc: highest GLIBC version, top: symbols needing it, elf }. */
export function audit(file, { max = '2.28', arch } = {}) {
  const elf = readElf(fs.readFileSync(file));
  const problems = [];
  if (elf.type !== 3) problems.push(`e_type ${elf.type}, not a shared object`);
  if (arch && elf.machine !== arch) problems.push(`built for ${elf.machine}, not ${arch}`);
  for (const lib of elf.needed) {
    if (!GLIBC_LIBS.has(lib) && lib !== LIBGCC) problems.push(`needs ${lib} (only glibc's own libraries and ${LIBGCC} are allowed)`);
  }
  let glibc = null;
  for (const { name, file: lib } of elf.versions) {
    const gcc = /^GCC_(\d+(?:\.\d+)+)$/.exec(name);
    if (gcc && lib === LIBGCC) {
      if (cmpVersion(gcc[1], LIBGCC_MAX) > 0) problems.push(`needs ${name} from ${lib}, newer than GCC_${LIBGCC_MAX}`);
      continue;
    }
    const m = /^GLIBC_(\d+(?:\.\d+)+)$/.exec(name);
    if (!m) problems.push(`needs ${name} from ${lib}`);
    else if (cmpVersion(m[1], max) > 0) problems.push(`needs ${name} from ${lib}, newer than GLIBC_${max}`);
    if (m && (!glibc || cmpVersion(m[1], glibc) > 0)) glibc = m[1];
  }
  const undef = elf.symbols.filter((s) => s.undefined);
  for (const s of undef) {
    if (s.version || s.weak || /^(napi|node_api)_/.test(s.name)) continue;
    problems.push(`undefined symbol ${s.name} has no version (not Node-API, not found in glibc at link time)`);
  }
  const top = glibc ? undef.filter((s) => s.version === `GLIBC_${glibc}`).map((s) => s.name) : [];
  return { problems, glibc, top, elf };
}

const isMain = process.argv[1] && import.meta.url === new URL(`file://${fs.realpathSync(process.argv[1])}`).href;
if (isMain) {
  const { values, positionals } = parseArgs({ options: { max: { type: 'string', default: '2.28' }, arch: { type: 'string' } }, allowPositionals: true });
  if (!positionals.length) {
    console.error('usage: node scripts/check-glibc.mjs [--max 2.28] [--arch x64|arm64] FILE.node...');
    process.exit(2);
  }
  let failed = 0;
  for (const file of positionals) {
    const r = audit(file, { max: values.max, arch: values.arch });
    const names = [...new Set(r.elf.versions.map((v) => v.name))].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    console.log(`check-glibc: ${file}: ${r.elf.machine}; needs ${r.elf.needed.join(' ')}; versions ${names.join(' ')}`);
    console.log(`check-glibc:   highest GLIBC_${r.glibc ?? '?'}, needed by ${r.top.join(' ') || '-'}`);
    if (r.problems.length) {
      failed++;
      for (const p of r.problems) console.log(`check-glibc:   FAIL: ${p}`);
    } else {
      console.log(`check-glibc:   ok: loads on glibc ${values.max} and later; needs no libstdc++ (no GLIBCXX_/CXXABI_ version)`);
    }
  }
  process.exit(failed ? 1 : 0);
}
