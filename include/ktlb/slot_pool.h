// A per-worker pool of reusable objects addressed by a stable index.
//
// Objects are allocated once and recycled, so accepting a connection does not
// allocate after warm-up. The index plus a generation form the io_uring
// user_data, so a completion can always be routed back to its owner.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace ktlb {

template <typename T>
class SlotPool {
 public:
  // Returns an object whose slot_index() and generation() are set; the caller
  // resets its state.
  T* Acquire() {
    if (free_.empty()) {
      slots_.push_back(std::make_unique<T>());
      T* t = slots_.back().get();
      t->slot_index = static_cast<uint32_t>(slots_.size() - 1);
      ++live_;
      return t;
    }
    T* t = slots_[free_.back()].get();
    free_.pop_back();
    ++live_;
    return t;
  }
  void Release(T* t) {
    ++t->generation;
    free_.push_back(t->slot_index);
    --live_;
  }
  T* Get(uint32_t index, uint16_t gen) const {
    if (index >= slots_.size()) return nullptr;
    T* t = slots_[index].get();
    return t->generation == gen ? t : nullptr;
  }
  size_t live() const { return live_; }
  template <typename F>
  void ForEachSlot(F&& f) {
    for (auto& s : slots_) f(s.get());
  }

 private:
  std::vector<std::unique_ptr<T>> slots_;
  std::vector<uint32_t> free_;
  size_t live_ = 0;
};

}  // namespace ktlb
