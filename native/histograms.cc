#include "histograms.h"

#include <iterator>

namespace proxyd {
namespace {

// Upstream connects on a LAN take 0.1-1 ms; seconds mean a retry or a timeout.
constexpr int64_t kConnectBoundsUs[] = {100,    250,    500,     1000,    2500,    5000,    10000,    25000,
                                        50000,  100000, 250000,  500000,  1000000, 2500000, 5000000, 10000000};
// Connections live from a request (milliseconds) to a session (an hour).
constexpr int64_t kDurationBoundsUs[] = {1000,     5000,     10000,     50000,     100000,    500000,    1000000,
                                         5000000,  10000000, 30000000,  60000000,  300000000, 900000000, 3600000000};

// Buckets (bounds + the +Inf one), the count and the sum.
constexpr unsigned SlotsFor(size_t bound_count) { return static_cast<unsigned>(bound_count) + 3; }

constexpr unsigned kConnectFirst = kCounterCount;
constexpr unsigned kDurationFirst = kConnectFirst + SlotsFor(std::size(kConnectBoundsUs));
constexpr unsigned kFirstPingSlot = kDurationFirst + SlotsFor(std::size(kDurationBoundsUs));

}  // namespace

const HistogramSpec kHistograms[kHistogramCount] = {
    {"connect", kConnectBoundsUs, std::size(kConnectBoundsUs), kConnectFirst},
    {"duration", kDurationBoundsUs, std::size(kDurationBoundsUs), kDurationFirst},
};

unsigned WorkerPingSlot(unsigned index) { return kFirstPingSlot + index; }

void Observe(std::atomic<uint64_t>* counters, Histogram histogram, int64_t micros) {
  const HistogramSpec& spec = kHistograms[histogram];
  if (micros < 0) micros = 0;
  size_t bucket = 0;
  while (bucket < spec.bound_count && micros > spec.bounds_us[bucket]) ++bucket;
  std::atomic<uint64_t>* slots = counters + spec.first_slot;
  slots[bucket].fetch_add(1, std::memory_order_relaxed);
  slots[spec.bound_count + 1].fetch_add(1, std::memory_order_relaxed);
  slots[spec.bound_count + 2].fetch_add(static_cast<uint64_t>(micros), std::memory_order_relaxed);
}

}  // namespace proxyd
