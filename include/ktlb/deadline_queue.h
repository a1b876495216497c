// Timeouts without allocation on the hot path.
//
// DeadlineQueue is an intrusive FIFO of timers. When every timer in one queue
// has the same duration, deadlines armed later expire later and the list stays
// sorted by construction: arming is a push to the tail, cancelling an unlink,
// expiry pops from the head. A queue whose timers have different durations is
// NOT sorted, and a short timer armed behind a long one fires late.
//
// TimerSet lifts that restriction: it keeps one DeadlineQueue per distinct
// duration and looks at every queue's head, so each timer may have its own
// duration. Use it whenever one kind of timeout can be armed with more than
// one duration (a config value that differs per listener, or changes on
// reload while old connections still hold timers).
//
// Ownership: an object embeds one DeadlineNode per timer it may have armed at
// once and owns it; the queue only links to it. A node must be cancelled (or
// have expired) before its owner is destroyed, and a queue or set must outlive
// every node armed in it. Single-threaded: a worker's timers are its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <deque>

namespace ktlb {

inline uint64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1'000'000;
}

// Whoever embeds a DeadlineNode and wants to hear when it expires.
class DeadlineTarget {
 public:
  virtual void OnDeadline(uint8_t kind) = 0;

 protected:
  ~DeadlineTarget() = default;
};

struct DeadlineNode {
  DeadlineTarget* target = nullptr;
  DeadlineNode* prev = nullptr;
  DeadlineNode* next = nullptr;
  uint64_t deadline_ms = 0;
  uint8_t kind = 0;
  bool armed() const { return prev != nullptr; }
};

class DeadlineQueue {
 public:
  DeadlineQueue() { head_.prev = head_.next = &head_; }
  DeadlineQueue(const DeadlineQueue&) = delete;
  DeadlineQueue& operator=(const DeadlineQueue&) = delete;

  // Re-arming moves the node to the tail with the new deadline.
  void Arm(DeadlineNode* n, uint64_t deadline_ms, uint8_t kind) {
    if (n->armed()) Cancel(n);
    n->deadline_ms = deadline_ms;
    n->kind = kind;
    n->prev = head_.prev;
    n->next = &head_;
    head_.prev->next = n;
    head_.prev = n;
  }
  static void Cancel(DeadlineNode* n) {
    if (!n->armed()) return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = nullptr;
  }
  // The first node whose deadline has passed, unlinked; nullptr if none.
  DeadlineNode* PopExpired(uint64_t now_ms) {
    DeadlineNode* n = head_.next;
    if (n == &head_ || n->deadline_ms > now_ms) return nullptr;
    Cancel(n);
    return n;
  }
  // The earliest deadline (an absolute NowMs() time), or UINT64_MAX when empty.
  uint64_t NextDeadline() const {
    return head_.next == &head_ ? UINT64_MAX : head_.next->deadline_ms;
  }
  bool empty() const { return head_.next == &head_; }

 private:
  DeadlineNode head_;
};

// Timers with per-instance durations, for one worker.
//
// Holds one DeadlineQueue per distinct duration, each sorted by construction
// as long as `now_ms` never decreases between calls (pass the worker loop's
// monotonic clock). Configurations have a handful of distinct timeouts, so a
// linear scan over a small list beats any ordered structure, and arming a
// duration that has been seen before allocates nothing. Only the first timer
// with a new duration may allocate, and a queue left empty is relabelled for
// the next new duration, so the number of queues is bounded by the number of
// durations in use at one moment, not by every duration ever configured.
//
// Expiry is in deadline order across queues: PopExpired() returns the expired
// node with the earliest deadline. Timers with equal deadlines but different
// durations come out in queue order (not arming order); within one duration
// they come out in arming order.
class TimerSet {
 public:
  TimerSet() = default;
  TimerSet(const TimerSet&) = delete;
  TimerSet& operator=(const TimerSet&) = delete;

  // Arms `n` to expire at now_ms + duration_ms with `kind` (stored in
  // n->kind for the expiry handler). Re-arming an armed node moves it, from
  // whichever queue of this set held it.
  void Arm(DeadlineNode* n, uint64_t now_ms, uint32_t duration_ms, uint8_t kind) {
    DeadlineQueue::Cancel(n);  // first, so its queue may be the empty one reused
    QueueFor(duration_ms).Arm(n, now_ms + duration_ms, kind);
  }

  // Unlinks `n` if armed; a no-op otherwise. Needs no set: nodes are intrusive.
  static void Cancel(DeadlineNode* n) { DeadlineQueue::Cancel(n); }

  // The expired node (deadline <= now_ms) with the earliest deadline across
  // all durations, unlinked; nullptr when nothing has expired. Call in a loop:
  // the handler of one node may arm or cancel others.
  DeadlineNode* PopExpired(uint64_t now_ms) {
    Lane* earliest = nullptr;
    uint64_t earliest_ms = UINT64_MAX;
    for (Lane& lane : lanes_) {
      const uint64_t d = lane.queue.NextDeadline();
      if (d < earliest_ms) {
        earliest_ms = d;
        earliest = &lane;
      }
    }
    return earliest == nullptr ? nullptr : earliest->queue.PopExpired(now_ms);
  }

  // The earliest deadline of any armed timer, or UINT64_MAX when none is.
  uint64_t NextDeadline() const {
    uint64_t next = UINT64_MAX;
    for (const Lane& lane : lanes_) {
      const uint64_t d = lane.queue.NextDeadline();
      if (d < next) next = d;
    }
    return next;
  }

  // How many per-duration queues exist (in use or waiting to be reused).
  size_t queue_count() const { return lanes_.size(); }

 private:
  struct Lane {
    explicit Lane(uint32_t d) : duration_ms(d) {}
    uint32_t duration_ms;
    DeadlineQueue queue;
  };

  DeadlineQueue& QueueFor(uint32_t duration_ms) {
    Lane* vacant = nullptr;
    for (Lane& lane : lanes_) {
      if (lane.duration_ms == duration_ms) return lane.queue;
      if (vacant == nullptr && lane.queue.empty()) vacant = &lane;
    }
    if (vacant != nullptr) {
      vacant->duration_ms = duration_ms;
      return vacant->queue;
    }
    return lanes_.emplace_back(duration_ms).queue;
  }

  // A deque, not a vector: nodes link to their queue's head node, so a queue
  // must never move, and deque::emplace_back never relocates elements.
  std::deque<Lane> lanes_;
};

}  // namespace ktlb
