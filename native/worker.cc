#include "worker.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <utility>

#include "histograms.h"
#include "syscalls.h"

namespace proxyd {
namespace {

constexpr int kMaxEvents = 256;
constexpr int kAcceptBatch = 64;
constexpr int kShortageEpisodeGapMs = 1000;
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;

}  // namespace

// ---------------------------------------------------------------------------
// Lifecycle

Worker::Worker(Forwarder* owner, unsigned index)
    : owner_(owner), index_(index), pool_(owner), linger_(owner), shovel_(owner, &pool_), access_log_(owner) {}

Worker::~Worker() {
  assert(!all_.linked() && graveyard_.empty());
  datagram_.reset();  // it leaves the epoll set: before that closes
  CloseFd(wake_fd_);
  CloseFd(epoll_fd_);
}

std::string Worker::Init(int* error_number) {
  auto failed = [&](const char* what) {
    *error_number = errno;
    return std::string(what) + ": " + ErrnoText(*error_number);
  };
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return failed("epoll_create1");
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return failed("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = &wake_watch_;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) < 0) return failed("epoll_ctl(eventfd)");
  for (int fd : owner_->config_.listeners) listeners_.push_back(std::make_unique<ListenerWatch>(fd));
  if (!pool_.Init()) return failed("pipe2");
  // A quarter of the fd limit (at least 16), shared by the workers, may go to
  // lingering sockets (if the limit cannot be read, Linger's default stands).
  rlimit fd_limit{};
  if (getrlimit(RLIMIT_NOFILE, &fd_limit) == 0 && fd_limit.rlim_cur != RLIM_INFINITY) {
    size_t total = std::max<size_t>(16, fd_limit.rlim_cur / 4);
    linger_.set_capacity(std::max<size_t>(1, total / owner_->config_.workers));
  }
  if (!AddListeners()) return failed("epoll_ctl(listener)");
  const std::vector<int>& datagram_fds = owner_->config_.datagram_listeners;
  std::vector<int> mine;
  for (size_t i = index_; i < datagram_fds.size(); i += owner_->config_.workers) mine.push_back(datagram_fds[i]);
  if (!mine.empty()) {
    datagram_ = std::make_unique<DatagramForwarder>(owner_, epoll_fd_);
    std::string error = datagram_->Init(mine, error_number);
    if (!error.empty()) return error;
  }
  return "";
}

std::string Worker::StartThread(int* error_number) {
  // Signals belong to the JS thread; workers never take them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int err = pthread_create(&thread_, nullptr, &Worker::ThreadMain, this);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) {
    *error_number = err;
    return "pthread_create: " + ErrnoText(err);
  }
  thread_started_ = true;
  // Named so that top -H, /proc/PID/task/*/comm and debuggers tell them apart.
  std::string name = "proxyd-wrk" + std::to_string(index_);  // at most 15 characters
  err = pthread_setname_np(thread_, name.c_str());
  if (err != 0) Log(kLogDebug, "pthread_setname_np: " + ErrnoText(err));
  return "";
}

void Worker::Wake() {
  if (wake_fd_ < 0) return;
  uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the worker will wake anyway.
  if (write(wake_fd_, &one, sizeof one) < 0 && !IsWouldBlock(errno)) {
    Log(kLogError, "eventfd write: " + ErrnoText(errno));
  }
}

void Worker::Join() {
  if (!thread_started_) return;
  pthread_join(thread_, nullptr);
  thread_started_ = false;
}

void* Worker::ThreadMain(void* self) {
  static_cast<Worker*>(self)->Run();
  return nullptr;
}

void Worker::Run() {
  epoll_event events[kMaxEvents];
  while (!owner_->stopping_.load(std::memory_order_acquire)) {
    int n = epoll_wait(epoll_fd_, events, kMaxEvents, NextTimeoutMs(NowMs()));
    if (n < 0) {
      if (IsInterrupted(errno)) continue;
      Log(kLogError, "epoll_wait: " + ErrnoText(errno));
      break;
    }
    now_ = NowMs();
    if (datagram_) datagram_->set_now(now_);
    for (int i = 0; i < n; ++i) HandleEvent(static_cast<Watch*>(events[i].data.ptr), events[i].events);
    RunReadyQueue();
    if (datagram_) datagram_->FlushReplies();
    RunTimers(NowMs());
    BuryClosed();
  }
  CloseAll();
  access_log_.Flush(NowMs(), true);
  // A worker that leaves its loop must not leave StopAccepting waiting.
  if (!acked_stop_accepting_) AckStopAccepting();
}

void Worker::HandleEvent(Watch* watch, uint32_t events) {
  switch (watch->kind) {
    case Watch::kWake:
      OnWake();
      break;
    case Watch::kListener:
      OnListenerReadable(static_cast<ListenerWatch*>(watch));
      break;
    case Watch::kSide:
      OnSideEvent(static_cast<Side*>(watch), events);
      break;
    case Watch::kDatagramListener:
      datagram_->OnListenerReadable(static_cast<DatagramListener*>(watch));
      break;
    case Watch::kSession:
      datagram_->OnSessionReadable(static_cast<Session*>(watch));
      break;
  }
}

void Worker::OnWake() {
  uint64_t value;
  if (read(wake_fd_, &value, sizeof value) < 0 && !IsWouldBlock(errno)) {
    Log(kLogError, "eventfd read: " + ErrnoText(errno));
  }
  owner_->counters_[WorkerPingSlot(index_)].store(owner_->ping_seq_.load(std::memory_order_acquire),
                                                  std::memory_order_release);
  uint64_t shrinks = owner_->pool_shrinks_.load(std::memory_order_acquire);
  if (shrinks != pool_shrinks_seen_) {
    pool_shrinks_seen_ = shrinks;
    pool_.ShrinkToReserve();
  }
  uint64_t give_ups = owner_->linger_give_ups_.load(std::memory_order_acquire);
  if (give_ups != linger_give_ups_seen_) {
    linger_give_ups_seen_ = give_ups;
    linger_.GiveUpAll();
  }
  if (!owner_->accepting_.load(std::memory_order_acquire) && !acked_stop_accepting_) AckStopAccepting();
}

// Leaves the listening sockets for good and tells StopAccepting so. Until this
// runs, the listeners stay open: this worker may still refer to them.
void Worker::AckStopAccepting() {
  assert(!acked_stop_accepting_);
  DropListeners();
  // Replies leave from the datagram socket: its sessions end with it.
  if (datagram_) datagram_->Stop();
  resume_accept_at_ = 0;
  acked_stop_accepting_ = true;
  owner_->OnListenersDropped();
}

// ---------------------------------------------------------------------------
// Timers: one list per kind of wait, each in deadline order, so only the heads
// are looked at.

Link<Connection>* Worker::WaitList(Wait wait) {
  switch (wait) {
    case Wait::kConnect: return &connects_;
    case Wait::kSocketFds: return &socket_waits_;
    case Wait::kPipe: return &pipe_waits_;
    case Wait::kRetry: return &retries_;
    case Wait::kNone: break;
  }
  return nullptr;
}

void Worker::StartWait(Connection* c, Wait wait, int64_t deadline) {
  assert(c->wait == Wait::kNone && !c->waiting.linked() && wait != Wait::kNone);
  c->wait = wait;
  c->deadline = deadline;
  // Most lists wait one span for all, so the new deadline is the latest and
  // this stops at once; retry pauses differ, and those walk back a little.
  Link<Connection>* list = WaitList(wait);
  Link<Connection>* before = list;
  while (before->prev != list && before->prev->owner->deadline > deadline) before = before->prev;
  c->waiting.AppendTo(before);  // links c in just before `before`
}

void Worker::EndWait(Connection* c) {
  c->waiting.Unlink();
  c->wait = Wait::kNone;
}

int Worker::NextTimeoutMs(int64_t now) const {
  if (ready_.linked()) return 0;
  int64_t deadline = -1;
  auto consider = [&](int64_t at) {
    if (at != 0 && (deadline < 0 || at < deadline)) deadline = at;
  };
  for (const Link<Connection>* list : {&connects_, &socket_waits_, &pipe_waits_, &retries_}) {
    if (list->linked()) consider(list->first()->deadline);
  }
  if (idle_.linked()) consider(idle_.first()->last_active + owner_->config_.idle_timeout_ms);
  consider(resume_accept_at_);
  consider(pool_.next_trim_at());
  consider(linger_.next_check_at());
  consider(access_log_.next_flush_at());
  if (datagram_) consider(datagram_->next_deadline());
  if (deadline < 0) return -1;
  return deadline <= now ? 0 : static_cast<int>(deadline - now);
}

void Worker::RunTimers(int64_t now) {
  while (connects_.linked() && connects_.first()->deadline <= now) {
    Connection* c = connects_.first();
    EndWait(c);
    CloseSide(&c->upstream, CloseHow::kEnd);
    ConnectNext(c, ETIMEDOUT);
  }
  // Those due now are taken off first: a retry that fails again goes back on
  // the list with a new deadline, and waits for it.
  for (Link<Connection>* list : {&socket_waits_, &pipe_waits_, &retries_}) {
    Link<Connection> due;
    while (list->linked() && list->first()->deadline <= now) {
      Connection* c = list->first();
      c->waiting.Unlink();
      c->waiting.AppendTo(&due);
    }
    while (due.linked()) {
      Connection* c = due.first();
      Wait wait = c->wait;
      EndWait(c);
      switch (wait) {
        case Wait::kPipe:
          Pump(c);
          break;
        case Wait::kSocketFds:
          ConnectNext(c, EMFILE);  // the same address again
          break;
        case Wait::kRetry:
          c->targets = owner_->targets();  // the name may resolve anew meanwhile
          ConnectNext(c, EDESTADDRREQ);
          break;
        case Wait::kConnect:
        case Wait::kNone:
          assert(false);
          break;
      }
    }
  }
  ExpireIdle(now);
  if (datagram_) datagram_->Expire(now);
  access_log_.Flush(now, false);
  if (resume_accept_at_ != 0 && now >= resume_accept_at_) {
    resume_accept_at_ = 0;
    if (owner_->accepting_.load(std::memory_order_acquire)) ResumeAccepting();
  }
  pool_.Trim(now);
  linger_.Run(now);
}

// ---------------------------------------------------------------------------
// Accepting

// Every listener joins this worker's epoll set, or none does: a listener left
// in the set while this worker does not accept from it would be reported
// (level-triggered) without end. False with errno set on failure.
bool Worker::AddListeners() {
  for (auto& l : listeners_) {
    if (l->registered) continue;
    epoll_event ev{};
    // EPOLLEXCLUSIVE: a new client wakes one worker, not all of them.
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.ptr = l.get();
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
      int err = errno;
      DropListeners();
      errno = err;
      return false;
    }
    l->registered = true;
  }
  return true;
}

