#include "ktlb/relay.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktlb/proxy_protocol.h"
#include "ktlb/request_hash.h"
#include "ktlb/sockets.h"
#include "ktlb/tls.h"

namespace ktlb::passthrough {

namespace {
// A relay direction with nothing left to move gives its pipe back; it takes
// one again when its source is readable. Unbounded length: a tunnel carries
// bytes until one side ends it.
constexpr uint64_t kStream = UINT64_MAX;
// How often a kernel relay looks again whether the bytes ahead of a FIN
// are out of the psock's backlog (there is no event for it).
constexpr uint32_t kKernelDrainRecheckMs = 1;
// A failed pairing (a full socket map) is logged once per process.
std::atomic<bool> pairing_failure_logged{false};
}  // namespace

uint64_t Relay::Tag(RelayOp op) const { return slot_.Tag(static_cast<uint8_t>(op)); }

void Relay::ArmTimer(TimeoutKind kind, uint32_t duration_ms) {
  loop().ArmTimer(&timer_, static_cast<uint8_t>(kind), duration_ms);
}

void Relay::OnCompletion(uint8_t op, int res, uint32_t flags) {
  switch (static_cast<RelayOp>(op)) {
    case RelayOp::kRecv: return OnRecv(res, flags);
    case RelayOp::kConnect: return OnConnect(res);
    case RelayOp::kSend: return OnSend(res);
    case RelayOp::kClientIn:
    case RelayOp::kClientOut:
    case RelayOp::kBackendIn:
    case RelayOp::kBackendOut: return OnPoll(static_cast<RelayOp>(op), res);
    case RelayOp::kUpRecv:
    case RelayOp::kDownRecv: return OnCopyRecv(static_cast<RelayOp>(op), res, flags);
    case RelayOp::kUpSend:
    case RelayOp::kDownSend: return OnCopySend(static_cast<RelayOp>(op), res);
  }
}

void Relay::OnDeferred(uint8_t op) { RetryRecv(static_cast<RelayOp>(op)); }

void Relay::Start(RelayHost* host, const RelayContext& ctx, int fd, const sockaddr_storage& peer) {
  host_ = host;
  ctx_ = ctx;
  slot_.Bind(&loop(), this);
  fd_.reset(fd);
  up_fd_.reset();
  upstream_ = server_ = -1;
  peer_ = peer;
  local_.ss_family = AF_UNSPEC;
  proxy_header_.Start(ctx.config->listeners[ctx.listener].accept_proxy, ctx.metrics,
                      &host->error_log(), peer);
  state_ = State::kHello;
  start_ms_ = loop().now_ms();
  close_reason_ = nullptr;
  proxy_header_len_ = 0;
  sni_len_ = 0;
  inflight_ = 0;
  recv_inflight_ = false;
  timer_.target = this;
  drain_timer_.target = this;
  kernel_ = false;
  pair_ = SockmapPair{};
  hello_.clear();
  hello_parser_ = ClientHelloParser();
  sent_ = 0;
  up_ = Direction{};
  down_ = Direction{};
  up_.poll_src = RelayOp::kClientIn;
  up_.poll_dst = RelayOp::kBackendOut;
  up_.recv_op = RelayOp::kUpRecv;
  up_.send_op = RelayOp::kUpSend;
  down_.poll_src = RelayOp::kBackendIn;
  down_.poll_dst = RelayOp::kClientOut;
  down_.recv_op = RelayOp::kDownRecv;
  down_.send_op = RelayOp::kDownSend;
  // The ClientHello must arrive within the handshake timeout, as on a
  // terminating listener.
  ArmTimer(TimeoutKind::kHandshake, timeouts().handshake_ms);
  ArmRecv();
}

void Relay::ArmRecv() {
  if (recv_inflight_ || state_ != State::kHello) return;
  loop().PrepRecv(fd_.get(), Tag(RelayOp::kRecv), false);
  recv_inflight_ = true;
  ++inflight_;
}

void Relay::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  ProvidedRecv recv(loop().buffers(), res, flags);
  if (state_ != State::kHello) return MaybeRelease();
  if (recv.no_buffer()) return loop().NextTurn(Tag(RelayOp::kRecv));
  if (res <= 0) {
    // Gone before a whole ClientHello: nothing to route. Before its PROXY
    // header ended no TLS began: that stage counts its own.
    if (proxy_header_.pending()) {
      proxy_header_.Abandon(false);
    } else {
      ctx_.metrics->tls.handshake_failures[static_cast<size_t>(
          tls::HandshakeFailure::kClientReset)].Inc();
    }
    close_reason_ = "client_closed";
    return CloseNow();
  }
  hello_.append(recv.data());
  up_.ktlb_read += recv.data().size();
  recv.Recycle();
  if (proxy_header_.pending() && !TakeProxyHeader()) return;
  ClientHello hello;
  HelloStatus st = hello_parser_.Parse(hello_, &hello);
  if (st == HelloStatus::kNeedMore) return ArmRecv();
  if (st != HelloStatus::kDone) return FailHello(st);
  OnHelloComplete(hello);
}

