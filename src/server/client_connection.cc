#include "client_connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <openssl/err.h>

#include "absl/strings/str_cat.h"
#include "ktlb/sockets.h"
#include "upstream_connection.h"
#include "worker.h"

namespace ktlb {

namespace {
int StatusClass(int status) { return status >= 100 && status < 600 ? status / 100 : 5; }
}  // namespace

uint64_t ClientConnection::Tag(uint8_t op) const {
  return UserData{static_cast<uint8_t>(OpKind::kClient), op, generation, slot_index}.Pack();
}

void ClientConnection::Start(Worker* w, size_t listener_index, int fd, const sockaddr_storage& peer,
                             const tls::ServerTlsContext& tls) {
  w_ = w;
  listener_ = listener_index;
  fd_ = fd;
  peer_ = peer;
  peer_ip_ = AddressIp(peer);
  peer_port_ = AddressPort(peer);
  sni_.clear();
  timer_.target = this;
  trim_timer_.target = this;
  bio_ = tls::BioIo{};
  bio_.queue = &out_;
  ssl_ = tls.NewSsl(tls::NewBufferBio(&bio_));
  cipher_stash_.clear();
  out_.Clear();
  recv_inflight_ = send_inflight_ = peer_eof_ = flush_scheduled_ = false;
  const ListenerConfig& lc = w->config().listeners[listener_index];
  ktls_allowed_ = lc.ktls != KtlsMode::kOff && w->kernel_ktls();
  tx_taken_ = tx_active_ = rx_active_ = ulp_attached_ = rx12_offered_ = require_failed_ =
      fallback_counted_ = false;
  req_pipe_.Clear();
  peer_keyupdate_seen_ = keyupdate_unanswerable_ = false;
  log_pending_ = false;
  refuse_reason_ = nullptr;
  resp_bytes_ = 0;
  upstream_index_ = server_index_ = -1;
  rx_sync_ = RxSync::kNone;
  rx_records_ = 0;
  WipeTrafficSecrets();
  keyupdate_limiter_ = tls::KeyUpdateLimiter();
  exact_need_ = 0;
  if (ktls_allowed_) {
    bio_.ktls = this;
    SSL_set_app_data(ssl_.get(), static_cast<tls::KtlsHooks*>(this));
  } else if (lc.ktls != KtlsMode::kOff) {
    FallBack(tls::KtlsFallback::kNoModule);
  }
  inflight_ = 0;
  plain_.clear();
  plain_off_ = 0;
  const ServerConfig& sc = w->config().server;
  if (!parser_) parser_.emplace(http1::Limits{sc.max_request_line, sc.max_header_bytes});
  parser_->Reset();  // the slot's previous connection may have ended on an error
  up_ = nullptr;
  req_body_done_ = true;
  resp_done_ = false;
  keep_alive_ = true;
  state_ = State::kHandshake;
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kHandshake), sc.timeouts.handshake_ms);
  ArmRecv();
}

bool ClientConnection::ReadingAllowed() const {
  switch (state_) {
    case State::kHandshake:
    case State::kLingering:
      return true;
    case State::kReadingHead:
      // A head larger than the limit is refused anyway; do not buffer beyond it.
      return plain_.size() - plain_off_ <= w_->config().server.max_header_bytes + kPlainChunk;
    case State::kProxying:
      if (req_pipe_.active()) return false;  // the body goes socket -> pipe -> backend
      if (!req_body_done_) {
        return up_ != nullptr && up_->SendBacklog() < kMaxUpstreamBacklog;
      }
      return false;  // pipelined requests wait until this response is done
    default:
      return false;
  }
}

void ClientConnection::OnHandshakeDone() {
  ListenerMetrics& lm = w_->metrics().listeners[listener_];
  sni_.assign(tls::ServerName(ssl_.get()));
  if (SSL_session_reused(ssl_.get())) {
    lm.handshakes_resumed.Inc();
  } else {
    lm.handshakes_full.Inc();
  }
  state_ = State::kReadingHead;
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive),
               w_->config().server.timeouts.request_header_ms);
  if (ktls_allowed_) StartRxOffload();
}

