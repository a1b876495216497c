#include "upstream_connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "ktlb/splice_policy.h"

namespace ktlb::upstream {

namespace {
// A response head over this size is refused (a backend gone wrong).
constexpr size_t kMaxResponseHead = 64 * 1024;
}  // namespace

uint64_t UpstreamConnection::Tag(uint8_t op) const { return slot_.Tag(op); }

void UpstreamConnection::OnCompletion(uint8_t op, int res, uint32_t flags) {
  switch (op) {
    case kRecv: return OnRecv(res, flags);
    case kSend: return OnSend(res);
    case kConnect: return OnConnect(res);
    case kPollIn:
    case kPollOut: return OnSplicePoll(op, res);
    default: return;
  }
}

void UpstreamConnection::OnDeferred(uint8_t op) {
  if (op == kRetryRecv) ArmRecv();
}

bool UpstreamConnection::Connect(Cluster* cluster, size_t server) {
  cluster_ = cluster;
  loop_ = &cluster->loop();
  slot_.Bind(loop_, this);
  server_ = server;
  timer_.target = this;
  out_.clear();
  sending_.clear();
  sending_off_ = 0;
  recv_inflight_ = send_inflight_ = connect_inflight_ = poll_in_inflight_ = poll_out_inflight_ =
      false;
  inflight_ = 0;
  reused_ = false;
  connected_once_ = false;
  tls_failed_ = false;
  exchange_ = nullptr;
  pipe_.Clear();
  // The object (and its parser) may come from the pool after a connection
  // whose response was refused: the parser's error is sticky, and a new
  // connection must not inherit it (every exchange would fail with it).
  if (parser_) parser_->Reset();
  tls_on_ = cluster->tls() != nullptr;
  fd_.reset(StartConnect(*loop_, cluster->server(server).address, Tag(kConnect), cluster->log(),
                     "upstream", cluster->metrics()));
  if (fd_.get() < 0) {
    state_ = State::kClosed;
    return false;
  }
  state_ = State::kConnecting;
  connect_inflight_ = true;
  ++inflight_;
  loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamConnect),
                  cluster->limits().connect_timeout_ms);
  return true;
}

void UpstreamConnection::Begin(Exchange* exchange) {
  exchange_ = exchange;
  got_bytes_ = head_done_ = resp_done_ = reusable_ = upgrading_ = false;
  head_buf_.clear();
  trailer_bytes_.clear();
  if (!parser_) parser_.emplace();
  out_.append(exchange->request().head);
  if (state_ == State::kIdle) {
    // A parked connection already has its recv armed (it watches for the
    // backend closing); that recv now carries the response.
    reused_ = true;
    state_ = State::kActive;
    loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                    cluster_->limits().response_timeout_ms);
    FlushSend();
    ArmRecv();
  }
  // While connecting, the head waits in out_ until OnConnect.
}

void UpstreamConnection::Send(std::string_view bytes) {
  out_.append(bytes);
  if (state_ == State::kActive) FlushSend();
}

int UpstreamConnection::fd() const {
  if (!tls_on_) return fd_.get();
  return tls_live_ && tls_->handshake_done() && tls_->tx_offloaded() ? tls_->fd() : -1;
}

void UpstreamConnection::ArmRecv() {
  if (tls_on_) return TlsArmRecv();
  if (recv_inflight_ || fd_.get() < 0) return;
  if (state_ == State::kActive && sink() != nullptr &&
      sink()->ResponseBacklog() >= kMaxResponseBacklog) {
    return;  // the client is slow: let the backend's window fill instead of our memory
  }
  // The response (or, parked, anything at all) cannot be there yet: wait
  // for readiness instead of trying a receive that would fail first.
  loop_->PrepRecv(fd_.get(), Tag(kRecv), !got_bytes_ || state_ == State::kIdle);
  recv_inflight_ = true;
  ++inflight_;
}

