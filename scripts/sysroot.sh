#!/usr/bin/env bash
# An old-glibc sysroot for the prebuilds: Debian 11 (bullseye, glibc 2.31) packages
# for one architecture, fetched with a private apt state and unpacked with
# `dpkg-deb -x` (nothing is installed; the system's apt lists, sources and dpkg
# architectures are not touched).
#
#   scripts/sysroot.sh x64|arm64     prints the sysroot's path (build-sysroot/bullseye-<arch>)
#
# It holds libc6-dev and linux-libc-dev (headers and libraries to link against)
# and libc6, libgcc-s1, libstdc++6 (enough for Node's official binaries to run in
# it: scripts/test-old-glibc.sh and the arm64 test under qemu use it that way).
# Debian's archive no longer serves buster (glibc 2.28), so bullseye is the oldest
# glibc to be had here; scripts/prebuild.sh keeps the prebuilds at GLIBC_2.28
# anyway and scripts/check-glibc.mjs checks it. Kept between runs; delete
# build-sysroot/ to fetch it again. Needs apt-get, dpkg-deb and Debian's archive.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fail() { echo "sysroot: $*" >&2; exit 1; }

arch="${1:-}"
case "$arch" in
  x64) debarch=amd64 ;;
  arm64) debarch=arm64 ;;
  *) fail "usage: scripts/sysroot.sh x64|arm64" ;;
esac
suite=bullseye
packages=(libc6 libc6-dev linux-libc-dev libgcc-s1 libstdc++6)

work="$root/build-sysroot"
sysroot="$work/$suite-$debarch"
stamp="$sysroot/.complete"
if [ ! -f "$stamp" ]; then
  command -v dpkg-deb >/dev/null && command -v apt-get >/dev/null || fail "needs apt-get and dpkg-deb (Debian)"
  apt="$work/apt-$suite-$debarch"
  rm -rf "$apt" "$sysroot"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/sources.list.d" "$apt/preferences.d" "$sysroot"
  : >"$apt/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" >"$apt/sources.list"
  cat >"$apt/apt.conf" <<EOF
APT::Architecture "$debarch";
APT::Architectures { "$debarch"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Dir::Etc::sourcelist "$apt/sources.list";
Dir::Etc::sourceparts "$apt/sources.list.d";
Dir::Etc::preferencesparts "$apt/preferences.d";
Dir::State "$apt";
Dir::State::lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt";
Dir::Cache::archives "$apt/archives";
EOF
  export APT_CONFIG="$apt/apt.conf"
  apt-get -q update >"$apt/update.log" 2>&1 ||
    { cat "$apt/update.log" >&2; fail "apt-get update for $suite/$debarch failed (is Debian's archive reachable?)"; }
  # `apt-get download`: just these packages, not their dependency closure
  (cd "$apt/archives" && apt-get -q download "${packages[@]}") >"$apt/download.log" 2>&1 ||
    { cat "$apt/download.log" >&2; fail "could not download ${packages[*]} for $suite/$debarch"; }
  unset APT_CONFIG
  for deb in "$apt"/archives/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
  # libc6-dev's libpthread.so, librt.so, … are absolute symlinks (/lib/…): followed as they
  # are, they reach the build machine's own glibc. Point them inside the sysroot.
  find "$sysroot" -type l -lname '/*' -print0 | while IFS= read -r -d '' link; do
    ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$sysroot$(readlink "$link")")" "$link"
  done
  # bullseye is not merged-/usr: the loader and libc live in /lib; give a chroot
  # the /lib64 (x86-64) or /lib (aarch64) path the binaries name as their interpreter
  [ "$debarch" = amd64 ] && mkdir -p "$sysroot/lib64" &&
    ln -sfn ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$sysroot/lib64/ld-linux-x86-64.so.2"
  glibc="$(cd "$apt/archives" && ls libc6_*.deb | sed 's/^libc6_\([^_]*\)_.*/\1/')"
  echo "$glibc" >"$stamp"
  echo "sysroot: $sysroot from $(cd "$apt/archives" && ls *.deb | tr '\n' ' ')" >&2
fi
echo "$sysroot"
