// Connecting upstream (Worker's methods for it): each target address in turn,
// each bounded by the connect timeout; while every address refuses and
// --connect-retry allows, again after a pause; then the PROXY protocol header,
// before any client byte.
#include <sys/socket.h>

#include <algorithm>
#include <cassert>

#include "histograms.h"
#include "syscalls.h"
#include "worker.h"

namespace proxyd {
namespace {

// --connect-retry: the first pause after every target refused, doubled after
// each round up to the cap (a backend that takes seconds to start is tried
// twice a second, one that takes 50 ms costs its clients little more).
constexpr int kFirstRetryMs = 20;
constexpr int kMaxRetryMs = 500;

}  // namespace

void Worker::ConnectNext(Connection* c, int last_error) {
  assert(!c->connected && c->upstream.fd < 0 && c->wait == Wait::kNone);
  if (IsRefusal(last_error)) c->refused = true;
  const std::vector<Endpoint>& targets = *c->targets;
  const ForwarderConfig& config = owner_->config_;
  while (c->next_target < targets.size()) {
    const Endpoint& target = targets[c->next_target++];
    int fd = socket(target.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_error = errno;
      if (IsResourceShortage(last_error)) {
        if (WaitForResources(c, last_error)) return;
        break;
      }
      continue;
    }
    const char* what = "";
    c->upstream_is_tcp = IsInet(target.addr.ss_family);
    if (c->upstream_is_tcp && !SetTcpOptions(fd, config, &what)) {
      last_error = errno;
      CloseFd(fd);
      continue;
    }
    // A connect that completes at once (UNIX sockets) is reported by the
    // EPOLLOUT that registration raises, like one that completes later.
    // EINTR: the connect goes on in the background, as with EINPROGRESS.
    if (connect(fd, reinterpret_cast<const sockaddr*>(&target.addr), target.len) < 0 && errno != EINPROGRESS &&
        !IsInterrupted(errno)) {
      last_error = errno;
      if (IsRefusal(last_error)) c->refused = true;
      CloseFd(fd);
      continue;
    }
    c->upstream.fd = fd;
    if (!WatchSide(&c->upstream)) {
      last_error = errno;
      CloseSide(&c->upstream, CloseHow::kEnd);
      if (IsResourceShortage(last_error)) {  // out of epoll watches: not the target's fault
        if (WaitForResources(c, last_error)) return;
        break;
      }
      continue;
    }
    StartWait(c, Wait::kConnect, NowMs() + config.connect_timeout_ms);
    return;
  }
  if (c->refused && RetryLater(c, last_error)) return;
  LogUpstreamFailure(c, last_error);
  if (c->access && c->next_target > 0) c->access->upstream = targets[c->next_target - 1].text;
  // No address at all: EDESTADDRREQ, whatever came before.
  Close(c, CloseHow::kEnd, EndCause::kConnectFailed, targets.empty() ? EDESTADDRREQ : last_error);
}

// Out of fds (or epoll watches) for the upstream socket: every address would
// fail alike, and so would the clients behind this one. Those stay in the
// backlog; this one waits and tries the same address again, until its
// connect timeout has passed (then false: give up).
bool Worker::WaitForResources(Connection* c, int err) {
  PauseAccepting(err);
  int64_t now = NowMs();
  if (now >= c->give_up_at) return false;
  --c->next_target;
  StartWait(c, Wait::kSocketFds, now + kRetryAfterShortageMs);
  return true;
}

// Every address was tried and one refused: with --connect-retry the client
// waits (in the backlog's stead: its bytes stay in its socket) and the round
// starts again after a pause, until the span since it came has passed. The
// first client to wait says so, once for the whole episode.
bool Worker::RetryLater(Connection* c, int err) {
  int64_t now = NowMs();
  if (owner_->config_.connect_retry_ms == 0) return false;
  // It reset before its first wait (the report came while connecting): it
  // has given up already, and waiting would only hold its place.
  if (c->client.failed) {
    Close(c, CloseHow::kReset, EndCause::kClientReset);
    return true;
  }
  if (now >= c->retry_until) return false;
  if (c->retry_backoff_ms == 0) {
    c->retry_backoff_ms = kFirstRetryMs;
    owner_->Count(kRetriedConnects, 1);
    if (!owner_->upstream_waiting_.exchange(true)) {
      const std::vector<Endpoint>& targets = *c->targets;
      Log(kLogWarning, "Upstream " + (targets.empty() ? std::string("(no address)") : targets.back().text) +
                           " refuses connections (" + ErrnoText(err) + "); clients wait up to " +
                           std::to_string(owner_->config_.connect_retry_ms) + " ms for it.");
    }
  } else {
    c->retry_backoff_ms = std::min(2 * c->retry_backoff_ms, kMaxRetryMs);
  }
  c->next_target = 0;
  c->refused = false;
  StartWait(c, Wait::kRetry, std::min(now + c->retry_backoff_ms, c->retry_until));
  return true;
}

void Worker::OnConnectResult(Connection* c, uint32_t events) {
  if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
  // Writable without an error or hang-up: connected. Otherwise ask why not.
  int err = 0;
  if (events & (EPOLLERR | EPOLLHUP)) {
    err = SocketError(c->upstream.fd);
    if (err == 0 && !(events & EPOLLOUT)) err = ECONNREFUSED;
  }
  EndWait(c);
  if (err != 0) {
    CloseSide(&c->upstream, CloseHow::kEnd);
    ConnectNext(c, err);
    return;
  }
  OnConnected(c, events);
}

void Worker::OnConnected(Connection* c, uint32_t events) {
  // Any connect ends an episode of refusals, whether or not this client waited
  // (those that did may all have given up): the next refusal says so again.
  if (owner_->upstream_waiting_.load(std::memory_order_relaxed) && owner_->upstream_waiting_.exchange(false)) {
    Log(kLogInfo, "Upstream " + (*c->targets)[c->next_target - 1].text + " accepts connections now.");
  }
  c->connected = true;
  c->connected_us = NowUs();
  Observe(owner_->counters_, kConnectHistogram, c->connected_us - c->accepted_us);
  if (c->access) c->access->upstream = (*c->targets)[c->next_target - 1].text;
  c->targets.reset();
  c->upstream.writable = true;
  // Registered before connect(): bytes that came since raised EPOLLIN already.
  c->upstream.NoteEvents(events);
  if (owner_->config_.idle_timeout_ms > 0) {
    c->last_active = now_;
    c->idle.AppendTo(&idle_);
  }
  // The header goes first, at once: the upstream may be one that speaks first
  // (SMTP, SSH) and the client waits for it.
  if (c->header_pending() && !SendProxyHeader(c)) return;
  Pump(c);
}

// Sends what is left of the PROXY protocol header. Almost always all of it in
// one send; a partial one leaves the client's bytes waiting until the rest is
// sent (the upstream reports writable again). When the client's request is
// already waiting to follow (a TCP upstream), MSG_MORE lets the two leave in
// one segment, so the upstream reads them with one wakeup; Pump pushes the
// header out if nothing follows after all. False: the connection failed.
bool Worker::SendProxyHeader(Connection* c) {
  while (c->header_pending() && c->upstream.writable) {
    bool more = c->client.readable && c->upstream_is_tcp;
    ssize_t n = send(c->upstream.fd, c->header + c->header_sent, c->header_length - c->header_sent,
                     MSG_DONTWAIT | MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n >= 0) {
      c->header_sent = static_cast<uint8_t>(c->header_sent + n);
      c->header_corked = more;
      continue;
    }
    int err = errno;
    if (IsWouldBlock(err)) {
      c->upstream.writable = false;
    } else if (IsInterrupted(err)) {
      if (!c->ready.linked()) c->ready.AppendTo(&ready_);  // again on the next loop turn
      return true;
    } else {
      Fail(c, ShovelFailure{"send PROXY header to", &c->upstream, err});
      return false;
    }
  }
  return true;
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
  if (c->retry_backoff_ms != 0) {
    message += " (the client waited " + std::to_string(owner_->config_.connect_retry_ms) + " ms)";
  }
  LogThrottled(&upstream_failure_log_, kLogWarning, std::move(message));
}

}  // namespace proxyd
