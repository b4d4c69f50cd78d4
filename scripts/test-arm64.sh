#!/usr/bin/env bash
# Cross-compiles the linux-arm64 prebuild and runs it under qemu-user
# (npm run test:arm64):
#   1. scripts/prebuild.sh arm64 (aarch64-linux-gnu-g++), ELF machine must be AArch64;
#   2. an arm64 Node from Debian (nodejs:arm64 + its libraries), fetched with a
#      private apt state under build-arm64/apt and unpacked with `dpkg -x` into
#      build-arm64/sysroot: nothing is installed, and the system's dpkg
#      architectures and apt lists are not touched;
#   3. qemu-aarch64 -L <sysroot> node loads the prebuild and checks its exports;
#   4. scripts/check-arm64.mjs socket-activates the CLI under qemu and forwards
#      connections through it.
# Needs: g++-aarch64-linux-gnu, qemu-user, systemd (systemd-socket-activate), and
# Debian's package repositories. SKIP_BUILD=1 keeps an existing arm64 prebuild.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fail() { echo "test-arm64: $*" >&2; exit 1; }

qemu="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
[ -n "$qemu" ] || fail "qemu-aarch64 is missing (Debian package qemu-user)"
command -v dpkg-deb >/dev/null && command -v apt-get >/dev/null || fail "needs apt-get and dpkg-deb (Debian)"

# 1. the prebuild
prebuild="$root/prebuilds/linux-arm64/socket-proxyd.glibc.node"
[ "${SKIP_BUILD:-}" = 1 ] && [ -f "$prebuild" ] || bash scripts/prebuild.sh arm64
machine="$(readelf -h "$prebuild" | sed -n 's/^ *Machine: *//p')"
[ "$machine" = AArch64 ] || fail "$prebuild has ELF machine '$machine', not AArch64"
echo "test-arm64: $prebuild is $machine; needs $(readelf -d "$prebuild" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"

# 2. the arm64 sysroot (kept between runs; delete build-arm64/ to refresh it)
work="$root/build-arm64"
sysroot="$work/sysroot"
if [ ! -x "$sysroot/usr/bin/node" ]; then
  apt="$work/apt"
  rm -rf "$apt" "$sysroot"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$sysroot"
  : >"$apt/status"   # an empty dpkg database: apt fetches the whole dependency closure
  cat >"$apt/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
APT::Sandbox::User "root";
Acquire::Languages "none";
Dir::State "$apt";
Dir::State::lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt";
Dir::Cache::archives "$apt/archives";
EOF
  export APT_CONFIG="$apt/apt.conf"
  apt-get -q update >"$work/apt-update.log" 2>&1 ||
    { cat "$work/apt-update.log" >&2; fail "apt-get update for arm64 failed (are Debian's repositories reachable?)"; }
  apt-get -q -y install --download-only nodejs >"$work/apt-download.log" 2>&1 ||
    { cat "$work/apt-download.log" >&2; fail "could not download nodejs:arm64 and its dependencies"; }
  unset APT_CONFIG
  for deb in "$apt"/archives/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
  [ -x "$sysroot/usr/bin/node" ] || fail "no usr/bin/node in the unpacked arm64 packages"
  echo "test-arm64: sysroot from $(ls "$apt"/archives/*.deb | wc -l) arm64 packages: $(cd "$apt/archives" && ls *.deb | sed 's/_.*//' | tr '\n' ' ')"
fi
node_arm64=("$qemu" -L "$sysroot" "$sysroot/usr/bin/node")
echo "test-arm64: guest node $("${node_arm64[@]}" -p 'process.arch + " " + process.version + ", N-API " + process.versions.napi')" ||
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
node scripts/check-arm64.mjs "$pkg" "$sysroot"
echo "test-arm64: passed"
