#include "tunnel_connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktlb/proxy_protocol.h"
#include "ktlb/sockets.h"
#include "worker.h"

namespace ktlb {

namespace {
// A relay direction with nothing left to move gives its pipe back; it takes
// one again when its source is readable. Unbounded length: a tunnel carries
// bytes until one side ends it.
constexpr uint64_t kStream = UINT64_MAX;
}  // namespace

uint64_t TunnelConnection::Tag(TunnelOp op) const {
  return slot_.Tag(static_cast<uint8_t>(op));
}

void TunnelConnection::OnCompletion(uint8_t op, int res, uint32_t flags) {
  switch (static_cast<TunnelOp>(op)) {
    case TunnelOp::kRecv: return OnRecv(res, flags);
    case TunnelOp::kConnect: return OnConnect(res);
    case TunnelOp::kSend: return OnSend(res);
    case TunnelOp::kClientIn:
    case TunnelOp::kClientOut:
    case TunnelOp::kBackendIn:
    case TunnelOp::kBackendOut: return OnPoll(static_cast<TunnelOp>(op), res);
    case TunnelOp::kUpRecv:
    case TunnelOp::kDownRecv: return OnCopyRecv(static_cast<TunnelOp>(op), res, flags);
    case TunnelOp::kUpSend:
    case TunnelOp::kDownSend: return OnCopySend(static_cast<TunnelOp>(op), res);
  }
}

void TunnelConnection::OnDeferred(uint8_t op) { RetryRecv(static_cast<TunnelOp>(op)); }

void TunnelConnection::Start(Worker* w, Generation* gen, size_t listener_index, int fd,
                             const sockaddr_storage& peer) {
  w_ = w;
  gen_ = gen;
  slot_.Bind(&w->loop(), this);
  listener_ = listener_index;
  fd_.reset(fd);
  up_fd_.reset();
  upstream_ = server_ = -1;
  peer_ = peer;
  state_ = State::kHello;
  start_ms_ = w_->now_ms();
  close_reason_ = nullptr;
  proxy_header_len_ = 0;
  sni_len_ = 0;
  inflight_ = 0;
  recv_inflight_ = false;
  timer_.target = this;
  hello_.clear();
  hello_parser_ = passthrough::ClientHelloParser();
  sent_ = 0;
  up_ = Direction{};
  down_ = Direction{};
  up_.poll_src = TunnelOp::kClientIn;
  up_.poll_dst = TunnelOp::kBackendOut;
  up_.recv_op = TunnelOp::kUpRecv;
  up_.send_op = TunnelOp::kUpSend;
  down_.poll_src = TunnelOp::kBackendIn;
  down_.poll_dst = TunnelOp::kClientOut;
  down_.recv_op = TunnelOp::kDownRecv;
  down_.send_op = TunnelOp::kDownSend;
  // The ClientHello must arrive within the handshake timeout, as on a
  // terminating listener.
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kHandshake),
               gen_->config().server.timeouts.handshake_ms);
  ArmRecv();
}

void TunnelConnection::ArmRecv() {
  if (recv_inflight_ || state_ != State::kHello) return;
  w_->loop().PrepRecv(fd_.get(), Tag(TunnelOp::kRecv), false);
  recv_inflight_ = true;
  ++inflight_;
}

void TunnelConnection::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ != State::kHello) {
    w_->loop().buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) return w_->loop().NextTurn(Tag(TunnelOp::kRecv));
  if (res <= 0) {
    // Gone before a whole ClientHello: nothing to route.
    gen_->listener_metrics(listener_).tls.handshake_failures[static_cast<size_t>(
        tls::HandshakeFailure::kClientReset)].Inc();
    close_reason_ = "client_closed";
    return CloseNow();
  }
  uint16_t bid = BufferRing::BufferId(flags);
  hello_.append(w_->loop().buffers().Data(bid, static_cast<uint32_t>(res)));
  w_->loop().buffers().Recycle(bid);
  passthrough::ClientHello hello;
  passthrough::HelloStatus st = hello_parser_.Parse(hello_, &hello);
  if (st == passthrough::HelloStatus::kNeedMore) return ArmRecv();
  if (st != passthrough::HelloStatus::kDone) return FailHello(st);
  OnHelloComplete(hello);
}

void TunnelConnection::FailHello(passthrough::HelloStatus why) {
  ListenerMetrics& lm = gen_->listener_metrics(listener_);
  lm.passthrough_hello_failures[static_cast<size_t>(why)].Inc();
  w_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "%s:%u: %s: %s", AddressIp(peer_).c_str(),
          AddressPort(peer_), passthrough::HelloStatusLabel(why), hello_parser_.error());
  close_reason_ = passthrough::HelloStatusLabel(why);
  CloseNow();
}

