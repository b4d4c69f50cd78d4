// The access log (--access-log): one line per finished connection, built on
// the worker thread that served it and carried to JS in batches (at most
// every kFlushMs, or sooner when a batch grows large), never one call per
// connection. A flood is cut at kLinesPerSecond per worker, and a line says
// how many were left out.
#pragma once

#include <cstdint>
#include <string>

#include "connection.h"

namespace proxyd {

class Forwarder;

class AccessLog {
 public:
  static constexpr int kFlushMs = 100;
  static constexpr size_t kMaxBatch = 64 * 1024;
  static constexpr uint32_t kLinesPerSecond = 1000;

  explicit AccessLog(Forwarder* owner) : owner_(owner) {}

  // A finished connection. `connect_error`: why the upstream failed (kConnectFailed).
  void Record(const Connection& c, EndCause cause, int connect_error, int64_t now_us);
  // A client closed at once because the limit was reached.
  void RecordRefused(int fd, const sockaddr_storage& peer, socklen_t peer_len, int64_t now_us);
  // When the pending batch is due (0: nothing pending).
  int64_t next_flush_at() const;
  // Hands the batch to JS if it is due (or `force`).
  void Flush(int64_t now_ms, bool force);

 private:
  bool Admit(int64_t now_ms);
  void Append(const std::string& line, int64_t now_ms);
  void NoteLeftOut(int64_t now_ms);

  Forwarder* owner_;
  std::string batch_;
  int64_t batch_since_ms_ = 0;
  int64_t window_start_ms_ = 0;  // the current second of the rate limit
  uint32_t window_lines_ = 0;
  uint64_t left_out_ = 0;  // lines dropped in windows not yet reported
};

}  // namespace proxyd
