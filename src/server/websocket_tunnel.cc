#include "websocket_tunnel.h"

#include <sys/socket.h>

#include <cerrno>
#include <utility>

namespace ktlb {

namespace {
constexpr uint8_t kTimerIdle = 1;
}  // namespace

void WebSocketTunnel::Start(const Options& options, Host* host, tls::Transport* client,
                            UniqueFd backend, std::string_view already_read) {
  loop_ = options.loop;
  host_ = host;
  client_ = client;
  idle_timeouts_ = options.idle_timeouts;
  idle_ms_ = options.idle_ms;
  slot_.Bind(loop_, this);
  timer_.target = this;
  backend_ = std::move(backend);
  open_ = true;
  inflight_ = 0;
  recv_inflight_ = send_inflight_ = backend_eof_ = client_eof_ = up_shut_ = false;
  out_.clear();
  sending_.clear();
  sending_off_ = 0;
  bytes_up_ = bytes_down_ = 0;
  Touch();
  if (!already_read.empty()) {
    bytes_down_ += already_read.size();
    if (!client_->Write(already_read)) return End("client_write", false);
    client_->ScheduleFlush();
  }
  // What the client sent after its request head (before the 101) waits in
  // the transport's input: it goes first.
  OnClientInput();
  if (!open_) return;
  ArmRecv();
  client_->ResumeInput();
}

tls::InputWanted WebSocketTunnel::WantsInput() const {
  if (!open_ || client_eof_ || up_backlog() >= kMaxUpBacklog) return tls::InputWanted::kNo;
  // A tunnel mostly waits: poll for readiness before each read.
  return tls::InputWanted::kIdle;
}

void WebSocketTunnel::OnClientInput() {
  if (!open_) return;
  std::string_view in = client_->input();
  if (!in.empty()) {
    out_.append(in);
    bytes_up_ += in.size();
    client_->Consume(in.size());
    Touch();
    FlushUp();
  }
  if (client_->input_end() != tls::InputEnd::kNone) {
    client_eof_ = true;
    MaybeShutUp();
  }
}

void WebSocketTunnel::OnClientWritable() {
  if (open_ && client_->backlog() < kMaxDownBacklog) ArmRecv();
}

void WebSocketTunnel::ArmRecv() {
  if (!open_ || recv_inflight_ || backend_eof_) return;
  // The client is slow: let the backend's window fill instead of our memory.
  if (client_->backlog() >= kMaxDownBacklog) return;
  loop_->PrepRecv(backend_.get(), Tag(kRecv), true);
  recv_inflight_ = true;
  ++inflight_;
}

void WebSocketTunnel::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  if (!open_) {
    loop_->buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) {
    loop_->NextTurn(Tag(kRetryRecv));
    return;
  }
  if (res <= 0) {
    // The backend's FIN ends the tunnel: what it sent reaches the client,
    // then a close_notify (TLS offers no half-open read side to keep).
    backend_eof_ = true;
    return End(res == 0 ? nullptr : "upstream_reset", true);
  }
  uint16_t bid = BufferRing::BufferId(flags);
  std::string_view data = loop_->buffers().Data(bid, static_cast<uint32_t>(res));
  bytes_down_ += data.size();
  bool ok = client_->Write(data);
  loop_->buffers().Recycle(bid);
  if (!ok) return End("client_write", false);
  client_->ScheduleFlush();
  Touch();
  ArmRecv();
}

void WebSocketTunnel::FlushUp() {
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
  io_uring_sqe_set_data64(sqe, Tag(kSend));
  send_inflight_ = true;
  ++inflight_;
}

void WebSocketTunnel::OnSend(int res) {
  send_inflight_ = false;
  --inflight_;
  if (!open_) return MaybeRelease();
  if (res < 0) {
    if (res == -EAGAIN || res == -EINTR) return FlushUp();
    return End("upstream_reset", false);
  }
  sending_off_ += static_cast<size_t>(res);
  Touch();
  const bool was_full = up_backlog() + static_cast<size_t>(res) >= kMaxUpBacklog;
  FlushUp();
  if (was_full && up_backlog() < kMaxUpBacklog) client_->ResumeInput();
}

void WebSocketTunnel::MaybeShutUp() {
  // The client's close_notify becomes the backend's FIN once everything the
  // client sent before it is out.
  if (!open_ || !client_eof_ || up_shut_ || send_inflight_ || up_backlog() > 0) return;
  up_shut_ = true;
  shutdown(backend_.get(), SHUT_WR);
}

void WebSocketTunnel::Touch() {
  loop_->ArmTimer(&timer_, kTimerIdle, idle_ms_);
}

void WebSocketTunnel::OnDeadline(uint8_t kind) {
  if (kind != kTimerIdle || !open_) return;
  if (idle_timeouts_ != nullptr) idle_timeouts_->Inc();
  End("tunnel_idle", true);
}

void WebSocketTunnel::OnCompletion(uint8_t op, int res, uint32_t flags) {
  switch (op) {
    case kRecv: return OnRecv(res, flags);
    case kSend: return OnSend(res);
    default: return;
  }
}

void WebSocketTunnel::OnDeferred(uint8_t op) {
  if (op == kRetryRecv) ArmRecv();
}

void WebSocketTunnel::End(const char* error, bool graceful) {
  if (!open_) return;
  Shut();
  host_->OnTunnelEnded(error, graceful);
  MaybeRelease();
}

void WebSocketTunnel::Stop() {
  if (!open_) return;
  Shut();
  MaybeRelease();
}

void WebSocketTunnel::Shut() {
  open_ = false;
  Loop::CancelTimer(&timer_);
  // In-flight operations complete (with 0 or an error) once the socket is
  // shut down; it is closed when the last one is back.
  if (backend_.valid()) shutdown(backend_.get(), SHUT_RDWR);
}

void WebSocketTunnel::MaybeRelease() {
  if (open_ || inflight_ > 0 || !backend_.valid()) return;
  backend_.reset();
  std::string().swap(out_);
  std::string().swap(sending_);
  sending_off_ = 0;
  host_->OnTunnelReleased();
}

}  // namespace ktlb
