// The data path. Each worker thread runs one epoll loop; every connection is a
// client socket, an upstream socket and, per direction, a pipe that exists only
// while bytes are in flight. Bulk bytes move socket -> pipe -> socket with
// splice(2), so they never enter user space; small messages are copied with
// recv + send (see kCopyChunk), which takes fewer and cheaper syscalls.
//
// Epoll is edge-triggered and each socket is registered once: readiness is
// remembered in Side::readable / Side::writable and cleared only when a
// syscall answers EAGAIN (or a recv comes back short, which proves the same),
// so the steady state needs no epoll_ctl at all.
#include "forwarder.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <utility>

namespace proxyd {
namespace {

constexpr int kMaxEvents = 256;
constexpr int kAcceptBatch = 64;
constexpr int kAcceptBackoffMs = 100;
constexpr int kShortageEpisodeGapMs = 1000;
constexpr size_t kMaxSparePipes = 64;
// Pipes each worker makes at start and keeps: when fds run out, connections
// waiting for a pipe still progress through these, one burst at a time.
constexpr size_t kReservedPipes = 2;
// Bytes one direction may move before other connections get their turn.
constexpr size_t kTurnBudget = 4u << 20;
// Small messages are copied (recv + send) rather than spliced: a short recv
// proves the socket drained, which saves the EAGAIN round a splice needs, and
// copying a few KiB costs less than splicing them. A full read means bulk: the
// direction switches to splice until a small read comes again.
constexpr size_t kCopyChunk = 16 * 1024;
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof buf);  // GNU variant: returns the text
}

int SocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

bool IsInet(int family) { return family == AF_INET || family == AF_INET6; }

// Errors that mean "this process or the kernel is out of something", not
// "this peer is broken": waiting helps, retrying at once does not.
bool IsResourceShortage(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }

// Lets a failure that repeats for every client be logged once a second, with
// a count of the ones left unsaid.
struct LogThrottle {
  int64_t last = 0;
  uint64_t suppressed = 0;

  // Returns false if this occurrence should stay quiet; otherwise appends the
  // count of suppressed ones to `message`.
  bool Admit(int64_t now, std::string* message) {
    if (last != 0 && now - last < 1000) {
      ++suppressed;
      return false;
    }
    if (suppressed != 0) *message += " (" + std::to_string(suppressed) + " more since the last message)";
    last = now;
    suppressed = 0;
    return true;
  }
};

// A minimal intrusive doubly-linked list, so a connection can leave any list
// it is on in O(1) when it closes.
struct Connection;
struct Link {
  Link* prev = this;
  Link* next = this;
  Connection* owner = nullptr;

  bool linked() const { return next != this; }
  void Unlink() {
    prev->next = next;
    next->prev = prev;
    prev = next = this;
  }
  void AppendTo(Link* head) {
    prev = head->prev;
    next = head;
    head->prev->next = this;
    head->prev = this;
  }
};

// What an epoll event's data.ptr points at.
struct Watch {
  enum Kind : uint8_t { kWake, kListener, kSide } kind;
  explicit Watch(Kind k) : kind(k) {}
};

struct ListenerWatch : Watch {
  int fd;
  explicit ListenerWatch(int listen_fd) : Watch(kListener), fd(listen_fd) {}
};

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
  Side(Connection* c, const char* n) : Watch(kSide), conn(c), name(n) {}
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
  bool eof = false;   // `from` ended its stream
  bool done = false;  // ...and that end reached `to` as shutdown(SHUT_WR)
  bool bulk = false;  // the last read filled its buffer: splice, don't copy
  Direction(Side* f, Side* t, Counter c) : from(f), to(t), counter(c) {}
};

struct Connection {
  Side client{this, "client"};
  Side upstream{this, "upstream"};
  Direction to_upstream{&client, &upstream, kBytesToUpstream};
  Direction to_client{&upstream, &client, kBytesToClient};
  std::shared_ptr<const std::vector<Endpoint>> targets;
  size_t next_target = 0;
  int64_t connect_deadline = 0;  // of this attempt (or of the wait for fds)
  int64_t give_up_at = 0;        // waiting for fds ends here
  bool connected = false;
  bool closed = false;
  Link all;         // every open connection of the worker
  Link connecting;  // waiting for connect() or for fds (socket or pipe), by deadline
  Link ready;       // ran out of budget with work left

  Connection() { all.owner = connecting.owner = ready.owner = this; }
};

enum class ShovelResult { kIdle, kYield, kNoPipe, kFailed };

