// Large Content-Length response bodies to a kTLS client: backend socket ->
// pipe -> client socket, encrypted by the kernel on the way out (TLS_TX).
// Readiness comes from io_uring polls; the splices are non-blocking calls
// from the worker (io_uring's SPLICE on 6.1 always goes through io-wq
// threads, and socket->pipe ignores O_NONBLOCK without SPLICE_F_NONBLOCK:
// KTLS.md).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "client_connection.h"
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
  uint64_t moved = 0;
  SplicePipe::Status st = pipe_.Run(fd_, client_->fd(), client_->SpliceReady(), &moved);
  if (moved > 0) {
    client_->CountSpliced(moved);
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                 w_->config().server.timeouts.upstream_response_ms);
  }
  switch (st) {
    case SplicePipe::Status::kDone:
      return EndSplice(true);
    case SplicePipe::Status::kWaitSource:
      return ArmPoll(fd_, false);
    case SplicePipe::Status::kWaitSink:
      // Either the socket is full (poll it) or the client still sends what
      // was queued before the body (OnClientWritable resumes us).
      if (client_->SpliceReady()) ArmPoll(client_->fd(), true);
      return;
    case SplicePipe::Status::kSourceEnded:
      // The backend closed or failed before the promised Content-Length.
      w_->metrics().upstreams[upstream_].resets.Inc();
      return EndSplice(false);
    case SplicePipe::Status::kSinkFailed:
      fprintf(stderr, "ktlb: upstream: splice to client failed: %s\n", strerror(pipe_.error()));
      return EndSplice(false);
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