void TunnelConnection::OnHelloComplete(const passthrough::ClientHello& hello) {
  // Route names are stored lowercase and without a trailing dot.
  size_t n = std::min(hello.sni.size(), sizeof(sni_));
  for (size_t i = 0; i < n; ++i) {
    char c = hello.sni[i];
    sni_[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  if (n > 0 && sni_[n - 1] == '.') --n;
  sni_len_ = n;
  std::string_view name(sni_, n);
  int upstream = gen_->router().Match(listener_, name, "", "", hello.alpn_list);
  if (upstream < 0) {
    gen_->listener_metrics(listener_).passthrough_no_route.Inc();
    w_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "%s:%u: no route for SNI \"%.*s\"",
            AddressIp(peer_).c_str(), AddressPort(peer_), static_cast<int>(name.size()),
            name.data());
    close_reason_ = "no_route";
    return CloseNow();
  }
  const UpstreamConfig& uc = gen_->config().upstreams[static_cast<size_t>(upstream)];
  if (uc.proxy_protocol == ProxyProtocol::kV2) {
    // The backend learns who the client is from a header ahead of its bytes
    // (hello's views are not used past this point).
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&local), &len);
    std::string header;
    passthrough::AppendProxyV2Header(peer_, local, &header);
    hello_.insert(0, header);
    proxy_header_len_ = header.size();
  }
  upstream::Cluster* cluster = gen_->cluster(static_cast<size_t>(upstream));
  Connect(static_cast<size_t>(upstream), cluster->Pick(-1));
}

bool TunnelConnection::Connect(size_t upstream, size_t server) {
  upstream_ = static_cast<int>(upstream);
  server_ = static_cast<int>(server);
  upstream::Cluster* cluster = gen_->cluster(upstream);
  cluster->metrics().requests.Inc();
  up_fd_.reset(upstream::StartConnect(w_->loop(), cluster->server(server).address,
                                  Tag(TunnelOp::kConnect), w_->error_log(), "passthrough",
                                  cluster->metrics()));
  if (up_fd_.get() < 0) {
    close_reason_ = "connect_failed";
    CloseNow();
    return false;
  }
  state_ = State::kConnecting;
  ++inflight_;
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamConnect),
               gen_->config().server.timeouts.upstream_connect_ms);
  return true;
}

void TunnelConnection::OnConnect(int res) {
  --inflight_;
  if (state_ != State::kConnecting) return MaybeRelease();
  if (res < 0) {
    const SocketAddress& addr = gen_->cluster(upstream_)->server(server_).address;
    w_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "connect to %s failed: %s",
                        addr.text.c_str(), strerror(-res));
    gen_->cluster(upstream_)->metrics().connect_failures.Inc();
    close_reason_ = "connect_failed";
    return CloseNow();
  }
  state_ = State::kReplay;
  SendHello();
}

void TunnelConnection::SendHello() {
  if (sent_ < hello_.size()) {
    // The ClientHello and anything after it, exactly as the client sent it.
    io_uring_sqe* sqe = w_->loop().Sqe();
    io_uring_prep_send(sqe, up_fd_.get(), hello_.data() + sent_, hello_.size() - sent_, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, Tag(TunnelOp::kSend));
    ++inflight_;
    return;
  }
  StartRelay();
}

void TunnelConnection::OnSend(int res) {
  --inflight_;
  if (state_ != State::kReplay) return MaybeRelease();
  if (res < 0) {
    gen_->cluster(upstream_)->metrics().resets.Inc();
    close_reason_ = "replay_failed";
    return CloseNow();
  }
  sent_ += static_cast<size_t>(res);
  SendHello();
}

void TunnelConnection::StartRelay() {
  state_ = State::kRelay;
  CountMoved(up_, hello_.size() - proxy_header_len_);  // the client's bytes read so far
  std::string().swap(hello_);  // a relay holds no buffer of its own
  up_.src = fd_.get();
  up_.dst = up_fd_.get();
  down_.src = up_fd_.get();
  down_.dst = fd_.get();
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kTunnelIdle),
               gen_->config().server.timeouts.tunnel_idle_ms);
  Relay(up_);
  if (state_ == State::kRelay) Relay(down_);
}

void TunnelConnection::Relay(Direction& d) {
  if (d.bulk) return Pump(d);
  ArmCopyRecv(d);
}

void TunnelConnection::RetryRecv(TunnelOp op) {
  if (op == TunnelOp::kRecv) return ArmRecv();
  if (state_ == State::kRelay) ArmCopyRecv(DirectionOf(op));
}

void TunnelConnection::ArmCopyRecv(Direction& d) {
  if (d.recv_inflight || d.send_inflight || d.done || state_ != State::kRelay) return;
  w_->loop().PrepRecv(d.src, Tag(d.recv_op), false);
  d.recv_inflight = true;
  ++inflight_;
}

