#!/usr/bin/env bash
# Runs the whole test suite on each Node of the matrix, against the linux-x64 prebuild
# built once (npm run test:node-matrix):
#
#   scripts/test-node-matrix.sh [VERSION|host ...]     default: 18.20.8 22.23.3 24.21.0
#
# VERSION is an official Node.js release, fetched from the npm registry by
# scripts/node-bin.sh; "host" is the node on PATH (CI's `npm test` step runs that one
# already). For each Node:
#   - the suite runs in a scratch copy of the project without build/, so every load of
#     the addon — the test process, every CLI the tests start, socket-activated ones
#     included (systemd-socket-activate passes no environment that could say otherwise)
#     — has node-gyp-build pick prebuilds/linux-x64; checked before the run;
#   - that Node is first on PATH (the CLI's #!/usr/bin/env node, npm in the package
#     test) and its headers are beside it (npm_config_nodedir), so compiling downloads
#     nothing; the tests start their children with process.execPath;
#   - KEEP_PREBUILDS=1, so the package test's `npm pack` ships the same prebuild
#     instead of building another; its sha256 is compared before and after;
#   - `node --test --test-concurrency=1 test/*.test.mjs` (all but the soak) with that Node (npm 11 may not
#     run on Node 18, and Node 22 on takes no directory argument); MATRIX_FILES="test/a.test.mjs …"
#     runs those files instead (CI's Node 24 run: the files that exercise the addon's
#     N-API surface, for time).
# Prints one line per Node and fails if any suite failed. Needs dist/ and the
# prebuild (npm run prebuild).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fail() { echo "node-matrix: $*" >&2; exit 1; }

versions=("$@")
[ "${#versions[@]}" -gt 0 ] || versions=(18.20.8 22.23.3 24.21.0)
prebuild=prebuilds/linux-x64/socket-proxyd.glibc.node
[ -f "$prebuild" ] || fail "$prebuild is missing: npm run prebuild first"
[ -f dist/cli.js ] || node_modules/.bin/tsc -p tsconfig.json
sum="$(sha256sum "$prebuild" | cut -d' ' -f1)"
node scripts/check-glibc.mjs --arch x64 "$prebuild"

copy="$(mktemp -d "${TMPDIR:-/tmp}/socket-proxyd-matrix.XXXXXX")"
trap 'rm -rf "$copy"' EXIT
tar -C "$root" --exclude=./.git --exclude=./node_modules --exclude=./build --exclude='./build-*' -cf - . | tar -C "$copy" -xf -
ln -s "$root/node_modules" "$copy/node_modules"

summary=()
failed=0
for v in "${versions[@]}"; do
  if [ "$v" = host ]; then node="$(command -v node)"; else node="$(bash scripts/node-bin.sh "$v")"; fi
  prefix="$(dirname "$(dirname "$node")")"
  version="$("$node" -p process.version)"
  echo
  echo "=== node-matrix: $version ($node)"
  resolved="$(cd "$copy" && "$node" -p "require('node-gyp-build').resolve('.')")"
  [ "$resolved" = "$copy/$prebuild" ] || fail "$version: node-gyp-build picks $resolved, not the prebuild"
  (cd "$copy" && "$node" -e '
    const { SocketProxy } = require("./dist/index.js");
    const p = new SocketProxy({ target: "127.0.0.1:9", listen: ["127.0.0.1:0"] });
    p.start().then(() => { console.log(`node-matrix: ${process.version} (N-API ${process.versions.napi}) loaded the prebuild, listening on ${p.listening[0]}`); p.close(); });') ||
    fail "$version could not load $prebuild"
  env=(PATH="$(dirname "$node"):$PATH" KEEP_PREBUILDS=1)
  [ -f "$prefix/include/node/common.gypi" ] && env+=(npm_config_nodedir="$prefix")
  start=$SECONDS
  log="$copy/test-$version.log"
  set +e
  if [ -n "${MATRIX_FILES:-}" ]; then
    files="$MATRIX_FILES"
    for f in $files; do [ -f "$copy/$f" ] || fail "MATRIX_FILES: no such test file: $f"; done
    echo "node-matrix: $version runs $(echo $files | wc -w) test files (MATRIX_FILES): $files"
  else
    # Every test file but the soak: its minute of load is the same code under npm test (this machine's
    # Node) and under ASan, and CI's time is better spent on the rest.
    files=$(cd "$copy" && ls test/*.test.mjs | grep -v '^test/soak\.test\.mjs$')
    echo "node-matrix: $version runs $(echo "$files" | wc -l) test files; left out: test/soak.test.mjs (npm test and the ASan suite run it)"
  fi
  # shellcheck disable=SC2086 # one word per file
  (cd "$copy" && env "${env[@]}" "$node" --test --test-concurrency=1 $files) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p;s/^ℹ $1 \([0-9]*\)$/\1/p" "$log" | tail -n 1; }
  line="$version: tests $(count tests), pass $(count pass), fail $(count fail), skipped $(count skipped) in $((SECONDS - start)) s, exit $rc"
  [ "$(sha256sum "$copy/$prebuild" | cut -d' ' -f1)" = "$sum" ] || { line+=", BUT the prebuild changed"; rc=1; }
  [ "$rc" = 0 ] || failed=1
  summary+=("$line")
done

echo
for line in "${summary[@]}"; do echo "node-matrix: $line"; done
echo "node-matrix: every run loaded $prebuild (sha256 ${sum:0:16})"
[ "$failed" = 0 ] || fail "a suite failed"
