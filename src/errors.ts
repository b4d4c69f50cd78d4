// Errors the library throws carry a `.code`, like Node's own: callers branch
// on the code, never on the wording.
import util from 'node:util';

/** An Error with the `.code` every error thrown to library callers has. */
export interface CodedError extends Error {
  code: string;
}

/** Invalid options: a value of the wrong type (TypeError) or out of range. */
export const ERR_INVALID_ARG_TYPE = 'ERR_INVALID_ARG_TYPE';
export const ERR_INVALID_ARG_VALUE = 'ERR_INVALID_ARG_VALUE';
/** start() on a proxy that is starting or started. */
export const ERR_PROXY_STARTED = 'ERR_PROXY_STARTED';
/** start() on a closed proxy, or close() while start() was under way. */
export const ERR_PROXY_CLOSED = 'ERR_PROXY_CLOSED';
/** The forwarding engine could not start (and the error names no errno). */
export const ERR_PROXY_START_FAILED = 'ERR_PROXY_START_FAILED';

export function codedError(code: string, message: string, Kind: ErrorConstructor = Error): CodedError {
  const error = new Kind(message) as CodedError;
  error.code = code;
  return error;
}

// glibc's strerror() texts that libuv words differently.
const GLIBC_TEXTS: Record<string, string> = {
  'cannot assign requested address': 'EADDRNOTAVAIL',
  'address family not supported by protocol': 'EAFNOSUPPORT',
  'too many open files in system': 'ENFILE',
  'transport endpoint is already connected': 'EISCONN',
  'no buffer space available': 'ENOBUFS',
};

let errnoByText: Map<string, string> | null = null;

/** The errno name (EADDRINUSE…) whose strerror() text ends `message` ("Failed to listen on X: Address already in use"). */
export function errnoFromMessage(message: string): string | null {
  if (!errnoByText) {
    errnoByText = new Map(Object.entries(GLIBC_TEXTS));
    for (const [name, text] of util.getSystemErrorMap().values()) {
      if (!errnoByText.has(text.toLowerCase())) errnoByText.set(text.toLowerCase(), name);
    }
  }
  const colon = message.lastIndexOf(': ');
  const tail = (colon < 0 ? message : message.slice(colon + 2)).trim().toLowerCase();
  return errnoByText.get(tail) ?? null;
}

/**
 * Gives `error` a `.code` if it has none: the errno its message ends with,
 * else `fallback`. Returns it (an Error, whatever was thrown).
 */
export function withCode(error: unknown, fallback: string): CodedError {
  const e = (error instanceof Error ? error : new Error(String(error))) as Partial<CodedError> & Error;
  if (typeof e.code !== 'string' || e.code === '') e.code = errnoFromMessage(e.message) ?? fallback;
  return e as CodedError;
}