void ClientConnection::FailHandshake(int ssl_error) {
  tls::HandshakeFailure f = tls::ClassifyHandshakeFailure(ssl_.get(), ssl_error);
  w_->metrics().listeners[listener_].handshake_failures[static_cast<size_t>(f)].Inc();
  if (f != tls::HandshakeFailure::kClientReset) {
    fprintf(stderr, "ktlb: tls: handshake with %s:%u failed: %s\n", peer_ip_.c_str(), peer_port_,
            tls::HandshakeFailureLabel(f));
  }
  DeadlineQueue::Cancel(&timer_);
  BeginClose();  // sends the alert OpenSSL queued, if any
}

void ClientConnection::ProcessPlain() {
  for (;;) {
    if (state_ == State::kReadingHead) {
      std::string_view buf(plain_.data() + plain_off_, plain_.size() - plain_off_);
      if (buf.empty()) return;
      if (timer_.kind == static_cast<uint8_t>(TimeoutKind::kKeepalive) && timer_.armed()) {
        // First bytes of a request: the header deadline starts now.
        w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kRequestHeader),
                     w_->config().server.timeouts.request_header_ms);
      }
      head_.headers.clear();
      http1::ParseStatus st = parser_->ParseHead(buf, &head_);
      if (st == http1::ParseStatus::kIncomplete) return;
      if (st == http1::ParseStatus::kError) return RefuseRequest(parser_->error());
      StartExchange();
      continue;
    }
    if (state_ == State::kProxying) {
      if (!req_body_done_) ForwardRequestBody();
      if (state_ != State::kProxying) return;
      if (resp_done_ && req_body_done_) {
        FinishExchange();
        continue;
      }
      return;
    }
    return;
  }
}

void ClientConnection::RefuseRequest(http1::RequestError e) {
  w_->metrics().listeners[listener_].parse_errors[static_cast<size_t>(e)].Inc();
  int status = http1::RequestErrorStatus(e);
  fprintf(stderr, "ktlb: http: refused request from %s:%u: %s (%d)\n", peer_ip_.c_str(), peer_port_,
          http1::RequestErrorLabel(e), status);
  refuse_reason_ = http1::RequestErrorLabel(e);
  RespondError(status, true);
}

void ClientConnection::RespondError(int status, bool close) {
  w_->metrics().listeners[listener_].requests_by_class[StatusClass(status)].Inc();
  scratch_.clear();
  http1::BuildErrorResponse(status, close, &scratch_);
  resp_bytes_ += scratch_.size();
  if (log_pending_ || refuse_reason_ != nullptr) {
    const char* why = refuse_reason_;
    if (why == nullptr && status == 502) why = "upstream_failed";
    if (why == nullptr && status == 504) why = "upstream_timeout";
    if (why == nullptr && status == 404) why = "no_route";
    LogRequest(status, why);
  }
  WritePlain(scratch_);
  if (close) {
    DeadlineQueue::Cancel(&timer_);
    BeginClose();
  }
}

