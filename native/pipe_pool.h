// The pipe pool: each worker keeps spare pipes so that a connection holds a
// pipe only while bytes are in flight, without a pipe2() + fcntl() per burst.
// The pool grows with demand (to kMaxSpares) and gives pipes back once they
// sat unused for a whole trim period, or at once when fds or pipe pages run
// short, so that at rest the proxy holds two fds per connection plus a few.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "connection.h"

namespace proxyd {

class Forwarder;

class PipePool {
 public:
  // Spares kept whatever happens: when fds run out, connections waiting for a
  // pipe still progress through these, one burst at a time.
  static constexpr size_t kReserve = 2;
  static constexpr size_t kMaxSpares = 64;
  static constexpr int64_t kTrimPeriodMs = 1000;

  explicit PipePool(Forwarder* owner) : owner_(owner) {}
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // Makes the reserve. False with errno set if it cannot.
  bool Init();
  // Hands out a spare pipe, or makes one. False with errno set if none can be made.
  bool Acquire(Pipe* p);
  // A pipe whose bytes were all delivered: kept as a spare (up to the cap).
  void Release(Pipe* p);
  // A pipe with bytes left in it can serve no one else.
  void Destroy(Pipe* p);

  bool has_spare() const { return !spares_.empty(); }
  // Capacity of the pipe the next Acquire hands out; only with has_spare().
  size_t next_spare_capacity() const { return spares_.back().capacity; }

  // Gives back the spares that were not needed during the whole last period.
  void Trim(int64_t now);
  // When Trim wants to run next; 0 when the pool holds only its reserve.
  int64_t next_trim_at() const { return next_trim_at_; }
  // Fds or pipe pages are short: keep only the reserve.
  void ShrinkToReserve();

 private:
  bool Make(Pipe* p);
  void DestroySpare();

  Forwarder* owner_;
  std::vector<Pipe> spares_;
  // The fewest spares held since the last trim: that many sat unused throughout.
  size_t low_water_ = 0;
  int64_t next_trim_at_ = 0;
};

}  // namespace proxyd
