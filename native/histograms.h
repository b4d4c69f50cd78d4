// Latency histograms in the counter block JS reads: for each, one slot per
// bucket (not cumulative; the last is +Inf), then the count, then the sum in
// microseconds. Workers add to them with relaxed atomics, once per connection;
// JS reads them when metrics are collected, with no call into the engine.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "forwarder.h"

namespace proxyd {

struct HistogramSpec {
  const char* name;
  const int64_t* bounds_us;  // bucket upper bounds, ascending
  size_t bound_count;
  unsigned first_slot;
};

enum Histogram : unsigned {
  kConnectHistogram,   // accept to upstream connected (waits for --connect-retry included)
  kDurationHistogram,  // accept to close, every accepted connection
  kHistogramCount,
};

extern const HistogramSpec kHistograms[kHistogramCount];

// The slot of worker `index`'s watchdog answer: after the counters and the histograms.
unsigned WorkerPingSlot(unsigned index);

void Observe(std::atomic<uint64_t>* counters, Histogram histogram, int64_t micros);

}  // namespace proxyd