void ClientConnection::StartExchange() {
  // Route on SNI, Host and the path part of the target.
  std::string_view target = head_.target;
  std::string_view path = target.substr(0, target.find('?'));
  int upstream = w_->snapshot().router.Match(listener_, sni_, head_.host, path);
  request_idempotent_ = head_.idempotent;
  req_content_length_ = head_.body == http1::BodyKind::kContentLength ? head_.content_length : 0;
  req_body_seen_ = 0;
  request_version_minor_ = head_.version_minor;
  request_has_body_ = head_.body != http1::BodyKind::kNone;
  keep_alive_ = head_.keep_alive && !w_->draining();
  resp_head_seen_ = resp_done_ = false;
  resp_status_ = 0;
  attempts_ = 0;
  DeadlineQueue::Cancel(&timer_);
  DeadlineQueue::Cancel(&trim_timer_);
  upstream_index_ = server_index_ = -1;
  if (w_->access_log().enabled()) LogRequestStart();

  // The upstream head is built before the client's head bytes are released:
  // head_'s views point into plain_.
  up_head_.clear();
  http1::ForwardingInfo fwd;
  fwd.client_ip = peer_ip_;
  fwd.client_port = peer_port_;
  fwd.sni = sni_;
  http1::BuildUpstreamRequestHead(head_, fwd, &up_head_);
  if (head_.version_minor == 0) {
    // An HTTP/1.0 client cannot read chunked bodies or 1xx responses: ask the
    // backend in HTTP/1.0 too, so it frames the response for this client.
    size_t eol = up_head_.find("\r\n");
    if (eol != std::string::npos && eol >= 8) up_head_.replace(eol - 8, 8, "HTTP/1.0");
  }
  plain_off_ += head_.head_len;
  req_body_done_ = !request_has_body_;
  state_ = State::kProxying;

  if (upstream < 0) {
    // Nothing routes this request: answer here, never guess a backend.
    keep_alive_ = keep_alive_ && !request_has_body_;
    state_ = State::kReadingHead;
    RespondError(404, !keep_alive_);
    if (keep_alive_) {
      w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive),
                   w_->config().server.timeouts.keepalive_ms);
    }
    return;
  }
  upstream_index_ = upstream;
  if (!ConnectUpstream(-1)) return;
}

bool ClientConnection::ConnectUpstream(int avoid_server) {
  const UpstreamConfig& uc = w_->config().upstreams[upstream_index_];
  ++attempts_;
  size_t server = w_->balancer(upstream_index_).Pick(uc.servers.size(), avoid_server);
  server_index_ = static_cast<int>(server);
  // A retry always opens a fresh connection: a pooled one may be just as stale.
  UpstreamConnection* u = avoid_server < 0 ? w_->TakeIdleUpstream(upstream_index_, server) : nullptr;
  if (u == nullptr) {
    u = w_->AcquireUpstream();
    if (!u->Connect(w_, upstream_index_, server)) {
      OnUpstreamFailed(false, false);
      return false;
    }
  }
  up_ = u;
  w_->metrics().upstreams[upstream_index_].requests.Inc();
  u->Begin(this, up_head_, head_.is_head);
  if (!req_body_done_) ForwardRequestBody();
  return true;
}

void ClientConnection::ForwardRequestBody() {
  if (up_ == nullptr || req_pipe_.active()) return;
  std::string_view buf(plain_.data() + plain_off_, plain_.size() - plain_off_);
  if (buf.empty()) return MaybeSpliceRequestBody();
  size_t consumed = 0;
  http1::ParseStatus st = parser_->ParseBody(buf, &consumed);
  if (st == http1::ParseStatus::kError) return FailRequestBody();
  if (consumed > 0) {
    up_->Send(buf.substr(0, consumed));
    up_->RequestBodyProgress();
  }
  plain_off_ += consumed;
  req_body_seen_ += consumed;
  if (st == http1::ParseStatus::kDone) {
    req_body_done_ = true;
    return;
  }
  MaybeSpliceRequestBody();
}

void ClientConnection::FailRequestBody() {
  // The head already went upstream; that exchange cannot be finished.
  if (up_ != nullptr) {
    up_->Abandon();
    up_ = nullptr;
  }
  StopRequestSplice(false);
  w_->metrics().listeners[listener_].parse_errors[static_cast<size_t>(parser_->error())].Inc();
  refuse_reason_ = http1::RequestErrorLabel(parser_->error());
  if (!resp_head_seen_) {
    RespondError(http1::RequestErrorStatus(parser_->error()), true);
  } else {
    CloseNow();
  }
}