// The header is read into hello_ like the ClientHello after it, from the
// same receive: the relay copies what it reads before routing anyway, so
// the header costs no extra copy, and what follows it stays in hello_ for
// the ClientHello parser (and the backend) exactly as the client sent it.
bool Relay::TakeProxyHeader() {
  ProxyHeaderResult r = proxy_header_.Feed(hello_);
  if (r.status == ProxyHeaderStatus::kNeedMore) {
    ArmRecv();
    return false;
  }
  if (r.status == ProxyHeaderStatus::kFailed) {
    close_reason_ = "proxy_header";
    CloseNow();
    return false;
  }
  if (r.has_addresses) {
    peer_ = r.source;
    local_ = r.destination;
  }
  hello_.erase(0, r.consumed);
  if (!hello_.empty()) return true;
  ArmRecv();
  return false;
}

void Relay::FailHello(HelloStatus why) {
  ListenerMetrics& lm = *ctx_.metrics;
  lm.passthrough_hello_failures[static_cast<size_t>(why)].Inc();
  host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "%s:%u: %s: %s",
                         AddressIp(peer_).c_str(), AddressPort(peer_), HelloStatusLabel(why),
                         hello_parser_.error());
  close_reason_ = HelloStatusLabel(why);
  CloseNow();
}

void Relay::OnHelloComplete(const ClientHello& hello) {
  // Route names are stored lowercase and without a trailing dot.
  size_t n = std::min(hello.sni.size(), sizeof(sni_));
  for (size_t i = 0; i < n; ++i) {
    char c = hello.sni[i];
    sni_[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  if (n > 0 && sni_[n - 1] == '.') --n;
  sni_len_ = n;
  std::string_view name(sni_, n);
  if (ctx_.config->listeners[ctx_.listener].unknown_sni == UnknownSniPolicy::kReject &&
      !ctx_.router->RoutesSni(ctx_.listener, name)) {
    // The same label as a terminate listener refusing a name it has no
    // certificate for: in both modes the operator listed the names served.
    ctx_.metrics->tls.handshake_failures[static_cast<size_t>(tls::HandshakeFailure::kUnknownSni)]
        .Inc();
    host_->error_log().Log(ErrorLog::Level::kInfo, "passthrough",
                           "%s:%u: unknown SNI \"%.*s\" rejected", AddressIp(peer_).c_str(),
                           AddressPort(peer_), static_cast<int>(name.size()), name.data());
    close_reason_ = "unknown_sni";
    return CloseNow();
  }
  int upstream = ctx_.router->Match(ctx_.listener, name, "", "", hello.alpn_list);
  if (upstream < 0) {
    ctx_.metrics->passthrough_no_route.Inc();
    host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough",
                           "%s:%u: no route for SNI \"%.*s\"", AddressIp(peer_).c_str(),
                           AddressPort(peer_), static_cast<int>(name.size()), name.data());
    close_reason_ = "no_route";
    return CloseNow();
  }
  const UpstreamConfig& uc = ctx_.config->upstreams[static_cast<size_t>(upstream)];
  if (uc.proxy_protocol == ProxyProtocol::kV2) {
    // The backend learns who the client is from a header ahead of its bytes
    // (hello's views are not used past this point).
    if (local_.ss_family == AF_UNSPEC) {
      socklen_t len = sizeof(local_);
      getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&local_), &len);
    }
    std::string header;
    AppendProxyV2Header(peer_, local_, &header);
    hello_.insert(0, header);
    proxy_header_len_ = header.size();
  }
  upstream::Cluster* c = cluster(static_cast<size_t>(upstream));
  // Maglev keeps a client on one backend by its address (a passthrough
  // listener never sees headers or cookies; the config refuses those keys).
  uint64_t hash = 0;
  bool has_hash = false;
  if (const HashKeyConfig* key = c->hash_key(); key != nullptr) {
    upstream::RequestHasher hasher(*key);
    hasher.ClientIp(AddressIp(peer_));
    hash = hasher.hash();
    has_hash = hasher.found();
  }
  int server = c->Pick(-1, hash, has_hash);
  if (server < 0) {
    // No queue for tunnels: every server at max_conns_per_server closes it.
    close_reason_ = server == upstream::Cluster::kAllAtCap ? "max_conns" : "no_server";
    return CloseNow();
  }
  Connect(static_cast<size_t>(upstream), static_cast<size_t>(server));
}

