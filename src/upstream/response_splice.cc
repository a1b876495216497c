// Large response bodies to a kTLS client: backend socket -> pipe -> client
// socket, encrypted by the kernel on the way out (TLS_TX). A Content-Length
// body is one transfer; a chunked body is forwarded as-is, its framing read
// in small pieces between chunks and the data of each large chunk spliced.
// Readiness comes from io_uring polls; the splices are non-blocking calls
// from the worker (io_uring's SPLICE on 6.1 always goes through io-wq
// threads, and socket->pipe ignores O_NONBLOCK without SPLICE_F_NONBLOCK:
// KTLS.md).
#include <unistd.h>

#include <cstring>

#include "ktlb/splice_policy.h"
#include "upstream_connection.h"

namespace ktlb::upstream {

void UpstreamConnection::StartSplice(uint64_t n) {
  int r, wfd;
  if (!loop_->TakePipe(&r, &wfd)) return ArmRecv();  // no pipe (fd limit): the ordinary way
  pipe_.Start(r, wfd, n);
  Pump();
}

void UpstreamConnection::StartPipe(uint64_t n) {
  int r, wfd;
  if (!loop_->TakePipe(&r, &wfd)) return ArmRecv();
  pipe_.Start(r, wfd, n);
  pipe_mode_ = true;
  PumpPipe();
}

// Backend -> pipe; the sink takes the bytes out frame by frame
// (SplicePipedTo) and calls OnSinkWritable, which lands here again.
void UpstreamConnection::PumpPipe() {
  if (!pipe_.active() || state_ != State::kActive || sink() == nullptr) return;
  if (pipe_.finished()) {
    // Every byte went through the sink.
    if (parser_->SkipOpaqueBody(pipe_.length()) != http1::ParseStatus::kDone) {
      cluster_->metrics().resets.Inc();
      return EndSplice(false);
    }
    pipe_mode_ = false;
    return EndSplice(true);
  }
  uint64_t added = 0;
  SplicePipe::Status st = pipe_.Fill(backend_fd(), &added);
  if (added > 0) {
    loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                    cluster_->limits().response_timeout_ms);
    sink()->OnResponsePiped();
    if (sink() == nullptr || state_ != State::kActive) return;
  }
  switch (st) {
    case SplicePipe::Status::kWaitSource:
      return ArmPoll(backend_fd(), false);
    case SplicePipe::Status::kSourceEnded:
      if (TlsSpliceStopped()) return;
      cluster_->metrics().resets.Inc();
      return EndSplice(false);
    default:
      return;  // the pipe is full, or holds the rest: the sink drains it
  }
}

long UpstreamConnection::SplicePipedTo(int fd, size_t max) {
  if (!pipe_mode_ || !pipe_.active()) return 0;
  long n = pipe_.DrainTo(fd, max);
  if (n > 0) {
    // Progress of this response, even once the backend sent its last byte.
    loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                    cluster_->limits().response_timeout_ms);
  }
  return n;
}

void UpstreamConnection::ArmPoll(int fd, bool out) {
  loop_->ArmPoll(fd, out, Tag(out ? kPollOut : kPollIn),
                 out ? &poll_out_inflight_ : &poll_in_inflight_, &inflight_);
}

void UpstreamConnection::OnSplicePoll(uint8_t op, int res) {
  (op == kPollOut ? poll_out_inflight_ : poll_in_inflight_) = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  (void)res;  // an error shows up in the next splice
  if (pipe_.active()) pipe_mode_ ? PumpPipe() : Pump();
}

void UpstreamConnection::Pump() {
  if (!pipe_.active() || state_ != State::kActive || sink() == nullptr) return;
  if (pipe_.finished()) return ReadFraming();  // between chunks
  const int client_fd = sink()->ResponseSpliceFd();
  if (client_fd < 0) return Abort();  // the client side can no longer take spliced bytes
  uint64_t moved = 0;
  SplicePipe::Status st = pipe_.Run(backend_fd(), client_fd, sink()->ResponseSpliceReady(), &moved);
  if (moved > 0) {
    sink()->OnResponseSpliced(moved);
    if (sink() == nullptr || state_ != State::kActive) return;
    loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                    cluster_->limits().response_timeout_ms);
  }
  switch (st) {
    case SplicePipe::Status::kDone:
      break;
    case SplicePipe::Status::kWaitSource:
      return ArmPoll(backend_fd(), false);
    case SplicePipe::Status::kWaitSink:
      // Either the socket is full (poll it) or the client still sends what
      // was queued before these bytes (OnSinkWritable resumes us).
      if (sink()->ResponseSpliceReady()) ArmPoll(client_fd, true);
      return;
    case SplicePipe::Status::kSourceEnded:
      if (TlsSpliceStopped()) return;
      // The backend closed or failed before the promised length.
      cluster_->metrics().resets.Inc();
      return EndSplice(false);
    case SplicePipe::Status::kSinkFailed:
      cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "splice to client failed: %s",
                          strerror(pipe_.error()));
      return EndSplice(false);
  }
  http1::ParseStatus ps = parser_->SkipOpaqueBody(pipe_.length());
  if (ps == http1::ParseStatus::kError) {
    cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "bad response body: %s",
                        parser_->error_reason());
    cluster_->metrics().resets.Inc();
    return EndSplice(false);
  }
  if (ps == http1::ParseStatus::kDone) return EndSplice(true);
  ReadFraming();
}

void UpstreamConnection::ReadFraming() {
  FramingStep step = ReadChunkFraming(backend_fd(), *parser_, [this](std::string_view framing) {
    sink()->OnResponseBody(framing);
    return sink() != nullptr && state_ == State::kActive;
  });
  switch (step.kind) {
    case FramingStep::kWaitReadable:
      return ArmPoll(backend_fd(), false);
    case FramingStep::kStopped:
      return;
    case FramingStep::kSourceEnded:
      cluster_->metrics().resets.Inc();
      return EndSplice(false);
    case FramingStep::kBadBody:
      cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "bad response body: %s",
                          parser_->error_reason());
      cluster_->metrics().resets.Inc();
      return EndSplice(false);
    case FramingStep::kBodyDone:
      if (!step.rest.empty()) reusable_ = false;  // bytes after a complete response
      return EndSplice(true);
    case FramingStep::kOrdinaryPath:
      // A small chunk, or the last one and trailers: the ordinary path
      // (with its backpressure) takes over, and splices again when a large
      // chunk comes.
      loop_->ReturnPipe(pipe_.pipe_r(), pipe_.pipe_w());
      pipe_.Clear();
      return ArmRecv();
    case FramingStep::kSpliceNext:
      pipe_.Continue(step.length);
      return Pump();
  }
}

void UpstreamConnection::EndSplice(bool ok) {
  pipe_mode_ = false;
  if (!ok) return Abort();  // closes the pipe: it may hold bytes of the abandoned body
  loop_->ReturnPipe(pipe_.pipe_r(), pipe_.pipe_w());
  pipe_.Clear();
  resp_done_ = true;
  Finish();
}

}  // namespace ktlb::upstream
