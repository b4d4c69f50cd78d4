// Socket activation: the listening sockets systemd passes in, read like
// sd_listen_fds(unset_environment=1) and checked like systemd-socket-proxyd
// checks them (each must be a listening SOCK_STREAM socket).
import { addon, type FdInfo } from './native';

export const SD_LISTEN_FDS_START = 3;

export interface PassedSocket {
  fd: number;
  /** From LISTEN_FDNAMES ("unknown" when not named, as sd_listen_fds_with_names says). */
  name: string;
}

/** Something wrong with the passed sockets: print the message, exit 1. */
export class ActivationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ActivationError';
  }
}

const VARIABLES = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'] as const;

function parsePositive(text: string): number | null {
  return /^[0-9]+$/.test(text.trim()) ? Number(text.trim()) : null;
}

/**
 * The fds passed in by the service manager, or [] when none were passed to
 * this process (no LISTEN_PID, or it names another process). Removes the
 * variables from `env` either way, so no child inherits them. `fdLimit` is
 * the soft RLIMIT_NOFILE (fds are below it): a count that cannot fit is an
 * error, found before anything is allocated for it.
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid, fdLimit = Infinity): PassedSocket[] {
  const pidText = env.LISTEN_PID;
  const countText = env.LISTEN_FDS;
  const namesText = env.LISTEN_FDNAMES;
  for (const v of VARIABLES) delete env[v];

  if (pidText === undefined) return [];
  const listenPid = parsePositive(pidText);
  if (listenPid === null || listenPid === 0) {
    throw new ActivationError(`Failed to receive sockets from parent: invalid LISTEN_PID=${pidText}`);
  }
  if (listenPid !== pid) return []; // meant for another process
  if (countText === undefined) return [];
  const count = parsePositive(countText);
  if (count === null || count > 0x7fffffff - SD_LISTEN_FDS_START) {
    throw new ActivationError(`Failed to receive sockets from parent: invalid LISTEN_FDS=${countText}`);
  }
  if (SD_LISTEN_FDS_START + count > fdLimit) {
    throw new ActivationError(
      `Failed to receive sockets from parent: LISTEN_FDS=${countText} is more than the file descriptor limit allows ` +
        `(${fdLimit}, so at most ${Math.max(0, fdLimit - SD_LISTEN_FDS_START)} from fd ${SD_LISTEN_FDS_START} on)`,
    );
  }
  const names = namesText === undefined || namesText === '' ? [] : namesText.split(':');
  return Array.from({ length: count }, (_, i) => ({
    fd: SD_LISTEN_FDS_START + i,
    name: names[i] || 'unknown',
  }));
}

function describe(info: FdInfo): string {
  if (!info.socket) return 'not a socket';
  const kind = info.type === 'stream' ? (info.listening ? 'a listening stream socket' : 'a stream socket that is not listening') : `a ${info.type ?? 'unknown'} socket`;
  return info.address ? `${kind} (${info.family} ${info.address})` : kind;
}

/** What a passed socket is, for log lines: `fd 3 "web" (127.0.0.1:8000)`. */
export function socketLabel(socket: PassedSocket, info?: FdInfo): string {
  const named = socket.name !== 'unknown' ? ` "${socket.name}"` : '';
  return `fd ${socket.fd}${named}${info?.address ? ` (${info.address})` : ''}`;
}

/**
 * Checks each passed fd is a listening SOCK_STREAM socket (as
 * sd_is_socket(fd, 0, SOCK_STREAM, 1) does) or a bound UDP socket (its
 * datagrams are forwarded); returns what each one is. Throws ActivationError
 * naming the first that is neither.
 */
export function checkListenFds(sockets: PassedSocket[]): FdInfo[] {
  return sockets.map((socket) => {
    let info: FdInfo;
    try {
      info = addon.inspectFd(socket.fd);
    } catch (error) {
      throw new ActivationError(`Failed to determine socket type of ${socketLabel(socket)}: ${(error as Error).message}`);
    }
    if (info.socket && info.type === 'dgram') {
      if (info.family !== 'inet' && info.family !== 'inet6') {
        throw new ActivationError(`Passed in datagram socket is not a UDP socket: ${socketLabel(socket)} is ${describe(info)}.`);
      }
      if (!info.address || /:0$/.test(info.address)) {
        throw new ActivationError(`Passed in datagram socket is not bound: ${socketLabel(socket)} is ${describe(info)}.`);
      }
      return info;
    }
    if (!info.socket || info.type !== 'stream' || !info.listening) {
      throw new ActivationError(
        `Passed in socket is not a stream socket: ${socketLabel(socket)} is ${describe(info)}.`,
      );
    }
    return info;
  });
}