// What one turn of one direction did, added to the shared counters once.
struct TurnTally {
  size_t moved = 0;
  size_t copy_reads = 0;
  size_t splice_reads = 0;
};
enum class StepResult { kNone, kProgress, kFailed };

}  // namespace

class Worker {
 public:
  Worker(Forwarder* owner, unsigned index) : owner_(owner), index_(index) {}
  ~Worker();

  std::string Init();
  std::string StartThread();
  void Wake();
  void Join();

 private:
  static void* ThreadMain(void* self);
  void Run();
  int NextTimeoutMs(int64_t now) const;
  void HandleEvent(Watch* watch, uint32_t events);
  void OnWake();
  void OnSideEvent(Side* side, uint32_t events);
  static void NoteReadiness(Side* side, uint32_t events);

  void OnListenerReadable(int listen_fd);
  void PauseAccepting(int err);
  bool AddListeners();
  void DropListeners();

  void ConnectNext(Connection* c, int last_error);
  void OnConnectResult(Connection* c, uint32_t events);
  void ExpireConnects(int64_t now);
  void LogUpstreamFailure(const Connection* c, int err);
  void LogThrottled(LogThrottle* throttle, int level, std::string message);

  void Pump(Connection* c);
  ShovelResult Shovel(Connection* c, Direction& d);
  ShovelResult ShovelTurn(Connection* c, Direction& d, TurnTally* tally);
  StepResult CopyThrough(Connection* c, Direction& d, size_t* moved);
  StepResult SpliceIntoPipe(Connection* c, Direction& d);
  StepResult RecvIntoPipe(Connection* c, Direction& d);
  StepResult ReceiveChunk(Connection* c, Direction& d, size_t want, size_t* n);
  StepResult FillEmptyPipe(Connection* c, Direction& d, size_t offset, size_t len);
  void RunReadyQueue();
  void Fail(Connection* c, const char* what, const Side* side, int err);
  void Close(Connection* c);
  void CloseAll();

  bool AcquirePipe(Pipe* p);
  void ReleasePipe(Pipe* p);
  void DestroyPipe(Pipe* p, Counter counter);

  void Log(int level, std::string message) { owner_->Log(level, std::move(message)); }

  Forwarder* owner_;
  unsigned index_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  pthread_t thread_{};
  bool thread_started_ = false;

  Watch wake_watch_{Watch::kWake};
  std::vector<std::unique_ptr<ListenerWatch>> listeners_;
  bool listening_ = false;
  bool acked_stop_accepting_ = false;
  int64_t resume_accept_at_ = 0;  // 0: not paused

  Link all_;
  Link connecting_;      // connect() in progress; deadlines in order
  Link waiting_for_fds_; // socket() or pipe2() failed for lack of fds; retried in order
  Link ready_;
  std::vector<Connection*> graveyard_;  // freed after the event batch
  std::vector<Pipe> spare_pipes_;
  std::unique_ptr<char[]> copy_buffer_{new char[kCopyChunk]};

  LogThrottle upstream_failure_log_;
  LogThrottle pipe_failure_log_;
};

// ---------------------------------------------------------------------------
// Worker lifecycle

Worker::~Worker() {
  for (Pipe& p : spare_pipes_) DestroyPipe(&p, kPipesPooled);
  if (wake_fd_ >= 0) close(wake_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

std::string Worker::Init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return "epoll_create1: " + ErrnoText(errno);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return "eventfd: " + ErrnoText(errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = &wake_watch_;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) < 0) return "epoll_ctl: " + ErrnoText(errno);
  for (int fd : owner_->config_.listeners) listeners_.push_back(std::make_unique<ListenerWatch>(fd));
  for (size_t i = 0; i < kReservedPipes; ++i) {
    Pipe pipe;
    if (!AcquirePipe(&pipe)) return "pipe2: " + ErrnoText(errno);
    ReleasePipe(&pipe);
  }
  if (!AddListeners()) return "epoll_ctl(listener): " + ErrnoText(errno);
  return "";
}

