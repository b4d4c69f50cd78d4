#include "shovel.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>

#include "forwarder.h"
#include "syscalls.h"

namespace proxyd {

ShovelResult Shovel::Move(Connection* c, Direction& d, size_t* moved) {
  Tally tally;
  ShovelResult result = Turn(c, d, &tally);
  *moved += tally.moved;
  d.bytes += tally.moved;
  // Counted once per turn: the counters are shared by every worker.
  if (tally.moved > 0) owner_->Count(d.counter, static_cast<int64_t>(tally.moved));
  if (tally.copy_reads > 0) owner_->Count(kCopyReads, static_cast<int64_t>(tally.copy_reads));
  if (tally.splice_reads > 0) owner_->Count(kSpliceReads, static_cast<int64_t>(tally.splice_reads));
  return result;
}

ShovelResult Shovel::Turn(Connection* c, Direction& d, Tally* tally) {
  assert(c->connected && !c->closed);
  while (!d.done) {
    bool no_pipe = false;
    Step read = Read(d, tally, &no_pipe);
    if (read == Step::kFailed) return ShovelResult::kFailed;
    if (no_pipe) return ShovelResult::kNoPipe;  // the bytes stay in the socket

    Step write = SpliceOut(d, &tally->moved);
    if (write == Step::kFailed) return ShovelResult::kFailed;
    if (d.pipe.open() && d.pipe.bytes == 0) pool_->Release(&d.pipe);

    if (d.eof && !d.pipe.open()) {
      // Everything `from` sent before its end is delivered; an end by error
      // fails the connection now (each peer gets a reset), a clean one is
      // passed on.
      if (d.read_error != 0) {
        Fail("read from", d.from, d.read_error);
        return ShovelResult::kFailed;
      }
      return PassEnd(c, d) == Step::kFailed ? ShovelResult::kFailed : ShovelResult::kIdle;
    }
    // Interrupted: readiness is unknown, not gone. Come back on the next loop
    // turn rather than retry here (an EINTR storm must not pin the thread).
    if (read == Step::kInterrupted || write == Step::kInterrupted) return ShovelResult::kYield;
    if (read != Step::kProgress && write != Step::kProgress) break;
    if (tally->moved >= kTurnBudget) return ShovelResult::kYield;
  }
  return ShovelResult::kIdle;
}

// Takes bytes from `from`: through the copy path while small messages come and
// a spare pipe is at hand to catch what `to` does not take at once, otherwise
// into the direction's pipe.
Shovel::Step Shovel::Read(Direction& d, Tally* tally, bool* no_pipe) {
  Pipe& pipe = d.pipe;
  if (d.eof || !d.from->readable) return Step::kNone;
  if (!d.bulk && !pipe.open() && d.to->writable && pool_->has_spare()) {
    Step step = CopyThrough(d, &tally->moved);
    if (step == Step::kProgress) ++tally->copy_reads;
    return step;
  }
  if (pipe.open() && pipe.bytes >= pipe.capacity) return Step::kNone;
  if (!pipe.open() && !pool_->Acquire(&pipe)) {
    int err = errno;
    if (!IsResourceShortage(err)) return Fail("pipe for", d.to, err);
    // No pipe to be had: pass on what `to` takes at once, straight from the
    // socket's queue. Waiting instead could deadlock: peers that stop reading
    // until their own writes go through, each connection holding one pipe
    // and needing a second.
    // (Not past urgent data: a mark arriving between peek and take could
    // make the two disagree.)
    if (d.to->writable && !d.from->urgent) {
      Step step = PeekThrough(d, &tally->moved);
      if (step == Step::kProgress) ++tally->copy_reads;
      return step;
    }
    *no_pipe = true;
    failure_ = ShovelFailure{"pipe for", d.to, err};
    return Step::kNone;
  }
  if (!d.from->urgent) {
    Step step = SpliceIntoPipe(d);
    if (step == Step::kProgress) ++tally->splice_reads;
    return step;
  }
  // tcp_read_sock stops at the urgent mark, so splice would answer EAGAIN (or
  // 0 after a FIN) there forever: recv steps over it. Only into an empty pipe,
  // which surely takes what was read.
  if (pipe.bytes > 0) return Step::kNone;
  Step step = RecvIntoPipe(d);
  if (step == Step::kProgress) ++tally->copy_reads;
  return step;
}

// One recv from `from` and one send to `to` through the buffer. What `to` does
// not take goes into a spare pipe, which holds it all: no more than its
// capacity was read.
Shovel::Step Shovel::CopyThrough(Direction& d, size_t* moved) {
  size_t n = 0;
  Step step = ReceiveChunk(d, std::min(pool_->next_spare_capacity(), kCopyChunk), &n);
  if (step != Step::kProgress || n == 0) return step;
  ssize_t sent = send(d.to->fd, buffer_.get(), n, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (sent < 0) {
    int err = errno;
    if (!IsWouldBlock(err) && !IsInterrupted(err)) return Fail("send to", d.to, err);
    if (IsWouldBlock(err)) d.to->writable = false;
    sent = 0;
  }
  *moved += static_cast<size_t>(sent);
  if (static_cast<size_t>(sent) == n) return Step::kProgress;
  if (!pool_->Acquire(&d.pipe)) {  // takes the spare checked for above: no syscall, no failure
    return Fail("pipe for", d.to, errno);
  }
  return FillEmptyPipe(d, static_cast<size_t>(sent), n - static_cast<size_t>(sent));
}

// Without a pipe: a recv(MSG_PEEK) from `from`, a send to `to`, and a recv that
// takes from `from` exactly what `to` took. Nothing is held in between, so
// nothing needs a place to wait.
Shovel::Step Shovel::PeekThrough(Direction& d, size_t* moved) {
  ssize_t got = recv(d.from->fd, buffer_.get(), kCopyChunk, MSG_PEEK | MSG_DONTWAIT);
  if (got == 0) {
    d.eof = true;
    return Step::kProgress;
  }
  if (got < 0) return ReadFailed(d, errno);
  ssize_t sent = send(d.to->fd, buffer_.get(), static_cast<size_t>(got), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (sent < 0) {
    int err = errno;
    if (IsWouldBlock(err)) {
      d.to->writable = false;
      return Step::kNone;
    }
    if (IsInterrupted(err)) return Step::kInterrupted;
    return Fail("send to", d.to, err);
  }
  // The peeked bytes are still queued: take exactly the `sent` of them (a
  // UNIX peer's passed fds may split the read, hence the loop). EINTR is
  // retried on the spot here, a bounded number of times: these bytes were
  // sent already, so leaving them queued would send them twice.
  int interruptions = 0;
  for (ssize_t taken = 0; taken < sent;) {
    ssize_t n = recv(d.from->fd, buffer_.get(), static_cast<size_t>(sent - taken), MSG_DONTWAIT);
    if (n < 0 && IsInterrupted(errno) && ++interruptions <= kMaxInterruptions) continue;
    if (n <= 0) return Fail("recv from", d.from, n < 0 ? errno : EIO);
    taken += n;
  }
  *moved += static_cast<size_t>(sent);
  return Step::kProgress;
}

// One splice from `from` into the direction's pipe, as much as it has room for.
Shovel::Step Shovel::SpliceIntoPipe(Direction& d) {
  Pipe& pipe = d.pipe;
  ssize_t n = splice(d.from->fd, nullptr, pipe.write_end, nullptr, pipe.capacity - pipe.bytes,
                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n > 0) {
    pipe.bytes += static_cast<size_t>(n);
    if (static_cast<size_t>(n) < kCopyChunk) d.bulk = false;
    return Step::kProgress;
  }
  int err = n == 0 ? 0 : errno;
  if (IsWouldBlock(err) && pipe.bytes > 0) {
    // With bytes in the pipe, EAGAIN may mean the pipe ran out of slots
    // rather than the socket of data: keep `readable` and drain first.
    return Step::kNone;
  }
  if (IsWouldBlock(err) || IsInterrupted(err)) return ReadFailed(d, err);
  return SpliceEnded(d, err);
}

// splice answered 0 (an end) or an error. That is not always the end of the
// bytes: tcp_read_sock stops at an urgent mark, and past a FIN or a reset it
// then answers 0 or the error with in-band bytes still queued behind the mark
// (urgent data and the end can come before EPOLLPRI is seen). recv steps over
// the mark, so a peek tells: bytes left means read on with recv.
Shovel::Step Shovel::SpliceEnded(Direction& d, int err) {
  char byte;
  ssize_t left = recv(d.from->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (left > 0) {
    d.from->urgent = true;
    return Step::kProgress;
  }
  if (left < 0 && IsInterrupted(errno)) return Step::kInterrupted;  // splice again, peek again
  // The error the end was hiding (EAGAIN cannot follow an end: trust the end).
  if (left < 0 && err == 0 && !IsWouldBlock(errno)) return ReadFailed(d, errno);
  if (err == 0) {
    d.eof = true;
    return Step::kProgress;
  }
  return ReadFailed(d, err);
}

// One recv from `from` into the direction's empty pipe, through the buffer:
// the read path for a side that has sent urgent data.
Shovel::Step Shovel::RecvIntoPipe(Direction& d) {
  size_t n = 0;
  Step step = ReceiveChunk(d, std::min(d.pipe.capacity, kCopyChunk), &n);
  if (step != Step::kProgress || n == 0) return step;
  return FillEmptyPipe(d, 0, n);
}

// One recv of at most `want` bytes from `from` into the buffer; `*n` tells how
// many came (0 with d.eof set at the end of the stream).
Shovel::Step Shovel::ReceiveChunk(Direction& d, size_t want, size_t* n) {
  *n = 0;
  iovec iov{buffer_.get(), want};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t got = recvmsg(d.from->fd, &msg, MSG_DONTWAIT);
  if (got == 0) {
    d.eof = true;
    return Step::kProgress;
  }
  if (got < 0) return ReadFailed(d, errno);
  *n = static_cast<size_t>(got);
  if (*n == want) {
    d.bulk = true;
  } else if (!d.from->read_until_eagain && !(msg.msg_flags & MSG_CTRUNC)) {
    // A stream socket's recv stops short only when its queue is empty; new
    // bytes raise a new edge. Not after an end or urgent data was seen:
    // recv stops before those, and they raise no second edge. Nor after fds
    // a UNIX peer passed (dropped here, as splice drops them): the read
    // stops after them, and MSG_CTRUNC says so.
    d.from->readable = false;
  }
  return Step::kProgress;
}

// Writes `len` bytes of the buffer, from `offset`, into the direction's empty
// pipe, which takes them all: no more than its capacity.
Shovel::Step Shovel::FillEmptyPipe(Direction& d, size_t offset, size_t len) {
  assert(d.pipe.open() && d.pipe.bytes == 0 && len <= d.pipe.capacity);
  ssize_t written;
  int interruptions = 0;
  do {
    written = write(d.pipe.write_end, buffer_.get() + offset, len);
  } while (written < 0 && IsInterrupted(errno) && ++interruptions <= kMaxInterruptions);
  if (written != static_cast<ssize_t>(len)) {
    // Cannot happen; never lose bytes quietly.
    return Fail("write to pipe for", d.to, written < 0 ? errno : EAGAIN);
  }
  d.pipe.bytes = len;
  return Step::kProgress;
}

// Delivers what the pipe holds to `to`, as much as it takes.
Shovel::Step Shovel::SpliceOut(Direction& d, size_t* moved) {
  Pipe& pipe = d.pipe;
  if (!pipe.open() || pipe.bytes == 0 || !d.to->writable) return Step::kNone;
  ssize_t n = splice(pipe.read_end, nullptr, d.to->fd, nullptr, pipe.bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n > 0) {
    pipe.bytes -= static_cast<size_t>(n);
    *moved += static_cast<size_t>(n);
    return Step::kProgress;
  }
  int err = n == 0 ? EPIPE : errno;
  if (IsWouldBlock(err)) {
    d.to->writable = false;
    return Step::kNone;
  }
  if (IsInterrupted(err)) return Step::kInterrupted;
  return Fail("splice to", d.to, err);
}

// Everything before the end has been delivered: pass the end on and let the
// other direction carry on (half-close). When that one is finished too, the
// close() that follows sends the end: both sockets were read to their end, so
// it is a FIN, not a reset.
Shovel::Step Shovel::PassEnd(Connection* c, Direction& d) {
  if (!c->other(d).done && shutdown(d.to->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
    return Fail("shutdown", d.to, errno);
  }
  d.done = true;
  if (c->ended_first == nullptr) c->ended_first = d.from;
  return Step::kProgress;
}

// A read from `from` failed. EAGAIN: drained, wait for epoll. EINTR: come
// back. Anything else (a reset): the stream from `from` ends here with an
// error, delivered as a reset once the bytes read before it have left.
Shovel::Step Shovel::ReadFailed(Direction& d, int err) {
  if (IsWouldBlock(err)) {
    d.from->readable = false;
    return Step::kNone;
  }
  if (IsInterrupted(err)) return Step::kInterrupted;
  d.eof = true;
  d.read_error = err;
  return Step::kProgress;
}

Shovel::Step Shovel::Fail(const char* what, const Side* side, int err) {
  failure_ = ShovelFailure{what, side, err};
  return Step::kFailed;
}

}  // namespace proxyd