bool Relay::Connect(size_t upstream, size_t server) {
  upstream_ = static_cast<int>(upstream);
  server_ = static_cast<int>(server);
  upstream::Cluster* c = cluster(upstream);
  c->metrics().requests.Inc();
  up_fd_.reset(upstream::StartConnect(loop(), c->server(server).address, Tag(RelayOp::kConnect),
                                      host_->error_log(), "passthrough", c->metrics()));
  if (up_fd_.get() < 0) {
    close_reason_ = "connect_failed";
    CloseNow();
    return false;
  }
  state_ = State::kConnecting;
  // least_conn counts open tunnels to each backend.
  c->AttemptStarted(server);
  counted_ = true;
  ++inflight_;
  ArmTimer(TimeoutKind::kUpstreamConnect, timeouts().upstream_connect_ms);
  return true;
}

void Relay::OnConnect(int res) {
  --inflight_;
  if (state_ != State::kConnecting) return MaybeRelease();
  if (res < 0) {
    const SocketAddress& addr = cluster(upstream_)->server(server_).address;
    host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "connect to %s failed: %s",
                           addr.text.c_str(), strerror(-res));
    cluster(upstream_)->metrics().connect_failures.Inc();
    cluster(upstream_)->CountFailure(static_cast<size_t>(server_), ServerFailure::kConnect);
    // Passive health: a refusing backend is ejected for tunnels too.
    cluster(upstream_)->ReportFailure(static_cast<size_t>(server_));
    close_reason_ = "connect_failed";
    return CloseNow();
  }
  cluster(upstream_)->ReportSuccess(static_cast<size_t>(server_));
  state_ = State::kReplay;
  SendHello();
}

void Relay::SendHello() {
  if (sent_ < hello_.size()) {
    // The ClientHello and anything after it, exactly as the client sent it.
    io_uring_sqe* sqe = loop().Sqe();
    io_uring_prep_send(sqe, up_fd_.get(), hello_.data() + sent_, hello_.size() - sent_,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, Tag(RelayOp::kSend));
    ++inflight_;
    return;
  }
  StartRelay();
}

void Relay::OnSend(int res) {
  --inflight_;
  if (state_ != State::kReplay) return MaybeRelease();
  if (res < 0) {
    cluster(upstream_)->metrics().resets.Inc();
    cluster(upstream_)->CountFailure(static_cast<size_t>(server_), ServerFailure::kReset);
    close_reason_ = "replay_failed";
    return CloseNow();
  }
  sent_ += static_cast<size_t>(res);
  SendHello();
}

void Relay::StartRelay() {
  state_ = State::kRelay;
  CountMoved(up_, hello_.size() - proxy_header_len_);  // the client's bytes read so far
  std::string().swap(hello_);  // a relay holds no buffer of its own
  up_.src = fd_.get();
  up_.dst = up_fd_.get();
  down_.src = up_fd_.get();
  down_.dst = fd_.get();
  ArmTimer(TimeoutKind::kTunnelIdle, timeouts().tunnel_idle_ms);
  if (ProcessSockmap() != nullptr && StartKernelRelay()) return;
  Forward(up_);
  if (state_ == State::kRelay) Forward(down_);
}

void Relay::Forward(Direction& d) {
  if (d.bulk) return Pump(d);
  ArmCopyRecv(d);
}

void Relay::RetryRecv(RelayOp op) {
  if (op == RelayOp::kRecv) return ArmRecv();
  if (state_ == State::kRelay) ArmCopyRecv(DirectionOf(op));
}

void Relay::ArmCopyRecv(Direction& d) {
  if (d.recv_inflight || d.send_inflight || d.done || state_ != State::kRelay) return;
  loop().PrepRecv(d.src, Tag(d.recv_op), false);
  d.recv_inflight = true;
  ++inflight_;
}

