#!/usr/bin/env bash
# Runs the whole `npm test` suite against the ASan + UBSan build of the addon
# (npm run test:asan), or only the test files given (npm run test:asan --
# test/X.test.mjs …). Builds it first (scripts/build-sanitized.sh) unless
# SKIP_BUILD=1. Any sanitizer report fails the run: ASan and UBSan halt and abort
# on the first error, and every report is also written under a log directory
# that must be empty at the end (a report from a child process whose test still
# passed is caught here).
#
# Node is not instrumented, so every node process needs the sanitizer runtimes
# preloaded and SOCKET_PROXYD_ADDON pointing at the build. Two things stand in
# the way, and the suite runs in a private mount namespace (unshare -m: nothing
# outside it sees the changes) to get round them:
#  - systemd-socket-activate hands the command it starts only PATH, HOME, USER,
#    TERM and LISTEN_*, so a socket-activated CLI would load the ordinary build:
#    /usr/bin/systemd-socket-activate is bind-mounted with a wrapper that adds
#    -E for each of those variables (check-sanitized-load.mjs proves it works);
#  - procps tools (pgrep, pkill, ps) deadlock at start-up with libasan preloaded
#    (in glibc's textdomain(), on _nl_state_lock): shims first on PATH run them
#    without the preload.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ "${TEST_SANITIZED_NAMESPACE:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "test-sanitized: must run as root (it needs a private mount namespace, unshare -m)" >&2; exit 1; }
  [ "${SKIP_BUILD:-}" = 1 ] || bash scripts/build-sanitized.sh
  exec unshare --mount --propagation private -- env TEST_SANITIZED_NAMESPACE=1 bash "$0" "$@"
fi

addon="$root/build-asan/Release/socket_proxyd.node"
[ -f "$addon" ] || { echo "test-sanitized: $addon is missing" >&2; exit 1; }

runtime() {
  local lib
  lib="$(gcc -print-file-name="$1")"
  [ "${lib#/}" != "$lib" ] && [ -e "$lib" ] || { echo "test-sanitized: gcc does not know $1" >&2; exit 1; }
  echo "$lib"
}
logdir="$(mktemp -d "${TMPDIR:-/tmp}/socket-proxyd-sanitizer.XXXXXX")"
tools="$(mktemp -d "${TMPDIR:-/tmp}/socket-proxyd-sanitizer-tools.XXXXXX")"
trap 'umount "$activate" "$tools/systemd-socket-activate.real" 2>/dev/null; rm -rf "$tools"' EXIT
activate=/usr/bin/systemd-socket-activate

# node itself is not instrumented, so the runtimes must be preloaded; node's own
# allocations at exit look like leaks, hence detect_leaks=0.
VARS=(SOCKET_PROXYD_ADDON LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS)
export SOCKET_PROXYD_ADDON="$addon"
export LD_PRELOAD="$(runtime libasan.so) $(runtime libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$logdir/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$logdir/ubsan"

: >"$tools/systemd-socket-activate.real"
mount --bind "$activate" "$tools/systemd-socket-activate.real"
{
  echo '#!/bin/sh'
  echo "exec $tools/systemd-socket-activate.real$(printf ' -E %s' "${VARS[@]}") \"\$@\""
} >"$tools/systemd-socket-activate"
chmod +x "$tools/systemd-socket-activate"
mount --bind "$tools/systemd-socket-activate" "$activate"

mkdir "$tools/bin"
for tool in pgrep pkill ps; do
  real="$(command -v "$tool")" || continue
  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %s "$@"\n' "$real" >"$tools/bin/$tool"
  chmod +x "$tools/bin/$tool"
done
export PATH="$tools/bin:$PATH"

reports() {
  if compgen -G "$logdir/*" >/dev/null; then
    for f in "$logdir"/*; do echo "=== $f"; cat "$f"; done >&2
    echo "test-sanitized: sanitizer reports above" >&2
    return 1
  fi
}

status=0
node scripts/check-sanitized-load.mjs || status=$?
if [ "$#" -gt 0 ]; then
  # npm test's pretest builds dist/; named files skip it, so build here
  [ "$status" = 0 ] && { npx tsc -p tsconfig.json && node --test --test-concurrency=1 "$@" || status=$?; }
else
  [ "$status" = 0 ] && { npm test || status=$?; }
fi
reports || status=1
[ "$status" = 0 ] && echo "test-sanitized: ${*:-suite} passed against $addon, no sanitizer reports" && rm -rf "$logdir"
exit "$status"
