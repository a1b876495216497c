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

#include "ktlb/unique_fd.h"

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

  // Begins a transfer of `n` bytes over the pipe (read end, write end), and
  // takes ownership of both ends (from Loop::TakePipe).
  void Start(int pipe_r, int pipe_w, uint64_t n) {
    pipe_r_.reset(pipe_r);
    pipe_w_.reset(pipe_w);
    left_ = length_ = n;
    in_pipe_ = 0;
  }
  // Begins the next transfer over the same (empty) pipe: a chunked body
  // splices each large chunk's data, with its framing read in between.
  void Continue(uint64_t n) { left_ = length_ = n; }
  // The source reached EOF: what is in the pipe still goes to the sink, and
  // Run() says kDone once it has.
  void EndSource() { left_ = 0; }
  // `sink_ready`: the owner's own output before the body has been sent.
  // *moved: bytes that reached the sink during this call.
  Status Run(int source_fd, int sink_fd, bool sink_ready, uint64_t* moved);
  // The two halves of Run for an owner whose sink drains the pipe itself,
  // in pieces of its own choosing (HTTP/2 frames). Fill: source -> pipe
  // while the pipe has room: kWaitSource (room left, the source has nothing
  // now), kWaitSink (the pipe is full), kDone (the whole transfer is in the
  // pipe), kSourceEnded. *added: bytes that entered the pipe.
  Status Fill(int source_fd, uint64_t* added);
  // Pipe -> sink, at most `max` bytes: bytes moved, or -errno (-EAGAIN:
  // the sink is full).
  long DrainTo(int sink_fd, size_t max);
  size_t in_pipe() const { return in_pipe_; }

  bool active() const { return pipe_r_.valid(); }
  // All bytes of the current transfer reached the sink (Run said kDone).
  bool finished() const { return left_ == 0 && in_pipe_ == 0; }
  // Bytes of the current transfer (Start / Continue's n).
  uint64_t length() const { return length_; }
  // True when the pipe holds no bytes and may go back to the pool.
  bool empty() const { return in_pipe_ == 0; }
  int pipe_r() const { return pipe_r_.get(); }
  int pipe_w() const { return pipe_w_.get(); }
  int error() const { return errno_; }
  // Forgets the pipe without closing it: the caller has just handed both
  // ends back to the pool (Loop::ReturnPipe), which owns them now. A pipe
  // that is to be closed goes through Discard() instead.
  void Clear() {
    static_cast<void>(pipe_r_.release());
    static_cast<void>(pipe_w_.release());
  }
  // Closes the pipe (it may hold bytes of an abandoned body, so it cannot
  // go back to the pool) and clears it; no-op when not active.
  void Discard() {
    pipe_r_.reset();
    pipe_w_.reset();
  }

  static constexpr size_t kPipeBytes = 256 * 1024;
  // Below these, splice's extra system calls and polls cost more than the
  // copy through userspace they save.
  static constexpr uint64_t kMinContentLength = 64 * 1024;  // a whole body
  static constexpr uint64_t kMinChunk = 16 * 1024;          // one chunk's data
  // One read of chunk framing ("\r\n" + size line) between spliced chunks: a
  // size line is short, and the few data bytes read with it go the normal way.
  static constexpr size_t kFramingRead = 64;

 private:
  UniqueFd pipe_r_;
  UniqueFd pipe_w_;
  uint64_t length_ = 0;  // bytes of this transfer
  uint64_t left_ = 0;    // bytes still to take from the source
  size_t in_pipe_ = 0;   // bytes in the pipe, not yet in the sink
  int errno_ = 0;
};

}  // namespace ktlb
