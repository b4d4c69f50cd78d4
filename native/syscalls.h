// Small system-call helpers shared by the engine (worker, shovel, pipe pool)
// and the JS-facing socket helpers (net.cc): one errno-to-text, one clock, and
// named errno predicates so every call site applies the same rules.
#pragma once

#include <errno.h>

#include <cstdint>
#include <string>

namespace proxyd {

// CLOCK_MONOTONIC in milliseconds: deadlines never jump with the wall clock.
int64_t NowMs();
// The same clock in microseconds: for latencies (histograms, the access log).
int64_t NowUs();

// strerror_r's text for `err` ("Connection reset by peer").
std::string ErrnoText(int err);

// The pending error of a socket (SO_ERROR), or errno if that cannot be read.
int SocketError(int fd);

bool IsInet(int family);

// The call may succeed if made again: EINTR (a signal, or a fault injected in
// a test) and EAGAIN (nothing to do now). The rule everywhere: EAGAIN clears
// readiness and waits for epoll; EINTR keeps readiness and comes back to the
// connection on the next loop turn (never loops on the spot, never stalls).
inline bool IsInterrupted(int err) { return err == EINTR; }
inline bool IsWouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

// This process or the kernel is out of something (fds, buffers, memory,
// epoll watches): waiting helps, retrying at once does not, and the peer is
// not to blame.
inline bool IsResourceShortage(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM || err == ENOSPC;
}

// Nobody listens at the target (yet): a TCP port that refuses, a UNIX socket
// path that does not exist or has no listener. --connect-retry waits these out.
inline bool IsRefusal(int err) { return err == ECONNREFUSED || err == ENOENT; }

// The peer or the network ended the connection: routine, logged at debug.
bool IsDisconnect(int err);

// accept4() failed for that one client only (it went away, or a firewall
// refused it): take the next one at once.
bool IsAcceptAgain(int err);

// close() that never retries: on Linux the fd is released even when close
// reports EINTR, so a retry could close a number another thread just reused.
void CloseFd(int fd);

// Closes a connected socket so that the peer gets a reset (SO_LINGER 0), not a
// clean end of stream: for connections ended by an error, so a loss never
// looks like success.
void ResetAndClose(int fd);

}  // namespace proxyd
