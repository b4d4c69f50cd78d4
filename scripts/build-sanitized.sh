#!/usr/bin/env bash
# Builds the ASan + UBSan variant of the addon with cmake-js into build-asan/
# (build-asan/Release/socket_proxyd.node, plus build-asan/compile_commands.json).
# Run the test suite against it with scripts/test-sanitized.sh (npm run test:asan).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/node_modules/.bin/cmake-js" build --out build-asan --CDSOCKET_PROXYD_SANITIZE=ON
addon="$root/build-asan/Release/socket_proxyd.node"
# prove it is instrumented: linked against both runtimes
needed="$(readelf -d "$addon" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
case "$needed" in *libasan.so*) ;; *) echo "build-sanitized: $addon does not link libasan ($needed)" >&2; exit 1 ;; esac
case "$needed" in *libubsan.so*) ;; *) echo "build-sanitized: $addon does not link libubsan ($needed)" >&2; exit 1 ;; esac
echo "build-sanitized: $addon (NEEDED: $needed)"
