#include "http1_connection.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "client_cert.h"
#include "ktlb/request_hash.h"
#include "ktlb/sockets.h"
#include "worker.h"

namespace ktlb {

namespace {
int StatusClass(int status) { return status >= 100 && status < 600 ? status / 100 : 5; }
}  // namespace

uint64_t Http1Connection::Tag(uint8_t op) const { return slot_.Tag(op); }

void Http1Connection::Start(Worker* w, Generation* gen, size_t listener_index, int fd,
                            const sockaddr_storage& peer) {
  w_ = w;
  gen_ = gen;
  slot_.Bind(&w->loop(), this);
  listener_ = listener_index;
  peer_ip_ = AddressIp(peer);
  peer_port_ = AddressPort(peer);
  timer_.target = this;
  trim_timer_.target = this;
  inflight_ = 0;
  req_pipe_.Clear();
  splice_poll_in_ = splice_poll_out_ = false;
  log_pending_ = false;
  refuse_reason_ = nullptr;
  resp_bytes_ = 0;
  cluster_ = nullptr;
  pending_head_.clear();
  head_flush_scheduled_ = false;
  const ServerConfig& sc = gen->config().server;
  // A pooled slot may have served another generation with other limits.
  if (!parser_ || parser_limits_.max_request_line != sc.max_request_line ||
      parser_limits_.max_header_bytes != sc.max_header_bytes) {
    parser_limits_ = http1::Limits{sc.max_request_line, sc.max_header_bytes};
    parser_.emplace(parser_limits_);
  }
  parser_->Reset();  // the slot's previous connection may have ended on an error
  req_body_done_ = true;
  resp_done_ = false;
  keep_alive_ = true;
  state_ = State::kHandshake;
  transport_released_ = false;
  const ListenerConfig& lc = gen->config().listeners[listener_index];
  tls::TransportOptions opts;
  opts.loop = &w->loop();
  opts.log = &w->error_log();
  opts.metrics = &gen->listener_metrics(listener_index).tls;
  opts.handshake_timeouts = &w->metrics().timeouts[static_cast<size_t>(TimeoutKind::kHandshake)];
  opts.handshake_timeout_ms = sc.timeouts.handshake_ms;
  opts.ktls = lc.ktls;
  opts.kernel_ktls = w->kernel_ktls();
  opts.preamble = lc.accept_proxy;
  proxy_header_.Start(lc.accept_proxy, &gen->listener_metrics(listener_index), &w->error_log(),
                      peer);
  transport_.StartServer(opts, this, fd, *gen->tls(listener_index),
                         absl::StrCat(peer_ip_, ":", peer_port_));
}

tls::InputWanted Http1Connection::WantsInput() const {
  switch (state_) {
    case State::kReadingHead: {
      // A head larger than the limit is refused anyway; do not buffer beyond it.
      size_t buffered = transport_.input().size();
      if (buffered > gen_->config().server.max_header_bytes + kPlainChunk) return tls::InputWanted::kNo;
      return buffered == 0 ? tls::InputWanted::kIdle : tls::InputWanted::kYes;
    }
    case State::kProxying:
      if (req_pipe_.active()) return tls::InputWanted::kNo;  // socket -> pipe -> backend
      if (!req_body_done_ && exchange_.active() &&
          exchange_.RequestBacklog() < upstream::kMaxRequestBacklog) {
        return tls::InputWanted::kYes;
      }
      return tls::InputWanted::kNo;  // pipelined requests wait until this response is done
    case State::kTunnel:
      return tunnel_.WantsInput();
    default:
      return tls::InputWanted::kNo;
  }
}

void Http1Connection::OnHandshakeDone() {
  if (transport_.info().alpn == "h2") {
    state_ = State::kHttp2;
    if (!h2_) h2_ = std::make_unique<Http2Connection>();
    h2_->Start(w_, gen_, listener_, &transport_, peer_ip_, peer_port_, this);
    if (w_->draining()) h2_->Drain();
    return;
  }
  state_ = State::kReadingHead;
  // Waiting for the first request: an idle timeout with the header
  // timeout's length (a connection that never sends one is closed quietly).
  // While draining, only the short quiet time of Drain().
  uint32_t wait_ms = gen_->config().server.timeouts.request_header_ms;
  if (w_->draining()) wait_ms = std::min(kDrainQuietMs, wait_ms);
  w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive), wait_ms);
}

