// Large Content-Length request bodies from a client whose receive side is in
// the kernel (TLS_RX): the kernel decrypts, and the plaintext moves client
// socket -> pipe -> backend socket without entering ktlb's memory. A control
// record met mid-body (alert, KeyUpdate) makes splice fail with EINVAL
// (KTLS.md); the exchange then ends as a client abort.
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

namespace {
constexpr uint64_t kSpliceMin = 64 * 1024;
}

void ClientConnection::MaybeSpliceRequestBody() {
  if (req_splicing_ || req_body_done_ || !rx_active_ || up_ == nullptr) return;
  if (req_content_length_ == 0 || plain_off_ != plain_.size()) return;
  uint64_t left = req_content_length_ - req_body_seen_;
  if (left < kSpliceMin) return;
  if (!w_->TakePipe(&req_pipe_r_, &req_pipe_w_)) return;  // the ordinary path then
  req_splicing_ = true;
  req_splice_left_ = left;
  req_in_pipe_ = 0;
  PumpRequestBody();
}

void ClientConnection::ArmSplicePoll(int fd, bool out) {
  bool& inflight = out ? splice_poll_out_ : splice_poll_in_;
  if (inflight) return;
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_poll_add(sqe, fd, out ? POLLOUT : POLLIN);
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(out ? ConnOp::kPollOut : ConnOp::kPollIn)));
  inflight = true;
  ++inflight_;
}

void ClientConnection::OnSplicePoll(uint8_t op, int res) {
  (op == static_cast<uint8_t>(ConnOp::kPollOut) ? splice_poll_out_ : splice_poll_in_) = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  (void)res;  // errors show up in the next splice
  if (req_splicing_) PumpRequestBody();
}

void ClientConnection::PumpRequestBody() {
  while (req_splicing_ && up_ != nullptr && state_ == State::kProxying) {
    bool progressed = false;
    // Pipe -> backend, once the head (and any buffered body) has been sent.
    if (req_in_pipe_ > 0 && up_->connected() && up_->SendBacklog() == 0) {
      ssize_t n = splice(req_pipe_r_, nullptr, up_->fd(), nullptr, req_in_pipe_,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        req_in_pipe_ -= static_cast<size_t>(n);
        w_->metrics().listeners[listener_].bytes_spliced.Inc(static_cast<uint64_t>(n));
        progressed = true;
      } else if (n < 0 && errno == EAGAIN) {
        ArmSplicePoll(up_->fd(), true);
      } else {
        fprintf(stderr, "ktlb: upstream: splice of a request body failed: %s\n",
                n == 0 ? "no progress" : strerror(errno));
        return CloseNow();
      }
    }
    if (req_splice_left_ == 0 && req_in_pipe_ == 0) return StopRequestSplice(true);
    // Client -> pipe, while the pipe has room.
    if (req_splice_left_ > 0 && req_in_pipe_ < static_cast<size_t>(Worker::kPipeSize)) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(
          req_splice_left_, static_cast<uint64_t>(Worker::kPipeSize) - req_in_pipe_));
      ssize_t n = splice(fd_, nullptr, req_pipe_w_, nullptr, want, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        req_in_pipe_ += static_cast<size_t>(n);
        req_splice_left_ -= static_cast<uint64_t>(n);
        progressed = true;
      } else if (n < 0 && errno == EAGAIN) {
        ArmSplicePoll(fd_, false);
      } else {
        // EOF, reset, or a control record (EINVAL) in the middle of the body.
        w_->metrics().listeners[listener_].client_resets.Inc();
        return CloseNow();
      }
    }
    if (!progressed) break;
  }
}

void ClientConnection::StopRequestSplice(bool done) {
  if (!req_splicing_ && req_pipe_r_ < 0) return;
  req_splicing_ = false;
  if (done && req_pipe_r_ >= 0) {
    w_->ReturnPipe(req_pipe_r_, req_pipe_w_);
  } else if (req_pipe_r_ >= 0) {
    close(req_pipe_r_);  // may hold bytes of an abandoned body
    close(req_pipe_w_);
  }
  req_pipe_r_ = req_pipe_w_ = -1;
  if (!done) return;
  // The parser never saw these bytes; the next request starts clean.
  req_body_done_ = true;
  parser_->Reset();
  ProcessPlain();
  FlushSend();
  ArmRecv();
}

}  // namespace ktlb
