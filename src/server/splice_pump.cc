// Moving a large Content-Length response body from the backend socket to a
// kTLS client socket through a pipe: the bytes never enter userspace and the
// kernel encrypts them on the way out (TLS_TX). Readiness comes from io_uring
// polls; the splices themselves are non-blocking calls from the worker
// (io_uring's SPLICE on 6.1 always goes through io-wq threads, and a socket's
// O_NONBLOCK is ignored socket->pipe without SPLICE_F_NONBLOCK: KTLS.md).
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "client_connection.h"
#include "upstream_connection.h"
#include "worker.h"

namespace ktlb {

void UpstreamConnection::StartSplice(uint64_t n) {
  if (!w_->TakePipe(&pipe_r_, &pipe_w_)) {
    // No pipe (fd limit): the body goes the ordinary way.
    return ArmRecv();
  }
  splicing_ = true;
  splice_left_ = n;
  in_pipe_ = 0;
  Pump();
}

void UpstreamConnection::ArmPoll(int fd, bool out) {
  bool& inflight = out ? poll_out_inflight_ : poll_in_inflight_;
  if (inflight) return;
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_poll_add(sqe, fd, out ? POLLOUT : POLLIN);
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(out ? ConnOp::kPollOut : ConnOp::kPollIn)));
  inflight = true;
  ++inflight_;
}

void UpstreamConnection::OnSplicePoll(uint8_t op, int res) {
  (op == static_cast<uint8_t>(ConnOp::kPollOut) ? poll_out_inflight_ : poll_in_inflight_) = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0 && res != -ECANCELED) return EndSplice(false);
  if (splicing_) Pump();
}

void UpstreamConnection::Pump() {
  while (splicing_ && state_ == State::kActive && client_ != nullptr) {
    bool progressed = false;
    // Pipe -> client, once everything queued before the body has been sent.
    if (in_pipe_ > 0) {
      if (!client_->SpliceReady()) break;  // OnClientWritable() resumes us
      ssize_t n = splice(pipe_r_, nullptr, client_->fd(), nullptr, in_pipe_,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        in_pipe_ -= static_cast<size_t>(n);
        client_->CountSpliced(static_cast<uint64_t>(n));
        progressed = true;
      } else if (n < 0 && errno == EAGAIN) {
        ArmPoll(client_->fd(), true);
      } else {
        fprintf(stderr, "ktlb: upstream: splice to client failed: %s\n",
                n == 0 ? "no progress" : strerror(errno));
        return EndSplice(false);
      }
    }
    if (splice_left_ == 0 && in_pipe_ == 0) return EndSplice(true);
    // Backend -> pipe, while the pipe has room.
    if (splice_left_ > 0 && in_pipe_ < static_cast<size_t>(Worker::kPipeSize)) {
      size_t want = static_cast<size_t>(
          std::min<uint64_t>(splice_left_, static_cast<uint64_t>(Worker::kPipeSize) - in_pipe_));
      ssize_t n = splice(fd_, nullptr, pipe_w_, nullptr, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        in_pipe_ += static_cast<size_t>(n);
        splice_left_ -= static_cast<uint64_t>(n);
        progressed = true;
        w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                     w_->config().server.timeouts.upstream_response_ms);
      } else if (n == 0) {
        // The backend closed before the promised Content-Length.
        w_->metrics().upstreams[upstream_].resets.Inc();
        return EndSplice(false);
      } else if (errno == EAGAIN) {
        ArmPoll(fd_, false);
      } else {
        w_->metrics().upstreams[upstream_].resets.Inc();
        return EndSplice(false);
      }
    }
    if (!progressed) break;
  }
}

void UpstreamConnection::EndSplice(bool ok) {
  splicing_ = false;
  if (!ok) {
    ClientConnection* c = client_;
    client_ = nullptr;
    CloseNow();
    if (c != nullptr) c->OnUpstreamAborted();
    return;
  }
  w_->ReturnPipe(pipe_r_, pipe_w_);
  pipe_r_ = pipe_w_ = -1;
  resp_done_ = true;
  Finish();
}

}  // namespace ktlb