void Http1Connection::OnNotTls() {
  scratch_.clear();
  http1::BuildErrorResponse(400, true, &scratch_);
  transport_.WriteRaw(scratch_);
}

tls::PreambleStatus Http1Connection::OnPreamble(std::string_view bytes, size_t* consumed) {
  passthrough::ProxyHeaderResult r = proxy_header_.Feed(bytes);
  switch (r.status) {
    case passthrough::ProxyHeaderStatus::kNeedMore: return tls::PreambleStatus::kNeedMore;
    case passthrough::ProxyHeaderStatus::kFailed: return tls::PreambleStatus::kFailed;
    case passthrough::ProxyHeaderStatus::kDone: break;
  }
  *consumed = r.consumed;
  if (r.has_addresses) {
    // Everything after this (forwarding headers, maglev's hash, the access
    // log, HTTP/2's copy at the handshake's end) reads these.
    peer_ip_ = AddressIp(r.source);
    peer_port_ = AddressPort(r.source);
    transport_.SetPeerLabel(absl::StrCat(peer_ip_, ":", peer_port_));
  }
  return tls::PreambleStatus::kDone;
}

void Http1Connection::OnInput() {
  if (state_ == State::kTunnel) return tunnel_.OnClientInput();
  if (req_pipe_.active()) {
    // The body cannot come any more (close_notify, a KeyUpdate the kernel
    // cannot follow): the exchange is cut short.
    if (transport_.input_end() != tls::InputEnd::kNone) return HandleInputEnd();
    // A control record met mid-body was read out of band: the body goes on.
    if (state_ == State::kProxying) PumpRequestBody();
    return;
  }
  ProcessPlain();
  HandleInputEnd();
}

void Http1Connection::HandleInputEnd() {
  tls::InputEnd end = transport_.input_end();
  if (end == tls::InputEnd::kNone || state_ == State::kClosed || state_ == State::kClosing) return;
  // Nothing more will be read: answer what is in flight, then close.
  keep_alive_ = false;
  if (state_ == State::kProxying && !req_body_done_) {
    // The request it ends was still sending its body: cut short.
    if (end == tls::InputEnd::kCloseNotify) gen_->listener_metrics(listener_).client_resets.Inc();
    return CloseNow();
  }
  if (state_ == State::kReadingHead) BeginClose();
}

void Http1Connection::OnWritable() {
  if (state_ == State::kTunnel) return tunnel_.OnClientWritable();
  if (state_ == State::kProxying && ResponseBacklog() < upstream::kMaxResponseBacklog) {
    exchange_.OnSinkWritable();
  }
}

void Http1Connection::OnTransportClosed(tls::CloseReason why) {
  if (state_ == State::kClosed) return;
  proxy_header_.Abandon(why == tls::CloseReason::kPreambleTimeout);
  if (why == tls::CloseReason::kProtocolError ||
      (why == tls::CloseReason::kPeerGone &&
       (state_ == State::kProxying ||
        (state_ == State::kReadingHead && !transport_.input().empty())))) {
    gen_->listener_metrics(listener_).client_resets.Inc();
  }
  TearDown();
}

void Http1Connection::OnReleased() {
  transport_released_ = true;
  MaybeRelease();
}

void Http1Connection::OnHttp2Released() {
  // The transport's owner is this object again for its next connection.
  transport_.SetOwner(this);
  OnReleased();
}

void Http1Connection::OnCompletion(uint8_t op, int res, uint32_t flags) {
  (void)flags;
  if (op == kPollIn || op == kPollOut) OnSplicePoll(op, res);
}

void Http1Connection::OnDeferred(uint8_t op) {
  if (op != kFlushHead) return;
  head_flush_scheduled_ = false;
  WritePendingHead();
}

void Http1Connection::WritePendingHead() {
  if (pending_head_.empty() || state_ == State::kClosed) return;
  resp_bytes_ += pending_head_.size();
  bool ok = transport_.Write(pending_head_);
  pending_head_.clear();
  if (!ok) return CloseNow();
  transport_.ScheduleFlush();
}

