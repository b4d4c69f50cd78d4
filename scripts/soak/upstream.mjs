// The soak's upstream: its own process (so it can be SIGKILLed), listening on 127.0.0.1:PORT
// (argv[2]). It does what each connection's header asks (protocol.mjs), checks every byte it receives,
// and reports each connection to the soak over IPC when it closes: {id, kind, ok, read, written, end, error}.
import net from 'node:net';
import {
  Checker, HEADER_SIZE, KIND, decodeHeader, encodeTrailer, slice, writeStream,
} from './protocol.mjs';

const port = Number(process.argv[2]);
let reports = [];
const flush = () => {
  if (reports.length && process.connected) process.send({ reports });
  reports = [];
};
setInterval(flush, 200);
process.on('disconnect', () => process.exit(0));

function serve(socket) {
  socket.setNoDelay(true);
  let head = Buffer.alloc(0);
  let h = null;
  let checker = null;
  let received = 0; // payload bytes (after the header)
  let ended = false; // the client's end arrived
  let error = null;
  let onPayload = () => {};
  let onEnd = () => {};
  const trailerAndEnd = () => {
    if (!socket.destroyed && !socket.writableEnded) socket.end(encodeTrailer(checker.ok, received));
  };

  socket.on('data', (chunk) => {
    if (!h) {
      head = Buffer.concat([head, chunk]);
      if (head.length < HEADER_SIZE) return;
      h = decodeHeader(head);
      if (!h) {
        error = 'bad header';
        socket.resetAndDestroy();
        return;
      }
      checker = new Checker(h.seedUp);
      start();
      chunk = head.subarray(HEADER_SIZE);
      if (chunk.length === 0) return;
    }
    checker.push(chunk);
    received += chunk.length;
    onPayload(chunk);
  });
  socket.on('end', () => {
    ended = true;
    onEnd();
  });
  socket.on('error', (e) => (error = e.code ?? String(e)));
  socket.on('close', () => {
    if (!h) return;
    reports.push({
      id: h.id, kind: h.kind, ok: checker.ok, read: socket.bytesRead, written: socket.bytesWritten, end: ended, error,
    });
  });

  function start() {
    switch (h.kind) {
      case KIND.rr:
      case KIND.upstreamReset: {
        let answered = false;
        onPayload = () => {
          if (answered || received < h.upSize) return;
          answered = true;
          if (h.kind === KIND.rr) writeStream(socket, h.seedDown, h.downSize).then((ok) => ok && trailerAndEnd());
          else socket.write(slice(h.seedDown, 0, h.param), () => socket.resetAndDestroy());
        };
        onPayload();
        break;
      }
      case KIND.keepalive: {
        // Round k's answer goes once k requests have arrived whole; answers never overlap.
        let answered = 0;
        let busy = false;
        const pump = async () => {
          if (busy) return;
          busy = true;
          while (answered < h.param && received >= (answered + 1) * h.upSize) {
            if (!(await writeStream(socket, h.seedDown, h.downSize, answered * h.downSize))) return;
            answered++;
          }
          busy = false;
          if (answered === h.param) trailerAndEnd();
        };
        onPayload = pump;
        break;
      }
      case KIND.bulk: {
        let sent = false;
        const finish = () => sent && ended && trailerAndEnd();
        writeStream(socket, h.seedDown, h.downSize).then((ok) => { sent = ok; finish(); });
        onEnd = finish;
        break;
      }
      case KIND.echo:
        onPayload = (chunk) => {
          if (!socket.write(chunk)) {
            socket.pause();
            socket.once('drain', () => socket.resume());
          }
        };
        onEnd = () => socket.end();
        break;
      case KIND.clientReset:
        writeStream(socket, h.seedDown, h.downSize);
        break;
      case KIND.vanish:
        writeStream(socket, h.seedDown, h.downSize).then((ok) => ok && socket.end());
        break;
      case KIND.slow:
        writeStream(socket, h.seedDown, h.downSize).then((ok) => ok && trailerAndEnd());
        break;
      default:
        error = `unknown kind ${h.kind}`;
        socket.resetAndDestroy();
    }
  }
}

const server = net.createServer({ allowHalfOpen: true }, serve);
server.on('error', (e) => {
  console.error(`soak upstream: ${e.message}`);
  process.exit(1);
});
server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => process.send({ ready: true }));