// After a pause: back into the epoll set, or (ENOSPC, ENOMEM) another try later.
void Worker::ResumeAccepting() {
  if (AddListeners()) return;
  int err = errno;
  resume_accept_at_ = NowMs() + kRetryAfterShortageMs;
  LogThrottled(&accept_resume_log_, kLogWarning,
               "Failed to resume accepting (epoll_ctl: " + ErrnoText(err) + "); retrying every " +
                   std::to_string(kRetryAfterShortageMs) + " ms.");
}

void Worker::DropListeners() {
  for (auto& l : listeners_) {
    if (!l->registered) continue;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, l->fd, nullptr) < 0) {
      Log(kLogError, "epoll_ctl(DEL listener): " + ErrnoText(errno));
    }
    l->registered = false;
  }
}

void Worker::PauseAccepting(int err) {
  // Out of fds (or kernel memory): clients wait in the backlog. Retrying at
  // once would spin, so stop listening for a moment and try again. Spare
  // pipes and lingering sockets hold fds too: every worker gives them up.
  DropListeners();
  pool_.ShrinkToReserve();
  linger_.GiveUpAll();
  owner_->ShrinkPipePools();
  owner_->GiveUpLingering();
  int64_t now = NowMs();
  resume_accept_at_ = now + kRetryAfterShortageMs;
  owner_->last_shortage_ms_.store(now, std::memory_order_relaxed);
  if (!owner_->accept_failing_.exchange(true)) {
    Log(kLogWarning, "Not accepting new connections for now (" + ErrnoText(err) + "); retrying every " +
                         std::to_string(kRetryAfterShortageMs) + " ms.");
  }
}

