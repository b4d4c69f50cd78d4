export { SocketProxy, LogLevel } from './proxy';
export type { SocketProxyOptions, ProxyStats, SocketProxyEvents } from './proxy';
export { parseAddress, formatAddress, type Address } from './target';
export type { CodedError } from './errors';
