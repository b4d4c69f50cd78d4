// Prometheus metrics over the engine's counter block. Every figure is read
// from native memory when a scrape asks for it: the workers count (relaxed
// atomics, histogram buckets included) and nothing here runs per connection.
// prom-client is loaded only when metrics are first asked for, so a proxy
// that serves none pays nothing at start-up.
import type * as PromClient from 'prom-client';
import { addon } from './native';

/** What the metrics read: the live counter block and the settings behind the gauges. */
export interface MetricsSource {
  /** The counter block (null before start: every figure reads 0). */
  counters(): BigUint64Array | null;
  workers(): number;
  maxConnections(): number;
}

type Labels = Record<string, string | number>;
type Sample = { value: number; labels?: Labels; metricName?: string };

/**
 * A metric whose values come from a function called at scrape time. prom-client's registry takes
 * any object with `name` and `get()` (as its cluster aggregation does): the cleanest way to expose
 * counters kept elsewhere, histogram buckets included, with no second copy to keep in step.
 */
class ReadOnlyMetric {
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
    private readonly read: () => Sample[],
  ) {}

  async get() {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.read() };
  }

  /** Registry.resetMetrics(): the figures belong to the engine, nothing to reset here. */
  reset(): void {}
}

let client: typeof PromClient | null = null;
let processRegistry: PromClient.Registry | null = null;

/** prom-client, loaded on first use. */
export function promClient(): typeof PromClient {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  client ??= require('prom-client') as typeof PromClient;
  return client;
}

/** prom-client's default process and Node.js metrics (fds, RSS, CPU, event-loop lag, …), once per process. */
export function processMetrics(): PromClient.Registry {
  if (!processRegistry) {
    const { Registry, collectDefaultMetrics } = promClient();
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

export const PREFIX = 'socket_proxyd_';

/** A registry with the proxy's own metrics (socket_proxyd_*), read from `source` at each scrape. */
export function proxyRegistry(source: MetricsSource): PromClient.Registry {
  const { Registry } = promClient();
  const registry = new Registry();
  const K = addon.COUNTERS;
  const at = (c: BigUint64Array | null, slot: number | undefined) =>
    c && slot !== undefined && slot < c.length ? Number(Atomics.load(c, slot)) : 0;
  const one = (slot: number) => (): Sample[] => [{ value: at(source.counters(), slot) }];
  const labelled = (label: string, slots: Record<string, number>) => (): Sample[] => {
    const c = source.counters();
    return Object.entries(slots).map(([value, slot]) => ({ value: at(c, slot), labels: { [label]: value } }));
  };
  const add = (name: string, help: string, type: 'counter' | 'gauge' | 'histogram', read: () => Sample[]) =>
    registry.registerMetric(new ReadOnlyMetric(PREFIX + name, help, type, read) as unknown as PromClient.Metric);

  add('connections_accepted_total', 'Client connections accepted and served (refused ones not counted).', 'counter', one(K.accepted));
  add('connections_refused_total', 'Clients closed at once because the connection limit (-c) was reached.', 'counter', one(K.refused));
  add(
    'upstream_failures_total',
    'Accepted clients closed because no target address accepted a connection, by the last failure\'s cause.',
    'counter',
    () => {
      const c = source.counters();
      const causes = {
        refused: at(c, K.upstreamRefused),
        timeout: at(c, K.upstreamTimeout),
        unreachable: at(c, K.upstreamUnreachable),
        resolve: at(c, K.upstreamNoAddress),
      };
      const known = Object.values(causes).reduce((a, b) => a + b, 0);
      // The total is bumped with its cause; a scrape between the two must not show a negative rest.
      const other = Math.max(0, at(c, K.upstreamFailed) - known);
      return [...Object.entries(causes), ['other', other] as const].map(([cause, value]) => ({ value, labels: { cause } }));
    },
  );
  add(
    'connections_closed_total',
    'Forwarded connections closed, by cause: both sides ended cleanly (the client or the upstream first), a reset or error on one side, a local error, cut by a drain or stop, or the idle timeout.',
    'counter',
    labelled('cause', {
      client_end: K.closedClientEnd,
      upstream_end: K.closedUpstreamEnd,
      client_reset: K.closedClientReset,
      upstream_reset: K.closedUpstreamReset,
      error: K.closedError,
      drain: K.closedDrain,
      idle_timeout: K.idleTimeouts,
    }),
  );
  add('bytes_total', 'Bytes forwarded, by direction.', 'counter', labelled('direction', {
    to_upstream: K.bytesToUpstream,
    to_client: K.bytesToClient,
  }));
  add('connections_retried_total', 'Clients that waited for a refusing upstream (--connect-retry).', 'counter', one(K.retriedConnects));
  add('reads_total', 'Reads by path: copy (recv and send, small messages) or splice (through a pipe, bulk).', 'counter',
    labelled('path', { copy: K.copyReads, splice: K.spliceReads }));
  add('connections_open', 'Connections open now.', 'gauge', one(K.active));
  add('connections_max', 'The connection limit (-c).', 'gauge', () => [{ value: source.maxConnections() }]);
  add('pipes', 'Pipes held by connections with bytes in flight (in_use) and spare ones kept for reuse (pooled).', 'gauge',
    labelled('state', { in_use: K.pipesInUse, pooled: K.pipesPooled }));
  add('workers', 'Forwarding threads.', 'gauge', () => [{ value: source.workers() }]);
  add('sockets_lingering', 'Sockets of connections that ended cleanly, kept open until the peer has acknowledged the last bytes sent to it.', 'gauge',
    one(K.socketsLingering));
  add('lingers_given_up_total', 'Lingering sockets closed before the peer had acknowledged everything (after 60 s, past a quarter of the fd limit, fds or memory short, or the engine closing).', 'counter',
    one(K.lingersGivenUp));

  const histograms = addon.HISTOGRAMS;
  if (histograms) {
    histogram(add, source, 'upstream_connect_duration_seconds',
      'Time from accepting a client to the upstream connection being established (connected clients only; waits for --connect-retry included).',
      histograms.connect);
    histogram(add, source, 'connection_duration_seconds',
      'Time from accepting a client to closing its connection (every accepted connection, failed upstreams included).',
      histograms.duration);
  }
  return registry;
}

/**
 * A histogram from the engine's slots: per-bucket counts (not cumulative, the last one +Inf), then
 * the count and the sum in microseconds. Exposed the Prometheus way: cumulative buckets, seconds.
 */
function histogram(
  add: (name: string, help: string, type: 'histogram', read: () => Sample[]) => void,
  source: MetricsSource,
  name: string,
  help: string,
  { first, bounds }: { first: number; bounds: number[] },
): void {
  const full = PREFIX + name;
  add(name, help, 'histogram', () => {
    const c = source.counters();
    const slot = (i: number) => (c && first + i < c.length ? Number(Atomics.load(c, first + i)) : 0);
    const samples: Sample[] = [];
    let cumulative = 0;
    for (let i = 0; i <= bounds.length; i++) {
      cumulative += slot(i);
      samples.push({ metricName: `${full}_bucket`, labels: { le: i < bounds.length ? bounds[i] : '+Inf' }, value: cumulative });
    }
    samples.push({ metricName: `${full}_sum`, value: slot(bounds.length + 2) / 1e6 });
    // The buckets' total rather than the count slot: a scrape racing a worker could see one bumped
    // and not yet the other, and Prometheus wants _count equal to the +Inf bucket.
    samples.push({ metricName: `${full}_count`, value: cumulative });
    return samples;
  });
}