void Worker::OnListenerReadable(ListenerWatch* listener) {
  if (!listener->registered) return;  // dropped earlier in this batch
  for (int i = 0; i < kAcceptBatch; ++i) {
    // Paused by the last client (out of fds for its upstream socket): the
    // rest wait in the backlog.
    if (!listener->registered) return;
    // Checked before every accept: once StopAccepting returns, no worker
    // takes another client (it stays in the backlog for the next instance).
    if (!owner_->accepting_.load(std::memory_order_acquire)) {
      if (!acked_stop_accepting_) AckStopAccepting();
      return;
    }
    sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    int fd = accept4(listener->fd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (IsWouldBlock(err)) return;
      if (IsAcceptAgain(err)) continue;  // that client is gone; the next one may be fine
      PauseAccepting(err);
      return;
    }
    if (owner_->accept_failing_.load(std::memory_order_relaxed) &&
        NowMs() - owner_->last_shortage_ms_.load(std::memory_order_relaxed) > kShortageEpisodeGapMs &&
        owner_->accept_failing_.exchange(false)) {
      Log(kLogInfo, "Accepting connections again.");
    }
    if (!owner_->AdmitConnection()) {
      if (owner_->config_.access_log) access_log_.RecordRefused(fd, peer, peer_len, NowUs());
      CloseFd(fd);
      continue;
    }
    auto* c = new Connection();
    c->client.fd = fd;
    c->accepted_us = NowUs();
    c->all.AppendTo(&all_);
    if (!PrepareClient(c, peer, peer_len)) continue;
    if (!WatchSide(&c->client)) {
      int err = errno;
      Fail(c, ShovelFailure{"epoll_ctl(ADD)", &c->client, err});
      // Out of epoll watches (or memory): the clients behind this one wait.
      if (IsResourceShortage(err)) {
        PauseAccepting(err);
        return;
      }
      continue;
    }
    c->targets = owner_->targets();
    int64_t now = NowMs();
    c->give_up_at = now + owner_->config_.connect_timeout_ms;
    c->retry_until = now + owner_->config_.connect_retry_ms;
    ConnectNext(c, EDESTADDRREQ);
  }
}

