// --metrics=ADDRESS: the Prometheus text format at /metrics, served over HTTP
// from the JS thread. The socket is bound by the addon, like --listen's, so an
// abstract name is used at its exact length (Node's net pads it with NULs) and
// a bind failure carries the errno's name.
import fs from 'node:fs';
import http from 'node:http';
import { addon } from './native';
import type { SocketProxy } from './proxy';
import { formatAddress, toEndpoint, type Address } from './target';

export interface MetricsServer {
  /** The address it listens on, as the kernel reports it. */
  address: string;
  /** Stops serving; removes the socket file of a UNIX path. */
  close(): void;
}

/** Binds `address` (throws with the errno's `.code` if it cannot) and serves `proxy.metrics()` at /metrics. */
export function serveMetrics(address: Address, proxy: SocketProxy, onError: (error: Error) => void): MetricsServer {
  let fd: number;
  try {
    fd = addon.bindListener(toEndpoint(address), 64);
  } catch (error) {
    const e = error as Error & { code?: string };
    // The addon says "Failed to listen on ADDRESS: REASON"; keep the reason.
    const reason = e.message.startsWith('Failed to listen on ') ? e.message.slice(e.message.lastIndexOf(': ') + 2) : e.message;
    const wrapped = new Error(`Failed to listen for metrics on ${formatAddress(address)}: ${reason}`) as Error & { code?: string };
    wrapped.code = e.code;
    throw wrapped;
  }
  const bound = addon.inspectFd(fd).address ?? formatAddress(address);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' }).end('Method not allowed\n');
      return;
    }
    proxy.metrics().then(
      (text) => {
        res.writeHead(200, { 'Content-Type': proxy.metricsRegistry().contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (error: Error) => {
        onError(error);
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end('Failed to collect the metrics\n');
      },
    );
  });
  // A scraper that goes away mid-answer is its own business.
  server.on('clientError', (_error, socket) => socket.destroy());
  server.listen({ fd });
  // Scrapes never keep the process alive: the proxy decides when it exits.
  server.unref();
  return {
    address: bound,
    close: () => {
      server.close();
      // A socket file left behind would make the next start fail (EADDRINUSE).
      if (address.kind === 'unix' && address.path.startsWith('/')) {
        try {
          fs.unlinkSync(address.path);
        } catch {
          // already gone
        }
      }
    },
  };
}
