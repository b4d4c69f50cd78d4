// Errors the library throws carry a `.code`, like Node's own: callers branch
// on the code, never on the wording.
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

/**
 * Gives `error` a `.code` if it has none (the addon sets the errno's name,
 * EADDRINUSE…, on failed system calls): `fallback` then. Returns it (an
 * Error, whatever was thrown).
 */
export function withCode(error: unknown, fallback: string): CodedError {
  const e = (error instanceof Error ? error : new Error(String(error))) as Partial<CodedError> & Error;
  if (typeof e.code !== 'string' || e.code === '') e.code = fallback;
  return e as CodedError;
}
