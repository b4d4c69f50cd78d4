export { SocketProxy, LogLevel } from './proxy';
export type { SocketProxyOptions, ProxyStats, SocketProxyEvents, KeepaliveOptions } from './proxy';
export { parseAddress, formatAddress, type Address } from './target';
export type { CodedError } from './errors';
