// --exit-idle-time: a timer counted from start and from every return to zero
// connections, cancelled while the proxy is busy. When it runs out the
// daemon stops accepting first, and only then looks at the count (shutdown.ts).
import type { SocketProxy } from './proxy';
import { longTimeout } from './timers';

export class IdleExit {
  private cancel: (() => void) | null = null;
  private readonly arm = () => {
    this.disarm();
    this.cancel = longTimeout(this.idleMs, () => {
      this.cancel = null;
      this.onIdle();
    });
  };
  private readonly disarm = () => {
    this.cancel?.();
    this.cancel = null;
  };

  /** `idleMs` Infinity: never fires. */
  constructor(
    private readonly proxy: SocketProxy,
    private readonly idleMs: number,
    private readonly onIdle: () => void,
  ) {}

  start(): void {
    if (!Number.isFinite(this.idleMs)) return;
    this.proxy.on('busy', this.disarm);
    this.proxy.on('idle', this.arm);
    if (this.proxy.active === 0) this.arm();
  }

  stop(): void {
    this.disarm();
    this.proxy.off('busy', this.disarm);
    this.proxy.off('idle', this.arm);
  }
}
