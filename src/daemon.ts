// The daemon: sockets in, READY=1, live STATUS=, watchdog, exit when idle,
// graceful stop on SIGTERM/SIGINT. runDaemon puts together one piece per
// concern: activation.ts (the passed sockets), status.ts, watchdog.ts,
// idle-exit.ts and shutdown.ts (signals, drain, exit).
//
// Exit statuses: 0 after --exit-idle-time or a stop signal (also a second,
// impatient one); 1 when it cannot start (no or unusable sockets, a listen
// address that cannot be bound). Command-line errors are cli.ts's (also 1).
import { ActivationError, checkListenFds, listenFds, socketLabel, type PassedSocket } from './activation';
import { IdleExit } from './idle-exit';
import { LogLevel, Logger, parseLogLevel, stderrIsJournal } from './log';
import { addon } from './native';
import { Notifier } from './notify';
import { timerMs, type CliOptions } from './options';
import { SocketProxy } from './proxy';
import { EXIT_FAILURE, Shutdown } from './shutdown';
import { StatusReporter } from './status';
import type { MetricsServer } from './metrics-server';
import { formatAddress, type Address } from './target';
import { timespanToMs } from './timespan';
import { startWatchdog } from './watchdog';

export { EXIT_FAILURE, EXIT_SUCCESS } from './shutdown';

/** The log level: --log-level, else $SYSTEMD_LOG_LEVEL, else info. */
function logLevelFrom(options: CliOptions, env: NodeJS.ProcessEnv, complain: string[]): number {
  if (options.logLevel !== undefined) return options.logLevel;
  const fromEnv = env.SYSTEMD_LOG_LEVEL;
  if (fromEnv !== undefined && fromEnv !== '') {
    const level = parseLogLevel(fromEnv);
    if (level !== null) return level;
    complain.push(`Failed to parse log level '${fromEnv}'. Ignoring.`);
  }
  return LogLevel.info;
}

function createLogger(options: CliOptions, env: NodeJS.ProcessEnv): Logger {
  const complaints: string[] = [];
  const logger = new Logger({ level: logLevelFrom(options, env, complaints), journal: stderrIsJournal(env) });
  complaints.forEach((c) => logger.warning(c));
  return logger;
}

/** Serves the metrics, loading the HTTP server and prom-client only now (cold start without --metrics pays nothing). */
function startMetrics(address: Address, proxy: SocketProxy, logger: Logger): MetricsServer {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { serveMetrics } = require('./metrics-server') as typeof import('./metrics-server');
  const server = serveMetrics(address, proxy, (error) => logger.warning(`Failed to collect the metrics: ${error.message}`));
  proxy.metricsRegistry(); // prom-client loaded and the registry made before the first scrape
  return server;
}

/** Where a scraper finds them: http://HOST:PORT/metrics, or the socket's path. */
function metricsUrl(address: string): string {
  return address.startsWith('/') || address.startsWith('@') ? `${address} (HTTP, /metrics)` : `http://${address}/metrics`;
}

function die(logger: Logger, message: string): never {
  logger.error(message);
  process.exit(EXIT_FAILURE);
}

/** The highest fd number + 1 this process may have: the soft limit, raised to the hard one. */
function fdLimit(logger: Logger): number {
  const limits = addon.raiseFdLimit();
  logger.debug(`File descriptor limit: ${limits.soft < 0 ? 'unlimited' : limits.soft}.`);
  // "Unlimited" is still capped by the kernel (fs.nr_open, 2^20 by default).
  return limits.soft < 0 ? 2 ** 20 : limits.soft;
}

/** The sockets passed in by the service manager, each checked to be a listening stream socket. */
function receiveSockets(env: NodeJS.ProcessEnv, limit: number, logger: Logger): { passed: PassedSocket[]; labels: string[] } {
  try {
    const passed = listenFds(env, process.pid, limit);
    const infos = checkListenFds(passed);
    return { passed, labels: passed.map((s, i) => socketLabel(s, infos[i])) };
  } catch (error) {
    if (error instanceof ActivationError) die(logger, error.message);
    throw error;
  }
}

/** Runs the proxy until it is told to stop or has been idle long enough; never returns. */
export async function runDaemon(options: CliOptions, env: NodeJS.ProcessEnv = process.env): Promise<never> {
  const logger = createLogger(options, env);
  const limit = fdLimit(logger);
  const { passed, labels } = receiveSockets(env, limit, logger);
  if (passed.length === 0 && options.listen.length === 0) die(logger, "Didn't get any sockets passed in.");

  const notifier = new Notifier({
    env,
    onError: (error) => logger.warning(`Failed to notify the service manager: ${error.message}`),
  });
  const shutdown = new Shutdown({ logger, drainTimeout: options.drainTimeout, exitIdleTime: options.exitIdleTime });
  shutdown.installSignalHandlers();

  let proxy: SocketProxy;
  let metrics: MetricsServer | null = null;
  try {
    // The addresses travel as options.ts parsed them.
    proxy = new SocketProxy({
      target: options.target,
      fds: passed.map((s) => s.fd),
      listen: options.listen,
      maxConnections: options.maxConnections,
      workers: options.workers,
      connectTimeout: Math.max(1, timerMs(options.connectTimeout)),
      resolveInterval: Math.max(1, timerMs(options.resolveInterval)),
      logLevel: logger.level,
      proxyProtocol: options.proxyProtocol,
      connectRetry: options.connectRetry,
      idleTimeout: options.idleTimeout,
      keepalive: options.keepalive,
      userTimeout: options.userTimeout,
      udpTimeout: options.udpTimeout,
      udpSessionsMax: options.udpSessionsMax,
      // Lines below the log level would be built on the workers for nothing.
      accessLog: options.accessLog && logger.enabled(LogLevel.info),
    });
    shutdown.setProxy(proxy);
    proxy.on('log', (level, message) => logger.log(level, message));
    // A batch is one write to stderr, however many lines it holds.
    proxy.on('access', (lines) => logger.logLines(LogLevel.info, lines));
    // Bound before the engine starts: a metrics address that cannot be bound starts nothing.
    if (options.metrics) metrics = startMetrics(options.metrics, proxy, logger);
    await proxy.start();
  } catch (error) {
    // A signal while starting closed the proxy, which failed start(): that exit (0) is under way.
    if (shutdown.stopping) return new Promise<never>(() => {});
    die(logger, error instanceof Error ? error.message : String(error));
  }

  const target = formatAddress(proxy.target);
  logger.info(`Listening on ${[...labels, ...proxy.listening.slice(passed.length)].join(', ')}; forwarding to ${target}.`);
  if (metrics) logger.info(`Serving metrics at ${metricsUrl(metrics.address)}.`);

  // READY=1 only now: every listener is armed.
  const status = new StatusReporter(notifier, proxy, target, options.maxConnections);
  status.ready();
  shutdown.setRunning(status);
  shutdown.onExit(() => status.stop());
  if (metrics) shutdown.onExit(() => metrics?.close());

  const watchdog = startWatchdog(env, notifier, proxy, logger);
  if (watchdog) shutdown.onExit(() => watchdog.stop());

  const idle = new IdleExit(proxy, timespanToMs(options.exitIdleTime), () => shutdown.onIdleTimeout());
  idle.start();
  shutdown.onExit(() => idle.stop());

  return new Promise<never>(() => {});
}
