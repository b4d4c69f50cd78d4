// The PROXY protocol header when its send() does not go through at once: the
// worker thread's first sendto (the header's) fails with EINTR or EAGAIN,
// injected by strace. The client has already sent its bytes (it came while the
// upstream was not listening yet, and waited: connect retry); they must reach
// the upstream only after the whole header, and nothing may be lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { engineChild, straceAttach, threadId } from './fault-helpers.mjs';
import { collect, connectTo, freePort, waitFor } from './helpers.mjs';

/**
 * An upstream that records what it receives. It speaks (a banner) only when
 * told to: with an injected EAGAIN the proxy waits for the upstream socket to
 * report writable again, and any event on it re-reports that.
 */
async function recordingUpstream(port) {
  const sockets = [];
  const received = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    const i = sockets.push(s) - 1;
    received[i] = Buffer.alloc(0);
    s.on('data', (d) => (received[i] = Buffer.concat([received[i], d])));
    s.on('end', () => s.end());
    s.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    sockets,
    received,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
}

// EINTR twice: the connect handler's attempt and the retry right after it, so
// the header is still pending while the client's bytes are there to move.
for (const [errno, failures] of [['EINTR', 2], ['EAGAIN', 1]]) {
  test(`PROXY header: send() failing with ${errno} (${failures}×) is retried, and the client's bytes follow the whole header`, { timeout: 60_000 }, async () => {
    const upstreamPort = await freePort();
    const proxy = await engineChild({
      listen: [{ host: '127.0.0.1', port: 0 }], targets: [{ host: '127.0.0.1', port: upstreamPort }], workers: 1,
      proxyProtocol: 1, connectRetryMs: 30_000,
    });
    let strace = null;
    let client = null;
    let upstream = null;
    try {
      const port = Number(proxy.listeners[0].address.split(':').pop());
      strace = await straceAttach([threadId(proxy.pid, 'proxyd-wrk0')], ['trace=sendto', `inject=sendto:error=${errno}:when=1..${failures}`]);
      client = await connectTo(`127.0.0.1:${port}`);
      client.on('error', () => {});
      const got = collect(client, { keep: true });
      const request = Buffer.from('client speaks at once\n');
      client.write(request);
      // The client waits for the upstream; its bytes are in, and the proxy knows.
      assert.ok(await waitFor(async () => (await proxy.stats()).retriedConnects === 1, 15_000), 'the client did not wait');
      upstream = await recordingUpstream(upstreamPort);
      assert.ok(await waitFor(() => new RegExp(`sendto\\(.*PROXY TCP4.*${errno}.*\\(INJECTED\\)`).test(strace.output()), 15_000),
        `the fault was not injected:\n${strace.output()}`);
      assert.ok(await waitFor(() => upstream.sockets.length === 1, 15_000), 'the upstream got no connection');
      // The upstream speaks: whatever the header waits for, this event ends it.
      upstream.sockets[0].write('220 banner\r\n');
      const header = `PROXY TCP4 127.0.0.1 127.0.0.1 ${client.localPort} ${port}\r\n`;
      const expected = Buffer.concat([Buffer.from(header), request]);
      assert.ok(await waitFor(() => upstream.received[0].length >= expected.length, 15_000),
        `the upstream got ${JSON.stringify(upstream.received[0].toString())}`);
      client.end();
      assert.equal((await got).data.toString(), "220 banner\r\n");
      assert.equal(upstream.received[0].toString(), expected.toString(), 'header first, whole, then the client bytes');
      const trace = await strace.stop();
      strace = null;
      // The failed attempts, then the header again, whole, in one send.
      assert.equal(trace.match(/sendto\([^\n]*PROXY TCP4/g).length, failures + 1, trace);
    } finally {
      client?.destroy();
      await strace?.stop();
      await proxy.close();
      await upstream?.close();
    }
  });
}
