#include "ktlb/loop.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "ktlb/splice_pipe.h"

namespace ktlb {

Loop::~Loop() = default;

absl::Status Loop::Init(const Options& options) {
  if (absl::Status s = ring_.Init(options.ring_entries); !s.ok()) return s;
  if (absl::Status s = buffers_.Init(ring_.raw(), options.buffer_group, options.recv_buffers,
                                     options.recv_buffer_size);
      !s.ok()) {
    return s;
  }
  now_ms_ = NowMs();
  return absl::OkStatus();
}

uint32_t Loop::AddHandler(IoHandler* h) {
  if (!free_handles_.empty()) {
    uint32_t i = free_handles_.back();
    free_handles_.pop_back();
    handlers_[i].handler = h;
    ++handlers_[i].gen;
    return i;
  }
  handlers_.push_back(Entry{h, 0});
  return static_cast<uint32_t>(handlers_.size() - 1);
}

void Loop::RemoveHandler(uint32_t handle) {
  handlers_[handle].handler = nullptr;
  ++handlers_[handle].gen;
  free_handles_.push_back(handle);
}

void Loop::PrepRecv(int fd, uint64_t tag, bool poll_first) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_recv(sqe, fd, nullptr, buffers_.buf_size(), 0);
  if (poll_first) sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers_.group_id();
  io_uring_sqe_set_data64(sqe, tag);
}

void Loop::ArmPoll(int fd, bool out, uint64_t tag, bool* armed, int* inflight) {
  if (*armed) return;
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_poll_add(sqe, fd, out ? POLLOUT : POLLIN);
  io_uring_sqe_set_data64(sqe, tag);
  *armed = true;
  ++*inflight;
}

void Loop::Stop() {
  while (timers_.PopExpired(UINT64_MAX) != nullptr) {
  }
  stopped_ = true;
}

void Loop::Cancel(uint64_t tag) {
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_cancel64(sqe, tag, 0);
  io_uring_sqe_set_data64(sqe, kIgnoredTag);
}

bool Loop::TakePipe(int* read_fd, int* write_fd) {
  if (!pipes_.empty()) {
    *read_fd = pipes_.back().read.release();
    *write_fd = pipes_.back().write.release();
    pipes_.pop_back();
    return true;
  }
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  // Larger than the 64 KiB default: fewer splice round trips per body.
  fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(SplicePipe::kPipeBytes));
  *read_fd = p[0];
  *write_fd = p[1];
  return true;
}

void Loop::ReturnPipe(int read_fd, int write_fd) {
  PipeFds pipe{UniqueFd(read_fd), UniqueFd(write_fd)};
  // Beyond the pool's size the pipe closes here, with `pipe`.
  if (pipes_.size() < kMaxPooledPipes) pipes_.push_back(std::move(pipe));
}

void Loop::Dispatch(uint64_t tag, int res, uint32_t flags) {
  if (tag == kIgnoredTag) return;
  uint32_t index = static_cast<uint32_t>(tag);
  if (index >= handlers_.size()) return;
  Entry& e = handlers_[index];
  if (e.handler == nullptr || (e.gen & 0xFFFFFF) != ((tag >> 32) & 0xFFFFFF)) {
    // A stale completion still owns a provided buffer: give it back.
    buffers_.RecycleFrom(flags);
    return;
  }
  e.handler->OnCompletion(static_cast<uint8_t>(tag >> 56), res, flags);
}

void Loop::RunDeferred(uint64_t tag) {
  uint32_t index = static_cast<uint32_t>(tag);
  if (index >= handlers_.size()) return;
  Entry& e = handlers_[index];
  if (e.handler == nullptr || (e.gen & 0xFFFFFF) != ((tag >> 32) & 0xFFFFFF)) return;
  e.handler->OnDeferred(static_cast<uint8_t>(tag >> 56));
}

uint32_t Loop::WaitMs(uint32_t max_wait_ms) const {
  if (!next_turn_.empty()) return 1;
  uint64_t next = timers_.NextDeadline();
  if (next == UINT64_MAX) return max_wait_ms;
  if (next <= now_ms_) return 0;
  return static_cast<uint32_t>(std::min<uint64_t>(next - now_ms_, max_wait_ms));
}

void Loop::Turn(uint32_t max_wait_ms) {
  ring_.SubmitAndWait(WaitMs(max_wait_ms));
  now_ms_ = NowMs();

  io_uring_cqe* cqe;
  unsigned head;
  unsigned seen = 0;
  io_uring_for_each_cqe(ring_.raw(), head, cqe) {
    Dispatch(io_uring_cqe_get_data64(cqe), cqe->res, cqe->flags);
    ++seen;
  }
  io_uring_cq_advance(ring_.raw(), seen);

  while (DeadlineNode* n = timers_.PopExpired(now_ms_)) n->target->OnDeadline(n->kind);

  // A turn-end call may ask for another (a flush that finishes an exchange
  // queues a close_notify): run until quiet.
  while (!turn_end_.empty()) {
    deferred_scratch_.clear();
    deferred_scratch_.swap(turn_end_);
    for (uint64_t tag : deferred_scratch_) RunDeferred(tag);
  }
  // Retries (a recv that found the buffer ring empty) run after this turn
  // recycled what it consumed; one that fails again waits for the next turn,
  // which then waits at most 1 ms.
  if (!next_turn_.empty()) {
    deferred_scratch_.clear();
    deferred_scratch_.swap(next_turn_);
    for (uint64_t tag : deferred_scratch_) RunDeferred(tag);
  }
}

}  // namespace ktlb
