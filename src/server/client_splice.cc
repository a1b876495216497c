// Large Content-Length request bodies from a client whose receive side is in
// the kernel (TLS_RX): the kernel decrypts, and the plaintext moves client
// socket -> pipe -> backend socket without entering ktlb's memory. A control
// record met mid-body (alert, KeyUpdate) makes splice fail with EINVAL
// (KTLS.md); the exchange then ends as a client abort.
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
  if (req_pipe_.active() || req_body_done_ || !rx_active_ || up_ == nullptr) return;
  if (req_content_length_ == 0 || plain_off_ != plain_.size()) return;
  uint64_t left = req_content_length_ - req_body_seen_;
  if (left < kSpliceMin) return;
  int r, wfd;
  if (!w_->TakePipe(&r, &wfd)) return;  // the ordinary path then
  req_pipe_.Start(r, wfd, left);
  PumpRequestBody();
}

void ClientConnection::ArmSplicePoll(int fd, bool out) {
  auto op = static_cast<uint8_t>(out ? ConnOp::kPollOut : ConnOp::kPollIn);
  w_->ArmPoll(fd, out, Tag(op), out ? &splice_poll_out_ : &splice_poll_in_, &inflight_);
}

void ClientConnection::OnSplicePoll(uint8_t op, int res) {
  (op == static_cast<uint8_t>(ConnOp::kPollOut) ? splice_poll_out_ : splice_poll_in_) = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  (void)res;  // an error shows up in the next splice
  if (req_pipe_.active()) PumpRequestBody();
}

void ClientConnection::PumpRequestBody() {
  if (!req_pipe_.active() || up_ == nullptr || state_ != State::kProxying) return;
  // The backend must have everything queued before the body (head, buffered
  // body bytes) before the pipe may write to its socket.
  bool sink_ready = up_->connected() && up_->SendBacklog() == 0;
  uint64_t moved = 0;
  SplicePipe::Status st = req_pipe_.Run(fd_, up_->fd(), sink_ready, &moved);
  if (moved > 0) w_->metrics().listeners[listener_].bytes_spliced.Inc(moved);
  switch (st) {
    case SplicePipe::Status::kDone:
      return StopRequestSplice(true);
    case SplicePipe::Status::kWaitSource:
      return ArmSplicePoll(fd_, false);
    case SplicePipe::Status::kWaitSink:
      if (sink_ready) ArmSplicePoll(up_->fd(), true);  // else OnUpstreamWritable resumes us
      return;
    case SplicePipe::Status::kSourceEnded:
      // EOF, reset, or a control record (EINVAL) in the middle of the body.
      w_->metrics().listeners[listener_].client_resets.Inc();
      return CloseNow();
    case SplicePipe::Status::kSinkFailed:
      fprintf(stderr, "ktlb: upstream: splice of a request body failed: %s\n",
              strerror(req_pipe_.error()));
      return CloseNow();
  }
}

void ClientConnection::StopRequestSplice(bool done) {
  if (!req_pipe_.active()) return;
  if (done) {
    w_->ReturnPipe(req_pipe_.pipe_r(), req_pipe_.pipe_w());
  } else {
    close(req_pipe_.pipe_r());  // may hold bytes of an abandoned body
    close(req_pipe_.pipe_w());
  }
  req_pipe_.Clear();
  if (!done) return;
  // The parser never saw these bytes; the next request starts clean.
  req_body_done_ = true;
  parser_->Reset();
  ProcessPlain();
  FlushSend();
  ArmRecv();
}

}  // namespace ktlb