void ClientConnection::OnUpstreamWritable() {
  if (state_ != State::kProxying) return;
  if (req_pipe_.active()) return PumpRequestBody();
  ForwardRequestBody();
  ArmRecv();
}

void ClientConnection::SendToClient(std::string_view plain) {
  if (state_ == State::kClosed) return;
  resp_bytes_ += plain.size();
  if (!WritePlain(plain)) return CloseNow();
  // Sent at the end of the loop turn: a response's head, body and a
  // close_notify then leave in one send.
  if (!flush_scheduled_) {
    flush_scheduled_ = true;
    w_->ScheduleFlush(Tag(static_cast<uint8_t>(ConnOp::kSend)));
  }
}

bool ClientConnection::WritePlain(std::string_view plain) {
  if (!ssl_) {
    // Both directions are in the kernel and OpenSSL is gone: what goes on
    // the socket is plaintext the kernel encrypts.
    out_.Append(plain);
    return true;
  }
  if (keyupdate_unanswerable_) return false;  // SSL_write would send OpenSSL's answer
  // SSL_MODE_ENABLE_PARTIAL_WRITE + a BIO that never blocks: this loop ends
  // after one call unless the data exceeds what one call takes.
  while (!plain.empty()) {
    int n = SSL_write(ssl_.get(), plain.data(),
                      static_cast<int>(std::min<size_t>(plain.size(), 1 << 30)));
    if (n <= 0) {
      ERR_clear_error();
      return false;
    }
    plain.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void ClientConnection::OnScheduledFlush() {
  flush_scheduled_ = false;
  if (state_ == State::kClosed) return;
  FlushSend();
}

void ClientConnection::LogRequestStart() {
  log_pending_ = true;
  log_start_ms_ = w_->now_ms();
  resp_bytes_ = 0;
  log_req_.assign("\"method\":\"");
  AppendJsonEscaped(&log_req_, head_.method);
  log_req_.append("\",\"target\":\"");
  AppendJsonEscaped(&log_req_, head_.target.substr(0, 4096));  // a log line stays bounded
  log_req_.append("\",\"host\":\"");
  AppendJsonEscaped(&log_req_, head_.host);
  log_req_.append("\",\"version\":\"HTTP/1.");
  log_req_.push_back(static_cast<char>('0' + head_.version_minor));
  log_req_.push_back('"');
}

void ClientConnection::LogRequest(int status, const char* error) {
  const bool started = log_pending_;
  log_pending_ = false;
  refuse_reason_ = nullptr;
  std::string* out = w_->access_log().Begin();
  if (out == nullptr) return;
  const Config& cfg = w_->config();
  out->append("{\"time\":\"");
  out->append(w_->log_time());
  absl::StrAppend(out, "\",\"listener\":\"",
                  cfg.listeners[listener_].name, "\",\"client\":\"", peer_ip_, ":", peer_port_,
                  "\",\"sni\":\"");
  AppendJsonEscaped(out, sni_);
  out->append("\",");
  out->append(started ? std::string_view(log_req_)
                      : std::string_view("\"method\":null,\"target\":null,\"host\":null,"
                                         "\"version\":null"));
  absl::StrAppend(out, ",\"status\":", status, ",\"bytes\":", resp_bytes_, ",\"ms\":",
                  started ? w_->now_ms() - log_start_ms_ : 0);
  if (started && upstream_index_ >= 0) {
    const UpstreamConfig& uc = cfg.upstreams[upstream_index_];
    absl::StrAppend(out, ",\"upstream\":\"", uc.name, "\"");
    if (server_index_ >= 0 && static_cast<size_t>(server_index_) < uc.servers.size()) {
      absl::StrAppend(out, ",\"server\":\"", uc.servers[server_index_].text, "\"");
    }
  }
  if (error != nullptr) absl::StrAppend(out, ",\"error\":\"", error, "\"");
  out->push_back('}');
  w_->access_log().Commit();
  resp_bytes_ = 0;  // a refusal on this connection later counts only its own
}

void ClientConnection::LogIfPending(const char* error) {
  if (log_pending_) LogRequest(resp_status_, error);
}

void ClientConnection::CountSpliced(uint64_t n) {
  resp_bytes_ += n;
  w_->metrics().listeners[listener_].bytes_spliced.Inc(n);
}

bool ClientConnection::closing_after_response() const {
  return !keep_alive_ || w_->draining() || peer_eof_;
}

void ClientConnection::OnResponseHead(int status, bool close_after) {
  if (status >= 200) {
    resp_head_seen_ = true;
    resp_status_ = status;
  }
  if (close_after) keep_alive_ = false;
}

void ClientConnection::OnResponseComplete(int status) {
  w_->metrics().listeners[listener_].requests_by_class[StatusClass(status)].Inc();
  if (log_pending_) LogRequest(status, nullptr);
  resp_done_ = true;
  if (!req_body_done_) {
    // The backend answered before reading the whole body (e.g. 413): the rest
    // of the body can't be framed for a next request, so this is the last one.
    keep_alive_ = false;
    StopRequestSplice(false);
    if (up_ != nullptr) {
      up_->Abandon();
      up_ = nullptr;
    }
    req_body_done_ = true;
  }
  up_ = nullptr;
  ProcessPlain();
  if (state_ == State::kReadingHead) {
    FlushSend();
    ArmRecv();
  }
}

void ClientConnection::FinishExchange() {
  up_ = nullptr;
  upstream_index_ = -1;
  if (!keep_alive_ || w_->draining()) {
    state_ = State::kReadingHead;  // so BeginClose flushes from a settled state
    BeginClose();
    return;
  }
  state_ = State::kReadingHead;
  if (plain_off_ == plain_.size()) {
    plain_.clear();
    plain_off_ = 0;
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive),
                 w_->config().server.timeouts.keepalive_ms);
    // Busy keep-alive connections keep their buffers; idle ones give them
    // back shortly (a few KiB per idle connection).
    w_->ArmTimer(&trim_timer_, kTimerTrim, kTrimAfterMs);
  } else {
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kRequestHeader),
                 w_->config().server.timeouts.request_header_ms);
  }
}

