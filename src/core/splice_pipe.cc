#include "ktlb/splice_pipe.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>

namespace ktlb {

SplicePipe::Status SplicePipe::Run(int source_fd, int sink_fd, bool sink_ready, uint64_t* moved) {
  *moved = 0;
  for (;;) {
    bool progressed = false;
    Status blocked = Status::kWaitSource;
    // Pipe -> sink first: it makes room for more.
    if (in_pipe_ > 0) {
      if (!sink_ready) {
        blocked = Status::kWaitSink;
      } else {
        ssize_t n = splice(pipe_r_.get(), nullptr, sink_fd, nullptr, in_pipe_,
                           SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n > 0) {
          in_pipe_ -= static_cast<size_t>(n);
          *moved += static_cast<uint64_t>(n);
          progressed = true;
        } else if (n < 0 && errno == EAGAIN) {
          blocked = Status::kWaitSink;
        } else {
          errno_ = n == 0 ? EPIPE : errno;
          return Status::kSinkFailed;
        }
      }
    }
    if (left_ == 0 && in_pipe_ == 0) return Status::kDone;
    // Source -> pipe, while the pipe has room.
    if (left_ > 0 && in_pipe_ < kPipeBytes) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(left_, kPipeBytes - in_pipe_));
      ssize_t n = splice(source_fd, nullptr, pipe_w_.get(), nullptr, want,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        in_pipe_ += static_cast<size_t>(n);
        left_ -= static_cast<uint64_t>(n);
        progressed = true;
      } else if (n < 0 && errno == EAGAIN) {
        if (in_pipe_ == 0 || blocked != Status::kWaitSink) blocked = Status::kWaitSource;
      } else {
        // EOF before N bytes, a reset, or (kTLS) a control record: EINVAL.
        errno_ = n == 0 ? 0 : errno;
        return Status::kSourceEnded;
      }
    }
    if (!progressed) return blocked;
  }
}

SplicePipe::Status SplicePipe::Fill(int source_fd, uint64_t* added) {
  *added = 0;
  while (left_ > 0) {
    if (in_pipe_ >= kPipeBytes) return Status::kWaitSink;
    size_t want = static_cast<size_t>(std::min<uint64_t>(left_, kPipeBytes - in_pipe_));
    ssize_t n = splice(source_fd, nullptr, pipe_w_.get(), nullptr, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      in_pipe_ += static_cast<size_t>(n);
      left_ -= static_cast<uint64_t>(n);
      *added += static_cast<uint64_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      return Status::kWaitSource;
    } else {
      errno_ = n == 0 ? 0 : errno;
      return Status::kSourceEnded;
    }
  }
  return Status::kDone;
}

long SplicePipe::DrainTo(int sink_fd, size_t max) {
  size_t want = std::min(max, in_pipe_);
  if (want == 0) return 0;
  ssize_t n = splice(pipe_r_.get(), nullptr, sink_fd, nullptr, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  if (n < 0) return -errno;
  if (n == 0) return -EPIPE;
  in_pipe_ -= static_cast<size_t>(n);
  return n;
}

}  // namespace ktlb
