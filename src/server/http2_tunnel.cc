#include "http2_tunnel.h"

#include <sys/socket.h>

#include <cerrno>
#include <utility>

namespace ktlb {

namespace {
constexpr uint8_t kTimerIdle = 1;
}  // namespace

void Http2Tunnel::Start(const Options& options, Host* host, UniqueFd backend,
                        std::string_view already_read) {
  loop_ = options.loop;
  host_ = host;
  idle_timeouts_ = options.idle_timeouts;
  idle_ms_ = options.idle_ms;
  slot_.Bind(loop_, this);
  timer_.target = this;
  backend_ = std::move(backend);
  open_ = true;
  inflight_ = 0;
  recv_inflight_ = send_inflight_ = backend_eof_ = client_eof_ = up_shut_ = finishing_ = false;
  out_.clear();
  sending_.clear();
  sending_off_ = 0;
  bytes_up_ = bytes_down_ = 0;
  Touch();
  if (!already_read.empty()) {
    bytes_down_ += already_read.size();
    host_->OnTunnelDown(already_read);
  }
  ArmRecv();
}

void Http2Tunnel::SendUp(std::string_view bytes) {
  if (!open_ || client_eof_ || bytes.empty()) return;
  out_.append(bytes);
  bytes_up_ += bytes.size();
  Touch();
  FlushUp();
}

void Http2Tunnel::EndUp() {
  if (!open_) return;
  client_eof_ = true;
  MaybeShutUp();
}

void Http2Tunnel::ResumeDown() { ArmRecv(); }

void Http2Tunnel::ArmRecv() {
  if (!open_ || finishing_ || recv_inflight_ || backend_eof_ || host_->TunnelDownFull()) return;
  loop_->PrepRecv(backend_.get(), slot_.Tag(kRecv), true);
  recv_inflight_ = true;
  ++inflight_;
}

void Http2Tunnel::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  if (!open_) {
    loop_->buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) {
    loop_->NextTurn(slot_.Tag(kRetryRecv));
    return;
  }
  if (finishing_) {
    // The stream is gone: backend bytes have nowhere to go. No new recv.
    if (res > 0) loop_->buffers().RecycleFrom(flags);
    if (res <= 0) backend_eof_ = true;
    return;
  }
  if (res < 0) return Fail("upstream_reset");
  if (res == 0) {
    // A half-close: the client may still send (RFC 8441 keeps TCP's
    // semantics), so the socket stays open for the up direction.
    backend_eof_ = true;
    host_->OnTunnelDownEnd();
    return;
  }
  uint16_t bid = BufferRing::BufferId(flags);
  std::string_view data = loop_->buffers().Data(bid, static_cast<uint32_t>(res));
  bytes_down_ += data.size();
  host_->OnTunnelDown(data);
  loop_->buffers().Recycle(bid);
  Touch();
  ArmRecv();
}

void Http2Tunnel::FlushUp() {
  if (!open_ || send_inflight_) return;
  if (sending_off_ >= sending_.size()) {
    sending_.clear();
    sending_off_ = 0;
    if (out_.empty()) return MaybeShutUp();
    sending_.swap(out_);
  }
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_send(sqe, backend_.get(), sending_.data() + sending_off_,
                     sending_.size() - sending_off_, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, slot_.Tag(kSend));
  send_inflight_ = true;
  ++inflight_;
}

void Http2Tunnel::OnSend(int res) {
  send_inflight_ = false;
  --inflight_;
  if (!open_) return MaybeRelease();
  if (res < 0) {
    if (res == -EAGAIN || res == -EINTR) return FlushUp();
    return Fail("upstream_reset");
  }
  sending_off_ += static_cast<size_t>(res);
  Touch();
  if (!finishing_) host_->OnTunnelUpSent(static_cast<size_t>(res));
  FlushUp();
}

void Http2Tunnel::MaybeShutUp() {
  if (!open_ || !client_eof_ || up_shut_ || send_inflight_ || up_backlog() > 0) return;
  up_shut_ = true;
  shutdown(backend_.get(), SHUT_WR);
  if (finishing_) Stop();  // everything the client sent has left
}

void Http2Tunnel::Touch() { loop_->ArmTimer(&timer_, kTimerIdle, idle_ms_); }

void Http2Tunnel::OnDeadline(uint8_t kind) {
  if (kind != kTimerIdle || !open_) return;
  if (idle_timeouts_ != nullptr) idle_timeouts_->Inc();
  Fail("tunnel_idle");
}

void Http2Tunnel::OnCompletion(uint8_t op, int res, uint32_t flags) {
  switch (op) {
    case kRecv: return OnRecv(res, flags);
    case kSend: return OnSend(res);
    default: return;
  }
}

void Http2Tunnel::OnDeferred(uint8_t op) {
  if (op == kRetryRecv) ArmRecv();
}

void Http2Tunnel::Fail(const char* error) {
  if (!open_) return;
  if (finishing_) return Stop();  // the stream is gone: nobody to tell
  host_->OnTunnelFailed(error);  // the host resets the stream and calls Stop
  Stop();
}

void Http2Tunnel::Finish() {
  if (!open_ || finishing_) return;
  if (!client_eof_ || up_shut_) return Stop();
  finishing_ = true;
  Touch();
  if (!send_inflight_) FlushUp();  // and MaybeShutUp, which stops once all has left
}

void Http2Tunnel::Stop() {
  if (!open_) return;
  open_ = false;
  finishing_ = false;
  Loop::CancelTimer(&timer_);
  // In-flight operations complete once the socket is shut down; it is
  // closed when the last one is back.
  if (backend_.valid()) shutdown(backend_.get(), SHUT_RDWR);
  MaybeRelease();
}

void Http2Tunnel::MaybeRelease() {
  if (open_ || inflight_ > 0 || !backend_.valid()) return;
  backend_.reset();
  std::string().swap(out_);
  std::string().swap(sending_);
  sending_off_ = 0;
  host_->OnTunnelReleased();
}

}  // namespace ktlb