void TunnelConnection::OnCopyRecv(TunnelOp op, int res, uint32_t flags) {
  Direction& d = DirectionOf(op);
  d.recv_inflight = false;
  --inflight_;
  if (state_ != State::kRelay) {
    w_->loop().buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) return w_->loop().NextTurn(Tag(op));
  if (res == 0) return EndDirection(d);  // EOF: pass the FIN on
  if (res < 0) {
    if (res != -ECONNRESET && res != -EPIPE) {
      w_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "relay read failed: %s", strerror(-res));
    }
    return CloseNow();
  }
  d.bid = BufferRing::BufferId(flags);
  d.len = static_cast<uint32_t>(res);
  d.sent = 0;
  CountMoved(d, d.len);
  SendCopied(d);
}

void TunnelConnection::SendCopied(Direction& d) {
  std::string_view data = d.spilling ? std::string_view(d.spill) : w_->loop().buffers().Data(d.bid, d.len);
  io_uring_sqe* sqe = w_->loop().Sqe();
  io_uring_prep_send(sqe, d.dst, data.data() + d.sent, data.size() - d.sent, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, Tag(d.send_op));
  d.send_inflight = true;
  ++inflight_;
}

void TunnelConnection::OnCopySend(TunnelOp op, int res) {
  Direction& d = DirectionOf(op);
  d.send_inflight = false;
  --inflight_;
  if (state_ != State::kRelay) {
    if (!d.spilling) w_->loop().buffers().Recycle(d.bid);
    return MaybeRelease();
  }
  if (res < 0) {
    if (!d.spilling) w_->loop().buffers().Recycle(d.bid);
    return CloseNow();
  }
  d.sent += static_cast<uint32_t>(res);
  if (d.spilling) {
    if (d.sent < d.spill.size()) return SendCopied(d);
    std::string().swap(d.spill);
    d.spilling = false;
    // The sink is slow: from now on the pipe holds what it cannot take.
    d.bulk = true;
    return Pump(d);
  }
  if (d.sent < d.len) {
    std::string_view rest = w_->loop().buffers().Data(d.bid, d.len).substr(d.sent);
    d.spill.assign(rest);
    w_->loop().buffers().Recycle(d.bid);
    d.spilling = true;
    d.sent = 0;
    return SendCopied(d);
  }
  w_->loop().buffers().Recycle(d.bid);
  // A read that filled a whole buffer: bulk transfer, better spliced.
  if (d.len == w_->loop().buffers().buf_size()) {
    d.bulk = true;
    return Pump(d);
  }
  ArmCopyRecv(d);
}

void TunnelConnection::CountMoved(Direction& d, uint64_t n) {
  d.bytes += n;
  ListenerMetrics& lm = gen_->listener_metrics(listener_);
  (&d == &up_ ? lm.passthrough_bytes_up : lm.passthrough_bytes_down).Inc(n);
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kTunnelIdle),
               gen_->config().server.timeouts.tunnel_idle_ms);
}

void TunnelConnection::EndDirection(Direction& d) {
  // Everything read has been sent: the other side learns of the end with a
  // FIN of its own (half-close), the opposite direction keeps flowing.
  shutdown(d.dst, SHUT_WR);
  d.done = true;
  if (up_.done && down_.done) CloseNow();
}

void TunnelConnection::Pump(Direction& d) {
  if (state_ != State::kRelay || d.done) return;
  for (;;) {
    if (!d.pipe.active()) {
      int r, wfd;
      if (!w_->loop().TakePipe(&r, &wfd)) {
        w_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "no pipe for a relay (file descriptor limit?)");
        return CloseNow();
      }
      d.pipe.Start(r, wfd, d.eof ? 0 : kStream);
    }
    uint64_t moved = 0;
    SplicePipe::Status st = d.pipe.Run(d.src, d.dst, true, &moved);
    if (moved > 0) CountMoved(d, moved);
    switch (st) {
      case SplicePipe::Status::kWaitSource:
        if (d.pipe.empty()) {
          // Idle: the pipe goes back to the pool until the source has bytes.
          w_->loop().ReturnPipe(d.pipe.pipe_r(), d.pipe.pipe_w());
          d.pipe.Clear();
        }
        return ArmPoll(d, true);
      case SplicePipe::Status::kWaitSink:
        return ArmPoll(d, false);
      case SplicePipe::Status::kSourceEnded:
        if (d.pipe.error() != 0) {
          // A reset on one side ends both: the peer gets a reset too.
          if (d.pipe.error() != ECONNRESET && d.pipe.error() != EPIPE) {
            w_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "relay read failed: %s",
                    strerror(d.pipe.error()));
          }
          return CloseNow();
        }
        // EOF: what is in the pipe still goes out, then the other side
        // learns of the end with a FIN of its own (half-close).
        d.eof = true;
        d.pipe.EndSource();
        continue;
      case SplicePipe::Status::kDone:
        w_->loop().ReturnPipe(d.pipe.pipe_r(), d.pipe.pipe_w());
        d.pipe.Clear();
        return EndDirection(d);
      case SplicePipe::Status::kSinkFailed:
        return CloseNow();
    }
  }
}

