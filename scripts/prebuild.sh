#!/usr/bin/env bash
# Builds the N-API prebuild(s) with prebuildify into prebuilds/<platform>-<arch>/.
#   scripts/prebuild.sh            host arch (linux-x64 here)
#   scripts/prebuild.sh arm64      cross-compile linux-arm64 with Debian's aarch64-linux-gnu-g++
#   scripts/prebuild.sh all        both (npm pack's prepack); without the cross compiler,
#                                  only the host one, and a stale linux-arm64/ is removed
# SOCKET_PROXYD_WERROR=1 (set by .ci/run) turns compiler warnings into errors.
# KEEP_PREBUILDS=1 keeps (and checks) a prebuild that is already there instead of
# building it again: the Node version matrix (scripts/test-node-matrix.sh) runs the
# one built once on every Node, also where `npm pack` (prepack) would rebuild it.
# The build runs in a scratch copy of binding.gyp + native/, so the developer's
# build/ (which node-gyp-build prefers over prebuilds/) is never touched.
#
# glibc floor 2.28 (RHEL 8): the addon is compiled and linked against Debian 11's
# glibc 2.31 headers and libraries (scripts/sysroot.sh) instead of the build
# machine's, with the machine's own GCC. Nothing it calls is newer than 2.28 except
# what libstdc++'s headers and archive take from a newer glibc, and those are dealt
# with one by one: scripts/glibc-floor.h (the pthread clock functions of 2.30),
# scripts/glibc-floor.c (__libc_single_threaded of 2.32), --gc-sections (arc4random
# of 2.36, in a part of libstdc++.a nothing calls). libstdc++ is linked in statically
# with its symbols hidden (--exclude-libs), so no GLIBCXX_/CXXABI_ version is needed;
# so is libgcc, except its unwinder: GCC 12's static one looks frames up with glibc
# 2.35's _dl_find_object, so the unwinder comes from libgcc_s.so.1 (only GCC_3.0 to
# GCC_4.2.0 symbols; every Node binary needs libgcc_s.so.1 itself). Nothing throws
# in this -fno-exceptions code; only a fatal libstdc++ error would unwind.
# scripts/check-glibc.mjs reads each result's symbol versions and fails the build
# if any of that does not hold.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="$(node -p process.arch)"
arch="${1:-$host}"

if [ "$arch" = all ]; then
  bash "$0" "$host"
  if [ "$host" = x64 ]; then
    if command -v aarch64-linux-gnu-g++ >/dev/null; then
      bash "$0" arm64
    else
      echo "prebuild: aarch64-linux-gnu-g++ not found: packing without a linux-arm64 prebuild" >&2
      rm -rf "$root/prebuilds/linux-arm64"
    fi
  fi
  exit 0
fi

# node-gyp needs Node's headers (common.gypi etc.); use the ones next to this node
# rather than downloading them, when npm has not been told a nodedir already.
if [ -z "${npm_config_nodedir:-}" ]; then
  prefix="$(dirname "$(dirname "$(command -v node)")")"
  [ -f "$prefix/include/node/common.gypi" ] && export npm_config_nodedir="$prefix"
fi

if [ "${SOCKET_PROXYD_WERROR:-}" = 1 ]; then
  export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }-Werror"   # node-gyp's Makefile appends $CXXFLAGS
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/socket-proxyd-prebuild.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
cp "$root/package.json" "$root/binding.gyp" "$stage/"
cp -r "$root/native" "$stage/native"
ln -s "$root/node_modules" "$stage/node_modules"

out="$root/prebuilds/linux-$arch"
check() { node "$root/scripts/check-glibc.mjs" --arch "$arch" "$out"/*.node; }
if [ "${KEEP_PREBUILDS:-}" = 1 ] && [ -f "$out/socket-proxyd.glibc.node" ]; then
  echo "prebuild: KEEP_PREBUILDS=1: keeping $out/socket-proxyd.glibc.node (sha256 $(sha256sum "$out/socket-proxyd.glibc.node" | cut -c1-16))"
  check
  exit 0
fi

args=(--napi --strip --tag-libc)
triple=x86_64-linux-gnu
export CC="${CC:-gcc}" CXX="${CXX:-g++}"
export LINK="${LINK:-$CXX}"
if [ "$arch" != "$host" ]; then
  case "$arch" in
    arm64) triple=aarch64-linux-gnu ;;
    *) echo "prebuild: no cross toolchain known for $arch" >&2; exit 1 ;;
  esac
  command -v "$triple-g++" >/dev/null || {
    echo "prebuild: $triple-g++ is missing (Debian package g++-$triple)" >&2; exit 1; }
  export CC="$triple-gcc" CXX="$triple-g++" LINK="$triple-g++" AR="$triple-ar"
  # the host's tools for anything gyp builds for the host (nothing here, but be explicit)
  export CC_host=gcc CXX_host=g++
  args+=(--arch "$arch" --strip-bin "$triple-strip")
fi

# The old-glibc sysroot. Headers: GCC's own (C++ and builtins), then the sysroot's C
# headers; -nostdinc drops the build machine's /usr/include (or the cross compiler's
# /usr/aarch64-linux-gnu/include), which are of a newer glibc.
sysroot="$(bash "$root/scripts/sysroot.sh" "$arch")"
includes=()
while read -r dir; do
  case "$dir" in */c++/*|*/gcc*/include|*/gcc*/include-fixed) includes+=(-isystem "$dir") ;; esac
done < <($CXX -x c++ -E -v - </dev/null 2>&1 | sed -n '/^#include <...> search starts here:/,/^End of search list/s/^ //p')
[ "${#includes[@]}" -gt 0 ] || { echo "prebuild: could not find $CXX's C++ headers" >&2; exit 1; }
includes+=(-isystem "$sysroot/usr/include/$triple" -isystem "$sysroot/usr/include")
floor_obj="$stage/glibc-floor.o"
$CC --sysroot="$sysroot" -nostdinc "${includes[@]}" -std=c11 -O2 -fPIC -Wall -Wextra -Werror \
  -c "$root/scripts/glibc-floor.c" -o "$floor_obj"
export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }--sysroot=$sysroot -nostdinc ${includes[*]} -include $root/scripts/glibc-floor.h"
# the sysroot's crt*.o and libraries before the compiler's own search path (the cross
# compiler's holds a newer glibc); an object named in LDFLAGS is linked like any other
export LDFLAGS="${LDFLAGS:+$LDFLAGS }--sysroot=$sysroot -B$sysroot/usr/lib/$triple/ -L$sysroot/lib/$triple -L$sysroot/usr/lib/$triple $floor_obj -static-libstdc++ -Wl,--exclude-libs,ALL -Wl,--gc-sections"

(cd "$stage" && "$root/node_modules/.bin/prebuildify" "${args[@]}")

rm -rf "$out"
mkdir -p "$root/prebuilds"
cp -r "$stage/prebuilds/linux-$arch" "$out"
for f in "$out"/*.node; do
  echo "prebuild: $f ($(stat -c %s "$f") bytes, sha256 $(sha256sum "$f" | cut -c1-16), against glibc $(cat "$sysroot/.complete"))"
done
# the newest glibc symbol version it links = the oldest glibc it loads on
check