void UpstreamConnection::FlushSend() {
  if (tls_on_) return TlsFlush();
  if (send_inflight_ || fd_.get() < 0 || state_ != State::kActive) return;
  if (sending_off_ >= sending_.size()) {
    sending_.clear();
    sending_off_ = 0;
    if (out_.empty()) return;
    sending_.swap(out_);
  }
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_send(sqe, fd_.get(), sending_.data() + sending_off_, sending_.size() - sending_off_,
                     MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, Tag(kSend));
  send_inflight_ = true;
  ++inflight_;
}

void UpstreamConnection::OnConnect(int res) {
  connect_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0) {
    cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "connect to %s failed: %s",
                        cluster_->server(server_).address.text.c_str(), strerror(-res));
    cluster_->metrics().connect_failures.Inc();
    return Fail(false);
  }
  if (tls_on_) return StartTls();  // kActive once the server is verified
  state_ = State::kActive;
  connected_once_ = true;
  loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                  cluster_->limits().response_timeout_ms);
  FlushSend();
  ArmRecv();
}

void UpstreamConnection::OnSend(int res) {
  send_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0) {
    if (res == -EAGAIN || res == -EINTR) return FlushSend();
    // The backend went away; the recv side reports the details.
    cluster_->metrics().resets.Inc();
    return Fail(false);
  }
  sending_off_ += static_cast<size_t>(res);
  FlushSend();
  if (upgrading_) return TryHandOver();
  if (sink() != nullptr && SendBacklog() == 0) sink()->OnRequestWritable();
}

void UpstreamConnection::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  ProvidedRecv recv(loop_->buffers(), res, flags);
  if (state_ == State::kClosed) return MaybeRelease();
  if (recv.no_buffer()) return loop_->NextTurn(Tag(kRetryRecv));
  if (res <= 0) return OnPeerEnd(res < 0);
  OnBytes(recv.data());
  recv.Recycle();
}

void UpstreamConnection::OnPeerEnd(bool error) {
  if (state_ == State::kIdle) {
    // A parked connection's backend closed: it is not reusable.
    cluster_->Forget(this);
    return CloseNow();
  }
  if (state_ != State::kActive) return Fail(false);
  if (head_done_ && parser_ && head_.body == http1::BodyKind::kUntilClose) {
    // EOF is how this body ends.
    resp_done_ = true;
    reusable_ = false;
    return Finish();
  }
  if (error || !got_bytes_ || head_done_) cluster_->metrics().resets.Inc();
  return head_done_ ? Abort() : Fail(false);
}

void UpstreamConnection::OnBytes(std::string_view data) {
  if (state_ == State::kIdle) {
    // A parked connection heard bytes nobody asked for: not reusable.
    cluster_->Forget(this);
    return CloseNow();
  }
  if (state_ != State::kActive) return;
  got_bytes_ = true;
  loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                  cluster_->limits().response_timeout_ms);
  HandleBytes(data);
  if (state_ == State::kActive && !resp_done_ && !pipe_.active()) ArmRecv();
}

