#include "pipe_pool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>

#include "syscalls.h"

namespace proxyd {

PipePool::~PipePool() {
  while (!spares_.empty()) DestroySpare();
}

bool PipePool::Init() {
  // Made first, then released: acquiring and releasing one at a time would
  // hand the same pipe back each time.
  Pipe reserve[kReserve];
  bool made = true;
  int err = 0;
  for (Pipe& pipe : reserve) {
    if (!Make(&pipe)) {
      made = false;
      err = errno;
      break;
    }
  }
  for (Pipe& pipe : reserve) {
    if (pipe.open()) Release(&pipe);  // the destructor closes the spares
  }
  errno = err;
  return made;
}

bool PipePool::Acquire(Pipe* p) {
  assert(!p->open());
  if (spares_.empty()) return Make(p);
  *p = spares_.back();
  spares_.pop_back();
  low_water_ = std::min(low_water_, spares_.size());
  owner_->Count(kPipesPooled, -1);
  owner_->Count(kPipesInUse, 1);
  return true;
}

bool PipePool::Make(Pipe* p) {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return false;
  // The kernel may refuse the size (fs.pipe-max-size, or the user's
  // fs.pipe-user-pages-soft): then the pipe keeps the size it was given, and
  // every worker gives back its spares, which count against the same pages.
  if (fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(owner_->config_.pipe_size)) < 0) {
    int err = errno;
    owner_->ShrinkPipePools();
    if (!owner_->pipe_size_warned_.exchange(true)) {
      owner_->Log(kLogWarning, "Pipes are smaller than " + std::to_string(owner_->config_.pipe_size) +
                                   " bytes (F_SETPIPE_SZ: " + ErrnoText(err) +
                                   "); forwarding goes on in smaller steps.");
    }
  }
  int capacity = fcntl(fds[1], F_GETPIPE_SZ);
  if (capacity <= 0) {
    int err = capacity == 0 ? EINVAL : errno;
    CloseFd(fds[0]);
    CloseFd(fds[1]);
    errno = err;
    return false;
  }
  p->read_end = fds[0];
  p->write_end = fds[1];
  p->capacity = static_cast<size_t>(capacity);
  p->bytes = 0;
  owner_->Count(kPipesInUse, 1);
  return true;
}

void PipePool::Release(Pipe* p) {
  assert(p->open() && p->bytes == 0);
  if (spares_.size() >= kMaxSpares) {
    Destroy(p);
    return;
  }
  spares_.push_back(*p);
  *p = Pipe{};
  owner_->Count(kPipesInUse, -1);
  owner_->Count(kPipesPooled, 1);
  if (next_trim_at_ == 0 && spares_.size() > kReserve) {
    low_water_ = spares_.size();
    next_trim_at_ = NowMs() + kTrimPeriodMs;
  }
}

void PipePool::Destroy(Pipe* p) {
  assert(p->open());
  CloseFd(p->read_end);
  CloseFd(p->write_end);
  *p = Pipe{};
  owner_->Count(kPipesInUse, -1);
}

void PipePool::DestroySpare() {
  Pipe& p = spares_.back();
  CloseFd(p.read_end);
  CloseFd(p.write_end);
  spares_.pop_back();
  owner_->Count(kPipesPooled, -1);
}

void PipePool::Trim(int64_t now) {
  if (next_trim_at_ == 0 || now < next_trim_at_) return;
  size_t unused = std::min(low_water_, spares_.size());
  for (size_t excess = unused > kReserve ? unused - kReserve : 0; excess > 0; --excess) DestroySpare();
  low_water_ = spares_.size();
  next_trim_at_ = spares_.size() > kReserve ? now + kTrimPeriodMs : 0;
}

void PipePool::ShrinkToReserve() {
  while (spares_.size() > kReserve) DestroySpare();
  low_water_ = std::min(low_water_, spares_.size());
  next_trim_at_ = 0;
}

}  // namespace proxyd
