// A worker's io_uring: submission batching and a provided-buffer ring.
//
// One Ring per worker thread, never shared. SQEs are queued during a loop turn
// and submitted together with the wait (SubmitAndWait), so a turn costs one
// io_uring_enter. Completions carry a tagged user_data (see UserData) that the
// worker dispatches on.
#pragma once

#include <liburing.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace ktlb {

// user_data layout: | kind:8 | op:8 | generation:16 | index:32 |
// kind says which table `index` points into; the generation guards against a
// completion for a slot that was released and reused.
struct UserData {
  uint8_t kind = 0;
  uint8_t op = 0;
  uint16_t gen = 0;
  uint32_t index = 0;

  uint64_t Pack() const {
    return (uint64_t{kind} << 56) | (uint64_t{op} << 48) | (uint64_t{gen} << 32) | index;
  }
  static UserData Unpack(uint64_t v) {
    return UserData{static_cast<uint8_t>(v >> 56), static_cast<uint8_t>(v >> 48),
                    static_cast<uint16_t>(v >> 32), static_cast<uint32_t>(v)};
  }
};

// Kernel-provided receive buffers: recv picks a free buffer only when bytes
// arrive, so an idle connection holds none. Buffers are handed back with
// Recycle() as soon as their bytes are consumed.
class BufferRing {
 public:
  BufferRing() = default;
  ~BufferRing();
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  // `count` must be a power of two.
  absl::Status Init(io_uring* ring, uint16_t group_id, uint32_t count, uint32_t buf_size);
  uint16_t group_id() const { return group_id_; }
  uint32_t buf_size() const { return buf_size_; }
  std::string_view Data(uint16_t bid, uint32_t len) const {
    return {base_ + size_t{bid} * buf_size_, len};
  }
  void Recycle(uint16_t bid);
  // The buffer a recv completion picked, from its CQE flags.
  static uint16_t BufferId(uint32_t cqe_flags) {
    return static_cast<uint16_t>(cqe_flags >> IORING_CQE_BUFFER_SHIFT);
  }
  // Gives back the buffer a completion carries, if it carries one (a recv
  // that lands after its connection closed still holds a buffer).
  void RecycleFrom(uint32_t cqe_flags) {
    if (cqe_flags & IORING_CQE_F_BUFFER) Recycle(BufferId(cqe_flags));
  }

 private:
  io_uring* ring_ = nullptr;
  io_uring_buf_ring* br_ = nullptr;
  size_t br_bytes_ = 0;
  char* base_ = nullptr;
  size_t base_bytes_ = 0;
  uint16_t group_id_ = 0;
  uint32_t count_ = 0;
  uint32_t buf_size_ = 0;
};

// One recv completion that selected its buffer from a BufferRing, as the
// handler's OnRecv first sees it. It holds the buffer the kernel picked, if
// any, and gives it back to the ring when it goes out of scope, so every way
// out of a handler (its owner already closed, EOF, an error, the bytes
// consumed) recycles it exactly once. Recycle() gives it back earlier, once
// the bytes have been copied or consumed.
class ProvidedRecv {
 public:
  ProvidedRecv(BufferRing& ring, int res, uint32_t cqe_flags)
      : ring_(ring), res_(res), flags_(cqe_flags) {}
  ~ProvidedRecv() { Recycle(); }
  ProvidedRecv(const ProvidedRecv&) = delete;
  ProvidedRecv& operator=(const ProvidedRecv&) = delete;

  // The ring had no free buffer, so nothing was read: ask again once this
  // turn's completions have given theirs back (Loop::NextTurn).
  bool no_buffer() const { return res_ == -ENOBUFS; }
  // The bytes received; only when the result was positive, and valid until
  // Recycle() or the end of the scope.
  std::string_view data() const {
    return ring_.Data(BufferRing::BufferId(flags_), static_cast<uint32_t>(res_));
  }
  void Recycle() {
    ring_.RecycleFrom(flags_);
    flags_ = 0;
  }

 private:
  BufferRing& ring_;
  int res_;
  uint32_t flags_;
};

class Ring {
 public:
  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  absl::Status Init(unsigned entries);
  io_uring* raw() { return &ring_; }

  // Never null: when the SQ is full the queued entries are submitted first.
  io_uring_sqe* Sqe();

  // Submits everything queued and waits for at least one completion or until
  // `timeout_ms` passes. Returns the number of completions ready.
  unsigned SubmitAndWait(uint32_t timeout_ms);

 private:
  io_uring ring_{};
  bool inited_ = false;
};

}  // namespace ktlb
