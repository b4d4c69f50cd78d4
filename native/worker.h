// A worker: one thread, one epoll instance (worker.cc; connecting upstream is
// in upstream.cc). It accepts clients from the shared
// listening sockets, connects each to the target (every address in turn, each
// bounded by the connect timeout; again and again while the target refuses,
// with --connect-retry), sends the PROXY protocol header if asked, and runs
// the shovel for both directions whenever epoll reports readiness. Waits that
// epoll cannot report (connect timeouts, connect retries, retries after running
// out of fds, idle connections, the pipe pool's trim) are deadlines on ordered
// lists, handled by RunTimers.
#pragma once

#include <pthread.h>
#include <sys/epoll.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "access_log.h"
#include "connection.h"
#include "datagram.h"
#include "forwarder.h"
#include "linger.h"
#include "list.h"
#include "pipe_pool.h"
#include "shovel.h"

namespace proxyd {

// A listening socket as one worker's epoll set sees it.
struct ListenerWatch : Watch {
  int fd;
  bool registered = false;  // in this worker's epoll set now
  explicit ListenerWatch(int listen_fd) : Watch(kListener), fd(listen_fd) {}
};

class Worker {
 public:
  // Out of fds: how long clients wait in the backlog, and connections for a
  // socket or a pipe, before the next try.
  static constexpr int kRetryAfterShortageMs = 100;

  Worker(Forwarder* owner, unsigned index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // "" on success; else what failed, with its errno in *error_number.
  std::string Init(int* error_number);
  std::string StartThread(int* error_number);
  void Wake();
  void Join();

 private:
  enum class CloseHow { kEnd, kReset };

  static void* ThreadMain(void* self);
  void Run();
  void HandleEvent(Watch* watch, uint32_t events);
  void OnWake();
  void AckStopAccepting();

  // Timers
  int NextTimeoutMs(int64_t now) const;
  void RunTimers(int64_t now);
  void StartWait(Connection* c, Wait wait, int64_t deadline);
  void EndWait(Connection* c);
  Link<Connection>* WaitList(Wait wait);

  // Accepting
  void OnListenerReadable(ListenerWatch* listener);
  bool PrepareClient(Connection* c, const sockaddr_storage& peer, socklen_t peer_len);
  void PauseAccepting(int err);
  bool AddListeners();
  void ResumeAccepting();
  void DropListeners();

  // Connecting (upstream.cc)
  void ConnectNext(Connection* c, int last_error);
  bool WaitForResources(Connection* c, int err);
  bool RetryLater(Connection* c, int err);
  void OnConnectResult(Connection* c, uint32_t events);
  void OnConnected(Connection* c, uint32_t events);
  bool SendProxyHeader(Connection* c);
  void LogUpstreamFailure(const Connection* c, int err);

  // Forwarding
  void OnSideEvent(Side* side, uint32_t events);
  void Pump(Connection* c);
  void RunReadyQueue();
  void Touch(Connection* c);
  void ExpireIdle(int64_t now);

  // Sockets in the epoll set, and closing
  bool WatchSide(Side* side);
  void CloseSide(Side* side, CloseHow how);
  void Fail(Connection* c, const ShovelFailure& failure);
  // Closes both sides; counts the cause, the duration, and logs the access line.
  // `connect_error`: the last connect's errno, for EndCause::kConnectFailed.
  void Close(Connection* c, CloseHow how, EndCause cause, int connect_error = 0);
  void CloseAll();
  void BuryClosed();

  void Log(int level, std::string message) { owner_->Log(level, std::move(message)); }
  void LogThrottled(LogThrottle* throttle, int level, std::string message);

  Forwarder* owner_;
  unsigned index_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  pthread_t thread_{};
  bool thread_started_ = false;

  Watch wake_watch_{Watch::kWake};
  std::vector<std::unique_ptr<ListenerWatch>> listeners_;
  bool acked_stop_accepting_ = false;
  int64_t resume_accept_at_ = 0;  // 0: not paused
  uint64_t pool_shrinks_seen_ = 0;      // Forwarder::pool_shrinks_ last acted on
  uint64_t linger_give_ups_seen_ = 0;   // Forwarder::linger_give_ups_ last acted on

  Link<Connection> all_;
  Link<Connection> connects_;      // Wait::kConnect, by deadline
  Link<Connection> socket_waits_;  // Wait::kSocketFds, by deadline
  Link<Connection> pipe_waits_;    // Wait::kPipe, by deadline
  Link<Connection> retries_;       // Wait::kRetry, by deadline
  // Connected connections, least recently active first (idle timeout only):
  // a byte moved puts its connection at the back, so only the head can be due.
  Link<Connection> idle_;
  // The loop's clock, read once per turn: what Touch stamps, so the data path
  // never reads a clock of its own.
  int64_t now_ = 0;
  Link<Connection> ready_;
  std::vector<Connection*> graveyard_;  // closed; freed after the event batch

  PipePool pool_;
  Linger linger_;
  Shovel shovel_;
  AccessLog access_log_;
  // The datagram sockets this worker owns (one worker per socket), if any.
  std::unique_ptr<DatagramForwarder> datagram_;

  LogThrottle upstream_failure_log_;
  LogThrottle error_log_;
  LogThrottle accept_resume_log_;
};

}  // namespace proxyd