void Http1Connection::OnResponseHead(const http1::ResponseHead& head) {
  // A 101 reaches this sink only for an upgrade request: it is final.
  const bool switching = head.status == 101;
  if (head.status >= 200 || switching) {
    resp_head_seen_ = true;
    resp_status_ = head.status;
    // A close-delimited body ends with the connection; otherwise the client
    // side decides (its Connection header, draining).
    if (head.body == http1::BodyKind::kUntilClose) keep_alive_ = false;
  }
  WritePendingHead();  // an interim (1xx) head before this one
  http1::BuildClientResponseHead(head, request_version_minor_,
                                 !switching && closing_after_response(), &pending_head_);
  if (!head_flush_scheduled_) {
    head_flush_scheduled_ = true;
    w_->loop().AtTurnEnd(Tag(kFlushHead));
  }
}

void Http1Connection::OnResponseBody(std::string_view bytes) {
  // A response head and a body piece up to one TLS record go out as one.
  constexpr size_t kCoalesceMax = 16 * 1024;
  if (!pending_head_.empty() && pending_head_.size() + bytes.size() <= kCoalesceMax) {
    pending_head_.append(bytes);
    return WritePendingHead();
  }
  WritePendingHead();
  SendToClient(bytes);
}

void Http1Connection::OnResponseComplete() {
  WritePendingHead();
  gen_->listener_metrics(listener_).requests_by_class[StatusClass(resp_status_)].Inc();
  if (log_pending_) LogRequest(resp_status_, nullptr);
  resp_done_ = true;
  if (!req_body_done_) {
    // The backend answered before reading the whole body (e.g. 413): the rest
    // of the body can't be framed for a next request, so this is the last one.
    keep_alive_ = false;
    StopRequestSplice(false);
    exchange_.Abandon();
    req_body_done_ = true;
  }
  ProcessPlain();
  HandleInputEnd();
  if (state_ == State::kReadingHead) {
    transport_.Flush();
    transport_.ResumeInput();
  }
}

int Http1Connection::ResponseSpliceFd() const {
  return transport_.tx_offloaded() && state_ == State::kProxying && pending_head_.empty()
             ? transport_.fd()
             : -1;
}

bool Http1Connection::ResponseSpliceReady() const {
  return transport_.send_idle() && pending_head_.empty() && state_ == State::kProxying;
}

void Http1Connection::OnResponseSpliced(uint64_t n) {
  resp_bytes_ += n;
  gen_->listener_metrics(listener_).bytes_spliced.Inc(n);
}

void Http1Connection::OnRequestWritable() {
  if (state_ != State::kProxying) return;
  if (req_pipe_.active()) return PumpRequestBody();
  ForwardRequestBody();
  transport_.ResumeInput();
}