void ClientConnection::OnUpstreamFailed(bool timed_out, bool got_response_bytes) {
  UpstreamConnection* failed = up_;
  up_ = nullptr;
  int failed_server = server_index_;
  bool reused = failed != nullptr && failed->reused();
  // Replaying is safe only when nothing of the response was seen and the whole
  // request is still in hand (no streamed body).
  bool can_retry = !timed_out && !got_response_bytes && !request_has_body_ && attempts_ < 2 &&
                   (request_idempotent_ || reused);
  if (can_retry && upstream_index_ >= 0) {
    if (!reused) w_->metrics().upstreams[upstream_index_].retries.Inc();
    ConnectUpstream(reused ? -1 : failed_server);
    // A stale pooled connection is retried on a fresh one, maybe the same server.
    return;
  }
  int status = timed_out ? 504 : 502;
  keep_alive_ = keep_alive_ && req_body_done_;
  RespondError(status, !keep_alive_);
  if (keep_alive_) {
    resp_done_ = true;
    req_body_done_ = true;
    FinishExchange();
    FlushSend();
    ArmRecv();
    ProcessPlain();
  }
}

void ClientConnection::OnUpstreamAborted() {
  up_ = nullptr;
  CloseNow();
}

void ClientConnection::OnDeadline(uint8_t kind) {
  if (kind == kTimerTrim) {
    if (state_ == State::kReadingHead && plain_off_ == plain_.size() && !send_inflight_) {
      ShrinkIdleBuffers();
    }
    return;
  }
  if (kind == kTimerLinger) return CloseNow();
  auto k = static_cast<TimeoutKind>(kind);
  if (state_ == State::kReadingHead && k == TimeoutKind::kKeepalive &&
      plain_.size() == plain_off_) {
    w_->CountTimeout(TimeoutKind::kKeepalive);
    return BeginClose();
  }
  w_->CountTimeout(k);
  if (k == TimeoutKind::kHandshake) {
    w_->metrics().listeners[listener_].handshake_failures[static_cast<size_t>(
        tls::HandshakeFailure::kTimeout)].Inc();
    return CloseNow();
  }
  if (k == TimeoutKind::kRequestHeader || k == TimeoutKind::kKeepalive) {
    // nginx and haproxy answer a slow head with 408 and close.
    refuse_reason_ = "request_timeout";
    return RespondError(408, true);
  }
  CloseNow();
}

