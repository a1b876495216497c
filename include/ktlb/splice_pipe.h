// Moving exactly N bytes from one socket to another through a pipe, with
// non-blocking splice(2) calls, so the bytes never enter userspace.
//
// The owner supplies readiness: Run() moves what it can and says which side
// it is waiting for; the owner arms a poll (or waits for its own send queue
// to drain) and calls Run() again. The pipe comes from and goes back to a
// per-worker pool, which the owner passes in.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ktlb {

class SplicePipe {
 public:
  enum class Status {
    kWaitSource,  // poll the source for POLLIN, then Run() again
    kWaitSink,    // the sink is not ready (poll POLLOUT, or its queue drains)
    kDone,        // all N bytes reached the sink
    kSourceEnded, // EOF or error on the source before N bytes (errno_ says which)
    kSinkFailed,  // error writing to the sink (errno_)
  };

  // Begins a transfer of `n` bytes over the pipe (read end, write end).
  void Start(int pipe_r, int pipe_w, uint64_t n) {
    pipe_r_ = pipe_r;
    pipe_w_ = pipe_w;
    left_ = n;
    in_pipe_ = 0;
  }
  // `sink_ready`: the owner's own output before the body has been sent.
  // *moved: bytes that reached the sink during this call.
  Status Run(int source_fd, int sink_fd, bool sink_ready, uint64_t* moved);

  bool active() const { return pipe_r_ >= 0; }
  // True when the pipe holds no bytes and may go back to the pool.
  bool empty() const { return in_pipe_ == 0; }
  int pipe_r() const { return pipe_r_; }
  int pipe_w() const { return pipe_w_; }
  int error() const { return errno_; }
  void Clear() { pipe_r_ = pipe_w_ = -1; }

  static constexpr size_t kPipeBytes = 256 * 1024;

 private:
  int pipe_r_ = -1;
  int pipe_w_ = -1;
  uint64_t left_ = 0;    // bytes still to take from the source
  size_t in_pipe_ = 0;   // bytes in the pipe, not yet in the sink
  int errno_ = 0;
};

}  // namespace ktlb