std::string Worker::StartThread() {
  // Signals belong to the JS thread; workers never take them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int err = pthread_create(&thread_, nullptr, &Worker::ThreadMain, this);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) return "pthread_create: " + ErrnoText(err);
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
  if (write(wake_fd_, &one, sizeof one) < 0 && errno != EAGAIN) {
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
      if (errno == EINTR) continue;
      Log(kLogError, "epoll_wait: " + ErrnoText(errno));
      break;
    }
    for (int i = 0; i < n; ++i) HandleEvent(static_cast<Watch*>(events[i].data.ptr), events[i].events);
    RunReadyQueue();
    int64_t now = NowMs();
    ExpireConnects(now);
    if (resume_accept_at_ != 0 && now >= resume_accept_at_) {
      resume_accept_at_ = 0;
      if (owner_->accepting_.load(std::memory_order_acquire)) AddListeners();
    }
    for (Connection* c : graveyard_) delete c;
    graveyard_.clear();
  }
  CloseAll();
  // A worker that leaves its loop must not leave StopAccepting waiting.
  if (!acked_stop_accepting_) {
    acked_stop_accepting_ = true;
    std::lock_guard<std::mutex> lock(owner_->ack_mutex_);
    ++owner_->listeners_dropped_;
    owner_->ack_cv_.notify_all();
  }
}

int Worker::NextTimeoutMs(int64_t now) const {
  if (ready_.linked()) return 0;
  int64_t deadline = -1;
  for (const Link* list : {&connecting_, &waiting_for_fds_}) {
    if (!list->linked()) continue;
    int64_t first = list->next->owner->connect_deadline;
    if (deadline < 0 || first < deadline) deadline = first;
  }
  if (resume_accept_at_ != 0 && (deadline < 0 || resume_accept_at_ < deadline)) deadline = resume_accept_at_;
  if (deadline < 0) return -1;
  return deadline <= now ? 0 : static_cast<int>(deadline - now);
}

void Worker::HandleEvent(Watch* watch, uint32_t events) {
  switch (watch->kind) {
    case Watch::kWake:
      OnWake();
      break;
    case Watch::kListener:
      OnListenerReadable(static_cast<ListenerWatch*>(watch)->fd);
      break;
    case Watch::kSide:
      OnSideEvent(static_cast<Side*>(watch), events);
      break;
  }
}

void Worker::OnWake() {
  uint64_t value;
  if (read(wake_fd_, &value, sizeof value) < 0 && errno != EAGAIN) {
    Log(kLogError, "eventfd read: " + ErrnoText(errno));
  }
  owner_->counters_[kCounterCount + index_].store(owner_->ping_seq_.load(std::memory_order_acquire),
                                                  std::memory_order_release);
  if (!owner_->accepting_.load(std::memory_order_acquire) && !acked_stop_accepting_) {
    DropListeners();
    resume_accept_at_ = 0;
    acked_stop_accepting_ = true;
    std::lock_guard<std::mutex> lock(owner_->ack_mutex_);
    ++owner_->listeners_dropped_;
    owner_->ack_cv_.notify_all();
  }
}

// ---------------------------------------------------------------------------
// Accepting

bool Worker::AddListeners() {
  for (auto& l : listeners_) {
    epoll_event ev{};
    // EPOLLEXCLUSIVE: a new client wakes one worker, not all of them.
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.ptr = l.get();
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, l->fd, &ev) < 0 && errno != EEXIST) {
      Log(kLogError, "epoll_ctl(ADD listener): " + ErrnoText(errno));
      return false;
    }
  }
  listening_ = true;
  return true;
}

void Worker::DropListeners() {
  if (!listening_) return;
  for (auto& l : listeners_) {
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, l->fd, nullptr) < 0 && errno != ENOENT) {
      Log(kLogError, "epoll_ctl(DEL listener): " + ErrnoText(errno));
    }
  }
  listening_ = false;
}

void Worker::PauseAccepting(int err) {
  // Out of fds (or kernel memory): clients wait in the backlog. Retrying at
  // once would spin, so stop listening for a moment and try again.
  DropListeners();
  int64_t now = NowMs();
  resume_accept_at_ = now + kAcceptBackoffMs;
  owner_->last_shortage_ms_.store(now, std::memory_order_relaxed);
  if (!owner_->accept_failing_.exchange(true)) {
    Log(kLogWarning, "Not accepting new connections for now (" + ErrnoText(err) + "); retrying every " +
                         std::to_string(kAcceptBackoffMs) + " ms.");
  }
}

