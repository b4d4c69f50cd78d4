// Options set on each connection's TCP sockets: TCP_NODELAY (small messages
// are forwarded as they come, not held back); TCP keepalive, so that a peer
// that vanished (a suspended laptop, a pulled cable) ends its connection
// instead of holding it, and its upstream, forever; and TCP_USER_TIMEOUT, so
// that data left unacknowledged ends it too.
#pragma once

namespace proxyd {

struct Keepalive {
  int idle_s = 0;      // TCP_KEEPIDLE; 0: keepalive off
  int interval_s = 0;  // TCP_KEEPINTVL
  int count = 0;       // TCP_KEEPCNT
  bool enabled() const { return idle_s > 0; }
};

// False with errno set (and *what naming the option) if a setsockopt failed.
bool SetNoDelay(int fd, const char** what);
bool SetKeepalive(int fd, const Keepalive& keepalive, const char** what);
// Sent data unacknowledged for `ms` ends the connection (ETIMEDOUT). Linux
// counts a peer that keeps its receive window shut (a reader that paused) the
// same way, so this is a separate option, not part of keepalive.
bool SetUserTimeout(int fd, int ms, const char** what);

struct ForwarderConfig;
// What the configuration asks for on a TCP socket of a connection.
bool SetTcpOptions(int fd, const ForwarderConfig& config, const char** what);

}  // namespace proxyd
