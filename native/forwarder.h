// The Forwarder: owns the worker threads (worker.h) and what they share — the
// configuration, the counter block JS reads, the target addresses, the
// connection limit — and hands commands to them (stop accepting, ping, stop).
// No N-API in here: engine.cc is the JavaScript-facing wrapper.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "proxy_header.h"
#include "socket_options.h"

namespace proxyd {

// Slots of the counter block shared with JavaScript (a BigUint64Array over the
// same memory). Workers update them with relaxed atomics; JS only reads.
enum Counter : unsigned {
  kActive,           // connections open now (accepted, not yet closed)
  kAccepted,         // clients accepted and served (not refused)
  kRefused,          // clients closed at once because the limit was reached
  kUpstreamFailed,   // clients closed because no target address connected
  kBytesToUpstream,  // bytes forwarded client -> upstream
  kBytesToClient,    // bytes forwarded upstream -> client
  kPipesInUse,       // pipes held by connections with bytes in flight
  kPipesPooled,      // spare pipes kept by the workers
  kBusyPeriods,      // times kOpen left 0 (bumped before the activity event is sent)
  kCopyReads,        // reads that went through the copy path (recv + send)
  kSpliceReads,      // reads that went through a pipe with splice
  kIdleTimeouts,     // connections closed (reset) by the idle timeout
  kRetriedConnects,  // clients that waited for a refusing upstream (connect retry)
  // kUpstreamFailed by cause (the rest: other causes)
  kUpstreamRefused,      // nothing listening (ECONNREFUSED; a UNIX path missing)
  kUpstreamTimeout,      // no answer within the connect timeout
  kUpstreamUnreachable,  // no route, network down, address not available
  kUpstreamNoAddress,    // the target name resolved to nothing (yet)
  // Connections closed, by cause (with kIdleTimeouts and kUpstreamFailed,
  // every accepted connection ends in exactly one of them)
  kClosedClientEnd,      // both directions ended cleanly, the client's first
  kClosedUpstreamEnd,    // ... the upstream's first
  kClosedClientReset,    // a reset or error on the client's side
  kClosedUpstreamReset,  // ... on the upstream's side
  kClosedError,          // a failure of the proxy's own
  kClosedDrain,          // cut because the engine closed
  // Datagram forwarding
  kUdpSessions,             // sessions open now
  kUdpSessionsOpened,
  kUdpSessionsExpired,      // ended by --udp-timeout
  kUdpSessionsEvicted,      // ended to make room (--udp-sessions-max)
  kUdpDatagramsToUpstream,
  kUdpDatagramsToClient,
  kUdpBytesToUpstream,
  kUdpBytesToClient,
  kUdpDropped,              // not forwarded: a full socket, no session to be had
  kUdpUpstreamRefused,      // ICMP port unreachable from the upstream
  // Lingering close (linger.h)
  kSocketsLingering,  // sockets of ended connections kept until the peer acknowledged the last bytes
  kLingersGivenUp,    // ... closed before it had (longest wait, over capacity, fds or memory short, engine closed)
  // Connections and sessions open: what 'busy'/'idle' and --exit-idle-time follow
  kOpen,
  kCounterCount,
  // followed by the latency histograms (histograms.h), then one slot per
  // worker: the last watchdog ping it answered
};

enum LogLevel : int { kLogError = 3, kLogWarning = 4, kLogInfo = 6, kLogDebug = 7 };

// A resolved socket address plus how to print it.
struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;
};

// How the workers talk back to the JS thread. Called from worker threads.
class EventSink {
 public:
  virtual ~EventSink() = default;
  // The active count went from 0 to 1 or from 1 to 0: JS re-reads it.
  virtual void OnActivityChanged() = 0;
  virtual void OnLog(int level, std::string message) = 0;
  // A batch of access log lines, joined by '\n'.
  virtual void OnAccessLog(std::string lines) = 0;
};

struct ForwarderConfig {
  std::vector<int> listeners;  // listening sockets; the forwarder owns them
  std::vector<int> datagram_listeners;  // bound UDP sockets; owned too
  std::vector<Endpoint> targets;
  uint32_t max_connections = 256;
  unsigned workers = 1;
  int connect_timeout_ms = 10000;
  size_t pipe_size = 256 * 1024;
  int log_level = kLogInfo;
  ProxyProtocol proxy_protocol = ProxyProtocol::kNone;
  // While the target refuses, clients wait this long for it (0: fail at once).
  int connect_retry_ms = 0;
  // A connection with no byte moved for this long is reset (0: never).
  int idle_timeout_ms = 0;
  Keepalive keepalive;  // on the TCP sockets of every connection (idle 0: off)
  int user_timeout_ms = 0;  // TCP_USER_TIMEOUT on them (0: the kernel's default)
  bool access_log = false;
  int udp_timeout_ms = 30000;
  uint32_t udp_sessions_max = 4096;
};

