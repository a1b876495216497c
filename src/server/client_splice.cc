// Large request bodies from a client whose receive side is in the kernel
// (TLS_RX): the kernel decrypts, and the plaintext moves client socket ->
// pipe -> backend socket without entering ktlb's memory. A Content-Length
// body is one transfer; a chunked body is forwarded as-is, its framing read
// in small pieces between chunks (so the parser still finds the end of the
// message) and the data of each large chunk spliced. A control record met
// mid-body (alert, KeyUpdate) makes splice fail with EINVAL and recv with
// EIO (KTLS.md); the exchange then ends as a client abort.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "client_connection.h"
#include "splice_policy.h"
#include "upstream_connection.h"
#include "worker.h"

namespace ktlb {

void ClientConnection::MaybeSpliceRequestBody() {
  if (req_pipe_.active() || req_body_done_ || !rx_active_ || up_ == nullptr) return;
  // Bytes already read, or a read still in flight, come before what the pipe
  // would take: they go first, the ordinary way.
  if (plain_off_ != plain_.size() || recv_inflight_) return;
  std::optional<uint64_t> n = SpliceLength(*parser_, req_content_length_ > 0);
  if (!n) return;
  int r, wfd;
  if (!w_->TakePipe(&r, &wfd)) return;  // the ordinary path then
  req_pipe_.Start(r, wfd, *n);
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
  if (req_pipe_.finished()) return ReadRequestFraming();  // between chunks
  // The backend must have everything queued before these bytes (head,
  // buffered body bytes, chunk framing) before the pipe may write to it.
  bool sink_ready = up_->connected() && up_->SendBacklog() == 0;
  uint64_t moved = 0;
  SplicePipe::Status st = req_pipe_.Run(fd_, up_->fd(), sink_ready, &moved);
  if (moved > 0) w_->metrics().listeners[listener_].bytes_spliced.Inc(moved);
  switch (st) {
    case SplicePipe::Status::kDone:
      break;
    case SplicePipe::Status::kWaitSource:
      return ArmSplicePoll(fd_, false);
    case SplicePipe::Status::kWaitSink:
      if (sink_ready) ArmSplicePoll(up_->fd(), true);  // else OnUpstreamWritable resumes us
      return;
    case SplicePipe::Status::kSourceEnded:
      // A control record (EINVAL) in the middle of the body: read it out of
      // band; the pipe keeps what it holds and the body resumes after it.
      if (rx_active_ && req_pipe_.error() == EINVAL) return ArmRecvMsg();
      // EOF or reset.
      w_->metrics().listeners[listener_].client_resets.Inc();
      return CloseNow();
    case SplicePipe::Status::kSinkFailed:
      fprintf(stderr, "ktlb: upstream: splice of a request body failed: %s\n",
              strerror(req_pipe_.error()));
      return CloseNow();
  }
  up_->RequestBodyProgress();
  req_body_seen_ += req_pipe_.length();
  http1::ParseStatus ps = parser_->SkipOpaqueBody(req_pipe_.length());
  if (ps == http1::ParseStatus::kError) return FailRequestBody();
  if (ps == http1::ParseStatus::kDone) return StopRequestSplice(true);
  ReadRequestFraming();
}

void ClientConnection::ReadRequestFraming() {
  for (;;) {
    char buf[SplicePipe::kFramingRead];
    ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return ArmSplicePoll(fd_, false);
    if (n < 0 && errno == EINTR) continue;
    // A control record (EIO) between chunks: as in PumpRequestBody.
    if (n < 0 && errno == EIO && rx_active_) return ArmRecvMsg();
    if (n <= 0) {
      // EOF or reset before the body ended.
      w_->metrics().listeners[listener_].client_resets.Inc();
      return CloseNow();
    }
    std::string_view got(buf, static_cast<size_t>(n));
    size_t consumed = 0;
    http1::ParseStatus st = parser_->ParseBody(got, &consumed);
    if (st == http1::ParseStatus::kError) return FailRequestBody();
    if (consumed > 0) up_->Send(got.substr(0, consumed));
    req_body_seen_ += consumed;
    if (st == http1::ParseStatus::kDone) {
      // What follows the body is the start of the next (pipelined) request.
      plain_.assign(got.substr(consumed));
      plain_off_ = 0;
      return StopRequestSplice(true);
    }
    std::optional<uint64_t> next = SpliceLength(*parser_, false);
    if (!next) {
      // A small chunk, or the last one and trailers: the ordinary path
      // (with its backpressure) takes over, and splices again when a large
      // chunk comes.
      w_->ReturnPipe(req_pipe_.pipe_r(), req_pipe_.pipe_w());
      req_pipe_.Clear();
      return ArmRecv();
    }
    if (*next > 0) {
      req_pipe_.Continue(*next);
      return PumpRequestBody();
    }
    // Still in the CRLF and size line after a large chunk (a few KiB at
    // most, ChunkedScanner::kMaxSizeLine): read on.
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
  req_body_done_ = true;
  ProcessPlain();
  FlushSend();
  ArmRecv();
}

}  // namespace ktlb
