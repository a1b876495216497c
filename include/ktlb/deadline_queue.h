// Timeouts without allocation: one intrusive FIFO per timeout kind.
//
// Every timeout of one kind has the same duration, so deadlines armed later
// expire later and each kind's list stays sorted by construction: arming is a
// push to the tail, cancelling an unlink, expiry pops from the head. An object
// embeds one DeadlineNode per timer it may have armed at once.
#pragma once

#include <cstdint>
#include <ctime>

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
  // Milliseconds until the earliest deadline, or UINT64_MAX when empty.
  uint64_t NextDeadline() const {
    return head_.next == &head_ ? UINT64_MAX : head_.next->deadline_ms;
  }

 private:
  DeadlineNode head_;
};

}  // namespace ktlb
