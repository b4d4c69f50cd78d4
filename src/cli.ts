// Minimal command line (full option parity arrives with the systemd issue).
import { addon } from './native';
import { SocketProxy } from './proxy';

const SD_LISTEN_FDS_START = 3;

function fail(message: string): never {
  process.stderr.write(`socket-proxyd: ${message}\n`);
  process.exit(1);
}

function listenFds(): number[] {
  const pid = process.env.LISTEN_PID;
  const count = process.env.LISTEN_FDS;
  delete process.env.LISTEN_PID;
  delete process.env.LISTEN_FDS;
  delete process.env.LISTEN_FDNAMES;
  if (!pid || !count || Number(pid) !== process.pid) return [];
  const n = Number(count);
  if (!Number.isInteger(n) || n < 0) fail(`invalid LISTEN_FDS=${count}`);
  return Array.from({ length: n }, (_, i) => SD_LISTEN_FDS_START + i);
}

async function main(argv: string[]): Promise<void> {
  const positional: string[] = [];
  const listen: string[] = [];
  let maxConnections = 256;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (name: string) => {
      const eq = arg.indexOf('=');
      if (eq >= 0) return arg.slice(eq + 1);
      if (i + 1 >= argv.length) fail(`option ${name} needs a value`);
      return argv[++i];
    };
    if (arg === '-c' || arg.startsWith('--connections-max')) {
      maxConnections = Number(value('--connections-max'));
      if (!Number.isInteger(maxConnections) || maxConnections < 1) fail('connections-max: invalid value');
    } else if (arg.startsWith('--listen')) {
      listen.push(value('--listen'));
    } else if (arg.startsWith('-') && arg !== '-') {
      fail(`unknown option ${arg}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 1) fail('expected exactly one target: HOST:PORT or UNIX-DOMAIN-SOCKET-PATH');
  addon.raiseFdLimit();
  const fds = listenFds();
  for (const fd of fds) {
    const info = addon.inspectFd(fd);
    if (!info.socket || info.type !== 'stream' || !info.listening) fail(`fd ${fd} is not a listening stream socket`);
  }
  if (fds.length === 0 && listen.length === 0) fail("Didn't get any sockets passed in.");
  const proxy = new SocketProxy({ target: positional[0], fds, listen, maxConnections });
  proxy.on('log', (_level, message) => process.stderr.write(`${message}\n`));
  await proxy.start();
  const stop = () => {
    proxy.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main(process.argv.slice(2)).catch((error: unknown) => fail(error instanceof Error ? error.message : String(error)));
