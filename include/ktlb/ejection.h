// Passive ejection of one server by one worker, and the slow start that
// follows it: pure arithmetic over the worker's loop clock, so unit tests
// drive it without sockets or time passing.
//
// Per worker by design: each worker sees its own requests fail and ejects on
// its own, with no shared state and no lock. N workers may each send a dead
// server `consecutive_failures` attempts before all have ejected it; retries
// of idempotent requests hide those from clients.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ktlb/config.h"

namespace ktlb::upstream {

// How long the n-th ejection in a row lasts: base, doubling, capped at max.
inline uint64_t EjectionDuration(const EjectionConfig& c, uint32_t n) {
  if (n == 0) return 0;
  const uint32_t shift = std::min<uint32_t>(n - 1, 32);
  const uint64_t d = static_cast<uint64_t>(c.base_ms) << shift;
  return std::min<uint64_t>(d, c.max_ms);
}

// The share of its weight a server takes `elapsed_ms` after it came back:
// from 10% (so it is tried at all) linearly up to 100% at slow_start_ms.
inline double SlowStartFactor(uint64_t elapsed_ms, uint32_t slow_start_ms) {
  constexpr double kFloor = 0.1;
  if (slow_start_ms == 0 || elapsed_ms >= slow_start_ms) return 1.0;
  return kFloor + (1.0 - kFloor) * static_cast<double>(elapsed_ms) / slow_start_ms;
}

class EjectionState {
 public:
  // An attempt on the server failed (connect failure, reset, timeout, 5xx).
  // Returns true when it ejected the server (until until_ms()). A server
  // just re-admitted is on probation: its first failure before any success
  // ejects it again, for twice as long, instead of costing another
  // `consecutive_failures` attempts.
  bool OnFailure(const EjectionConfig& c, uint64_t now_ms) {
    if (c.consecutive_failures == 0 || ejected(now_ms)) return false;
    ++failures_;
    if (!probation_ && failures_ < c.consecutive_failures) return false;
    ++ejections_;
    until_ms_ = now_ms + EjectionDuration(c, ejections_);
    failures_ = 0;
    probation_ = true;
    return true;
  }
  // An attempt got a response below 500: the backoff starts over.
  void OnSuccess() {
    failures_ = 0;
    ejections_ = 0;
    probation_ = false;
  }
  // The active checks saw the server come back up: their verdict is newer
  // evidence than the failures that ejected it.
  void Readmit() {
    OnSuccess();
    until_ms_ = 0;
  }
  bool ejected(uint64_t now_ms) const { return now_ms < until_ms_; }
  uint64_t until_ms() const { return until_ms_; }
  uint32_t ejections() const { return ejections_; }

 private:
  uint32_t failures_ = 0;   // in a row
  uint32_t ejections_ = 0;  // in a row, with no success between them
  uint64_t until_ms_ = 0;
  bool probation_ = false;
};

}  // namespace ktlb::upstream
