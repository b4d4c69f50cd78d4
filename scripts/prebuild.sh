#!/usr/bin/env bash
# Builds the N-API prebuild(s) with prebuildify into prebuilds/<platform>-<arch>/.
#   scripts/prebuild.sh            host arch (linux-x64 here)
#   scripts/prebuild.sh arm64      cross-compile linux-arm64 with Debian's aarch64-linux-gnu-g++
#   scripts/prebuild.sh all        both (npm pack's prepack); without the cross compiler,
#                                  only the host one, and a stale linux-arm64/ is removed
# SOCKET_PROXYD_WERROR=1 (set by .ci/run) turns compiler warnings into errors.
# The build runs in a scratch copy of binding.gyp + native/, so the developer's
# build/ (which node-gyp-build prefers over prebuilds/) is never touched.
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

args=(--napi --strip --tag-libc)
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

(cd "$stage" && "$root/node_modules/.bin/prebuildify" "${args[@]}")

out="$root/prebuilds/linux-$arch"
rm -rf "$out"
mkdir -p "$root/prebuilds"
cp -r "$stage/prebuilds/linux-$arch" "$out"
for f in "$out"/*.node; do
  # the newest glibc symbol version it links = the oldest glibc it loads on
  glibc="$(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
  echo "prebuild: $f ($(stat -c %s "$f") bytes, $(readelf -h "$f" | sed -n 's/^ *Machine: *//p'), needs $glibc)"
done