// The client's socket options, and its PROXY protocol header (from the
// addresses accept4 and getsockname give). False: the connection failed.
bool Worker::PrepareClient(Connection* c, const sockaddr_storage& peer, socklen_t peer_len) {
  const ForwarderConfig& config = owner_->config_;
  const char* what = "";
  if (IsInet(peer.ss_family) && !SetTcpOptions(c->client.fd, config, &what)) {
    Fail(c, ShovelFailure{what, &c->client, errno});
    return false;
  }
  if (config.proxy_protocol == ProxyProtocol::kNone && !config.access_log) return true;
  sockaddr_storage local{};
  socklen_t local_len = sizeof local;
  if (getsockname(c->client.fd, reinterpret_cast<sockaddr*>(&local), &local_len) < 0) {
    Fail(c, ShovelFailure{"getsockname", &c->client, errno});
    return false;
  }
  if (config.proxy_protocol != ProxyProtocol::kNone) {
    c->header_length = static_cast<uint8_t>(BuildProxyHeader(config.proxy_protocol, peer, local, c->header));
  }
  if (config.access_log) {
    c->access = std::make_unique<AccessInfo>();
    c->access->peer = peer;
    c->access->peer_len = peer_len;
    c->access->local = local;
    c->access->local_len = local_len;
  }
  return true;
}

void Worker::LogThrottled(LogThrottle* throttle, int level, std::string message) {
  if (owner_->ShouldLog(level) && throttle->Admit(NowMs(), &message)) Log(level, std::move(message));
}

// ---------------------------------------------------------------------------
// Forwarding

void Worker::OnSideEvent(Side* side, uint32_t events) {
  Connection* c = side->conn;
  if (c->closed) return;  // closed earlier in this batch; freed after it
  if (side == &c->upstream && !c->connected) {
    OnConnectResult(c, events);
    return;
  }
  // A client that resets while waiting for a refusing upstream (it may wait
  // long) has given up: its place is released now. One that only ended its
  // sending side may be half-closing and still want the reply: it waits on.
  if (!c->connected && c->retry_backoff_ms != 0 && (events & (EPOLLERR | EPOLLHUP))) {
    if (owner_->ShouldLog(kLogDebug)) Log(kLogDebug, "Client gave up waiting for the upstream.");
    Close(c, CloseHow::kReset, EndCause::kClientReset);
    return;
  }
  // A reset (or other error) ends the whole connection, but not before the
  // bytes that came before it are delivered: the shovel reads them first
  // (recv and splice return queued bytes before the error), then the error.
  // So a client that sent its request and reset while the upstream was
  // still connecting is served like that too, once it is connected.
  side->NoteEvents(events);
  if (c->connected) Pump(c);
}