void UpstreamConnection::HandleBytes(std::string_view data) {
  while (!data.empty() && state_ == State::kActive && sink() != nullptr) {
    if (!head_done_) {
      std::string_view buf = data;
      if (!head_buf_.empty()) {
        head_buf_.append(data);
        buf = head_buf_;
      }
      head_.headers.clear();
      http1::ParseStatus st = parser_->ParseHead(buf, exchange_->request().is_head, &head_);
      if (st == http1::ParseStatus::kIncomplete) {
        if (head_buf_.empty()) head_buf_.assign(data);
        if (head_buf_.size() > kMaxResponseHead) {
          cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "response head over 64 KiB");
          return Fail(false);
        }
        return;
      }
      if (st == http1::ParseStatus::kError) {
        cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "bad response: %s",
                            parser_->error_reason());
        cluster_->metrics().resets.Inc();
        return Fail(false);
      }
      // The rest of this read, past the head, is body (or the next head).
      size_t consumed_from_data =
          head_buf_.empty() ? head_.head_len : head_.head_len - (head_buf_.size() - data.size());
      const bool switching = head_.status == 101;
      if (switching && tls_on_) {
        // The tunnel takes a bare socket, and this one carries TLS.
        cluster_->log().Log(ErrorLog::Level::kWarn, "upstream",
                            "101 from a TLS upstream: upgrades over upstream TLS are not supported");
        cluster_->metrics().resets.Inc();
        return Fail(false);
      }
      if (switching && !exchange_->request().upgrade) {
        // Nobody asked to switch: what follows is not HTTP for us to read.
        cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "101 to a request without Upgrade");
        cluster_->metrics().resets.Inc();
        return Fail(false);
      }
      const bool interim = head_.status < 200 && !switching;
      if (!interim) {
        head_done_ = true;
        // An HTTP/1.0 request may leave the backend expecting to close:
        // never pool after one.
        reusable_ = head_.keep_alive && !exchange_->request().http10;
      }
      exchange_->OnResponseHeadSeen(head_.status);
      sink()->OnResponseHead(head_);
      data.remove_prefix(consumed_from_data);
      head_buf_.clear();
      if (sink() == nullptr || state_ != State::kActive) return;
      if (interim) continue;  // 1xx: the final head follows
      if (switching) return BeginHandOver(data);
      if (head_.body == http1::BodyKind::kNone) {
        resp_done_ = true;
        if (!data.empty()) reusable_ = false;  // bytes after a complete response
        return Finish();
      }
      continue;
    }
    size_t consumed = 0;
    const bool decode = exchange_->request().decode_body;
    http1::ParseStatus st = parser_->ParseBody(data, &consumed, decode ? this : nullptr);
    if (st == http1::ParseStatus::kError) {
      cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "bad response body: %s",
                          parser_->error_reason());
      cluster_->metrics().resets.Inc();
      return Abort();
    }
    if (consumed > 0 && !decode) sink()->OnResponseBody(data.substr(0, consumed));
    if (sink() == nullptr || state_ != State::kActive) return;
    data.remove_prefix(consumed);
    if (st == http1::ParseStatus::kDone) {
      resp_done_ = true;
      if (!data.empty()) reusable_ = false;
      if (decode && !trailer_bytes_.empty()) {
        DeliverTrailers();
        if (sink() == nullptr || state_ != State::kActive) return;
      }
      return Finish();
    }
    if (data.empty() && decode && head_.body == http1::BodyKind::kContentLength &&
        SpliceFromBackend() && sink()->TakesResponsePipe()) {
      std::optional<uint64_t> n = SpliceLength(*parser_, true);
      // The sink frames the body itself and splices it out of the pipe.
      if (n) return StartPipe(*n);
    }
    if (data.empty() && !decode && SpliceFromBackend() && sink()->ResponseSpliceFd() >= 0) {
      std::optional<uint64_t> n =
          SpliceLength(*parser_, head_.body == http1::BodyKind::kContentLength);
      // The rest of a large body (or of a body of large chunks) goes
      // through the kernel only.
      if (n) return StartSplice(*n);
    }
  }
}

void UpstreamConnection::OnBodyData(std::string_view data) {
  // The sink may have given up the exchange during an earlier piece.
  if (sink() != nullptr && state_ == State::kActive) sink()->OnResponseBody(data);
}

void UpstreamConnection::OnTrailerBytes(std::string_view bytes) {
  // Bounded: the parser refuses a trailer section over the head limit.
  trailer_bytes_.append(bytes);
}

void UpstreamConnection::DeliverTrailers() {
  trailers_.clear();
  http1::ParseTrailerSection(trailer_bytes_, &trailers_);
  sink()->OnResponseTrailers(trailers_);
  trailer_bytes_.clear();
}

void UpstreamConnection::Finish() {
  Exchange* ex = exchange_;
  exchange_ = nullptr;
  Loop::CancelTimer(&timer_);
  bool parked = false;
  if (reusable_ && SendBacklog() == 0 && ex != nullptr && ex->body_done()) {
    state_ = State::kIdle;
    if (cluster_->Park(this)) {
      parked = true;
      ArmRecv();
      // An idle pooled connection holds no buffers worth keeping.
      if (sending_.capacity() > 4096 && !send_inflight_) {
        std::string().swap(sending_);
        sending_off_ = 0;
      }
    }
  }
  if (!parked) CloseNow();
  if (ex != nullptr) ex->OnAttemptDone();
}

