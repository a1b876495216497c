#include "ktlb/ring.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ktlb {

BufferRing::~BufferRing() {
  if (br_ != nullptr) {
    io_uring_unregister_buf_ring(ring_, group_id_);
    munmap(br_, br_bytes_);
  }
  if (base_ != nullptr) munmap(base_, base_bytes_);
}

absl::Status BufferRing::Init(io_uring* ring, uint16_t group_id, uint32_t count,
                              uint32_t buf_size) {
  ring_ = ring;
  group_id_ = group_id;
  count_ = count;
  buf_size_ = buf_size;
  // liburing 2.3 has no io_uring_setup_buf_ring: the ring must be page aligned
  // memory we register ourselves.
  br_bytes_ = sizeof(io_uring_buf) * count;
  void* mem = mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return absl::InternalError("mmap buffer ring failed");
  br_ = static_cast<io_uring_buf_ring*>(mem);
  base_bytes_ = size_t{count} * buf_size;
  mem = mmap(nullptr, base_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return absl::InternalError("mmap buffers failed");
  base_ = static_cast<char*>(mem);

  io_uring_buf_ring_init(br_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uintptr_t>(br_);
  reg.ring_entries = count;
  reg.bgid = group_id;
  int rc = io_uring_register_buf_ring(ring, &reg, 0);
  if (rc != 0) {
    munmap(br_, br_bytes_);
    br_ = nullptr;
    return absl::InternalError(
        absl::StrCat("io_uring_register_buf_ring: ", strerror(-rc), " (kernel 5.19+ needed)"));
  }
  const int mask = io_uring_buf_ring_mask(count);
  for (uint32_t i = 0; i < count; ++i) {
    io_uring_buf_ring_add(br_, base_ + size_t{i} * buf_size, buf_size, static_cast<uint16_t>(i),
                          mask, static_cast<int>(i));
  }
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
  return absl::OkStatus();
}

void BufferRing::Recycle(uint16_t bid) {
  io_uring_buf_ring_add(br_, base_ + size_t{bid} * buf_size_, buf_size_, bid,
                        io_uring_buf_ring_mask(count_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

Ring::~Ring() {
  if (inited_) io_uring_queue_exit(&ring_);
}

absl::Status Ring::Init(unsigned entries) {
  io_uring_params params{};
  // The worker is the only thread touching its ring; deferring task work to
  // our own io_uring_enter keeps completions batched per loop turn.
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
  params.cq_entries = entries * 4;
  int rc = io_uring_queue_init_params(entries, &ring_, &params);
  if (rc == -EINVAL) {
    // Older kernels (before 6.1) lack DEFER_TASKRUN; COOP_TASKRUN is the next best.
    params = io_uring_params{};
    params.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
    params.cq_entries = entries * 4;
    rc = io_uring_queue_init_params(entries, &ring_, &params);
  }
  if (rc != 0) return absl::InternalError(absl::StrCat("io_uring_queue_init: ", strerror(-rc)));
  inited_ = true;
  return absl::OkStatus();
}

io_uring_sqe* Ring::Sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

unsigned Ring::SubmitAndWait(uint32_t timeout_ms) {
  __kernel_timespec ts{};
  ts.tv_sec = timeout_ms / 1000;
  ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1'000'000;
  io_uring_cqe* cqe = nullptr;
  int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  (void)rc;  // -ETIME / -EINTR just mean "nothing yet"
  return io_uring_cq_ready(&ring_);
}

}  // namespace ktlb
