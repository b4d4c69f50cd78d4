#include "access_log.h"

#include <cstdio>

#include "forwarder.h"
#include "net.h"

namespace proxyd {
namespace {

const char* EndName(EndCause cause) {
  switch (cause) {
    case EndCause::kClientEnd: return "client-fin";
    case EndCause::kUpstreamEnd: return "upstream-fin";
    case EndCause::kClientReset: return "client-reset";
    case EndCause::kUpstreamReset: return "upstream-reset";
    case EndCause::kError: return "error";
    case EndCause::kDrain: return "drain";
    case EndCause::kIdleTimeout: return "idle-timeout";
    case EndCause::kConnectFailed: return "connect-failed";
  }
  return "unknown";
}

const char* FailureName(ConnectFailure failure) {
  switch (failure) {
    case ConnectFailure::kRefused: return "refused";
    case ConnectFailure::kTimeout: return "timeout";
    case ConnectFailure::kUnreachable: return "unreachable";
    case ConnectFailure::kNoAddress: return "no-address";
    case ConnectFailure::kOther: return "other";
  }
  return "other";
}

std::string Seconds(int64_t micros) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6fs", static_cast<double>(micros < 0 ? 0 : micros) / 1e6);
  return text;
}

// The client's side: "client=ADDR local=ADDR" (an unnamed UNIX peer is "unix").
std::string Endpoints(const sockaddr_storage& peer, socklen_t peer_len, const sockaddr_storage& local,
                      socklen_t local_len) {
  std::string client = FormatAddress(peer, peer_len);
  std::string here = FormatAddress(local, local_len);
  return "client=" + (client.empty() ? std::string(peer.ss_family == AF_UNIX ? "unix" : "-") : client) +
         " local=" + (here.empty() ? std::string("-") : here);
}

}  // namespace

void AccessLog::Record(const Connection& c, EndCause cause, int connect_error, int64_t now_us) {
  int64_t now_ms = now_us / 1000;
  if (!c.access || !Admit(now_ms)) return;
  const AccessInfo& info = *c.access;
  std::string line = Endpoints(info.peer, info.peer_len, info.local, info.local_len);
  line += " upstream=" + (info.upstream.empty() ? std::string("-") : info.upstream);
  line += " up=" + std::to_string(c.to_upstream.bytes) + " down=" + std::to_string(c.to_client.bytes);
  if (c.connected) line += " connect=" + Seconds(c.connected_us - c.accepted_us);
  line += " duration=" + Seconds(now_us - c.accepted_us);
  line += " end=";
  line += EndName(cause);
  if (cause == EndCause::kConnectFailed) {
    line += ':';
    line += FailureName(ClassifyConnectFailure(connect_error, connect_error == EDESTADDRREQ));
  }
  Append(line, now_ms);
}

void AccessLog::RecordRefused(int fd, const sockaddr_storage& peer, socklen_t peer_len, int64_t now_us) {
  int64_t now_ms = now_us / 1000;
  if (!Admit(now_ms)) return;
  sockaddr_storage local{};
  socklen_t local_len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) < 0) local_len = 0;
  Append(Endpoints(peer, peer_len, local, local_len) + " end=limit", now_ms);
}

// At most kLinesPerSecond lines per second: a flood (a refused-at-the-limit
// storm, a port scan) must not turn the log into the bottleneck.
bool AccessLog::Admit(int64_t now_ms) {
  if (now_ms - window_start_ms_ >= 1000) {
    NoteLeftOut(now_ms);
    window_start_ms_ = now_ms;
    window_lines_ = 0;
  }
  if (window_lines_ >= kLinesPerSecond) {
    ++left_out_;
    return false;
  }
  ++window_lines_;
  return true;
}

void AccessLog::NoteLeftOut(int64_t now_ms) {
  if (left_out_ == 0) return;
  std::string line = "access log: " + std::to_string(left_out_) + " lines left out (more than " +
                     std::to_string(kLinesPerSecond) + " per second)";
  left_out_ = 0;
  Append(line, now_ms);
}

void AccessLog::Append(const std::string& line, int64_t now_ms) {
  if (batch_.empty()) {
    batch_since_ms_ = now_ms;
  } else {
    batch_ += '\n';
  }
  batch_ += line;
  if (batch_.size() >= kMaxBatch) Flush(now_ms, true);
}

int64_t AccessLog::next_flush_at() const {
  int64_t at = 0;
  if (!batch_.empty()) at = batch_since_ms_ + kFlushMs;
  // Lines left out are reported once their second is over, even if nothing follows.
  if (left_out_ != 0 && (at == 0 || window_start_ms_ + 1000 < at)) at = window_start_ms_ + 1000;
  return at;
}

void AccessLog::Flush(int64_t now_ms, bool force) {
  if (left_out_ != 0 && (force || now_ms - window_start_ms_ >= 1000)) {
    NoteLeftOut(now_ms);
    window_start_ms_ = now_ms;
    window_lines_ = 0;
  }
  if (batch_.empty() || (!force && now_ms - batch_since_ms_ < kFlushMs)) return;
  std::string batch;
  batch.swap(batch_);
  owner_->DeliverAccessLog(std::move(batch));
}

}  // namespace proxyd
