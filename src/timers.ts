// Timers of any length: setTimeout alone tops out at about 24.8 days (and
// fires at once for Infinity).
import { MAX_TIMER_MS } from './defaults';

/**
 * Calls `fn` once after `ms` (any length); never for Infinity. Returns a
 * function that cancels it. `unref` lets the process exit while it waits.
 */
export function longTimeout(ms: number, fn: () => void, { unref = false } = {}): () => void {
  let timer: NodeJS.Timeout | null = null;
  const deadline = Date.now() + ms;
  const arm = () => {
    const left = deadline - Date.now();
    if (left <= 0) {
      timer = null;
      fn();
      return;
    }
    timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    if (unref) timer.unref();
  };
  if (Number.isFinite(ms)) arm();
  return () => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
}
