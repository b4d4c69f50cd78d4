#!/usr/bin/env bash
# Cross-compiles the linux-arm64 prebuild and runs it under qemu-user
# (npm run test:arm64):
#   1. scripts/prebuild.sh arm64 (aarch64-linux-gnu-g++), ELF machine must be AArch64,
#      symbol versions at most GLIBC_2.28 (scripts/check-glibc.mjs);
#   2. the guest userland: Debian 11's arm64 libc6 (glibc 2.31), libgcc-s1 and
#      libstdc++6, fetched with a private apt state and unpacked with `dpkg -x`
#      (scripts/sysroot.sh: the sysroot the prebuild is linked against; nothing is
#      installed, the system's dpkg architectures and apt lists are not touched), and
#      Node 18.20.8's official arm64 binary from the npm registry (scripts/node-bin.sh);
#   3. qemu-aarch64 -L <sysroot> node loads the prebuild and checks its exports;
#   4. scripts/check-activated.mjs socket-activates the CLI under qemu and forwards
#      connections through it.
# Needs: g++-aarch64-linux-gnu, qemu-user, systemd (systemd-socket-activate), Debian's
# archive and the npm registry. SKIP_BUILD=1 keeps an existing arm64 prebuild.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fail() { echo "test-arm64: $*" >&2; exit 1; }

qemu="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
[ -n "$qemu" ] || fail "qemu-aarch64 is missing (Debian package qemu-user)"

# 1. the prebuild
prebuild="$root/prebuilds/linux-arm64/socket-proxyd.glibc.node"
[ "${SKIP_BUILD:-}" = 1 ] && [ -f "$prebuild" ] || bash scripts/prebuild.sh arm64
machine="$(readelf -h "$prebuild" | sed -n 's/^ *Machine: *//p')"
[ "$machine" = AArch64 ] || fail "$prebuild has ELF machine '$machine', not AArch64"
echo "test-arm64: $prebuild is $machine; needs $(readelf -d "$prebuild" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
node scripts/check-glibc.mjs --arch arm64 "$prebuild"

# 2. the guest userland: Debian 11's arm64 glibc 2.31, libstdc++ and libgcc (the sysroot
#    the prebuild is linked against) and Node 18.20.8's official arm64 binary
sysroot="$(bash scripts/sysroot.sh arm64)"
node_bin="$(bash scripts/node-bin.sh 18.20.8 arm64)"
node_arm64=("$qemu" -L "$sysroot" "$node_bin")
echo "test-arm64: guest node $("${node_arm64[@]}" -p 'process.arch + " " + process.version + ", N-API " + process.versions.napi + ", glibc " + process.report.getReport().header.glibcVersionRuntime')" ||
  fail "the arm64 node does not start under $qemu"

# 3. load the prebuild in the emulated node
"${node_arm64[@]}" -e '
  const addon = require(process.argv[1]);
  for (const name of ["Engine", "bindListener", "inspectFd", "closeFd", "sdNotify", "raiseFdLimit"])
    if (typeof addon[name] !== "function") throw new Error(`export ${name} is missing`);
  const fd = addon.bindListener({ host: "127.0.0.1", port: 0 });
  const info = addon.inspectFd(fd);
  addon.closeFd(fd);
  if (!info.listening) throw new Error(`inspectFd: ${JSON.stringify(info)}`);
  console.log(`test-arm64: loaded under qemu (${process.arch}), bound ${info.address}`);
' "$prebuild" || fail "the arm64 node could not load $prebuild"

# 4. a package tree without build/, so node-gyp-build must choose the prebuild
[ -f dist/cli.js ] || node_modules/.bin/tsc -p tsconfig.json
pkg="$(mktemp -d "${TMPDIR:-/tmp}/socket-proxyd-arm64.XXXXXX")"
trap 'rm -rf "$pkg"' EXIT
cp -r package.json bin dist "$pkg/"
mkdir -p "$pkg/prebuilds" && cp -r prebuilds/linux-arm64 "$pkg/prebuilds/"
ln -s "$root/node_modules" "$pkg/node_modules"
node scripts/check-activated.mjs test-arm64 "$pkg/prebuilds/linux-arm64/socket-proxyd.glibc.node" \
  --maps "$sysroot/lib/aarch64-linux-gnu/libc-2.31.so" -- \
  "${node_arm64[@]}" "$pkg/bin/socket-proxyd" '{target}'
echo "test-arm64: passed"