void Http1Connection::ProcessPlain() {
  for (;;) {
    if (state_ == State::kReadingHead) {
      std::string_view buf = transport_.input();
      if (buf.empty()) return;
      if (timer_.kind == static_cast<uint8_t>(TimeoutKind::kKeepalive) && timer_.armed()) {
        // First bytes of a request: the header deadline starts now.
        w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kRequestHeader),
                     gen_->config().server.timeouts.request_header_ms);
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

void Http1Connection::RefuseRequest(http1::RequestError e) {
  gen_->listener_metrics(listener_).parse_errors[static_cast<size_t>(e)].Inc();
  int status = http1::RequestErrorStatus(e);
  w_->error_log().Log(ErrorLog::Level::kInfo, "http", "refused request from %s:%u: %s (%d)",
                      peer_ip_.c_str(), peer_port_, http1::RequestErrorLabel(e), status);
  refuse_reason_ = http1::RequestErrorLabel(e);
  RespondError(status, true);
}

void Http1Connection::RespondError(int status, bool close, uint32_t retry_after_s) {
  gen_->listener_metrics(listener_).requests_by_class[StatusClass(status)].Inc();
  scratch_.clear();
  http1::BuildErrorResponse(status, close, &scratch_, retry_after_s);
  resp_bytes_ += scratch_.size();
  if (log_pending_ || refuse_reason_ != nullptr) {
    const char* why = refuse_reason_;
    if (why == nullptr && status == 502) why = "upstream_failed";
    if (why == nullptr && status == 504) why = "upstream_timeout";
    if (why == nullptr && status == 503) why = "no_server";
    if (why == nullptr && status == 404) why = "no_route";
    LogRequest(status, why);
  }
  transport_.Write(scratch_);
  transport_.ScheduleFlush();
  if (close) {
    DeadlineQueue::Cancel(&timer_);
    BeginClose();
  }
}

void Http1Connection::StartExchange() {
  // Route on SNI, Host and the path part of the target.
  std::string_view target = head_.target;
  std::string_view path = target.substr(0, target.find('?'));
  const RouteMatch route = gen_->router().MatchRoute(listener_, transport_.info().sni, head_.host, path);
  const int upstream = route.upstream;
  req_content_length_ = head_.body == http1::BodyKind::kContentLength ? head_.content_length : 0;
  req_body_seen_ = 0;
  request_version_minor_ = head_.version_minor;
  request_has_body_ = head_.body != http1::BodyKind::kNone;
  upgrade_requested_ = head_.upgrade;
  keep_alive_ = head_.keep_alive && !w_->draining();
  resp_head_seen_ = resp_done_ = false;
  resp_status_ = 0;
  DeadlineQueue::Cancel(&timer_);
  DeadlineQueue::Cancel(&trim_timer_);
  cluster_ = nullptr;
  if (w_->access_log().enabled()) LogRequestStart();

  // A hashing balancer's key, read while head_'s views are still valid.
  uint64_t key_hash = 0;
  bool has_key_hash = false;
  if (upstream >= 0) {
    if (const HashKeyConfig* key = gen_->cluster(static_cast<size_t>(upstream))->hash_key()) {
      upstream::RequestHasher hasher(*key);
      hasher.ClientIp(peer_ip_);
      if (hasher.wants_headers()) {
        for (const http1::Header& h : head_.headers) hasher.Header(h.name, h.value);
      }
      key_hash = hasher.hash();
      has_key_hash = hasher.found();
    }
  }

  // The upstream head is built before the client's head bytes are released:
  // head_'s views point into the transport's input.
  up_head_.clear();
  http1::ForwardingInfo fwd;
  fwd.client_ip = peer_ip_;
  fwd.client_port = peer_port_;
  fwd.sni = transport_.info().sni;
  AddClientCert(gen_->config().listeners[listener_], transport_.info(), &fwd);
  http1::BuildUpstreamRequestHead(head_, fwd, &up_head_);
  if (head_.version_minor == 0) {
    // An HTTP/1.0 client cannot read chunked bodies or 1xx responses: ask the
    // backend in HTTP/1.0 too, so it frames the response for this client.
    size_t eol = up_head_.find("\r\n");
    if (eol != std::string::npos && eol >= 8) up_head_.replace(eol - 8, 8, "HTTP/1.0");
  }
  transport_.Consume(head_.head_len);
  req_body_done_ = !request_has_body_;
  state_ = State::kProxying;

  const bool cert_missing = ClientCertRequiredButMissing(route, transport_.info());
  if (upstream < 0 || cert_missing) {
    // Nothing routes this request (or the route wants a client certificate
    // this connection lacks): answer here, never guess a backend.
    keep_alive_ = keep_alive_ && !request_has_body_;
    state_ = State::kReadingHead;
    if (cert_missing) refuse_reason_ = "client_cert_required";
    RespondError(cert_missing ? 403 : 404, !keep_alive_);
    if (keep_alive_) {
      w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive),
                   gen_->config().server.timeouts.keepalive_ms);
    }
    return;
  }
  upstream::Cluster* cluster = gen_->cluster(static_cast<size_t>(upstream));
  cluster_ = cluster;
  upstream::ExchangeRequest req;
  req.head = up_head_;
  req.is_head = head_.is_head;
  req.has_body = request_has_body_;
  req.idempotent = head_.idempotent;
  req.http10 = request_version_minor_ == 0;
  req.upgrade = upgrade_requested_;
  req.hash = key_hash;
  req.has_hash = has_key_hash;
  exchange_.Start(cluster, req, this);
  if (state_ == State::kProxying && !req_body_done_) ForwardRequestBody();
}

