// Options set on each connection's sockets: TCP_NODELAY (small messages are
// forwarded as they come, not held back), and TCP keepalive with a user
// timeout, so that a peer that vanished (a suspended laptop, a pulled cable)
// ends its connection instead of holding it, and its upstream, forever.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>

namespace proxyd {

struct Keepalive {
  int idle_s = 0;      // TCP_KEEPIDLE; 0: keepalive off
  int interval_s = 0;  // TCP_KEEPINTVL
  int count = 0;       // TCP_KEEPCNT
  bool enabled() const { return idle_s > 0; }
  // TCP_USER_TIMEOUT: unacknowledged data gives up after the same span as
  // unanswered probes, so a dead peer is found whether or not bytes are queued
  // (at most INT_MAX ms, what the kernel takes: about 24.8 days).
  int user_timeout_ms() const {
    int64_t ms = (int64_t{idle_s} + int64_t{interval_s} * count) * 1000;
    return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
  }
};

// False with errno set (and *what naming the option) if a setsockopt failed.
bool SetNoDelay(int fd, const char** what);
bool SetKeepalive(int fd, const Keepalive& keepalive, const char** what);

}  // namespace proxyd
