#include "http2_connection.h"

#include <algorithm>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktlb/request_hash.h"
#include "worker.h"

namespace ktlb {

namespace {
// Frames gathered per Write: a few TLS records at most.
constexpr size_t kGather = 64 * 1024;
int StatusClass(int status) { return status >= 100 && status < 600 ? status / 100 : 5; }
}  // namespace

void Http2Connection::Start(Worker* w, Generation* gen, size_t listener, tls::Transport* transport,
                            std::string_view peer_ip, uint16_t peer_port, Host* host) {
  w_ = w;
  gen_ = gen;
  listener_ = listener;
  transport_ = transport;
  host_ = host;
  peer_ip_.assign(peer_ip);
  peer_port_ = peer_port;
  slot_.Bind(&w->loop(), this);
  idle_timer_.target = this;
  stall_timer_.target = this;
  header_timer_.target = this;
  send_scheduled_ = closing_ = closed_ = in_receive_ = transport_released_ = broken_ = false;
  piped_ = PipedFrame{};
  poll_out_inflight_ = false;
  inflight_ = 0;
  to_start_.clear();
  live_.clear();
  const Http2Settings& h2 = gen->config().server.h2;
  http2::Limits limits;
  limits.max_concurrent_streams = h2.max_concurrent_streams;
  limits.max_header_list_size = h2.max_header_list_size;
  limits.stream_window = h2.stream_window;
  limits.connection_window = h2.connection_window;
  limits.glitch_budget = h2.glitch_budget;
  gen_->listener_metrics(listener_).h2.connections.Inc();
  transport_->SetOwner(this);
  if (!session_.Start(this, limits, w_->now_ms())) {
    TearDown();
    transport_->Abort();
    return;
  }
  ScheduleSend();  // ktlb's SETTINGS
  UpdateTimers();
  if (!transport_->input().empty()) OnInput();  // the preface came with the handshake
}

tls::InputWanted Http2Connection::WantsInput() const {
  if (closed_ || session_.terminated()) return tls::InputWanted::kNo;
  // A client that does not read its responses gets no new requests read.
  if (transport_->backlog() >= kOutputHighWater) return tls::InputWanted::kNo;
  return live_.empty() ? tls::InputWanted::kIdle : tls::InputWanted::kYes;
}

void Http2Connection::OnInput() {
  if (closed_) return;
  std::string_view in = transport_->input();
  if (!in.empty()) {
    in_receive_ = true;
    long n = session_.Receive(in, w_->now_ms());
    in_receive_ = false;
    transport_->Consume(n < 0 ? in.size() : static_cast<size_t>(n));
    if (broken_) {
      TearDown();
      transport_->Abort();
      return;
    }
    // Not HTTP/2 after all, or beyond saving: whatever GOAWAY the session
    // could queue goes out, then the connection closes.
    if (n < 0) {
      closing_ = true;
      to_start_.clear();
    }
    // Streams start once the whole read is processed: a HEADERS reset in
    // the same read (Rapid Reset) never reaches a backend.
    StartStreams();
  }
  if (transport_->input_end() != tls::InputEnd::kNone) closing_ = true;
  ScheduleSend();
}

void Http2Connection::OnWritable() {
  if (closed_) return;
  Pump();
}

void Http2Connection::OnTransportClosed(tls::CloseReason why) {
  if (closed_) return;
  if (why == tls::CloseReason::kProtocolError ||
      (why == tls::CloseReason::kPeerGone && !live_.empty())) {
    gen_->listener_metrics(listener_).client_resets.Inc();
  }
  TearDown();
}

void Http2Connection::OnReleased() {
  TearDown();
  transport_released_ = true;
  MaybeRelease();
}

void Http2Connection::MaybeRelease() {
  if (!transport_released_ || inflight_ > 0) return;
  // An idle slot keeps a few streams for the next connection, not a burst's worth.
  while (free_.size() > 4) free_.pop_back();
  std::string().swap(wbuf_);
  host_->OnHttp2Released();
}

void Http2Connection::OnCompletion(uint8_t op, int res, uint32_t flags) {
  (void)res;
  (void)flags;
  if (op != kPollOut) return;
  poll_out_inflight_ = false;
  --inflight_;
  if (closed_) return MaybeRelease();
  Pump();  // the piped frame goes on
}

void Http2Connection::TearDown() {
  if (!closed_) {
    closed_ = true;
    for (Http2Stream* s : live_) {
      if (s->log_pending) LogStream(s, s->status, "aborted");
      s->exchange.Abandon();
      s->early_body.clear();
      s->out.clear();
      free_.push_back(std::unique_ptr<Http2Stream>(s));
    }
    live_.clear();
    to_start_.clear();
    piped_ = PipedFrame{};
    session_.Stop();
    if (poll_out_inflight_) w_->loop().Cancel(slot_.Tag(kPollOut));
  }
  DeadlineQueue::Cancel(&idle_timer_);
  DeadlineQueue::Cancel(&stall_timer_);
  DeadlineQueue::Cancel(&header_timer_);
}

void Http2Connection::Drain() {
  if (closed_ || closing_) return;
  closing_ = true;
  session_.Shutdown();
  ScheduleSend();
}

void Http2Connection::LogIfPending(const char* error) {
  if (closed_) return;
  for (Http2Stream* s : live_) {
    if (s->log_pending) LogStream(s, s->status, error);
  }
}

void Http2Connection::ScheduleSend() {
  if (send_scheduled_ || closed_) return;
  send_scheduled_ = true;
  w_->loop().AtTurnEnd(slot_.Tag(kSend));
}

void Http2Connection::OnDeferred(uint8_t op) {
  if (op != kSend) return;
  send_scheduled_ = false;
  Pump();
}

void Http2Connection::Pump() {
  if (closed_) return;
  while (transport_->backlog() < kOutputHighWater && session_.WantsWrite()) {
    wbuf_.clear();
    if (!session_.Send() || broken_) {
      // A piped DATA frame could not be finished: the byte stream is cut.
      TearDown();
      transport_->Abort();
      return;
    }
    if (wbuf_.empty()) break;
    if (!transport_->Write(wbuf_)) {
      TearDown();
      transport_->Abort();
      return;
    }
  }
  transport_->Flush();
  if (closed_) return;
  // WantsInput said no while the client was not reading: read again.
  if (transport_->backlog() < kOutputHighWater) transport_->ResumeInput();
  UpdateTimers();
  CloseWhenDone();
}

void Http2Connection::CloseWhenDone() {
  if (closed_ || session_.WantsWrite()) return;
  if (session_.Done() || (closing_ && live_.empty())) {
    TearDown();
    transport_->Close();
  }
}

void Http2Connection::UpdateTimers() {
  const Timeouts& t = gen_->config().server.timeouts;
  if (live_.empty()) {
    if (!idle_timer_.armed()) {
      w_->ArmTimer(&idle_timer_, static_cast<uint8_t>(TimeoutKind::kKeepalive), t.keepalive_ms);
    }
  } else {
    DeadlineQueue::Cancel(&idle_timer_);
  }
  // A header block left unfinished (HEADERS without END_HEADERS and no
  // CONTINUATION) holds a stream open: it gets the request header timeout.
  bool partial_head = false;
  for (Http2Stream* s : live_) partial_head = partial_head || (!s->head_done && !s->refused);
  if (!partial_head) {
    DeadlineQueue::Cancel(&header_timer_);
  } else if (!header_timer_.armed()) {
    w_->ArmTimer(&header_timer_, static_cast<uint8_t>(TimeoutKind::kRequestHeader),
                 t.request_header_ms);
  }
  // Response bytes waiting on the client: its windows (TCP or HTTP/2) must
  // open within the send timeout, counted from the last progress.
  bool waiting = transport_->backlog() > 0;
  for (Http2Stream* s : live_) waiting = waiting || s->unsent() > 0;
  if (!waiting) {
    DeadlineQueue::Cancel(&stall_timer_);
  } else if (!stall_timer_.armed()) {
    w_->ArmTimer(&stall_timer_, static_cast<uint8_t>(TimeoutKind::kSend), t.send_ms);
  }
}

void Http2Connection::OnDeadline(uint8_t kind) {
  if (closed_) return;
  auto k = static_cast<TimeoutKind>(kind);
  w_->CountTimeout(k);
  if (k == TimeoutKind::kKeepalive) {
    Drain();
    return;
  }
  if (k == TimeoutKind::kRequestHeader) {
    session_.Terminate(NGHTTP2_PROTOCOL_ERROR);
    closing_ = true;
    ScheduleSend();
    return;
  }
  // kSend: the client stopped taking bytes.
  if (transport_->backlog() > 0) {
    TearDown();
    transport_->Abort();
    return;
  }
  for (Http2Stream* s : live_) {
    if (s->unsent() == 0) continue;
    if (s->log_pending) LogStream(s, s->status, "send_timeout");
    s->exchange.Abandon();
    session_.ResetStream(s, NGHTTP2_CANCEL);
  }
  ScheduleSend();
}

http2::Stream* Http2Connection::OpenStream(int32_t id) {
  (void)id;
  if (closed_) return nullptr;
  std::unique_ptr<Http2Stream> s;
  if (!free_.empty()) {
    s = std::move(free_.back());
    free_.pop_back();
  } else {
    s = std::make_unique<Http2Stream>();
  }
  Http2Stream* p = s.release();  // owned through live_ until OnStreamClosed
  p->conn = this;
  p->cluster = nullptr;
  p->exchange_started = p->chunked_up = p->body_closed = p->discard_body = false;
  p->early_body.clear();
  p->unconsumed = 0;
  p->status = 0;
  p->log_pending = false;
  p->resp_bytes = 0;
  live_.push_back(p);
  gen_->listener_metrics(listener_).h2.streams.Inc();
  DeadlineQueue::Cancel(&idle_timer_);
  return p;
}

void Http2Connection::OnStreamClosed(http2::Stream* stream, uint32_t error_code) {
  auto* s = static_cast<Http2Stream*>(stream);
  if (piped_.stream == s) {
    // Closed in the middle of a frame we were writing ourselves: the frame
    // is finished with zeros (the peer drops DATA of a closed stream), so
    // the byte stream stays whole for the other streams.
    if (piped_.header_sent > 0) PadPipedFrame();
    piped_ = PipedFrame{};
  }
  // Request bytes nobody will take give the connection's window back.
  size_t dropped = s->unconsumed + s->early_body.size();
  if (dropped > 0) session_.ConsumeRequestData(s, dropped);
  s->unconsumed = 0;
  to_start_.erase(std::remove(to_start_.begin(), to_start_.end(), s), to_start_.end());
  live_.erase(std::remove(live_.begin(), live_.end(), s), live_.end());
  if (s->log_pending) LogStream(s, s->status, error_code == 0 ? "aborted" : "reset");
  s->exchange.Abandon();
  s->early_body.clear();
  s->out.clear();
  s->out_off = 0;
  // A pooled stream keeps small buffers, not a past body's.
  if (s->out.capacity() > 64 * 1024) std::string().swap(s->out);
  if (s->early_body.capacity() > 64 * 1024) std::string().swap(s->early_body);
  free_.push_back(std::unique_ptr<Http2Stream>(s));
  if (live_.empty()) ScheduleSend();  // idle timer, or the close after a drain
}

void Http2Connection::OnRequestHead(http2::Stream* stream) {
  to_start_.push_back(static_cast<Http2Stream*>(stream));
  if (!in_receive_) StartStreams();
}

void Http2Connection::StartStreams() {
  // StartExchange may answer at once; nothing in it closes streams (that
  // happens while frames are sent), so the list stays valid.
  for (size_t i = 0; i < to_start_.size(); ++i) StartExchange(to_start_[i]);
  to_start_.clear();
}

void Http2Connection::StartExchange(Http2Stream* s) {
  if (s->refused) return;
  s->start_ms = w_->now_ms();
  s->log_pending = w_->access_log().enabled();
  s->request.ToRequestHead(&s->req_head);
  if (s->request.is_connect()) return RespondError(s, 501, "connect_unsupported");
  std::string_view target = s->req_head.target;
  std::string_view path = target.substr(0, target.find('?'));
  int upstream = gen_->router().Match(listener_, transport_->info().sni, s->req_head.host, path);
  if (upstream < 0) return RespondError(s, 404, "no_route");

  s->up_head.clear();
  http1::ForwardingInfo fwd;
  fwd.client_ip = peer_ip_;
  fwd.client_port = peer_port_;
  fwd.sni = transport_->info().sni;
  http1::BuildUpstreamRequestHead(s->req_head, fwd, &s->up_head);
  s->chunked_up = s->req_head.body == http1::BodyKind::kChunked;

  upstream::Cluster* cluster = gen_->cluster(static_cast<size_t>(upstream));
  s->cluster = cluster;
  upstream::ExchangeRequest req;
  req.head = s->up_head;
  req.is_head = s->req_head.is_head;
  req.has_body = s->req_head.body != http1::BodyKind::kNone;
  req.idempotent = s->req_head.idempotent;
  req.decode_body = true;
  if (const HashKeyConfig* key = cluster->hash_key()) {
    upstream::RequestHasher hasher(*key);
    hasher.ClientIp(peer_ip_);
    if (hasher.wants_headers()) {
      for (const http1::Header& h : s->req_head.headers) hasher.Header(h.name, h.value);
    }
    req.hash = hasher.hash();
    req.has_hash = hasher.found();
  }
  s->exchange_started = true;
  s->exchange.Start(cluster, req, s);
  if (!s->early_body.empty()) {
    std::string early;
    early.swap(s->early_body);
    SendBodyUpstream(s, early);
  }
  if (s->request_ended) EndBodyUpstream(s);
}

void Http2Connection::OnRequestData(http2::Stream* stream, std::string_view data) {
  auto* s = static_cast<Http2Stream*>(stream);
  if (!s->exchange_started && !s->discard_body) {
    // Bounded by the stream's window: nothing is given back until the
    // backend takes it.
    s->early_body.append(data);
    return;
  }
  SendBodyUpstream(s, data);
}

void Http2Connection::SendBodyUpstream(Http2Stream* s, std::string_view data) {
  if (data.empty()) return;  // a zero-size chunk would end the chunked body
  if (s->discard_body || !s->exchange.active()) {
    session_.ConsumeRequestData(s, data.size() + s->unconsumed);
    s->unconsumed = 0;
    ScheduleSend();
    return;
  }
  if (s->chunked_up) {
    char size_line[24];
    int n = std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
    s->exchange.SendBody(std::string_view(size_line, static_cast<size_t>(n)));
    s->exchange.SendBody(data);
    s->exchange.SendBody("\r\n");
  } else {
    s->exchange.SendBody(data);
  }
  s->exchange.BodyProgress();
  s->unconsumed += data.size();
  ConsumeBody(s);
}

void Http2Connection::ConsumeBody(Http2Stream* s) {
  if (s->unconsumed == 0) return;
  if (s->exchange.active() && s->exchange.RequestBacklog() >= upstream::kMaxRequestBacklog) return;
  session_.ConsumeRequestData(s, s->unconsumed);
  s->unconsumed = 0;
  ScheduleSend();  // the WINDOW_UPDATE
}

void Http2Connection::OnRequestEnd(http2::Stream* stream) {
  auto* s = static_cast<Http2Stream*>(stream);
  if (s->exchange_started) EndBodyUpstream(s);
}

void Http2Connection::EndBodyUpstream(Http2Stream* s) {
  if (s->body_closed || s->discard_body || !s->exchange.active()) return;
  if (s->req_head.body == http1::BodyKind::kNone) return;
  s->body_closed = true;
  if (s->chunked_up) {
    // The last chunk carries the request's trailers.
    std::string end = "0\r\n";
    for (const http1::Header& h : s->request.trailers()) {
      if (h.name == "host" || h.name == "content-length" || h.name == "te" || h.name == "trailer") {
        continue;
      }
      end.append(h.name).append(": ").append(h.value).append("\r\n");
    }
    end.append("\r\n");
    s->exchange.SendBody(end);
  }
  s->exchange.EndBody();
}

void Http2Connection::RespondError(Http2Stream* s, int status, const char* error,
                                   uint32_t retry_after_s) {
  s->discard_body = true;
  s->exchange.Abandon();
  if (s->unconsumed + s->early_body.size() > 0) {
    session_.ConsumeRequestData(s, s->unconsumed + s->early_body.size());
    s->unconsumed = 0;
  }
  s->early_body.clear();
  s->status = status;
  s->out.clear();
  s->out_off = 0;
  absl::StrAppend(&s->out, status, " ");
  s->out.append(http1::ReasonPhrase(status)).push_back('\n');
  s->out_eof = true;
  s->resp_bytes = s->out.size();
  http2::BuildErrorFields(status, s->out.size(), retry_after_s, &s->nv_storage, &s->nva);
  session_.SubmitResponse(s, s->nva, true);
  CountResponse(status);
  FinishStream(s, status, error);
  ScheduleSend();
}

void Http2Connection::CountResponse(int status) {
  gen_->listener_metrics(listener_).requests_by_class[StatusClass(status)].Inc();
}

void Http2Connection::FinishStream(Http2Stream* s, int status, const char* error) {
  if (s->log_pending) LogStream(s, status, error);
}

void Http2Connection::LogStream(Http2Stream* s, int status, const char* error) {
  s->log_pending = false;
  std::string* out = w_->access_log().BeginLine(
      w_->log_time(), gen_->config().listeners[listener_].name, peer_ip_, peer_port_,
      transport_->info().sni);
  if (out == nullptr) return;
  out->append(",\"method\":\"");
  AppendJsonEscaped(out, s->request.method());
  out->append("\",\"target\":\"");
  AppendJsonEscaped(out, s->request.path().substr(0, 4096));
  out->append("\",\"host\":\"");
  AppendJsonEscaped(out, s->request.authority());
  absl::StrAppend(out, "\",\"version\":\"2\",\"status\":", status, ",\"bytes\":", s->resp_bytes,
                  ",\"ms\":", w_->now_ms() - s->start_ms);
  std::string_view upstream, server;
  if (s->cluster != nullptr) {
    upstream = s->cluster->name();
    int sv = s->exchange.cluster() == s->cluster ? s->exchange.server() : -1;
    if (sv >= 0 && static_cast<size_t>(sv) < s->cluster->size()) {
      server = s->cluster->server(static_cast<size_t>(sv)).address.text;
    }
  }
  w_->access_log().EndLine(out, upstream, server, error);
}

bool Http2Connection::OnOutput(std::string_view bytes) {
  wbuf_.append(bytes);
  return wbuf_.size() < kGather;
}

void Http2Connection::OnResponseDataSent(http2::Stream* stream) {
  auto* s = static_cast<Http2Stream*>(stream);
  // Progress: the send timeout counts from here.
  DeadlineQueue::Cancel(&stall_timer_);
  if (s->exchange.active() && s->unsent() < upstream::kMaxResponseBacklog / 2) {
    s->exchange.OnSinkWritable();
  }
}

void Http2Connection::OnRefused(http2::Refusal r) {
  gen_->listener_metrics(listener_).h2.refused[static_cast<size_t>(r)].Inc();
}

void Http2Connection::OnGlitch(http2::Glitch g, bool exhausted) {
  H2Metrics& m = gen_->listener_metrics(listener_).h2;
  m.glitches[static_cast<size_t>(g)].Inc();
  if (!exhausted) return;
  m.budget_exhausted[static_cast<size_t>(g)].Inc();
  w_->error_log().Log(ErrorLog::Level::kInfo, "http2",
                      "%s:%u: abuse budget exhausted (%s): GOAWAY ENHANCE_YOUR_CALM",
                      peer_ip_.c_str(), peer_port_, http2::GlitchLabel(g));
}

void Http2Connection::OnResetSent(uint32_t code) {
  if (code < http2::kErrorCodes) gen_->listener_metrics(listener_).h2.resets_by_ktlb[code].Inc();
}

void Http2Connection::OnResetReceived(uint32_t code) {
  if (code < http2::kErrorCodes) gen_->listener_metrics(listener_).h2.resets_by_client[code].Inc();
}

void Http2Connection::OnGoawaySent(uint32_t code) {
  if (code < http2::kErrorCodes) gen_->listener_metrics(listener_).h2.goaways[code].Inc();
}

void Http2Connection::PadPipedFrame() {
  // Queued behind nothing: a piped frame starts only when the transport is
  // idle, and nothing is serialized while it is unfinished.
  std::string pad(reinterpret_cast<const char*>(piped_.header) + piped_.header_sent,
                  9 - piped_.header_sent);
  pad.append(piped_.left, '\0');
  piped_.header_sent = 9;
  piped_.left = 0;
  if (!transport_->Write(pad)) broken_ = true;
  transport_->ScheduleFlush();
}

size_t Http2Connection::PipedBytes(http2::Stream* stream) {
  return static_cast<Http2Stream*>(stream)->exchange.PipedBytes();
}

// One DATA frame of a piped body: the 9-byte header straight into the kTLS
// socket (MSG_MORE: it shares a record with the payload), then the payload
// spliced from the backend's pipe, so body bytes never enter userspace.
// Anything queued before it must be on the wire first.
int Http2Connection::SendPipedData(http2::Stream* stream, const uint8_t* framehd, size_t length) {
  auto* s = static_cast<Http2Stream*>(stream);
  const int fd = transport_->fd();
  if (piped_.stream != nullptr && piped_.stream != s) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (piped_.stream == nullptr) {
    if (!wbuf_.empty() || !transport_->send_idle()) return NGHTTP2_ERR_WOULDBLOCK;
    piped_.stream = s;
    std::memcpy(piped_.header, framehd, 9);
    piped_.header_sent = 0;
    piped_.left = length;
  }
  auto wait_writable = [&] {
    if (!poll_out_inflight_) {
      w_->loop().ArmPoll(fd, true, slot_.Tag(kPollOut), &poll_out_inflight_, &inflight_);
    }
    return NGHTTP2_ERR_WOULDBLOCK;
  };
  while (piped_.header_sent < 9) {
    ssize_t n = send(fd, piped_.header + piped_.header_sent, 9 - piped_.header_sent,
                     MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
    if (n > 0) {
      piped_.header_sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      return wait_writable();
    } else {
      return NGHTTP2_ERR_CALLBACK_FAILURE;  // the connection is gone
    }
  }
  while (piped_.left > 0) {
    long n = s->exchange.SplicePipedTo(fd, piped_.left);
    if (n > 0) {
      piped_.left -= static_cast<size_t>(n);
      s->resp_bytes += static_cast<uint64_t>(n);
      gen_->listener_metrics(listener_).bytes_spliced.Inc(static_cast<uint64_t>(n));
    } else if (n == -EAGAIN) {
      return wait_writable();
    } else {
      // The backend's body broke off (its pipe is gone): the frame is
      // finished with zeros and the stream reset after it.
      PadPipedFrame();
      piped_ = PipedFrame{};
      return 0;
    }
  }
  piped_ = PipedFrame{};
  DeadlineQueue::Cancel(&stall_timer_);  // progress
  s->exchange.OnSinkWritable();          // room in the pipe: the backend may fill it again
  return 0;
}

// --- Http2Stream: the exchange's sink ---

void Http2Stream::OnResponseHead(const http1::ResponseHead& h) {
  if (refused) return;
  if (h.status < 200) {
    // 101 has no meaning in HTTP/2; other interim responses pass.
    if (h.status == 101) return;
    http2::BuildResponseFields(h, &nv_storage, &nva);
    conn->session().SubmitInterim(this, nva);
    conn->ScheduleSend();
    return;
  }
  status = h.status;
  const bool has_body = h.body != http1::BodyKind::kNone && !req_head.is_head;
  http2::BuildResponseFields(h, &nv_storage, &nva);
  conn->session().SubmitResponse(this, nva, has_body);
  conn->ScheduleSend();
}

void Http2Stream::OnResponseBody(std::string_view bytes) {
  if (refused) return;
  out.append(bytes);
  resp_bytes += bytes.size();
  conn->session().ResumeData(this);
  conn->ScheduleSend();
}

void Http2Stream::OnResponseTrailers(const std::vector<http1::Header>& trailers) {
  if (refused) return;
  http2::BuildTrailerFields(trailers, &trailer_storage, &trailer_nva);
}

void Http2Stream::OnResponseComplete() {
  if (refused) return;
  out_eof = true;
  conn->session().ResumeData(this);
  if (!request_ended) {
    // The backend answered before the body ended: the rest is dropped.
    discard_body = true;
    conn->ConsumeBody(this);
  }
  conn->FinishStream(this, status, nullptr);
  conn->CountResponse(status);
  conn->ScheduleSend();
}

void Http2Stream::OnExchangeFailed(upstream::ExchangeFailure why, bool response_started) {
  if (refused) return;
  if (!response_started) {
    if (why == upstream::ExchangeFailure::kNoServer) {
      return conn->RespondError(this, 503, "no_server", exchange.retry_after_s());
    }
    if (why == upstream::ExchangeFailure::kQueueTimeout) {
      return conn->RespondError(this, 503, "queue_timeout", exchange.retry_after_s());
    }
    const bool timed_out = why == upstream::ExchangeFailure::kTimedOut;
    return conn->RespondError(this, timed_out ? 504 : 502,
                              timed_out ? "upstream_timeout" : "upstream_failed");
  }
  conn->FinishStream(this, status, "aborted");
  conn->session().ResetStream(this, NGHTTP2_INTERNAL_ERROR);
  conn->ScheduleSend();
}

void Http2Stream::OnRequestWritable() { conn->ConsumeBody(this); }

bool Http2Stream::TakesResponsePipe() const { return !refused && conn->splices_data(); }

void Http2Stream::OnResponsePiped() {
  if (refused) return;
  conn->session().ResumeData(this);
  conn->ScheduleSend();
}

}  // namespace ktlb