// Lets a failure that repeats for every client be logged once a second, with
// a count of the ones left unsaid.
struct LogThrottle {
  int64_t last = 0;
  uint64_t suppressed = 0;

  // False if this occurrence should stay quiet; otherwise appends the count of
  // suppressed ones to `message`.
  bool Admit(int64_t now, std::string* message);
};

class Worker;
class PipePool;
class Shovel;

class Forwarder {
 public:
  Forwarder(ForwarderConfig config, std::atomic<uint64_t>* counters, EventSink* sink);
  ~Forwarder();
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;

  // Creates the epoll instances and starts the threads. "" on success; else
  // what failed, with its errno in *error_number (0 if none).
  std::string Start(int* error_number);
  void SetTargets(std::vector<Endpoint> targets);
  void SetMaxConnections(uint32_t limit) { max_connections_.store(limit, std::memory_order_relaxed); }
  void SetLogLevel(int level) { log_level_.store(level, std::memory_order_relaxed); }
  // Stops accepting and closes the listening sockets; open connections go on.
  void StopAccepting();
  // Asks every worker to answer `seq` in its counter slot (watchdog liveness).
  void Ping(uint64_t seq);
  // Closes every connection and listener and joins the threads. Idempotent.
  void Stop();

  unsigned worker_count() const { return config_.workers; }

 private:
  friend class Worker;
  friend class PipePool;
  friend class Shovel;
  friend class AccessLog;
  friend class DatagramForwarder;
  friend class Linger;

  std::shared_ptr<const std::vector<Endpoint>> targets() const;
  void Log(int level, std::string message);
  void DeliverAccessLog(std::string lines) { sink_->OnAccessLog(std::move(lines)); }
  bool ShouldLog(int level) const { return level <= log_level_.load(std::memory_order_relaxed); }
  // Adds `n` (may be negative) to a shared counter.
  void Count(Counter counter, int64_t n) {
    counters_[counter].fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  }
  // Returns false if the limit is reached (and counts the refusal).
  bool AdmitConnection();
  void ReleaseConnection();
  // A connection or session opened / closed: kOpen, busy periods, activity events.
  void OpenActivity();
  void CloseActivity();
  // Fds or pipe pages run short: every worker gives back its spare pipes.
  void ShrinkPipePools();
  // Fds or memory run short: every worker closes its lingering sockets (they
  // hold fds and socket memory, not pipe pages).
  void GiveUpLingering();
  // A worker has left the listening sockets for good (StopAccepting, or its end).
  void OnListenersDropped();
  void CloseListenersLocked();

  ForwarderConfig config_;
  std::atomic<uint64_t>* counters_;
  EventSink* sink_;
  std::atomic<uint32_t> max_connections_;
  std::atomic<int> log_level_;

  mutable std::mutex targets_mutex_;
  std::shared_ptr<const std::vector<Endpoint>> targets_;

  std::vector<std::unique_ptr<Worker>> workers_;
  bool stopped_ = false;

  // The listening sockets are closed only once no worker can refer to them:
  // StopAccepting waits (bounded) until every worker has dropped them; if one
  // is stuck, the last worker to drop them closes them.
  std::mutex ack_mutex_;
  std::condition_variable ack_cv_;
  unsigned listeners_dropped_ = 0;   // workers that left the listeners
  bool close_listeners_on_last_drop_ = false;
  bool listeners_closed_ = false;

  // Commands to the workers, read when their eventfd wakes them.
  std::atomic<bool> stopping_{false};
  std::atomic<bool> accepting_{true};
  std::atomic<uint64_t> ping_seq_{0};
  std::atomic<uint64_t> pool_shrinks_{0};    // ShrinkPipePools requests so far
  std::atomic<uint64_t> linger_give_ups_{0};  // GiveUpLingering requests so far

  // One "out of fds" log line per episode, not one per attempt: an episode
  // ends after a second with no shortage.
  std::atomic<bool> accept_failing_{false};
  std::atomic<int64_t> last_shortage_ms_{0};
  // One "upstream refuses, clients wait" line per episode (--connect-retry):
  // set by the first client that waits, cleared by the first that connects.
  std::atomic<bool> upstream_waiting_{false};
  // One "pipes are smaller than asked" log line per process.
  std::atomic<bool> pipe_size_warned_{false};
};

}  // namespace proxyd
