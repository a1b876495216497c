// Active health: the rise/fall verdict on one server's probes, and the board
// through which an upstream's single prober tells every worker which servers
// are down.
//
// One prober per upstream per process (health_prober.h) writes the board;
// every worker's Cluster of that upstream reads it when it picks. Reads are
// a relaxed version check and, when it moved, one acquire load per server:
// nothing on the request path takes a lock or writes shared memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ktlb::upstream {

// Hysteresis over probe results: `fall` failures in a row take an up server
// down, `rise` passes in a row bring a down one back. The first probe
// decides at once, so a server dead at startup is found after one probe
// rather than `fall` (until then it counts as up: passive ejection covers it).
class HealthCounter {
 public:
  enum class State : uint8_t { kUnknown, kUp, kDown };

  HealthCounter(uint32_t rise, uint32_t fall) : rise_(rise), fall_(fall) {}

  // Records one probe; returns true when it changed the state between up
  // and down (unknown -> up is no change: the server was served already).
  bool Record(bool passed) {
    const State before = state_;
    if (passed) {
      fails_ = 0;
      ++passes_;
      if (state_ == State::kUnknown || (state_ == State::kDown && passes_ >= rise_)) {
        state_ = State::kUp;
      }
    } else {
      passes_ = 0;
      ++fails_;
      if (state_ == State::kUnknown || (state_ == State::kUp && fails_ >= fall_)) {
        state_ = State::kDown;
      }
    }
    return state_ != before && !(before == State::kUnknown && state_ == State::kUp);
  }
  // Carries a verdict over from an earlier prober of the same server (its
  // upstream's server list changed): a down server needs `rise` passes.
  void SeedDown() { state_ = State::kDown; }
  State state() const { return state_; }
  bool down() const { return state_ == State::kDown; }
  // Passes or failures in a row, whichever the last probe was.
  uint32_t streak() const { return passes_ > 0 ? passes_ : fails_; }

 private:
  uint32_t rise_;
  uint32_t fall_;
  uint32_t passes_ = 0;
  uint32_t fails_ = 0;
  State state_ = State::kUnknown;
};

// Which servers of one upstream the active checks hold down. Written by one
// prober thread, read by every worker.
class HealthBoard {
 public:
  // `recheck_ms`: the soonest a down server can come back (rise x interval),
  // which 503s tell clients as Retry-After.
  HealthBoard(size_t servers, uint32_t recheck_ms)
      : n_(servers), recheck_ms_(recheck_ms), down_(std::make_unique<std::atomic<uint8_t>[]>(servers)) {
    for (size_t i = 0; i < n_; ++i) down_[i].store(0, std::memory_order_relaxed);
  }

  size_t size() const { return n_; }
  uint32_t recheck_ms() const { return recheck_ms_; }
  // Moves on every change: a reader recomputes its view only then.
  uint64_t version() const { return version_.load(std::memory_order_acquire); }
  bool up(size_t i) const { return down_[i].load(std::memory_order_relaxed) == 0; }
  size_t healthy() const {
    size_t n = 0;
    for (size_t i = 0; i < n_; ++i) n += up(i) ? 1 : 0;
    return n;
  }

  // The prober only.
  void Set(size_t i, bool up) {
    down_[i].store(up ? 0 : 1, std::memory_order_relaxed);
    // Release: a reader that sees the new version sees the new flag.
    version_.fetch_add(1, std::memory_order_release);
  }

 private:
  size_t n_;
  uint32_t recheck_ms_;
  std::unique_ptr<std::atomic<uint8_t>[]> down_;
  std::atomic<uint64_t> version_{0};
};

}  // namespace ktlb::upstream
