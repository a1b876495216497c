// The pure parts of an upstream's limits: the bounded FIFO of requests
// waiting for a connection (max_conns_per_server), and the retry budget
// arithmetic (retry_budget). Header-only; Cluster and Exchange use them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace ktlb::upstream {

// A link in a WaitQueue, embedded in what waits (an Exchange).
struct WaitNode {
  WaitNode* prev = nullptr;
  WaitNode* next = nullptr;
  void* owner = nullptr;  // what waits
  bool queued = false;
};

// An intrusive FIFO with a bound: O(1) push, pop and removal from the
// middle (a client that went away while waiting). Owns nothing.
class WaitQueue {
 public:
  explicit WaitQueue(size_t bound = 1024) : bound_(bound) {}
  WaitQueue(const WaitQueue&) = delete;
  WaitQueue& operator=(const WaitQueue&) = delete;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t bound() const { return bound_; }

  // False (and `n` untouched) when full or `n` is already queued.
  bool Push(WaitNode* n) {
    if (n->queued || size_ >= bound_) return false;
    n->prev = tail_;
    n->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = n;
    } else {
      head_ = n;
    }
    tail_ = n;
    n->queued = true;
    ++size_;
    return true;
  }
  // Unlinks `n` if queued; false when it was not.
  bool Remove(WaitNode* n) {
    if (!n->queued) return false;
    if (n->prev != nullptr) {
      n->prev->next = n->next;
    } else {
      head_ = n->next;
    }
    if (n->next != nullptr) {
      n->next->prev = n->prev;
    } else {
      tail_ = n->prev;
    }
    n->prev = n->next = nullptr;
    n->queued = false;
    --size_;
    return true;
  }
  WaitNode* front() const { return head_; }
  WaitNode* PopFront() {
    WaitNode* n = head_;
    if (n != nullptr) Remove(n);
    return n;
  }

 private:
  size_t bound_;
  size_t size_ = 0;
  WaitNode* head_ = nullptr;
  WaitNode* tail_ = nullptr;
};

// Envoy's retry budget: retries in flight may reach budget x requests in
// flight, but never fewer than `floor` (so a quiet cluster can still retry).
inline constexpr size_t kRetryBudgetFloor = 3;

inline size_t RetryBudgetLimit(size_t requests_in_flight, double budget,
                               size_t floor = kRetryBudgetFloor) {
  const double scaled = budget * static_cast<double>(requests_in_flight);
  return std::max(floor, static_cast<size_t>(scaled));
}

// Whether one more retry may start while `retries_in_flight` already run.
inline bool RetryBudgetAllows(size_t retries_in_flight, size_t requests_in_flight, double budget,
                              size_t floor = kRetryBudgetFloor) {
  return retries_in_flight < RetryBudgetLimit(requests_in_flight, budget, floor);
}

}  // namespace ktlb::upstream