void Worker::OnListenerReadable(int listen_fd) {
  if (!listening_) return;  // dropped earlier in this batch
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      switch (errno) {
        case EAGAIN:
          return;
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case EPERM:  // refused by a firewall rule
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
          continue;  // that client is gone; the next one may be fine
        default:
          PauseAccepting(errno);
          return;
      }
    }
    if (owner_->accept_failing_.load(std::memory_order_relaxed) &&
        NowMs() - owner_->last_shortage_ms_.load(std::memory_order_relaxed) > kShortageEpisodeGapMs &&
        owner_->accept_failing_.exchange(false)) {
      Log(kLogInfo, "Accepting connections again.");
    }
    if (!owner_->AdmitConnection()) {
      close(fd);
      continue;
    }
    auto* c = new Connection();
    c->client.fd = fd;
    c->all.AppendTo(&all_);
    if (IsInet(peer.ss_family)) {
      int one = 1;
      if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
        Fail(c, "setsockopt(TCP_NODELAY)", &c->client, errno);
        continue;
      }
    }
    epoll_event ev{};
    ev.events = kSocketEvents;
    ev.data.ptr = &c->client;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      Fail(c, "epoll_ctl(ADD client)", &c->client, errno);
      continue;
    }
    c->targets = owner_->targets();
    c->give_up_at = NowMs() + owner_->config_.connect_timeout_ms;
    ConnectNext(c, EDESTADDRREQ);
  }
}

// ---------------------------------------------------------------------------
// Connecting upstream: each address in turn, each bounded by the timeout.

void Worker::ConnectNext(Connection* c, int last_error) {
  const std::vector<Endpoint>& targets = *c->targets;
  while (c->next_target < targets.size()) {
    const Endpoint& target = targets[c->next_target++];
    int fd = socket(target.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_error = errno;
      if (IsResourceShortage(last_error)) {
        // Every address would fail alike, and so would the clients behind
        // this one: leave those in the backlog, and this one waiting, until
        // fds free up.
        PauseAccepting(last_error);
        int64_t now = NowMs();
        if (now >= c->give_up_at) break;
        --c->next_target;
        c->connect_deadline = now + kAcceptBackoffMs;
        c->connecting.AppendTo(&waiting_for_fds_);
        return;
      }
      continue;
    }
    int one = 1;
    if (IsInet(target.addr.ss_family) && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
      last_error = errno;
      close(fd);
      continue;
    }
    // A connect that completes at once (UNIX sockets) is reported by the
    // EPOLLOUT that registration raises, like one that completes later.
    if (connect(fd, reinterpret_cast<const sockaddr*>(&target.addr), target.len) < 0 && errno != EINPROGRESS) {
      last_error = errno;
      close(fd);
      continue;
    }
    epoll_event ev{};
    ev.events = kSocketEvents;
    ev.data.ptr = &c->upstream;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      last_error = errno;
      close(fd);
      continue;
    }
    c->upstream.fd = fd;
    c->connect_deadline = NowMs() + owner_->config_.connect_timeout_ms;
    c->connecting.AppendTo(&connecting_);
    return;
  }
  owner_->Count(kUpstreamFailed, 1);
  LogUpstreamFailure(c, last_error);
  Close(c);
}

void Worker::OnConnectResult(Connection* c, uint32_t events) {
  if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
  // Writable without an error or hang-up: connected. Otherwise ask why not.
  int err = 0;
  if (events & (EPOLLERR | EPOLLHUP)) {
    err = SocketError(c->upstream.fd);
    if (err == 0 && !(events & EPOLLOUT)) err = ECONNREFUSED;
  }
  c->connecting.Unlink();
  if (err != 0) {
    close(c->upstream.fd);
    c->upstream.fd = -1;
    ConnectNext(c, err);
    return;
  }
  c->connected = true;
  c->targets.reset();
  c->upstream.writable = true;
  // Registered before connect(): bytes that came since raised EPOLLIN already.
  NoteReadiness(&c->upstream, events);
  Pump(c);
}

void Worker::ExpireConnects(int64_t now) {
  while (connecting_.linked()) {
    Connection* c = connecting_.next->owner;
    if (c->connect_deadline > now) break;
    c->connecting.Unlink();
    close(c->upstream.fd);
    c->upstream.fd = -1;
    ConnectNext(c, ETIMEDOUT);
  }
  // Retried after the head's deadline only, so one retry per back-off period.
  Link retry;
  while (waiting_for_fds_.linked() && waiting_for_fds_.next->owner->connect_deadline <= now) {
    Connection* c = waiting_for_fds_.next->owner;
    c->connecting.Unlink();
    c->connecting.AppendTo(&retry);
  }
  while (retry.linked()) {
    Connection* c = retry.next->owner;
    c->connecting.Unlink();
    if (c->connected) {
      Pump(c);  // it was waiting for a pipe
    } else {
      ConnectNext(c, EMFILE);
    }
  }
}

void Worker::LogThrottled(LogThrottle* throttle, int level, std::string message) {
  if (owner_->ShouldLog(level) && throttle->Admit(NowMs(), &message)) Log(level, std::move(message));
}

