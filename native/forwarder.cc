#include "forwarder.h"

#include <fcntl.h>

#include <chrono>
#include <utility>

#include "syscalls.h"
#include "worker.h"

namespace proxyd {

bool LogThrottle::Admit(int64_t now, std::string* message) {
  if (last != 0 && now - last < 1000) {
    ++suppressed;
    return false;
  }
  if (suppressed != 0) *message += " (" + std::to_string(suppressed) + " more since the last message)";
  last = now;
  suppressed = 0;
  return true;
}

Forwarder::Forwarder(ForwarderConfig config, std::atomic<uint64_t>* counters, EventSink* sink)
    : config_(std::move(config)),
      counters_(counters),
      sink_(sink),
      max_connections_(config_.max_connections),
      log_level_(config_.log_level),
      targets_(std::make_shared<const std::vector<Endpoint>>(config_.targets)) {
}

Forwarder::~Forwarder() { Stop(); }

std::string Forwarder::Start(int* error_number) {
  *error_number = 0;
  std::vector<int> all = config_.listeners;
  all.insert(all.end(), config_.datagram_listeners.begin(), config_.datagram_listeners.end());
  for (int fd : all) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
      *error_number = errno;
      return "listening socket " + std::to_string(fd) + ": " + ErrnoText(*error_number);
    }
  }
  workers_.reserve(config_.workers);
  for (unsigned i = 0; i < config_.workers; ++i) {
    workers_.push_back(std::make_unique<Worker>(this, i));
    std::string error = workers_.back()->Init(error_number);
    if (!error.empty()) {
      Stop();
      return error;
    }
  }
  for (auto& worker : workers_) {
    std::string error = worker->StartThread(error_number);
    if (!error.empty()) {
      Stop();
      return error;
    }
  }
  return "";
}

void Forwarder::ShrinkPipePools() {
  pool_shrinks_.fetch_add(1, std::memory_order_release);
  for (auto& worker : workers_) worker->Wake();
}

void Forwarder::GiveUpLingering() {
  linger_give_ups_.fetch_add(1, std::memory_order_release);
  for (auto& worker : workers_) worker->Wake();
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
  // Compare-and-swap, so a refused client never raises the count even for a
  // moment (which could hide a 0 -> 1 change from the next admitted one).
  uint64_t before = counters_[kActive].load(std::memory_order_relaxed);
  do {
    if (before >= limit) {
      Count(kRefused, 1);
      return false;
    }
  } while (!counters_[kActive].compare_exchange_weak(before, before + 1, std::memory_order_acq_rel,
                                                     std::memory_order_relaxed));
  Count(kAccepted, 1);
  OpenActivity();
  return true;
}

void Forwarder::ReleaseConnection() {
  counters_[kActive].fetch_sub(1, std::memory_order_acq_rel);
  CloseActivity();
}

void Forwarder::OpenActivity() {
  if (counters_[kOpen].fetch_add(1, std::memory_order_acq_rel) == 0) {
    // Release: JS, having read the new period count, also sees this open count.
    counters_[kBusyPeriods].fetch_add(1, std::memory_order_release);
    sink_->OnActivityChanged();
  }
}

void Forwarder::CloseActivity() {
  if (counters_[kOpen].fetch_sub(1, std::memory_order_acq_rel) == 1) sink_->OnActivityChanged();
}

void Forwarder::StopAccepting() {
  if (workers_.empty() || stopped_ || !accepting_.load(std::memory_order_acquire)) return;
  accepting_.store(false, std::memory_order_release);
  for (auto& worker : workers_) worker->Wake();
  std::unique_lock<std::mutex> lock(ack_mutex_);
  // Bounded: a wedged worker must not wedge shutdown too. The listeners then
  // stay open until that worker drops them (OnListenersDropped) or Stop.
  bool all = ack_cv_.wait_for(lock, std::chrono::seconds(5),
                              [&] { return listeners_dropped_ >= workers_.size(); });
  if (all) {
    CloseListenersLocked();
  } else {
    close_listeners_on_last_drop_ = true;
    lock.unlock();
    Log(kLogWarning,
        "A forwarding thread did not stop accepting within 5 s; its listening sockets close when it does.");
  }
}

void Forwarder::OnListenersDropped() {
  std::lock_guard<std::mutex> lock(ack_mutex_);
  ++listeners_dropped_;
  if (close_listeners_on_last_drop_ && listeners_dropped_ >= config_.workers) CloseListenersLocked();
  ack_cv_.notify_all();
}

void Forwarder::CloseListenersLocked() {
  if (listeners_closed_) return;
  for (int fd : config_.listeners) CloseFd(fd);
  for (int fd : config_.datagram_listeners) CloseFd(fd);
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
  std::lock_guard<std::mutex> lock(ack_mutex_);
  CloseListenersLocked();
}

}  // namespace proxyd
