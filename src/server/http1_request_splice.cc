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

#include "http1_connection.h"
#include "ktlb/splice_policy.h"
#include "worker.h"

namespace ktlb {

void Http1Connection::MaybeSpliceRequestBody() {
  if (req_pipe_.active() || req_body_done_ || !transport_.rx_offloaded() || !exchange_.active() ||
      !exchange_.RequestSpliceable()) {
    return;
  }
  // Bytes already read, or a read still in flight, come before what the pipe
  // would take: they go first, the ordinary way.
  if (!transport_.input().empty() || transport_.recv_inflight()) return;
  std::optional<uint64_t> n = SpliceLength(*parser_, req_content_length_ > 0);
  if (!n) return;
  int r, wfd;
  if (!w_->loop().TakePipe(&r, &wfd)) return;  // the ordinary path then
  req_pipe_.Start(r, wfd, *n);
  PumpRequestBody();
}

void Http1Connection::ArmSplicePoll(int fd, bool out) {
  w_->loop().ArmPoll(fd, out, Tag(out ? kPollOut : kPollIn),
                     out ? &splice_poll_out_ : &splice_poll_in_, &inflight_);
}

void Http1Connection::OnSplicePoll(uint8_t op, int res) {
  (op == kPollOut ? splice_poll_out_ : splice_poll_in_) = false;
  --inflight_;
  if (state_ == State::kClosed || state_ == State::kClosing) return MaybeRelease();
  (void)res;  // an error shows up in the next splice
  if (req_pipe_.active()) PumpRequestBody();
}

void Http1Connection::PumpRequestBody() {
  if (!req_pipe_.active() || !exchange_.active() || state_ != State::kProxying) return;
  if (req_pipe_.finished()) return ReadRequestFraming();  // between chunks
  // The backend must have everything queued before these bytes (head,
  // buffered body bytes, chunk framing) before the pipe may write to it.
  bool sink_ready = exchange_.RequestSpliceReady();
  const int backend_fd = exchange_.RequestSpliceFd();
  uint64_t moved = 0;
  SplicePipe::Status st = req_pipe_.Run(fd(), backend_fd, sink_ready, &moved);
  if (moved > 0) gen_->listener_metrics(listener_).bytes_spliced.Inc(moved);
  switch (st) {
    case SplicePipe::Status::kDone:
      break;
    case SplicePipe::Status::kWaitSource:
      return ArmSplicePoll(fd(), false);
    case SplicePipe::Status::kWaitSink:
      if (sink_ready) ArmSplicePoll(backend_fd, true);  // else OnRequestWritable resumes us
      return;
    case SplicePipe::Status::kSourceEnded:
      // A control record (EINVAL) in the middle of the body: read it out of
      // band; the pipe keeps what it holds and the body resumes after it.
      if (req_pipe_.error() == EINVAL) return transport_.ReadControlRecord();
      // The kernel refused a record (bad MAC, oversized): the alert first.
      if (req_pipe_.error() == EBADMSG || req_pipe_.error() == EMSGSIZE) {
        return transport_.FailReceive(req_pipe_.error());
      }
      // EOF or reset.
      gen_->listener_metrics(listener_).client_resets.Inc();
      return CloseNow();
    case SplicePipe::Status::kSinkFailed:
      w_->error_log().Log(ErrorLog::Level::kWarn, "upstream", "splice of a request body failed: %s",
                          strerror(req_pipe_.error()));
      return CloseNow();
  }
  exchange_.BodyProgress();
  req_body_seen_ += req_pipe_.length();
  http1::ParseStatus ps = parser_->SkipOpaqueBody(req_pipe_.length());
  if (ps == http1::ParseStatus::kError) return FailRequestBody();
  if (ps == http1::ParseStatus::kDone) return StopRequestSplice(true);
  ReadRequestFraming();
}

void Http1Connection::ReadRequestFraming() {
  FramingStep step = ReadChunkFraming(fd(), *parser_, [this](std::string_view framing) {
    exchange_.SendBody(framing);
    req_body_seen_ += framing.size();
    return exchange_.active() && state_ == State::kProxying;
  });
  switch (step.kind) {
    case FramingStep::kWaitReadable:
      return ArmSplicePoll(fd(), false);
    case FramingStep::kStopped:
      return;
    case FramingStep::kSourceEnded:
      // A control record (EIO) between chunks: as in PumpRequestBody.
      if (step.error == EIO) return transport_.ReadControlRecord();
      if (step.error == EBADMSG || step.error == EMSGSIZE || step.error == EINVAL) {
        return transport_.FailReceive(step.error);
      }
      // EOF or reset before the body ended.
      gen_->listener_metrics(listener_).client_resets.Inc();
      return CloseNow();
    case FramingStep::kBadBody:
      return FailRequestBody();
    case FramingStep::kBodyDone:
      // What follows the body is the start of the next (pipelined) request.
      transport_.SetInput(step.rest);
      return StopRequestSplice(true);
    case FramingStep::kOrdinaryPath:
      // A small chunk, or the last one and trailers: the ordinary path
      // (with its backpressure) takes over, and splices again when a large
      // chunk comes.
      w_->loop().ReturnPipe(req_pipe_.pipe_r(), req_pipe_.pipe_w());
      req_pipe_.Clear();
      return transport_.ResumeInput();
    case FramingStep::kSpliceNext:
      req_pipe_.Continue(step.length);
      return PumpRequestBody();
  }
}

void Http1Connection::StopRequestSplice(bool done) {
  if (!req_pipe_.active()) return;
  if (!done) return req_pipe_.Discard();  // may hold bytes of an abandoned body
  w_->loop().ReturnPipe(req_pipe_.pipe_r(), req_pipe_.pipe_w());
  req_pipe_.Clear();
  req_body_done_ = true;
  exchange_.EndBody();
  ProcessPlain();
  HandleInputEnd();
  transport_.Flush();
  transport_.ResumeInput();
}

}  // namespace ktlb