bool* TunnelConnection::PolledFlag(TunnelOp op) {
  switch (op) {
    case TunnelOp::kClientIn: return &up_.src_polled;
    case TunnelOp::kBackendOut: return &up_.dst_polled;
    case TunnelOp::kBackendIn: return &down_.src_polled;
    case TunnelOp::kClientOut: return &down_.dst_polled;
    default: return nullptr;
  }
}

void TunnelConnection::ArmPoll(Direction& d, bool on_src) {
  TunnelOp op = on_src ? d.poll_src : d.poll_dst;
  w_->loop().ArmPoll(on_src ? d.src : d.dst, !on_src, Tag(op), PolledFlag(op), &inflight_);
}

void TunnelConnection::OnPoll(TunnelOp op, int res) {
  if (bool* flag = PolledFlag(op)) *flag = false;
  --inflight_;
  if (state_ != State::kRelay) return MaybeRelease();
  (void)res;  // errors show up in the next splice
  Pump(DirectionOf(op));
}

void TunnelConnection::OnDeadline(uint8_t kind) {
  if (state_ == State::kClosed) return;
  if (kind < static_cast<uint8_t>(TimeoutKind::kCount)) {
    w_->CountTimeout(static_cast<TimeoutKind>(kind));
  }
  if (kind == static_cast<uint8_t>(TimeoutKind::kUpstreamConnect) && upstream_ >= 0) {
    gen_->cluster(upstream_)->metrics().timeouts.Inc();
  }
  if (kind < static_cast<uint8_t>(TimeoutKind::kCount)) {
    close_reason_ = TimeoutKindLabel(static_cast<TimeoutKind>(kind));
  }
  CloseNow();
}

void TunnelConnection::Drain() {
  if (state_ == State::kHello) {
    close_reason_ = "draining";
    CloseNow();
  }
}

void TunnelConnection::CloseNow() {
  if (state_ == State::kClosed) return;
  // Connections that never sent a byte (port probes, health checks) are not
  // logged, as haproxy's "option dontlognull".
  const bool null_connection = state_ == State::kHello && hello_.empty();
  if (w_->access_log().enabled() && !null_connection) {
    const bool clean = state_ == State::kRelay && up_.done && down_.done;
    LogTunnel(close_reason_ != nullptr ? close_reason_ : clean ? nullptr : "reset");
  }
  state_ = State::kClosed;
  DeadlineQueue::Cancel(&timer_);
  // A pipe may hold bytes of a broken relay: never back to the pool.
  for (Direction* d : {&up_, &down_}) d->pipe.Discard();
  // Pending polls, recvs and connects complete once the sockets are shut.
  shutdown(fd_.get(), SHUT_RDWR);
  if (up_fd_.get() >= 0) shutdown(up_fd_.get(), SHUT_RDWR);
  MaybeRelease();
}

void TunnelConnection::LogIfOpen(const char* error) {
  if (state_ == State::kClosed || !w_->access_log().enabled()) return;
  if (state_ == State::kHello && hello_.empty()) return;  // as in CloseNow
  LogTunnel(error);
}

void TunnelConnection::LogTunnel(const char* error) {
  const Config& cfg = gen_->config();
  std::string* out =
      w_->access_log().BeginLine(w_->log_time(), cfg.listeners[listener_].name, AddressIp(peer_),
                                 AddressPort(peer_), std::string_view(sni_, sni_len_));
  if (out == nullptr) return;
  absl::StrAppend(out, ",\"passthrough\":true,\"bytes_up\":", up_.bytes,
                  ",\"bytes_down\":", down_.bytes, ",\"ms\":", w_->now_ms() - start_ms_);
  std::string_view upstream, server;
  if (upstream_ >= 0) {
    const upstream::Cluster* c = gen_->cluster(static_cast<size_t>(upstream_));
    upstream = c->name();
    if (server_ >= 0) server = c->server(static_cast<size_t>(server_)).address.text;
  }
  w_->access_log().EndLine(out, upstream, server, error);
}

void TunnelConnection::MaybeRelease() {
  if (state_ != State::kClosed || inflight_ > 0) return;
  fd_.reset();
  up_fd_.reset();
  std::string().swap(hello_);
  gen_->listener_metrics(listener_).active.Dec();
  w_->ReleaseTunnel(this, gen_);
}

}  // namespace ktlb
