// The connection model: what an epoll event points at (Watch), the two sockets
// of a connection (Side), the pipe that carries one direction's bytes in
// flight (Pipe), each direction (Direction) and the connection itself.
#pragma once

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "forwarder.h"
#include "list.h"
#include "proxy_header.h"

namespace proxyd {

// What an epoll event's data.ptr points at.
struct Watch {
  enum Kind : uint8_t { kWake, kListener, kSide, kDatagramListener, kSession } kind;
  explicit Watch(Kind k) : kind(k) {}
};

struct Connection;

// One socket of a connection and what epoll last told us about it.
struct Side : Watch {
  Connection* conn;
  const char* name;
  int fd = -1;
  bool readable = false;
  bool writable = false;
  // An end (or urgent data) was seen: read until EAGAIN, a short read proves nothing.
  bool read_until_eagain = false;
  // Urgent (out-of-band) data was seen: splice would stop at its mark for good.
  bool urgent = false;
  // An error (a reset) was reported: what came before it is read, then the error.
  bool failed = false;
  Side(Connection* c, const char* n) : Watch(kSide), conn(c), name(n) {}

  // Readiness as epoll reports it (edge-triggered: remembered until a
  // syscall answers EAGAIN).
  void NoteEvents(uint32_t events) {
    if (events & EPOLLERR) failed = true;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLPRI | EPOLLERR)) readable = true;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLPRI | EPOLLERR)) read_until_eagain = true;
    if (events & EPOLLPRI) urgent = true;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) writable = true;
  }
};

struct Pipe {
  int read_end = -1;
  int write_end = -1;
  size_t capacity = 0;
  size_t bytes = 0;  // in the pipe now
  bool open() const { return read_end >= 0; }
};

// One direction of a connection: from -> pipe -> to.
struct Direction {
  Side* from;
  Side* to;
  Counter counter;
  Pipe pipe;
  bool eof = false;   // `from` ended its stream (read_error: with an error)
  int read_error = 0;
  bool done = false;  // ...and that end reached `to` as shutdown(SHUT_WR)
  bool bulk = false;  // the last read filled its buffer: splice, don't copy
  uint64_t bytes = 0;  // delivered to `to` so far
  Direction(Side* f, Side* t, Counter c) : from(f), to(t), counter(c) {}
};

// What a connection waits for, besides epoll: each kind has its own list in
// the worker, ordered by `Connection::deadline`.
enum class Wait : uint8_t {
  kNone,
  kConnect,     // connect() in progress; deadline: give up on this address
  kSocketFds,   // socket() failed for lack of fds; deadline: try again
  kPipe,        // no pipe could be made for lack of fds; deadline: try again
  kRetry,       // every target refused (--connect-retry); deadline: try them again
};

// How a connection ended: the access log's end= and the closed-by-cause counters.
enum class EndCause : uint8_t {
  kClientEnd,       // both directions ended cleanly, the client's first
  kUpstreamEnd,     // ... the upstream's first
  kClientReset,     // a reset or error on the client's side (also: it gave up waiting)
  kUpstreamReset,   // ... on the upstream's side
  kError,           // a failure of the proxy's own, not a peer's
  kDrain,           // cut because the engine closed
  kIdleTimeout,     // no byte moved for --idle-timeout
  kConnectFailed,   // no target address connected
};

// What the access log needs to know about a connection beyond the engine's
// own state: kept only while the log is on.
struct AccessInfo {
  sockaddr_storage peer{};
  socklen_t peer_len = 0;
  sockaddr_storage local{};
  socklen_t local_len = 0;
  std::string upstream;  // the address connected to, or the last one tried
};

// Why no target address connected (the failure counters and the access log's
// connect-failed:REASON), from the last address's errno.
enum class ConnectFailure : uint8_t { kRefused, kTimeout, kUnreachable, kNoAddress, kOther };

inline ConnectFailure ClassifyConnectFailure(int err, bool no_address) {
  if (no_address) return ConnectFailure::kNoAddress;
  switch (err) {
    case ECONNREFUSED:
    case ENOENT:  // a UNIX socket path with nothing there
      return ConnectFailure::kRefused;
    case ETIMEDOUT:
      return ConnectFailure::kTimeout;
    case ENETUNREACH:
    case EHOSTUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case EADDRNOTAVAIL:
      return ConnectFailure::kUnreachable;
    default:
      return ConnectFailure::kOther;
  }
}

struct Connection {
  Side client{this, "client"};
  Side upstream{this, "upstream"};
  Direction to_upstream{&client, &upstream, kBytesToUpstream};
  Direction to_client{&upstream, &client, kBytesToClient};
  // Until connected: the addresses to try, the next one, and when to stop
  // waiting for fds.
  std::shared_ptr<const std::vector<Endpoint>> targets;
  size_t next_target = 0;
  int64_t give_up_at = 0;
  // Connect retry: until when, the next pause, and whether a target refused
  // in the current round of addresses.
  int64_t retry_until = 0;
  int retry_backoff_ms = 0;  // 0: has not waited yet
  bool refused = false;
  Wait wait = Wait::kNone;
  int64_t deadline = 0;  // of `wait`
  bool connected = false;
  bool closed = false;
  // The PROXY protocol header, then how much of it the upstream has taken:
  // no client byte goes upstream before all of it.
  uint8_t header_length = 0;
  uint8_t header_sent = 0;
  bool header_corked = false;  // sent with MSG_MORE: the client's bytes were to follow
  bool upstream_is_tcp = false;
  char header[kMaxProxyHeader];
  int64_t last_active = 0;  // the worker's clock when a byte last moved (idle timeout)
  int64_t accepted_us = 0;   // for the latency histograms and the access log
  int64_t connected_us = 0;
  const Side* ended_first = nullptr;  // whose clean end came first
  std::unique_ptr<AccessInfo> access;  // only while the access log is on
  Link<Connection> all{this};      // every open connection of the worker
  Link<Connection> waiting{this};  // on the worker's list for `wait`
  Link<Connection> ready{this};    // ran out of budget (or was interrupted) with work left
  Link<Connection> idle{this};     // connected: on the worker's list by last_active

  bool header_pending() const { return header_sent < header_length; }
  Direction& other(const Direction& d) { return &d == &to_upstream ? to_client : to_upstream; }
};

}  // namespace proxyd