void Relay::OnCopyRecv(RelayOp op, int res, uint32_t flags) {
  Direction& d = DirectionOf(op);
  d.recv_inflight = false;
  --inflight_;
  if (state_ != State::kRelay) {
    loop().buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) return loop().NextTurn(Tag(op));
  if (res == 0) return EndDirection(d);  // EOF: pass the FIN on
  if (res < 0) {
    if (res != -ECONNRESET && res != -EPIPE) {
      host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "relay read failed: %s",
                             strerror(-res));
    }
    return CloseNow();
  }
  d.bid = BufferRing::BufferId(flags);
  d.len = static_cast<uint32_t>(res);
  d.sent = 0;
  CountMoved(d, d.len);
  SendCopied(d);
}

void Relay::SendCopied(Direction& d) {
  std::string_view data =
      d.spilling ? std::string_view(d.spill) : loop().buffers().Data(d.bid, d.len);
  io_uring_sqe* sqe = loop().Sqe();
  io_uring_prep_send(sqe, d.dst, data.data() + d.sent, data.size() - d.sent, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, Tag(d.send_op));
  d.send_inflight = true;
  ++inflight_;
}

void Relay::OnCopySend(RelayOp op, int res) {
  Direction& d = DirectionOf(op);
  d.send_inflight = false;
  --inflight_;
  if (state_ != State::kRelay) {
    if (!d.spilling) loop().buffers().Recycle(d.bid);
    return MaybeRelease();
  }
  if (res < 0) {
    if (!d.spilling) loop().buffers().Recycle(d.bid);
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
    std::string_view rest = loop().buffers().Data(d.bid, d.len).substr(d.sent);
    d.spill.assign(rest);
    loop().buffers().Recycle(d.bid);
    d.spilling = true;
    d.sent = 0;
    return SendCopied(d);
  }
  loop().buffers().Recycle(d.bid);
  // A read that filled a whole buffer: bulk transfer, better spliced.
  if (d.len == loop().buffers().buf_size()) {
    d.bulk = true;
    return Pump(d);
  }
  ArmCopyRecv(d);
}

void Relay::CountMoved(Direction& d, uint64_t n) {
  d.bytes += n;
  ListenerMetrics& lm = *ctx_.metrics;
  (&d == &up_ ? lm.passthrough_bytes_up : lm.passthrough_bytes_down).Inc(n);
  ArmTimer(TimeoutKind::kTunnelIdle, timeouts().tunnel_idle_ms);
}

void Relay::EndDirection(Direction& d) {
  // Everything read has been sent: the other side learns of the end with a
  // FIN of its own (half-close), the opposite direction keeps flowing.
  shutdown(d.dst, SHUT_WR);
  d.done = true;
  if (up_.done && down_.done) CloseNow();
}

void Relay::Pump(Direction& d) {
  if (state_ != State::kRelay || d.done) return;
  for (;;) {
    if (!d.pipe.active()) {
      int r, wfd;
      if (!loop().TakePipe(&r, &wfd)) {
        host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough",
                               "no pipe for a relay (file descriptor limit?)");
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
          loop().ReturnPipe(d.pipe.pipe_r(), d.pipe.pipe_w());
          d.pipe.Clear();
        }
        return ArmPoll(d, true);
      case SplicePipe::Status::kWaitSink:
        return ArmPoll(d, false);
      case SplicePipe::Status::kSourceEnded:
        if (d.pipe.error() != 0) {
          // A reset on one side ends both: the peer gets a reset too.
          if (d.pipe.error() != ECONNRESET && d.pipe.error() != EPIPE) {
            host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "relay read failed: %s",
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
        loop().ReturnPipe(d.pipe.pipe_r(), d.pipe.pipe_w());
        d.pipe.Clear();
        return EndDirection(d);
      case SplicePipe::Status::kSinkFailed:
        return CloseNow();
    }
  }
}

bool Relay::StartKernelRelay() {
  // Nothing else writes into either socket until they are paired: what is
  // there now is what ktlb wrote (the replay, and nothing to the client).
  up_.dst_written_at_pairing = TcpBytesWritten(up_.dst);
  down_.dst_written_at_pairing = TcpBytesWritten(down_.dst);
  std::string error;
  // The client goes in first: it waits for the ServerHello and sends
  // nothing, while the backend may be answering right now.
  if (!ProcessSockmap()->Pair(fd_.get(), up_fd_.get(), &pair_, &error)) {
    if (!pairing_failure_logged.exchange(true)) {
      host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough",
                             "sockmap pairing failed (%s): relays splice instead (logged once)",
                             error.c_str());
    }
    return false;
  }
  kernel_ = true;
  OnKernelReadable(up_);
  if (state_ == State::kRelay) OnKernelReadable(down_);
  return true;
}

