#!/usr/bin/env bash
# Loads the linux-x64 prebuild and forwards with it on an older glibc than the build
# machine's (npm run test:old-glibc; root: chroot and mounts):
#   1. a chroot from Debian 11's packages (scripts/sysroot.sh: libc6 2.31, libgcc-s1,
#      libstdc++6 for Node itself) with Node 18.20.8's official binary (scripts/node-bin.sh,
#      from the npm registry; it needs glibc 2.28) and a package tree without build/;
#   2. in it, Node loads the prebuild and reports the glibc it runs on (must be 2.31);
#   3. scripts/check-activated.mjs socket-activates the CLI in the chroot (unshare -m,
#      /proc and /dev mounted in it, then chroot) and forwards through it; the
#      forwarding process must map the chroot's libc, not the host's.
# Debian's archive no longer serves buster (glibc 2.28, the floor itself), so 2.31 is the
# oldest glibc this runs on; the floor is checked by the symbol versions (check-glibc.mjs).
# Needs root, systemd-socket-activate, util-linux (unshare), and the npm registry and
# Debian's archive the first time (kept in build-sysroot/, build-node/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fail() { echo "test-old-glibc: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (chroot, mount)"

prebuild=prebuilds/linux-x64/socket-proxyd.glibc.node
[ -f "$prebuild" ] || fail "$prebuild is missing: npm run prebuild first"
[ -f dist/cli.js ] || node_modules/.bin/tsc -p tsconfig.json
sysroot="$(bash scripts/sysroot.sh x64)"
node18="$(bash scripts/node-bin.sh 18.20.8 x64)"

# 1. the chroot: the sysroot hard-linked (it stays untouched), plus node and the package
jail="$root/build-sysroot/jail-x64"
# the mounts live in unshare's private mount namespace only; never delete through one
clear_jail() {
  for m in proc dev; do ! mountpoint -q "$jail/$m" 2>/dev/null || fail "$jail/$m is a mount point"; done
  rm -rf "$jail"
}
clear_jail
cp -al "$sysroot" "$jail"
mkdir -p "$jail/usr/bin" "$jail/proc" "$jail/dev" "$jail/tmp" "$jail/pkg/prebuilds" "$jail/pkg/node_modules"
cp "$node18" "$jail/usr/bin/node"
cp -r package.json bin dist "$jail/pkg/"
cp -r prebuilds/linux-x64 "$jail/pkg/prebuilds/"
cp -r node_modules/node-gyp-build "$jail/pkg/node_modules/"
inside() {
  env -u NODE_EXTRA_CA_CERTS unshare --mount --propagation private -- \
    sh -c 'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && exec chroot "$0" "$@"' "$jail" "$@"
}

# 2. load it in the chroot
inside /usr/bin/node -e '
  const glibc = process.report.getReport().header.glibcVersionRuntime;
  const resolved = require("/pkg/node_modules/node-gyp-build").resolve("/pkg");
  const addon = require(resolved);
  const fd = addon.bindListener({ host: "127.0.0.1", port: 0 });
  const info = addon.inspectFd(fd);
  addon.closeFd(fd);
  if (!info.listening) throw new Error(`inspectFd: ${JSON.stringify(info)}`);
  console.log(`test-old-glibc: node ${process.version} on glibc ${glibc} in the chroot loaded ${resolved}, bound ${info.address}`);
  if (glibc !== "2.31") throw new Error(`expected glibc 2.31 in the chroot, got ${glibc}`);
' || fail "the prebuild did not load on glibc 2.31"

# 3. forward through the socket-activated CLI in the chroot
node scripts/check-activated.mjs test-old-glibc "$jail/pkg/$prebuild" --maps "$jail/lib/x86_64-linux-gnu/libc-2.31.so" -- \
  unshare --mount --propagation private -- sh -c 'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && exec chroot "$0" "$@"' \
  "$jail" /usr/bin/node /pkg/bin/socket-proxyd '{target}'
clear_jail
echo "test-old-glibc: passed"
