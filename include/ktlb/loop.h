// A worker's event loop: one io_uring, its provided-buffer ring, timers,
// splice pipes, and dispatch of completions to handlers.
//
// The loop knows no protocol. Anything that submits operations (a listener,
// a client connection, its TLS transport, an upstream connection, a relay)
// is an IoHandler registered once for its lifetime; every operation carries
// Tag(handle, op) as its user_data and its completion comes back as
// OnCompletion(op, res, flags). A new kind of connection therefore adds no
// case to the loop. One Loop per worker thread, never shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/ring.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

class IoHandler {
 public:
  // A completion of an operation submitted with Loop::Tag(handle, op).
  virtual void OnCompletion(uint8_t op, int res, uint32_t flags) = 0;
  // A call asked for with Loop::AtTurnEnd or Loop::NextTurn.
  virtual void OnDeferred(uint8_t op) { (void)op; }

 protected:
  ~IoHandler() = default;
};

class Loop {
 public:
  struct Options {
    unsigned ring_entries = 1024;
    uint32_t recv_buffers = 256;         // power of two
    uint32_t recv_buffer_size = 64 * 1024;
    uint16_t buffer_group = 1;
  };

  Loop() = default;
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // On the loop's own thread (the ring is single-issuer).
  absl::Status Init(const Options& options);

  // --- handlers ---
  // A handle for `h`, valid until RemoveHandler. Pooled objects register
  // once and Retire() between users.
  uint32_t AddHandler(IoHandler* h);
  void RemoveHandler(uint32_t handle);
  // A new user of the same handler: completions and deferred calls tagged
  // for the previous one are dropped.
  void Retire(uint32_t handle) { ++handlers_[handle].gen; }
  uint64_t Tag(uint32_t handle, uint8_t op) const {
    return (uint64_t{op} << 56) | (uint64_t{handlers_[handle].gen & 0xFFFFFF} << 32) | handle;
  }
  // user_data for operations whose completion nobody needs (cancels).
  static constexpr uint64_t kIgnoredTag = ~uint64_t{0};

  // --- submission ---
  Ring& ring() { return ring_; }
  io_uring_sqe* Sqe() { return stopped_ ? &scratch_sqe_ : ring_.Sqe(); }
  BufferRing& buffers() { return buffers_; }
  // A multishot-free recv into the provided-buffer ring. `poll_first`: the
  // bytes are almost never there yet, so wait for readiness first.
  void PrepRecv(int fd, uint64_t tag, bool poll_first);
  // One-shot readiness poll: POLLOUT when `out`, else POLLIN. No-op while
  // *armed; sets it and counts one in-flight op in *inflight.
  void ArmPoll(int fd, bool out, uint64_t tag, bool* armed, int* inflight);
  // Cancels the operation tagged `tag`, if still in flight.
  void Cancel(uint64_t tag);

  // --- time ---
  uint64_t now_ms() const { return now_ms_; }
  void ArmTimer(DeadlineNode* node, uint8_t kind, uint32_t duration_ms) {
    timers_.Arm(node, now_ms_, duration_ms, kind);
  }
  static void CancelTimer(DeadlineNode* node) { TimerSet::Cancel(node); }

  // --- deferred calls ---
  // OnDeferred(op) at the end of this loop turn, after every completion of
  // the turn (so what one turn produces leaves in one send).
  void AtTurnEnd(uint64_t tag) { turn_end_.push_back(tag); }
  // OnDeferred(op) once this turn's completions have recycled their buffers
  // (a recv that found the buffer ring empty); asked again from there, on
  // the next turn, which then waits at most 1 ms.
  void NextTurn(uint64_t tag) { next_turn_.push_back(tag); }

  // --- pipes for splice, recycled ---
  // Hands out a pipe: the caller owns both ends from here on (a SplicePipe's
  // Start takes them over), until it gives them back or closes them.
  bool TakePipe(int* read_fd, int* write_fd);
  // Takes ownership of both ends back. Only empty pipes may come back: one
  // holding bytes of an abandoned body is closed instead (SplicePipe::Discard).
  void ReturnPipe(int read_fd, int write_fd);

  // Scratch for one decrypt or framing read; valid until the handler returns.
  static constexpr size_t kReadScratch = 16 * 1024;
  char* read_scratch() { return read_scratch_.get(); }

  // One turn: submit everything queued, wait up to `max_wait_ms` (less if a
  // timer or a next-turn call is due), dispatch completions, expire timers,
  // run the turn-end calls, then the calls deferred to the next turn.
  void Turn(uint32_t max_wait_ms);
  // At exit, before the handlers are destroyed: unlinks every timer (their
  // nodes are freed in any order next) and from then on hands out a scratch
  // SQE that is never submitted (a destructor may still cancel something).
  void Stop();
  // Reaps completions without dispatching them (shutdown, when handlers may
  // be gone): `on_cqe(tag, res)` sees each one.
  template <typename F>
  void DrainCompletions(uint32_t wait_ms, F&& on_cqe) {
    ring_.SubmitAndWait(wait_ms);
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring_.raw(), head, cqe) {
      on_cqe(io_uring_cqe_get_data64(cqe), cqe->res);
      ++seen;
    }
    io_uring_cq_advance(ring_.raw(), seen);
  }

 private:
  struct Entry {
    IoHandler* handler = nullptr;
    uint32_t gen = 0;
  };

  void Dispatch(uint64_t tag, int res, uint32_t flags);
  void RunDeferred(uint64_t tag);
  uint32_t WaitMs(uint32_t max_wait_ms) const;

  Ring ring_;
  BufferRing buffers_;
  TimerSet timers_;
  std::vector<Entry> handlers_;
  std::vector<uint32_t> free_handles_;
  std::vector<uint64_t> turn_end_;
  std::vector<uint64_t> next_turn_;
  std::vector<uint64_t> deferred_scratch_;
  // Both ends of one pooled pipe, closed with it.
  struct PipeFds {
    UniqueFd read;
    UniqueFd write;
  };
  // Enough for a worker's bursts of large bodies; a pipe costs two fds.
  static constexpr size_t kMaxPooledPipes = 64;
  std::vector<PipeFds> pipes_;
  std::unique_ptr<char[]> read_scratch_ = std::make_unique<char[]>(kReadScratch);
  uint64_t now_ms_ = 0;
  bool stopped_ = false;
  io_uring_sqe scratch_sqe_{};
};

// A pooled handler's registration: the first user registers it with the
// loop, each later user retires the previous one's completions and deferred
// calls. Removed from the loop with the object (the loop must outlive it).
class HandlerSlot {
 public:
  HandlerSlot() = default;
  ~HandlerSlot() {
    if (loop_ != nullptr) loop_->RemoveHandler(handle_);
  }
  HandlerSlot(const HandlerSlot&) = delete;
  HandlerSlot& operator=(const HandlerSlot&) = delete;

  void Bind(Loop* loop, IoHandler* handler) {
    if (loop_ == loop) return loop->Retire(handle_);
    if (loop_ != nullptr) loop_->RemoveHandler(handle_);
    loop_ = loop;
    handle_ = loop->AddHandler(handler);
  }
  uint64_t Tag(uint8_t op) const { return loop_->Tag(handle_, op); }

 private:
  Loop* loop_ = nullptr;
  uint32_t handle_ = 0;
};

}  // namespace ktlb
