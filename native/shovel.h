// The shovel: moves one direction's bytes, from -> to, used for both
// directions of every connection. Small messages are copied with recv + send
// through one buffer; bulk goes socket -> pipe -> socket with splice(2) and
// never enters user space. When no pipe can be had (out of fds), bytes are
// peeked, sent, and then taken: slower, but never stuck. It reports what stopped it; the worker decides
// what that means for the connection (close, wait, come back later).
#pragma once

#include <cstddef>
#include <memory>

#include "connection.h"
#include "pipe_pool.h"

namespace proxyd {

class Forwarder;

enum class ShovelResult {
  kIdle,    // both ends would block, or the direction is finished
  kYield,   // work is left (budget spent, or a call was interrupted): come back soon
  kNoPipe,  // a pipe is needed and none can be made for lack of fds: come back later
  kFailed,  // the connection is broken: see failure()
};

// Why a direction failed: "splice from" the "client": "Connection reset by peer".
struct ShovelFailure {
  const char* what = "";
  const Side* side = nullptr;
  int err = 0;
};

class Shovel {
 public:
  // Bytes one direction may move before other connections get their turn.
  static constexpr size_t kTurnBudget = 4u << 20;
  // Reads up to this size are copied rather than spliced: a short recv
  // proves the socket drained, which saves the EAGAIN round a splice needs,
  // and copying a few KiB costs less than splicing them. A full read means
  // bulk: the direction switches to splice until a small read comes again.
  static constexpr size_t kCopyChunk = 16 * 1024;
  // Where bytes already sent must still be taken (or written to a pipe),
  // EINTR is retried on the spot, this many times at most.
  static constexpr int kMaxInterruptions = 64;

  Shovel(Forwarder* owner, PipePool* pool) : owner_(owner), pool_(pool) {}

  // Moves bytes from d.from to d.to until both would block, the direction is
  // finished, or its turn's budget is spent. Never takes more from `from` than
  // the pipe holds, so a slow reader bounds what the proxy buffers. Adds the
  // bytes delivered to `to` to *moved.
  ShovelResult Move(Connection* c, Direction& d, size_t* moved);
  // What failed, after kFailed (or which errno left it without a pipe, after kNoPipe).
  const ShovelFailure& failure() const { return failure_; }

 private:
  enum class Step { kNone, kProgress, kInterrupted, kFailed };
  // What one turn did, added to the shared counters once.
  struct Tally {
    size_t moved = 0;
    size_t copy_reads = 0;
    size_t splice_reads = 0;
  };

  ShovelResult Turn(Connection* c, Direction& d, Tally* tally);
  Step Read(Direction& d, Tally* tally, bool* no_pipe);
  Step CopyThrough(Direction& d, size_t* moved);
  Step PeekThrough(Direction& d, size_t* moved);
  Step SpliceIntoPipe(Direction& d);
  Step SpliceEnded(Direction& d, int err);
  Step RecvIntoPipe(Direction& d);
  Step ReceiveChunk(Direction& d, size_t want, size_t* n);
  Step FillEmptyPipe(Direction& d, size_t offset, size_t len);
  Step SpliceOut(Direction& d, size_t* moved);
  Step PassEnd(Connection* c, Direction& d);
  Step ReadFailed(Direction& d, int err);
  Step Fail(const char* what, const Side* side, int err);

  Forwarder* owner_;
  PipePool* pool_;
  std::unique_ptr<char[]> buffer_{new char[kCopyChunk]};
  ShovelFailure failure_;
};

}  // namespace proxyd