void Http1Connection::ForwardRequestBody() {
  if (!exchange_.active() || req_pipe_.active()) return;
  std::string_view buf = transport_.input();
  if (buf.empty()) return MaybeSpliceRequestBody();
  size_t consumed = 0;
  http1::ParseStatus st = parser_->ParseBody(buf, &consumed);
  if (st == http1::ParseStatus::kError) return FailRequestBody();
  if (consumed > 0) {
    exchange_.SendBody(buf.substr(0, consumed));
    exchange_.BodyProgress();
  }
  transport_.Consume(consumed);
  req_body_seen_ += consumed;
  if (st == http1::ParseStatus::kDone) {
    req_body_done_ = true;
    exchange_.EndBody();
    return;
  }
  MaybeSpliceRequestBody();
}

void Http1Connection::FailRequestBody() {
  // The head already went upstream; that exchange cannot be finished.
  exchange_.Abandon();
  StopRequestSplice(false);
  gen_->listener_metrics(listener_).parse_errors[static_cast<size_t>(parser_->error())].Inc();
  refuse_reason_ = http1::RequestErrorLabel(parser_->error());
  if (!resp_head_seen_) {
    RespondError(http1::RequestErrorStatus(parser_->error()), true);
  } else {
    CloseNow();
  }
}

void Http1Connection::SendToClient(std::string_view plain) {
  if (state_ == State::kClosed) return;
  resp_bytes_ += plain.size();
  if (!transport_.Write(plain)) return CloseNow();
  // Sent at the end of the loop turn: a response's head, body and a
  // close_notify then leave in one send.
  transport_.ScheduleFlush();
}

void Http1Connection::LogRequestStart() {
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

void Http1Connection::LogRequest(int status, const char* error) {
  const bool started = log_pending_;
  log_pending_ = false;
  refuse_reason_ = nullptr;
  std::string* out =
      w_->access_log().BeginLine(w_->log_time(), gen_->config().listeners[listener_].name,
                                 peer_ip_, peer_port_, transport_.info().sni);
  if (out == nullptr) return;
  out->push_back(',');
  out->append(started ? std::string_view(log_req_)
                      : std::string_view("\"method\":null,\"target\":null,\"host\":null,"
                                         "\"version\":null"));
  absl::StrAppend(out, ",\"status\":", status, ",\"bytes\":", resp_bytes_, ",\"ms\":",
                  started ? w_->now_ms() - log_start_ms_ : 0);
  if (tunnel_bytes_up_ >= 0) absl::StrAppend(out, ",\"bytes_up\":", tunnel_bytes_up_);
  tunnel_bytes_up_ = -1;
  std::string_view upstream, server;
  if (started && cluster_ != nullptr) {
    upstream = cluster_->name();
    int s = exchange_.cluster() == cluster_ ? exchange_.server() : -1;
    if (s >= 0 && static_cast<size_t>(s) < cluster_->size()) {
      server = cluster_->server(static_cast<size_t>(s)).address.text;
    }
  }
  w_->access_log().EndLine(out, upstream, server, error);
  resp_bytes_ = 0;  // a refusal on this connection later counts only its own
}

void Http1Connection::LogIfPending(const char* error) {
  if (state_ == State::kHttp2) return h2_->LogIfPending(error);
  if (state_ == State::kTunnel) return FinishTunnel(error);
  if (log_pending_) LogRequest(resp_status_, error);
}

bool Http1Connection::closing_after_response() const {
  return !keep_alive_ || w_->draining() || transport_.input_end() != tls::InputEnd::kNone;
}

void Http1Connection::FinishExchange() {
  cluster_ = nullptr;
  if (!keep_alive_ || w_->draining()) {
    state_ = State::kReadingHead;  // so BeginClose flushes from a settled state
    BeginClose();
    return;
  }
  state_ = State::kReadingHead;
  if (transport_.input().empty()) {
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive),
                 gen_->config().server.timeouts.keepalive_ms);
    // Busy keep-alive connections keep their buffers; idle ones give them
    // back shortly (a few KiB per idle connection).
    w_->ArmTimer(&trim_timer_, kTimerTrim, kTrimAfterMs);
  } else {
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kRequestHeader),
                 gen_->config().server.timeouts.request_header_ms);
  }
}