void Relay::OnKernelReadable(Direction& d) {
  if (state_ != State::kRelay || d.eof) return;
  // The verdict took every byte received: all the source can still show a
  // reader is its end. MSG_PEEK leaves anything else where it is.
  char byte;
  ssize_t n = recv(d.src, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) {
    d.eof = true;
    return CheckKernelDrain(d);
  }
  if (n > 0) {
    // Bytes the verdict could not redirect (they arrived in the moment
    // between the two sockets' inserts): forwarding them now could put them
    // after later ones, so the relay is reset rather than reorder a stream.
    host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough",
                           "%s:%u: bytes kept back from the kernel relay: reset",
                           AddressIp(peer_).c_str(), AddressPort(peer_));
    close_reason_ = "sockmap_unpaired";
    return CloseNow();
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    // Only the end matters: POLLIN would wake ktlb for every segment the
    // verdict takes (and then finds nothing), POLLRDHUP only for the FIN
    // (POLLERR and POLLHUP always wake it).
    if (d.src_polled) return;
    io_uring_sqe* sqe = loop().Sqe();
    io_uring_prep_poll_add(sqe, d.src, POLLRDHUP);
    io_uring_sqe_set_data64(sqe, Tag(d.poll_src));
    d.src_polled = true;
    ++inflight_;
    return;
  }
  if (errno != ECONNRESET && errno != EPIPE) {
    host_->error_log().Log(ErrorLog::Level::kWarn, "passthrough", "relay read failed: %s",
                           strerror(errno));
  }
  CloseNow();
}

void Relay::CheckKernelDrain(Direction& d) {
  if (state_ != State::kRelay || d.done) return;
  // A FIN seen here may have overtaken redirected bytes still in the psock's
  // backlog (the sink's send buffer was full): shutting the sink now would
  // cut them off. It waits until the sink has been given all of them.
  if (!RedirectDrained(RedirectedBytes(TcpBytesReceived(d.src), d.ktlb_read, true),
                       TcpBytesWritten(d.dst) - d.dst_written_at_pairing)) {
    return loop().ArmTimer(&drain_timer_, kKernelDrainCheck, kKernelDrainRecheckMs);
  }
  CountKernelMoved();
  EndDirection(d);
}

bool Relay::CountKernelMoved() {
  bool any = false;
  for (Direction* d : {&up_, &down_}) {
    const uint64_t redirected = RedirectedBytes(TcpBytesReceived(d->src), d->ktlb_read, d->eof);
    if (redirected > d->kernel_counted) {
      CountMoved(*d, redirected - d->kernel_counted);
      d->kernel_counted = redirected;
      any = true;
    }
  }
  return any;
}

bool* Relay::PolledFlag(RelayOp op) {
  switch (op) {
    case RelayOp::kClientIn: return &up_.src_polled;
    case RelayOp::kBackendOut: return &up_.dst_polled;
    case RelayOp::kBackendIn: return &down_.src_polled;
    case RelayOp::kClientOut: return &down_.dst_polled;
    default: return nullptr;
  }
}

void Relay::ArmPoll(Direction& d, bool on_src) {
  RelayOp op = on_src ? d.poll_src : d.poll_dst;
  loop().ArmPoll(on_src ? d.src : d.dst, !on_src, Tag(op), PolledFlag(op), &inflight_);
}

void Relay::OnPoll(RelayOp op, int res) {
  if (bool* flag = PolledFlag(op)) *flag = false;
  --inflight_;
  if (state_ != State::kRelay) return MaybeRelease();
  (void)res;  // errors show up in the next splice (or recv)
  if (kernel_) return OnKernelReadable(DirectionOf(op));
  Pump(DirectionOf(op));
}