// A dead upstream fails every client: say so once a second, not per client.
void Worker::LogUpstreamFailure(const Connection* c, int err) {
  if (!owner_->ShouldLog(kLogWarning)) return;
  std::string message = "Failed to connect to ";
  const std::vector<Endpoint>& targets = *c->targets;
  if (targets.empty()) {
    message += "upstream: no address to connect to";
  } else {
    message += targets.back().text;
    if (targets.size() > 1) message += " (and " + std::to_string(targets.size() - 1) + " other addresses)";
    message += ": " + ErrnoText(err);
  }
  LogThrottled(&upstream_failure_log_, kLogWarning, std::move(message));
}

// ---------------------------------------------------------------------------
// Forwarding

void Worker::OnSideEvent(Side* side, uint32_t events) {
  Connection* c = side->conn;
  if (c->closed) return;
  if (side == &c->upstream && !c->connected) {
    OnConnectResult(c, events);
    return;
  }
  if (events & EPOLLERR) {
    // A reset (or other error) on either side ends the whole connection.
    int err = SocketError(side->fd);
    if (err != 0) {
      Fail(c, "socket error", side, err);
      return;
    }
  }
  NoteReadiness(side, events);
  if (c->connected) Pump(c);
}

void Worker::NoteReadiness(Side* side, uint32_t events) {
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLPRI)) side->readable = true;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLPRI)) side->read_until_eagain = true;
  if (events & EPOLLPRI) side->urgent = true;
  if (events & (EPOLLOUT | EPOLLHUP)) side->writable = true;
}

void Worker::Pump(Connection* c) {
  ShovelResult up = Shovel(c, c->to_upstream);
  if (up == ShovelResult::kFailed) return;
  ShovelResult down = Shovel(c, c->to_client);
  if (down == ShovelResult::kFailed) return;
  if (c->to_upstream.done && c->to_client.done) {
    Close(c);
    return;
  }
  if ((up == ShovelResult::kYield || down == ShovelResult::kYield) && !c->ready.linked()) {
    c->ready.AppendTo(&ready_);
  }
  if ((up == ShovelResult::kNoPipe || down == ShovelResult::kNoPipe) && !c->connecting.linked()) {
    c->connect_deadline = NowMs() + kAcceptBackoffMs;
    c->connecting.AppendTo(&waiting_for_fds_);
  }
}

// Moves bytes in one direction until both ends would block, the direction is
// finished, or its turn's budget is spent. Never takes more from `from` than
// the pipe holds, so a slow reader bounds what the proxy buffers.
ShovelResult Worker::Shovel(Connection* c, Direction& d) {
  TurnTally tally;
  ShovelResult result = ShovelTurn(c, d, &tally);
  // Counted once per turn: the counters are shared by every worker.
  if (tally.moved > 0) owner_->Count(d.counter, tally.moved);
  if (tally.copy_reads > 0) owner_->Count(kCopyReads, tally.copy_reads);
  if (tally.splice_reads > 0) owner_->Count(kSpliceReads, tally.splice_reads);
  return result;
}

