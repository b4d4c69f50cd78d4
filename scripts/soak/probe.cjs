// Preloaded into the socket-activated CLI under soak (`node -r probe.cjs bin/socket-proxyd …`), so the
// soak reads the engine's exact counters, which STATUS= only summarises. It only reads: it notes the
// SocketProxy the daemon starts and, four times a second, writes every counter of its shared block
// (addon.COUNTERS: bytes, closes by cause, …) as JSON to $SOAK_PROBE_FILE. The file stays open from the
// start, so the probe holds one fd, always the same one, and never perturbs the fd count the soak samples.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const file = process.env.SOAK_PROBE_FILE;
delete process.env.SOAK_PROBE_FILE;
if (file) {
  const dist = path.join(__dirname, '..', '..', 'dist');
  const { SocketProxy } = require(path.join(dist, 'proxy.js'));
  const { addon } = require(path.join(dist, 'native.js'));
  let proxy = null;
  const start = SocketProxy.prototype.start;
  SocketProxy.prototype.start = function startNoted(...args) {
    proxy = this;
    return start.apply(this, args);
  };
  const fd = fs.openSync(file, 'w');
  setInterval(() => {
    const block = proxy && proxy.counters; // the BigUint64Array over the engine's counters
    if (!block) return;
    const counters = {};
    for (const [name, index] of Object.entries(addon.COUNTERS)) counters[name] = Number(block[index]);
    const text = JSON.stringify({ at: Date.now(), counters });
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, text, 0);
  }, 250).unref();
}