void Relay::OnDeadline(uint8_t kind) {
  if (state_ == State::kClosed) return;
  if (kind == kKernelDrainCheck) {
    for (Direction* d : {&up_, &down_}) {
      if (d->eof && state_ == State::kRelay) CheckKernelDrain(*d);
    }
    return;
  }
  // The kernel moves a kernel relay's bytes without telling ktlb: idle only
  // if its counters did not move either (CountMoved re-arms the timer).
  if (kind == static_cast<uint8_t>(TimeoutKind::kTunnelIdle) && kernel_ && CountKernelMoved()) {
    return;
  }
  if (kind < static_cast<uint8_t>(TimeoutKind::kCount)) {
    host_->CountTimeout(static_cast<TimeoutKind>(kind));
  }
  if (kind == static_cast<uint8_t>(TimeoutKind::kUpstreamConnect) && upstream_ >= 0) {
    cluster(upstream_)->metrics().timeouts.Inc();
    if (server_ >= 0) {
      cluster(upstream_)->CountFailure(static_cast<size_t>(server_), ServerFailure::kConnectTimeout);
    }
  }
  if (kind < static_cast<uint8_t>(TimeoutKind::kCount)) {
    close_reason_ = TimeoutKindLabel(static_cast<TimeoutKind>(kind));
  }
  if (kind == static_cast<uint8_t>(TimeoutKind::kHandshake)) proxy_header_.Abandon(true);
  CloseNow();
}

void Relay::Drain() {
  // A ClientHello on its way is let through, bounded by the handshake
  // timeout: the client connected before the drain began (or, after a
  // binary upgrade, to a socket the successor serves too), and closing it
  // now would reset a connection that did nothing wrong. A relay already
  // forwarding runs on until either side closes or the drain deadline.
}

void Relay::CloseNow() {
  if (state_ == State::kClosed) return;
  // Connections that never sent a byte (port probes, health checks) are not
  // logged, as haproxy's "option dontlognull".
  const bool null_connection = state_ == State::kHello && hello_.empty();
  if (kernel_) {
    CountKernelMoved();
    // Before the sockets close: a closing socket leaves the socket map by
    // itself, its peer entry does not.
    ProcessSockmap()->Unpair(&pair_);
    DeadlineQueue::Cancel(&drain_timer_);
  }
  if (host_->access_log().enabled() && !null_connection) {
    const bool clean = state_ == State::kRelay && up_.done && down_.done;
    LogTunnel(close_reason_ != nullptr ? close_reason_ : clean ? nullptr : "reset");
  }
  state_ = State::kClosed;
  if (counted_) {
    counted_ = false;
    cluster(static_cast<size_t>(upstream_))->AttemptEnded(static_cast<size_t>(server_));
  }
  DeadlineQueue::Cancel(&timer_);
  // A pipe may hold bytes of a broken relay: never back to the pool.
  for (Direction* d : {&up_, &down_}) d->pipe.Discard();
  // Pending polls, recvs and connects complete once the sockets are shut.
  shutdown(fd_.get(), SHUT_RDWR);
  if (up_fd_.get() >= 0) shutdown(up_fd_.get(), SHUT_RDWR);
  MaybeRelease();
}

void Relay::LogIfOpen(const char* error) {
  if (state_ == State::kClosed || !host_->access_log().enabled()) return;
  if (state_ == State::kHello && hello_.empty()) return;  // as in CloseNow
  LogTunnel(error);
}

void Relay::LogTunnel(const char* error) {
  const Config& cfg = *ctx_.config;
  std::string* out = host_->access_log().BeginLine(
      host_->log_time(), cfg.listeners[ctx_.listener].name, AddressIp(peer_), AddressPort(peer_),
      std::string_view(sni_, sni_len_));
  if (out == nullptr) return;
  absl::StrAppend(out, ",\"passthrough\":true,\"bytes_up\":", up_.bytes,
                  ",\"bytes_down\":", down_.bytes, ",\"ms\":", loop().now_ms() - start_ms_);
  if (kernel_) absl::StrAppend(out, ",\"sockmap\":true");  // forwarded by the kernel
  std::string_view upstream, server;
  if (upstream_ >= 0) {
    const upstream::Cluster* c = cluster(static_cast<size_t>(upstream_));
    upstream = c->name();
    if (server_ >= 0) server = c->server(static_cast<size_t>(server_)).address.text;
  }
  host_->access_log().EndLine(out, upstream, server, error);
}

void Relay::MaybeRelease() {
  if (state_ != State::kClosed || inflight_ > 0) return;
  fd_.reset();
  up_fd_.reset();
  std::string().swap(hello_);
  ctx_.metrics->active.Dec();
  host_->OnRelayReleased(this);
}

}  // namespace ktlb::passthrough
