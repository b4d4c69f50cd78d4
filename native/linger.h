// Lingering close: the TCP socket of a connection that ended cleanly is kept
// open while the peer has not yet acknowledged the last bytes sent to it, and
// closed once it has. Closed at once, such a socket becomes an orphan, and the
// kernel resets orphans that still hold data whenever TCP memory is over its
// hard limit or orphans are too many (TcpExt TCPAbortOnMemory): a slow reader
// would lose the tail of a stream that had ended cleanly, and see a reset.
//
// The connection itself is over (counted, logged, its place free); only the
// fd stays, watched by nothing but a backoff timer that asks the kernel how
// much is still unacknowledged. Lingering is given up (the socket closed as it
// would have been, the kernel finishing the delivery) after kMaxLingerMs, past
// the capacity (a quarter of the fd limit), when fds or memory run short, and
// when the engine closes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace proxyd {

class Forwarder;

class Linger {
 public:
  static constexpr int64_t kMaxLingerMs = 60000;
  static constexpr int kFirstCheckMs = 10;
  static constexpr int kMaxCheckMs = 1000;

  explicit Linger(Forwarder* owner) : owner_(owner) {}
  ~Linger();
  Linger(const Linger&) = delete;
  Linger& operator=(const Linger&) = delete;

  // At most this many sockets linger at once; past it they are closed at once
  // (counted as given up), so lingering never takes the fds new clients need.
  void set_capacity(size_t capacity) { capacity_ = capacity; }

  // Takes `fd` (a socket of a connection that ended cleanly) if bytes sent on
  // it are still unacknowledged, and ends its sending side (the FIN close()
  // would have sent): true, and the caller must not close it. False: nothing
  // in flight (or not TCP), the caller closes it now.
  bool Adopt(int fd, int64_t now);
  // Closes the sockets whose bytes were all acknowledged, or that waited long enough.
  void Run(int64_t now);
  // When Run wants to run next; 0 when nothing lingers.
  int64_t next_check_at() const { return heap_.empty() ? 0 : heap_.front().check_at; }
  // Closes every lingering socket now (fds are short, or the engine closes).
  void GiveUpAll();

 private:
  struct Entry {
    int64_t check_at;
    int64_t give_up_at;
    int backoff_ms;
    int fd;
  };
  static bool Later(const Entry& a, const Entry& b) { return a.check_at > b.check_at; }
  void Release(int fd, bool delivered);

  Forwarder* owner_;
  size_t capacity_ = 1024;
  std::vector<Entry> heap_;  // a min-heap by check_at
};

}  // namespace proxyd
