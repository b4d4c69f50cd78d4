#!/usr/bin/env bash
# Runs the whole `npm test` suite against the ASan + UBSan build of the addon
# (npm run test:asan). Builds it first (scripts/build-sanitized.sh) unless
# SKIP_BUILD=1. Any sanitizer report fails the run: ASan and UBSan halt and abort
# on the first error, and every report is also written under a log directory
# that must be empty at the end (a report from a child process whose test still
# passed is caught here).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

[ "${SKIP_BUILD:-}" = 1 ] || bash scripts/build-sanitized.sh
addon="$root/build-asan/Release/socket_proxyd.node"
[ -f "$addon" ] || { echo "test-sanitized: $addon is missing" >&2; exit 1; }

runtime() {
  local lib
  lib="$(gcc -print-file-name="$1")"
  [ "${lib#/}" != "$lib" ] && [ -e "$lib" ] || { echo "test-sanitized: gcc does not know $1" >&2; exit 1; }
  echo "$lib"
}
logdir="$(mktemp -d "${TMPDIR:-/tmp}/socket-proxyd-sanitizer.XXXXXX")"

# node itself is not instrumented, so the runtimes must be preloaded; node's own
# allocations at exit look like leaks, hence detect_leaks=0.
export SOCKET_PROXYD_ADDON="$addon"
export LD_PRELOAD="$(runtime libasan.so) $(runtime libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$logdir/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$logdir/ubsan"

reports() {
  if compgen -G "$logdir/*" >/dev/null; then
    for f in "$logdir"/*; do echo "=== $f"; cat "$f"; done >&2
    echo "test-sanitized: sanitizer reports above" >&2
    return 1
  fi
}

status=0
node scripts/check-sanitized-load.mjs || status=$?
[ "$status" = 0 ] && { npm test || status=$?; }
reports || status=1
[ "$status" = 0 ] && echo "test-sanitized: suite passed against $addon, no sanitizer reports" && rm -rf "$logdir"
exit "$status"
