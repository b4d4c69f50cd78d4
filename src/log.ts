// Logging to stderr, the way systemd's own daemons do it: plain lines on a
// terminal; under systemd (stderr is the stream named by JOURNAL_STREAM) each
// line starts with its syslog priority, "<3>", so the journal keeps levels.
import fs from 'node:fs';

/** The syslog levels, as systemd names them; the index is the level. */
export const LOG_LEVELS = ['emerg', 'alert', 'crit', 'err', 'warning', 'notice', 'info', 'debug'] as const;

/** The levels the proxy logs at (its 'log' events and the daemon's lines). */
export const LogLevel = { error: 3, warning: 4, notice: 5, info: 6, debug: 7 } as const;

const ALIASES: Record<string, number> = { emergency: 0, critical: 2, error: 3, warn: 4 };

/**
 * A syslog level from a number 0–7 or a name as systemd spells it (emerg,
 * alert, crit, err, warning, notice, info, debug; also error, warn,
 * critical, emergency). Case-insensitive. Returns null if it is neither.
 */
export function parseLogLevel(text: string): number | null {
  const t = text.trim().toLowerCase();
  if (/^[0-7]$/.test(t)) return Number(t);
  const i = (LOG_LEVELS as readonly string[]).indexOf(t);
  if (i >= 0) return i;
  return ALIASES[t] ?? null;
}

/**
 * True when stderr is the journal stream systemd set up for us: JOURNAL_STREAM
 * is "DEVICE:INODE" of that stream (as sd-journal's stderr_is_journal() checks;
 * a variable inherited by some other process's stderr does not count).
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const value = env.JOURNAL_STREAM;
  if (!value) return false;
  const m = /^(\d+):(\d+)$/.exec(value);
  if (!m) return false;
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]) && st.ino === BigInt(m[2]);
  } catch {
    return false;
  }
}

export interface LoggerOptions {
  level?: number;
  /** Prefix lines with "<N>" (default: stderrIsJournal()). */
  journal?: boolean;
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
}

export class Logger {
  level: number;
  readonly journal: boolean;
  private readonly write: (line: string) => void;

  constructor(options: LoggerOptions = {}) {
    this.level = options.level ?? LogLevel.info;
    this.journal = options.journal ?? stderrIsJournal();
    this.write = options.write ?? writeStderr;
  }

  enabled(level: number): boolean {
    return level <= this.level;
  }

  log(level: number, message: string): void {
    if (!this.enabled(level)) return;
    const text = message.replace(/\n/g, ' ');
    this.write(this.journal ? `<${level}>${text}\n` : `${text}\n`);
  }

  /** Several lines at one level, in one write. */
  logLines(level: number, messages: string[]): void {
    if (!this.enabled(level) || messages.length === 0) return;
    const prefix = this.journal ? `<${level}>` : '';
    let text = '';
    for (const m of messages) text += `${prefix}${m.replace(/\n/g, ' ')}\n`;
    this.write(text);
  }

  error(message: string): void {
    this.log(LogLevel.error, message);
  }

  warning(message: string): void {
    this.log(LogLevel.warning, message);
  }

  info(message: string): void {
    this.log(LogLevel.info, message);
  }

  debug(message: string): void {
    this.log(LogLevel.debug, message);
  }
}

let stderrGuarded = false;

// A closed stderr (EPIPE) must never take the proxy down: lines are dropped.
function writeStderr(line: string): void {
  if (!stderrGuarded) {
    stderrGuarded = true;
    process.stderr.on('error', () => {});
  }
  try {
    process.stderr.write(line);
  } catch {
    // nowhere left to complain
  }
}