void ClientConnection::Drain() {
  if (state_ == State::kClosed || fd_ < 0) return;
  if (state_ == State::kHandshake) return CloseNow();
  if (state_ == State::kReadingHead && plain_.size() == plain_off_) return BeginClose();
  keep_alive_ = false;
}

void ClientConnection::BeginClose() {
  if (state_ == State::kClosed || state_ == State::kClosing || state_ == State::kLingering) return;
  if (state_ != State::kHandshake && ssl_ && SSL_is_init_finished(ssl_.get())) {
    SSL_shutdown(ssl_.get());  // queue close_notify behind the response
  } else if (state_ != State::kHandshake && !ssl_ && tx_active_) {
    out_.AppendRecord(tls::kRecordAlert, std::string_view("\x01\x00", 2));  // close_notify
  }
  ERR_clear_error();
  state_ = State::kClosing;
  FlushSend();
  if (!send_inflight_ && out_.empty()) EnterLinger();
}

void ClientConnection::EnterLinger() {
  // The client already closed its side: nothing left to wait for.
  if (peer_eof_) return CloseNow();
  // Everything is out: half-close and wait briefly for the client's FIN so
  // unread request bytes do not turn our last response into a reset.
  state_ = State::kLingering;
  shutdown(fd_, SHUT_WR);
  w_->ArmTimer(&timer_, kTimerLinger, kLingerMs);
  ArmRecv();
}

void ClientConnection::CloseNow() {
  if (state_ == State::kClosed) return;
  // A request cut short (client gone, backend reset mid-response) is still
  // logged, with what had been sent.
  if (log_pending_) LogRequest(resp_status_, "aborted");
  if (up_ != nullptr) {
    up_->Abandon();
    up_ = nullptr;
  }
  state_ = State::kClosed;
  DeadlineQueue::Cancel(&timer_);
  DeadlineQueue::Cancel(&trim_timer_);
  StopRequestSplice(false);
  // Pending ops complete (with 0 or an error) once the socket is shut down;
  // the slot is released when the last one is back.
  shutdown(fd_, SHUT_RDWR);
  MaybeRelease();
}

void ClientConnection::MaybeRelease() {
  if (state_ != State::kClosed || inflight_ > 0) return;
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  ssl_.reset();
  WipeTrafficSecrets();
  w_->metrics().listeners[listener_].active.Dec();
  plain_.clear();
  ShrinkIdleBuffers();
  w_->ReleaseClient(this);
}

void ClientConnection::ShrinkIdleBuffers() {
  // Idle keep-alive connections should cost a few KiB: nothing of a past
  // exchange stays allocated.
  if (plain_.empty()) std::string().swap(plain_);
  if (!send_inflight_ && out_.empty()) out_.Shrink();
  if (cipher_stash_.empty()) std::string().swap(cipher_stash_);
  std::string().swap(up_head_);
  std::string().swap(scratch_);
  if (head_.headers.capacity() > 16) std::vector<http1::Header>().swap(head_.headers);
}

}  // namespace ktlb
