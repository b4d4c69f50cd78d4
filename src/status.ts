// STATUS= for the service manager: live figures, refreshed at most once per
// STATUS_INTERVAL_MS and sent only when the text changed (Notifier.status).
import type { Notifier } from './notify';
import type { SocketProxy } from './proxy';

/** How often STATUS= is refreshed. */
export const STATUS_INTERVAL_MS = 1000;

/** "1 connection", "2 connections". */
export const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

export class StatusReporter {
  private timer: NodeJS.Timeout | null = null;
  /** Set once the daemon stops: "Stopping to …" instead of "Forwarding to …". */
  stopping = false;

  constructor(
    private readonly notifier: Notifier,
    private readonly proxy: SocketProxy,
    private readonly target: string,
    private readonly maxConnections: number,
  ) {}

  text(): string {
    const s = this.proxy.stats;
    const parts = [`${s.active} of ${this.maxConnections} connections open`, `${s.accepted} served`];
    if (s.refused) parts.push(`${s.refused} refused at the limit`);
    if (s.upstreamFailed) parts.push(`${s.upstreamFailed} failed to connect`);
    const resets = s.closedClientReset + s.closedUpstreamReset;
    if (resets) parts.push(`${resets} reset`);
    if (s.closedError) parts.push(plural(s.closedError, 'error'));
    if (s.idleTimeouts) parts.push(`${s.idleTimeouts} closed idle`);
    if (this.proxy.forwardsDatagrams) parts.push(plural(s.udpSessions, 'UDP session'));
    return `${this.stopping ? 'Stopping' : 'Forwarding'} to ${this.target}: ${parts.join(', ')}`;
  }

  /** READY=1 with the first STATUS=, then refreshes (the timer does not keep the process alive). */
  ready(): void {
    this.notifier.ready(this.text());
    if (!this.notifier.enabled || this.timer) return;
    this.timer = setInterval(() => this.notifier.status(this.text()), STATUS_INTERVAL_MS);
    this.timer.unref();
  }

  /** STOPPING=1 (once) with the status from now on. */
  stoppingNow(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.notifier.stopping(this.text());
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