void Worker::Pump(Connection* c) {
  if (c->header_pending() && !SendProxyHeader(c)) return;
  // The direction out of a side that failed goes first, and nothing is
  // written to that side meanwhile (it would only fail): what it sent
  // before its error is delivered, then the error ends the connection.
  bool upstream_first = c->upstream.failed && !c->client.failed;
  Direction* order[2] = {upstream_first ? &c->to_client : &c->to_upstream,
                         upstream_first ? &c->to_upstream : &c->to_client};
  ShovelResult results[2] = {ShovelResult::kIdle, ShovelResult::kIdle};
  size_t moved = 0;
  uint64_t to_upstream_before = c->to_upstream.bytes;
  for (int i = 0; i < 2; ++i) {
    Direction& d = *order[i];
    if (d.to->failed && !d.from->failed && !c->other(d).done) continue;
    if (&d == &c->to_upstream && c->header_pending()) continue;  // the header goes first
    results[i] = shovel_.Move(c, d, &moved);
    if (results[i] == ShovelResult::kFailed) return Fail(c, shovel_.failure());
  }
  if (moved > 0 && c->idle.linked()) Touch(c);
  if (c->header_corked) {
    c->header_corked = false;
    // No client byte followed the header after all: setting TCP_NODELAY
    // again pushes out what MSG_MORE held back.
    int one = 1;
    if (c->to_upstream.bytes == to_upstream_before &&
        setsockopt(c->upstream.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
      return Fail(c, ShovelFailure{"setsockopt(TCP_NODELAY)", &c->upstream, errno});
    }
  }
  // A side that failed after its own stream had ended (a client that
  // half-closed, then reset) is read no more, so the shovel never meets its
  // error; a silent other peer would never learn. Pass it on now.
  for (Side* side : {&c->client, &c->upstream}) {
    if (side->failed && (side == &c->client ? c->to_upstream : c->to_client).done) {
      int err = SocketError(side->fd);
      return Fail(c, ShovelFailure{"error on", side, err != 0 ? err : ECONNRESET});
    }
  }
  if (c->to_upstream.done && c->to_client.done) {
    return Close(c, CloseHow::kEnd, c->ended_first == &c->client ? EndCause::kClientEnd : EndCause::kUpstreamEnd);
  }
  auto any = [&](ShovelResult r) { return results[0] == r || results[1] == r; };
  if (any(ShovelResult::kYield) && !c->ready.linked()) c->ready.AppendTo(&ready_);
  if (any(ShovelResult::kNoPipe) && c->wait == Wait::kNone) {
    // The bytes stay in the socket; retried once fds may have freed up.
    PauseAccepting(shovel_.failure().err);
    StartWait(c, Wait::kPipe, NowMs() + kRetryAfterShortageMs);
  }
}

// A byte moved: the connection goes to the back of the idle list. Stamped
// with the loop's clock, and moved at most once per millisecond: a few
// pointer writes, no syscall, no timer to re-arm.
void Worker::Touch(Connection* c) {
  if (c->last_active == now_) return;
  c->last_active = now_;
  c->idle.Unlink();
  c->idle.AppendTo(&idle_);
}

// --idle-timeout: connections with no byte moved for the span are reset on
// both sides. Not a clean end: a transfer stalled halfway must not look
// complete to either peer.
void Worker::ExpireIdle(int64_t now) {
  int64_t span = owner_->config_.idle_timeout_ms;
  while (idle_.linked() && idle_.first()->last_active + span <= now) {
    Connection* c = idle_.first();
    if (owner_->ShouldLog(kLogDebug)) {
      Log(kLogDebug, "Closing connection: no byte moved for " + std::to_string(span) + " ms.");
    }
    Close(c, CloseHow::kReset, EndCause::kIdleTimeout);
  }
}

void Worker::RunReadyQueue() {
  // Take the current queue; connections that yield again go to the next round.
  Link<Connection> batch;
  ready_.MoveAllTo(&batch);
  while (batch.linked()) {
    Connection* c = batch.first();
    c->ready.Unlink();
    Pump(c);
  }
}

// ---------------------------------------------------------------------------
// Sockets in the epoll set, and closing

bool Worker::WatchSide(Side* side) {
  epoll_event ev{};
  ev.events = kSocketEvents;
  ev.data.ptr = side;
  return epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, side->fd, &ev) == 0;
}

