// sd_notify(3), for Type=notify units (when to send WATCHDOG=1 is
// watchdog.ts's). The datagrams are sent by the addon (Node has no UNIX
// datagram sockets). Without NOTIFY_SOCKET everything here is a no-op.
import { addon } from './native';

export interface NotifierOptions {
  env?: NodeJS.ProcessEnv;
  pid?: number;
  /** Called once with the first failure to send (later ones are dropped quietly). */
  onError?: (error: Error) => void;
}

export class Notifier {
  /** $NOTIFY_SOCKET (a path or "@abstract"), or null when not under a notify-aware manager. */
  readonly socket: string | null;
  private failed = false;
  private readonly onError?: (error: Error) => void;
  private lastStatus: string | null = null;

  constructor(options: NotifierOptions = {}) {
    const env = options.env ?? process.env;
    const socket = env.NOTIFY_SOCKET;
    this.socket = socket && (socket.startsWith('/') || socket.startsWith('@')) ? socket : null;
    this.onError = options.onError;
  }

  get enabled(): boolean {
    return this.socket !== null;
  }

  /** Sends one notification ("READY=1", "STATUS=…", several joined by "\n"). Returns false if it was not sent. */
  send(message: string): boolean {
    if (!this.socket) return false;
    try {
      addon.sdNotify(this.socket, message);
      return true;
    } catch (error) {
      if (!this.failed) {
        this.failed = true;
        this.onError?.(error as Error);
      }
      return false;
    }
  }

  ready(status?: string): boolean {
    if (status !== undefined) this.lastStatus = status;
    return this.send(status !== undefined ? `READY=1\nSTATUS=${status}` : 'READY=1');
  }

  stopping(status?: string): boolean {
    if (status !== undefined) this.lastStatus = status;
    return this.send(status !== undefined ? `STOPPING=1\nSTATUS=${status}` : 'STOPPING=1');
  }

  /** Sends STATUS= unless it is the same text as last time. */
  status(text: string): boolean {
    if (text === this.lastStatus) return false;
    this.lastStatus = text;
    return this.send(`STATUS=${text}`);
  }

  watchdog(): boolean {
    return this.send('WATCHDOG=1');
  }
}
