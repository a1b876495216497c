// Large response bodies to a kTLS client: backend socket -> pipe -> client
// socket, encrypted by the kernel on the way out (TLS_TX). A Content-Length
// body is one transfer; a chunked body is forwarded as-is, its framing read
// in small pieces between chunks and the data of each large chunk spliced.
// Readiness comes from io_uring polls; the splices are non-blocking calls
// from the worker (io_uring's SPLICE on 6.1 always goes through io-wq
// threads, and socket->pipe ignores O_NONBLOCK without SPLICE_F_NONBLOCK:
// KTLS.md).
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

void UpstreamConnection::StartSplice(uint64_t n) {
  int r, wfd;
  if (!w_->TakePipe(&r, &wfd)) return ArmRecv();  // no pipe (fd limit): the ordinary way
  pipe_.Start(r, wfd, n);
  Pump();
}

void UpstreamConnection::ArmPoll(int fd, bool out) {
  auto op = static_cast<uint8_t>(out ? ConnOp::kPollOut : ConnOp::kPollIn);
  w_->ArmPoll(fd, out, Tag(op), out ? &poll_out_inflight_ : &poll_in_inflight_, &inflight_);
}

void UpstreamConnection::OnSplicePoll(uint8_t op, int res) {
  (op == static_cast<uint8_t>(ConnOp::kPollOut) ? poll_out_inflight_ : poll_in_inflight_) = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  (void)res;  // an error shows up in the next splice
  if (pipe_.active()) Pump();
}

void UpstreamConnection::Pump() {
  if (!pipe_.active() || state_ != State::kActive || client_ == nullptr) return;
  if (pipe_.finished()) return ReadFraming();  // between chunks
  uint64_t moved = 0;
  SplicePipe::Status st = pipe_.Run(fd_, client_->fd(), client_->SpliceReady(), &moved);
  if (moved > 0) {
    client_->CountSpliced(moved);
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                 w_->config().server.timeouts.upstream_response_ms);
  }
  switch (st) {
    case SplicePipe::Status::kDone:
      break;
    case SplicePipe::Status::kWaitSource:
      return ArmPoll(fd_, false);
    case SplicePipe::Status::kWaitSink:
      // Either the socket is full (poll it) or the client still sends what
      // was queued before these bytes (OnClientWritable resumes us).
      if (client_->SpliceReady()) ArmPoll(client_->fd(), true);
      return;
    case SplicePipe::Status::kSourceEnded:
      // The backend closed or failed before the promised length.
      w_->metrics().upstreams[upstream_].resets.Inc();
      return EndSplice(false);
    case SplicePipe::Status::kSinkFailed:
      fprintf(stderr, "ktlb: upstream: splice to client failed: %s\n", strerror(pipe_.error()));
      return EndSplice(false);
  }
  body_seen_ += pipe_.length();
  http1::ParseStatus ps = parser_->SkipOpaqueBody(pipe_.length());
  if (ps == http1::ParseStatus::kError) {
    fprintf(stderr, "ktlb: upstream: bad response body: %s\n", parser_->error_reason());
    w_->metrics().upstreams[upstream_].resets.Inc();
    return EndSplice(false);
  }
  if (ps == http1::ParseStatus::kDone) return EndSplice(true);
  ReadFraming();
}

void UpstreamConnection::ReadFraming() {
  for (;;) {
    char buf[SplicePipe::kFramingRead];
    ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return ArmPoll(fd_, false);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      w_->metrics().upstreams[upstream_].resets.Inc();
      return EndSplice(false);
    }
    std::string_view got(buf, static_cast<size_t>(n));
    size_t consumed = 0;
    http1::ParseStatus st = parser_->ParseBody(got, &consumed);
    if (st == http1::ParseStatus::kError) {
      fprintf(stderr, "ktlb: upstream: bad response body: %s\n", parser_->error_reason());
      w_->metrics().upstreams[upstream_].resets.Inc();
      return EndSplice(false);
    }
    body_seen_ += consumed;
    if (consumed > 0) {
      client_->SendToClient(got.substr(0, consumed));
      if (client_ == nullptr || state_ != State::kActive) return;
    }
    if (st == http1::ParseStatus::kDone) {
      if (consumed < got.size()) reusable_ = false;  // bytes after a complete response
      return EndSplice(true);
    }
    std::optional<uint64_t> next = SpliceLength(*parser_, false);
    if (!next) {
      // A small chunk, or the last one and trailers: the ordinary path
      // (with its backpressure) takes over, and splices again when a large
      // chunk comes.
      w_->ReturnPipe(pipe_.pipe_r(), pipe_.pipe_w());
      pipe_.Clear();
      return ArmRecv();
    }
    if (*next > 0) {
      pipe_.Continue(*next);
      return Pump();
    }
    // Still in the CRLF and size line after a large chunk (a few KiB at
    // most): read on.
  }
}

void UpstreamConnection::EndSplice(bool ok) {
  if (ok) {
    w_->ReturnPipe(pipe_.pipe_r(), pipe_.pipe_w());
    pipe_.Clear();
    resp_done_ = true;
    return Finish();
  }
  ClientConnection* c = client_;
  client_ = nullptr;
  CloseNow();  // closes the pipe: it may hold bytes of the abandoned body
  if (c != nullptr) c->OnUpstreamAborted();
}

}  // namespace ktlb