// Leaves the epoll set explicitly before closing: a registration belongs to
// the open file description, not the fd, so if anything else holds the
// socket (a forked child, a dup) close() alone would leave it there, and its
// events would carry a pointer to a freed connection.
void Worker::CloseSide(Side* side, CloseHow how) {
  if (side->fd < 0) return;
  // ENOENT: it never joined (its epoll_ctl(ADD) is what failed).
  bool left = true;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, side->fd, nullptr) < 0 && errno != ENOENT) {
    left = false;
    LogThrottled(&error_log_, kLogError, std::string("epoll_ctl(DEL ") + side->name + "): " + ErrnoText(errno));
  }
  if (how == CloseHow::kReset) {
    ResetAndClose(side->fd);
  } else if (!left || !linger_.Adopt(side->fd, NowMs())) {
    // (Still in the epoll set, a kept socket would report to a freed connection: closed now.)
    CloseFd(side->fd);
  }
  side->fd = -1;
}

// A connection broken by an error or a reset: each peer gets a reset, so that
// neither mistakes what it received for the whole stream.
void Worker::Fail(Connection* c, const ShovelFailure& failure) {
  std::string message =
      std::string("Closing connection: ") + failure.what + " " + failure.side->name + ": " + ErrnoText(failure.err);
  if (IsDisconnect(failure.err)) {
    if (owner_->ShouldLog(kLogDebug)) Log(kLogDebug, std::move(message));
  } else {
    LogThrottled(&error_log_, kLogWarning, std::move(message));
  }
  // A peer's reset (or its network's failure) is that side's; anything else is ours.
  bool peer = IsDisconnect(failure.err);
  EndCause cause = !peer ? EndCause::kError
                   : failure.side == &c->client ? EndCause::kClientReset
                                                : EndCause::kUpstreamReset;
  Close(c, CloseHow::kReset, cause);
}

namespace {

Counter CounterFor(EndCause cause) {
  switch (cause) {
    case EndCause::kClientEnd: return kClosedClientEnd;
    case EndCause::kUpstreamEnd: return kClosedUpstreamEnd;
    case EndCause::kClientReset: return kClosedClientReset;
    case EndCause::kUpstreamReset: return kClosedUpstreamReset;
    case EndCause::kError: return kClosedError;
    case EndCause::kDrain: return kClosedDrain;
    case EndCause::kIdleTimeout: return kIdleTimeouts;
    case EndCause::kConnectFailed: return kUpstreamFailed;
  }
  return kClosedError;
}

Counter CounterFor(ConnectFailure failure) {
  switch (failure) {
    case ConnectFailure::kRefused: return kUpstreamRefused;
    case ConnectFailure::kTimeout: return kUpstreamTimeout;
    case ConnectFailure::kUnreachable: return kUpstreamUnreachable;
    case ConnectFailure::kNoAddress: return kUpstreamNoAddress;
    case ConnectFailure::kOther: break;
  }
  return kCounterCount;  // counted in kUpstreamFailed only
}

}  // namespace

void Worker::Close(Connection* c, CloseHow how, EndCause cause, int connect_error) {
  if (c->closed) return;
  c->closed = true;
  owner_->Count(CounterFor(cause), 1);
  if (cause == EndCause::kConnectFailed) {
    Counter by_cause = CounterFor(ClassifyConnectFailure(connect_error, connect_error == EDESTADDRREQ));
    if (by_cause != kCounterCount) owner_->Count(by_cause, 1);
  }
  int64_t now_us = NowUs();
  Observe(owner_->counters_, kDurationHistogram, now_us - c->accepted_us);
  if (c->access) access_log_.Record(*c, cause, connect_error, now_us);
  c->all.Unlink();
  EndWait(c);
  c->ready.Unlink();
  c->idle.Unlink();
  CloseSide(&c->client, how);
  CloseSide(&c->upstream, how);
  for (Direction* d : {&c->to_upstream, &c->to_client}) {
    if (!d->pipe.open()) continue;
    if (d->pipe.bytes == 0) {
      pool_.Release(&d->pipe);
    } else {
      pool_.Destroy(&d->pipe);
    }
  }
  owner_->ReleaseConnection();
  // Events for this connection may still be in the current batch.
  graveyard_.push_back(c);
}

// The engine is closing: connections still open are cut, and each peer is
// told so with a reset rather than an end that would look complete.
void Worker::CloseAll() {
  while (all_.linked()) Close(all_.first(), CloseHow::kReset, EndCause::kDrain);
  linger_.GiveUpAll();
  if (datagram_) datagram_->Stop();
  BuryClosed();
}

void Worker::BuryClosed() {
  for (Connection* c : graveyard_) delete c;
  graveyard_.clear();
  if (datagram_) datagram_->Bury();
}

}  // namespace proxyd