ShovelResult Worker::ShovelTurn(Connection* c, Direction& d, TurnTally* tally) {
  size_t* moved = &tally->moved;
  while (!d.done) {
    bool progress = false;
    Pipe& pipe = d.pipe;

    // Small messages go through the copy path while a spare pipe is at hand
    // to catch what `to` does not take at once; the rest goes through the pipe.
    StepResult read = StepResult::kNone;
    if (!d.eof && d.from->readable && !d.bulk && !pipe.open() && d.to->writable && !spare_pipes_.empty()) {
      read = CopyThrough(c, d, moved);
      if (read == StepResult::kProgress) ++tally->copy_reads;
    } else if (!d.eof && d.from->readable && (!pipe.open() || pipe.bytes < pipe.capacity)) {
      if (!pipe.open() && !AcquirePipe(&pipe)) {
        int err = errno;
        if (IsResourceShortage(err)) {
          // The bytes stay in the socket; retried once fds may have freed up.
          PauseAccepting(err);
          return ShovelResult::kNoPipe;
        }
        LogThrottled(&pipe_failure_log_, kLogWarning, "Failed to create a pipe, closing a connection: " + ErrnoText(err));
        Close(c);
        return ShovelResult::kFailed;
      }
      if (!d.from->urgent) {
        read = SpliceIntoPipe(c, d);
        if (read == StepResult::kProgress) ++tally->splice_reads;
      } else if (pipe.bytes == 0) {
        // tcp_read_sock stops at the urgent mark, so splice would answer
        // EAGAIN (or 0 after a FIN) there forever: recv steps over it. Only
        // into an empty pipe, which surely takes what was read.
        read = RecvIntoPipe(c, d);
        if (read == StepResult::kProgress) ++tally->copy_reads;
      }
    }
    if (read == StepResult::kFailed) return ShovelResult::kFailed;
    if (read == StepResult::kProgress) progress = true;

    if (pipe.open() && pipe.bytes > 0 && d.to->writable) {
      ssize_t n = splice(pipe.read_end, nullptr, d.to->fd, nullptr, pipe.bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        pipe.bytes -= static_cast<size_t>(n);
        *moved += static_cast<size_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        d.to->writable = false;
      } else if (n < 0 && errno == EINTR) {
        progress = true;
      } else {
        Fail(c, "splice to", d.to, n == 0 ? EPIPE : errno);
        return ShovelResult::kFailed;
      }
    }

    if (pipe.open() && pipe.bytes == 0) ReleasePipe(&pipe);

    if (d.eof && !pipe.open()) {
      // Everything before the end has been delivered: pass the end on and let
      // the other direction carry on (half-close). When that one is finished
      // too, the close() that follows sends the end: both sockets were read to
      // their end, so it is a FIN, not a reset.
      const Direction& other = &d == &c->to_upstream ? c->to_client : c->to_upstream;
      if (!other.done && shutdown(d.to->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        Fail(c, "shutdown", d.to, errno);
        return ShovelResult::kFailed;
      }
      d.done = true;
      break;
    }
    if (!progress) break;
    if (*moved >= kTurnBudget) return ShovelResult::kYield;
  }
  return ShovelResult::kIdle;
}

// One recv from `from` and one send to `to` through the worker's buffer. What
// `to` does not take goes into a spare pipe, which holds it all: no more than
// its capacity was read.
StepResult Worker::CopyThrough(Connection* c, Direction& d, size_t* moved) {
  size_t spare_capacity = spare_pipes_.back().capacity;
  size_t n = 0;
  StepResult result = ReceiveChunk(c, d, spare_capacity < kCopyChunk ? spare_capacity : kCopyChunk, &n);
  if (result != StepResult::kProgress || n == 0) return result;
  ssize_t sent = send(d.to->fd, copy_buffer_.get(), n, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (sent < 0) {
    if (errno != EAGAIN && errno != EINTR) {
      Fail(c, "send to", d.to, errno);
      return StepResult::kFailed;
    }
    if (errno == EAGAIN) d.to->writable = false;
    sent = 0;
  }
  *moved += static_cast<size_t>(sent);
  if (static_cast<size_t>(sent) == n) return StepResult::kProgress;
  if (!AcquirePipe(&d.pipe)) {  // takes the spare one checked for above: no syscall, no failure
    Fail(c, "pipe for", d.to, errno);
    return StepResult::kFailed;
  }
  return FillEmptyPipe(c, d, static_cast<size_t>(sent), n - static_cast<size_t>(sent));
}

// One splice from `from` into the direction's pipe, as much as it has room for.
StepResult Worker::SpliceIntoPipe(Connection* c, Direction& d) {
  Pipe& pipe = d.pipe;
  ssize_t n = splice(d.from->fd, nullptr, pipe.write_end, nullptr, pipe.capacity - pipe.bytes,
                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n > 0) {
    pipe.bytes += static_cast<size_t>(n);
    if (static_cast<size_t>(n) < kCopyChunk) d.bulk = false;
    return StepResult::kProgress;
  }
  if (n == 0) {
    d.eof = true;
    return StepResult::kProgress;
  }
  if (errno == EAGAIN) {
    // With bytes in the pipe, EAGAIN may mean the pipe ran out of slots
    // rather than the socket of data: keep `readable` and drain first.
    if (pipe.bytes == 0) d.from->readable = false;
    return StepResult::kNone;
  }
  if (errno == EINTR) return StepResult::kNone;
  Fail(c, "splice from", d.from, errno);
  return StepResult::kFailed;
}

// One recv from `from` into the direction's empty pipe, through the worker's
// buffer: the read path for a side that has sent urgent data.
StepResult Worker::RecvIntoPipe(Connection* c, Direction& d) {
  size_t capacity = d.pipe.capacity;
  size_t n = 0;
  StepResult result = ReceiveChunk(c, d, capacity < kCopyChunk ? capacity : kCopyChunk, &n);
  if (result != StepResult::kProgress || n == 0) return result;
  return FillEmptyPipe(c, d, 0, n);
}

// One recv of at most `want` bytes from `from` into the worker's buffer; `*n`
// tells how many came (0 with d.eof set at the end of the stream).
StepResult Worker::ReceiveChunk(Connection* c, Direction& d, size_t want, size_t* n) {
  *n = 0;
  iovec iov{copy_buffer_.get(), want};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t got = recvmsg(d.from->fd, &msg, MSG_DONTWAIT);
  if (got == 0) {
    d.eof = true;
    return StepResult::kProgress;
  }
  if (got < 0) {
    if (errno == EAGAIN) {
      d.from->readable = false;
      return StepResult::kNone;
    }
    if (errno == EINTR) return StepResult::kProgress;
    Fail(c, "recv from", d.from, errno);
    return StepResult::kFailed;
  }
  *n = static_cast<size_t>(got);
  if (*n == want) {
    d.bulk = true;
  } else if (!d.from->read_until_eagain && !(msg.msg_flags & MSG_CTRUNC)) {
    // A stream socket's recv stops short only when its queue is empty; new
    // bytes raise a new edge. Not after an end or urgent data was seen:
    // recv stops before those, and they raise no second edge. Nor after fds
    // a UNIX peer passed (dropped here, as splice drops them): the read
    // stops after them, and MSG_CTRUNC says so.
    d.from->readable = false;
  }
  return StepResult::kProgress;
}

// Writes `len` bytes of the worker's buffer, from `offset`, into the
// direction's empty pipe, which takes them all: no more than its capacity.
StepResult Worker::FillEmptyPipe(Connection* c, Direction& d, size_t offset, size_t len) {
  ssize_t written = write(d.pipe.write_end, copy_buffer_.get() + offset, len);
  if (written != static_cast<ssize_t>(len)) {
    // Cannot happen; never lose bytes quietly.
    Fail(c, "write to pipe for", d.to, written < 0 ? errno : EAGAIN);
    return StepResult::kFailed;
  }
  d.pipe.bytes = len;
  return StepResult::kProgress;
}

void Worker::RunReadyQueue() {
  if (!ready_.linked()) return;
  // Take the current queue; connections that yield again go to the next round.
  Link batch;
  batch.next = ready_.next;
  batch.prev = ready_.prev;
  batch.next->prev = &batch;
  batch.prev->next = &batch;
  ready_.next = ready_.prev = &ready_;
  while (batch.linked()) {
    Connection* c = batch.next->owner;
    c->ready.Unlink();
    Pump(c);
  }
}

void Worker::Fail(Connection* c, const char* what, const Side* side, int err) {
  if (owner_->ShouldLog(kLogDebug)) {
    Log(kLogDebug, std::string("Closing connection: ") + what + " " + side->name + ": " + ErrnoText(err));
  }
  Close(c);
}

void Worker::Close(Connection* c) {
  if (c->closed) return;
  c->closed = true;
  c->all.Unlink();
  c->connecting.Unlink();
  c->ready.Unlink();
  for (Side* side : {&c->client, &c->upstream}) {
    if (side->fd >= 0) close(side->fd);  // also leaves the epoll set
    side->fd = -1;
  }
  for (Direction* d : {&c->to_upstream, &c->to_client}) {
    if (!d->pipe.open()) continue;
    // A pipe with bytes left in it cannot serve another connection.
    if (d->pipe.bytes == 0) {
      ReleasePipe(&d->pipe);
    } else {
      DestroyPipe(&d->pipe, kPipesInUse);
    }
  }
  owner_->ReleaseConnection();
  // Events for this connection may still be in the current batch.
  graveyard_.push_back(c);
}

void Worker::CloseAll() {
  while (all_.linked()) Close(all_.next->owner);
  for (Connection* c : graveyard_) delete c;
  graveyard_.clear();
}

// ---------------------------------------------------------------------------
// Pipes: pooled per worker, so an idle connection holds none.

bool Worker::AcquirePipe(Pipe* p) {
  if (!spare_pipes_.empty()) {
    *p = spare_pipes_.back();
    spare_pipes_.pop_back();
    owner_->counters_[kPipesPooled].fetch_sub(1, std::memory_order_relaxed);
    owner_->Count(kPipesInUse, 1);
    return true;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return false;
  // The kernel may refuse the size (fs.pipe-max-size, or the user's
  // fs.pipe-user-pages-soft): then the pipe keeps the size it was given.
  if (fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(owner_->config_.pipe_size)) < 0 &&
      !owner_->pipe_size_warned_.exchange(true)) {
    Log(kLogWarning, "Pipes are smaller than " + std::to_string(owner_->config_.pipe_size) +
                         " bytes (F_SETPIPE_SZ: " + ErrnoText(errno) + "); forwarding goes on in smaller steps.");
  }
  int capacity = fcntl(fds[1], F_GETPIPE_SZ);
  if (capacity <= 0) {
    int err = errno;
    close(fds[0]);
    close(fds[1]);
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

void Worker::ReleasePipe(Pipe* p) {
  if (spare_pipes_.size() < kMaxSparePipes) {
    spare_pipes_.push_back(*p);
    owner_->counters_[kPipesInUse].fetch_sub(1, std::memory_order_relaxed);
    owner_->Count(kPipesPooled, 1);
    *p = Pipe{};
  } else {
    DestroyPipe(p, kPipesInUse);
  }
}

void Worker::DestroyPipe(Pipe* p, Counter counter) {
  close(p->read_end);
  close(p->write_end);
  owner_->counters_[counter].fetch_sub(1, std::memory_order_relaxed);
  *p = Pipe{};
}

// ---------------------------------------------------------------------------
// Forwarder: owns the workers and what they share.

Forwarder::Forwarder(ForwarderConfig config, std::atomic<uint64_t>* counters, EventSink* sink)
    : config_(std::move(config)),
      counters_(counters),
      sink_(sink),
      max_connections_(config_.max_connections),
      log_level_(config_.log_level),
      targets_(std::make_shared<const std::vector<Endpoint>>(config_.targets)) {
  if (config_.workers == 0) config_.workers = 1;
}

Forwarder::~Forwarder() { Stop(); }

std::string Forwarder::Start() {
  if (started_) return "already started";
  started_ = true;
  for (int fd : config_.listeners) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
      return "listening socket " + std::to_string(fd) + ": " + ErrnoText(errno);
    }
  }
  for (unsigned i = 0; i < config_.workers; ++i) {
    workers_.push_back(std::make_unique<Worker>(this, i));
    std::string error = workers_.back()->Init();
    if (!error.empty()) {
      Stop();
      return error;
    }
  }
  for (auto& worker : workers_) {
    std::string error = worker->StartThread();
    if (!error.empty()) {
      Stop();
      return error;
    }
  }
  return "";
}

std::shared_ptr<const std::vector<Endpoint>> Forwarder::targets() const {
  std::lock_guard<std::mutex> lock(targets_mutex_);
  return targets_;
}

void Forwarder::SetTargets(std::vector<Endpoint> targets) {
  auto next = std::make_shared<const std::vector<Endpoint>>(std::move(targets));
  std::lock_guard<std::mutex> lock(targets_mutex_);
  targets_ = std::move(next);
}

void Forwarder::Log(int level, std::string message) {
  if (ShouldLog(level)) sink_->OnLog(level, std::move(message));
}

bool Forwarder::AdmitConnection() {
  uint64_t limit = max_connections_.load(std::memory_order_relaxed);
  uint64_t before = counters_[kActive].fetch_add(1, std::memory_order_acq_rel);
  if (before >= limit) {
    Count(kRefused, 1);
    ReleaseConnection();  // may be the one that brings the count back to 0
    return false;
  }
  Count(kAccepted, 1);
  if (before == 0) {
    Count(kBusyPeriods, 1);
    sink_->OnActivityChanged();
  }
  return true;
}

void Forwarder::ReleaseConnection() {
  if (counters_[kActive].fetch_sub(1, std::memory_order_acq_rel) == 1) sink_->OnActivityChanged();
}

void Forwarder::StopAccepting() {
  if (listeners_closed_) return;
  if (!workers_.empty() && !stopped_) {
    accepting_.store(false, std::memory_order_release);
    for (auto& worker : workers_) worker->Wake();
    std::unique_lock<std::mutex> lock(ack_mutex_);
    // Bounded: a wedged worker must not wedge shutdown too.
    ack_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return listeners_dropped_ >= workers_.size(); });
  }
  for (int fd : config_.listeners) close(fd);
  listeners_closed_ = true;
}

void Forwarder::Ping(uint64_t seq) {
  ping_seq_.store(seq, std::memory_order_release);
  for (auto& worker : workers_) worker->Wake();
}

void Forwarder::Stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true, std::memory_order_release);
  for (auto& worker : workers_) worker->Wake();
  for (auto& worker : workers_) worker->Join();
  workers_.clear();
  if (!listeners_closed_) {
    for (int fd : config_.listeners) close(fd);
    listeners_closed_ = true;
  }
}

}  // namespace proxyd