void Http1Connection::OnExchangeFailed(upstream::ExchangeFailure why, bool response_started) {
  // Mid-response: the client connection cannot be saved.
  if (response_started) return CloseNow();
  pending_head_.clear();
  int status = why == upstream::ExchangeFailure::kTimedOut ? 504 : 502;
  uint32_t retry_after_s = 0;
  if (why == upstream::ExchangeFailure::kNoServer ||
      why == upstream::ExchangeFailure::kQueueTimeout) {
    status = 503;
    retry_after_s = exchange_.retry_after_s();
  }
  keep_alive_ = keep_alive_ && req_body_done_;
  RespondError(status, !keep_alive_, retry_after_s);
  if (keep_alive_) {
    resp_done_ = true;
    req_body_done_ = true;
    FinishExchange();
    transport_.Flush();
    transport_.ResumeInput();
    ProcessPlain();
    HandleInputEnd();
  }
}

void Http1Connection::OnDeadline(uint8_t kind) {
  if (kind == kTimerTrim) {
    if (state_ == State::kReadingHead && transport_.input().empty() && transport_.send_idle()) {
      ShrinkIdleBuffers();
    }
    return;
  }
  auto k = static_cast<TimeoutKind>(kind);
  if (state_ == State::kReadingHead && k == TimeoutKind::kKeepalive && transport_.input().empty()) {
    if (!w_->draining()) w_->CountTimeout(TimeoutKind::kKeepalive);
    return BeginClose();
  }
  w_->CountTimeout(k);
  if (k == TimeoutKind::kRequestHeader || k == TimeoutKind::kKeepalive) {
    // nginx and haproxy answer a slow head with 408 and close.
    refuse_reason_ = "request_timeout";
    return RespondError(408, true);
  }
  CloseNow();
}

void Http1Connection::Drain() {
  if (state_ == State::kHttp2) return h2_->Drain();
  if (state_ == State::kClosed || state_ == State::kIdle || state_ == State::kClosing) return;
  // A handshake under way finishes (bounded by its timeout and the drain's):
  // the client asked before the drain began, and gets its one answer.
  keep_alive_ = false;
  if (state_ == State::kHandshake) return;
  if (state_ == State::kReadingHead && transport_.input().empty()) {
    // Closing a quiet keep-alive connection at once would lose a request
    // the client is sending right now (it cannot tell our FIN from a crash
    // and may not retry). It gets a moment: a request in it is answered with
    // Connection: close; a connection still quiet then is closed.
    w_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive),
                 std::min(kDrainQuietMs, gen_->config().server.timeouts.keepalive_ms));
  }
}

void Http1Connection::BeginClose() {
  if (state_ == State::kClosed || state_ == State::kClosing) return;
  TearDown();
  state_ = State::kClosing;
  transport_.Close();
}

void Http1Connection::CloseNow() {
  if (state_ == State::kClosed) return;
  TearDown();
  transport_.Abort();
}

void Http1Connection::TearDown() {
  if (state_ == State::kTunnel) FinishTunnel("aborted");
  // A request cut short (client gone, backend reset mid-response) is still
  // logged, with what had been sent.
  if (log_pending_) LogRequest(resp_status_, "aborted");
  exchange_.Abandon();
  pending_head_.clear();
  state_ = State::kClosed;
  DeadlineQueue::Cancel(&timer_);
  DeadlineQueue::Cancel(&trim_timer_);
  StopRequestSplice(false);
}

void Http1Connection::MaybeRelease() {
  if (!transport_released_ || inflight_ > 0 || tunnel_.busy()) return;
  state_ = State::kIdle;
  gen_->listener_metrics(listener_).active.Dec();
  ShrinkIdleBuffers();
  w_->ReleaseClient(this, gen_);
}

void Http1Connection::ShrinkIdleBuffers() {
  // Idle keep-alive connections should cost a few KiB: nothing of a past
  // exchange stays allocated.
  transport_.ShrinkIdle();
  std::string().swap(up_head_);
  std::string().swap(scratch_);
  std::string().swap(pending_head_);
  if (head_.headers.capacity() > 16) std::vector<http1::Header>().swap(head_.headers);
}

}  // namespace ktlb
