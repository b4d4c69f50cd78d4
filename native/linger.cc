#include "linger.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>

#include "forwarder.h"
#include "syscalls.h"

namespace proxyd {
namespace {

// Whether data sent on `fd` still waits for the peer's acknowledgement. False
// when all of it was acknowledged, when the connection is gone (a reset: the
// kernel dropped the rest already), when it is not TCP (a UNIX socket hands
// what it sends straight to its peer's queue, which outlives the close), and
// when the kernel cannot say (nothing to wait for then).
bool HasUnacknowledgedData(int fd) {
  int queued = 0;
  if (ioctl(fd, SIOCOUTQ, &queued) < 0 || queued == 0) return false;
  tcp_info info{};
  socklen_t length = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) < 0) return false;
  switch (info.tcpi_state) {
    case TCP_CLOSE:
      return false;
    // The sending side was shut down: its FIN takes a sequence number too, so
    // 1 is the FIN alone.
    case TCP_FIN_WAIT1:
    case TCP_CLOSING:
    case TCP_LAST_ACK:
      return queued > 1;
    default:
      return true;
  }
}

}  // namespace

Linger::~Linger() {
  // Empty in practice: a worker's loop ends by giving up on every lingering
  // socket (counted), and one that never ran adopted none. Closed regardless.
  for (const Entry& e : heap_) CloseFd(e.fd);
}

bool Linger::Adopt(int fd, int64_t now) {
  if (!HasUnacknowledgedData(fd)) return false;
  if (heap_.size() >= capacity_) {
    owner_->Count(kLingersGivenUp, 1);
    return false;
  }
  // The end goes out behind the data now, as close() would have sent it (the
  // last direction to finish leaves that to close()). Failing (ENOTCONN: the
  // peer reset meanwhile), there is nothing left to wait for.
  if (shutdown(fd, SHUT_WR) < 0) return false;
  heap_.push_back(Entry{now + kFirstCheckMs, now + kMaxLingerMs, kFirstCheckMs, fd});
  std::push_heap(heap_.begin(), heap_.end(), Later);
  owner_->Count(kSocketsLingering, 1);
  return true;
}

void Linger::Run(int64_t now) {
  while (!heap_.empty() && heap_.front().check_at <= now) {
    std::pop_heap(heap_.begin(), heap_.end(), Later);
    Entry& e = heap_.back();
    bool delivered = !HasUnacknowledgedData(e.fd);
    if (delivered || now >= e.give_up_at) {
      Release(e.fd, delivered);
      heap_.pop_back();
      continue;
    }
    // A peer that reads slowly is asked less and less often.
    e.backoff_ms = std::min(e.backoff_ms * 2, kMaxCheckMs);
    e.check_at = std::min(now + e.backoff_ms, e.give_up_at);
    std::push_heap(heap_.begin(), heap_.end(), Later);
  }
}

void Linger::GiveUpAll() {
  for (const Entry& e : heap_) Release(e.fd, !HasUnacknowledgedData(e.fd));
  heap_.clear();
}

void Linger::Release(int fd, bool delivered) {
  CloseFd(fd);
  owner_->Count(kSocketsLingering, -1);
  if (!delivered) owner_->Count(kLingersGivenUp, 1);
}

}  // namespace proxyd
