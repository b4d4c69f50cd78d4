// The floor for a socket-activated Node.js forwarder's cold start (scripts/bench.mjs,
// coldstart): a listening socket passed in as fd 3, one upstream connection per client.
// CommonJS, like bin/socket-proxyd. usage: node fd3-forwarder.cjs TARGET_HOST:PORT
const net = require('node:net');
const i = process.argv[2].lastIndexOf(':');
net.createServer((client) => {
  const upstream = net.connect(Number(process.argv[2].slice(i + 1)), process.argv[2].slice(0, i));
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
}).listen({ fd: 3 });
