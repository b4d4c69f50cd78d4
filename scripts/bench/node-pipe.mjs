// A plain Node.js TCP proxy with net.Socket.pipe(), for comparison in scripts/bench.mjs.
// usage: node node-pipe.mjs LISTEN_HOST:PORT TARGET_HOST:PORT
import net from 'node:net';

const split = (s) => { const i = s.lastIndexOf(':'); return [s.slice(0, i), Number(s.slice(i + 1))]; };
const [lhost, lport] = split(process.argv[2]);
const [thost, tport] = split(process.argv[3]);

const server = net.createServer({ noDelay: true }, (client) => {
  const upstream = net.connect({ host: thost, port: tport, noDelay: true });
  client.pipe(upstream);
  upstream.pipe(client);
  const close = () => { client.destroy(); upstream.destroy(); };
  client.on('error', close);
  upstream.on('error', close);
  client.on('close', close);
  upstream.on('close', close);
});
server.maxConnections = 1e6;
server.listen({ host: lhost, port: lport, backlog: 4096 }, () => process.stdout.write('ready\n'));