void UpstreamConnection::BeginHandOver(std::string_view already_read) {
  // Stop reading (resp_done_ keeps OnRecv and OnSinkWritable from arming a
  // recv): from here on the bytes are the tunnel's. The response timer runs
  // on until the hand-over, so a send that never completes still ends.
  resp_done_ = true;
  reusable_ = false;
  upgrading_ = true;
  upgrade_rest_.assign(already_read);
  TryHandOver();
}

void UpstreamConnection::TryHandOver() {
  // The tunnel's first bytes must follow the whole request head (and any
  // body we queued), and no operation of ours may still use the socket.
  if (send_inflight_ || SendBacklog() > 0 || state_ != State::kActive) return;
  Exchange* ex = exchange_;
  exchange_ = nullptr;
  upgrading_ = false;
  std::string rest;
  rest.swap(upgrade_rest_);
  UniqueFd fd = std::move(fd_);
  state_ = State::kClosed;
  Loop::CancelTimer(&timer_);
  MaybeRelease();  // nothing in flight: back to the cluster's pool of objects
  if (ex != nullptr) ex->OnAttemptUpgraded(std::move(fd), rest);
}

void UpstreamConnection::Fail(bool timed_out) {
  Exchange* ex = exchange_;
  exchange_ = nullptr;
  bool got = got_bytes_;
  bool head_done = head_done_;
  CloseNow();
  if (ex == nullptr) return;
  if (head_done) {
    ex->OnAttemptAborted();
  } else {
    ex->OnAttemptFailed(timed_out, got);
  }
}

void UpstreamConnection::Abort() {
  Exchange* ex = exchange_;
  exchange_ = nullptr;
  CloseNow();  // closes a splice pipe too: it may hold bytes of the abandoned body
  if (ex != nullptr) ex->OnAttemptAborted();
}

void UpstreamConnection::OnSinkWritable() {
  if (state_ != State::kActive || resp_done_) return;
  if (pipe_.active()) return pipe_mode_ ? PumpPipe() : Pump();
  ArmRecv();
}

void UpstreamConnection::RequestBodyProgress() {
  if (state_ == State::kActive && !head_done_) {
    loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                    cluster_->limits().response_timeout_ms);
  }
}

void UpstreamConnection::Abandon() {
  exchange_ = nullptr;
  CloseNow();
}

void UpstreamConnection::CloseIdle() { CloseNow(); }

void UpstreamConnection::OnDeadline(uint8_t kind) {
  auto k = static_cast<TimeoutKind>(kind);
  cluster_->metrics().timeouts.Inc();
  cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "%s timeout on %s", TimeoutKindLabel(k),
                      cluster_->server(server_).address.text.c_str());
  if (k == TimeoutKind::kUpstreamConnect) cluster_->metrics().connect_failures.Inc();
  cluster_->CountTimeout(k);
  if (head_done_) return Abort();
  Fail(true);
}

void UpstreamConnection::CloseNow() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  Loop::CancelTimer(&timer_);
  if (connect_inflight_) loop_->Cancel(Tag(kConnect));
  if (fd_.get() >= 0) shutdown(fd_.get(), SHUT_RDWR);
  if (tls_live_) TlsClose();  // OnReleased follows
  MaybeRelease();
}

void UpstreamConnection::MaybeRelease() {
  if (state_ != State::kClosed || inflight_ > 0) return;
  pipe_.Discard();  // a pipe with bytes of an aborted body is not reusable
  pipe_mode_ = false;
  // A connect still in flight is cancelled by closing only after it
  // completes, which inflight_ already waited for.
  fd_.reset();
  out_.clear();
  head_buf_.clear();
  cluster_->Release(this);
}

}  // namespace ktlb::upstream
