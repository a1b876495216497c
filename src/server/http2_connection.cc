// The HTTP/2 connection: the transport it took over, the nghttp2 session,
// the streams' lifecycle, output (one Write per loop turn), timers, drain
// and the session's accounting. One stream's request and response are in
// http2_stream.cc; zero-copy DATA in http2_piped_data.cc.
#include "http2_connection.h"

#include <algorithm>

#include "worker.h"

namespace ktlb {

namespace {
// Frames gathered per Write: a few TLS records at most.
constexpr size_t kGather = 64 * 1024;
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
  goaway_timer_.target = this;
  send_scheduled_ = closing_ = closed_ = in_receive_ = transport_released_ = broken_ = false;
  goaway_noticed_ = false;
  piped_ = PipedFrame{};
  poll_out_inflight_ = false;
  inflight_ = 0;
  to_start_.clear();
  live_.clear();
  buffered_ = 0;
  backlog_since_ms_ = 0;
  const http2::Limits& limits = gen->config().server.h2;
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
  if (!transport_released_ || inflight_ > 0 || !draining_.empty()) return;
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
      if (s->tunnel_live) EndTunnel(s, "aborted");
      if (s->log_pending) LogStream(s, s->status, "aborted");
      s->exchange.Abandon();
      s->early_body.clear();
      s->out.clear();
      Recycle(s);
    }
    live_.clear();
    Unbuffer(buffered_);
    to_start_.clear();
    piped_ = PipedFrame{};
    session_.Stop();
    if (poll_out_inflight_) w_->loop().Cancel(slot_.Tag(kPollOut));
  }
  DeadlineQueue::Cancel(&idle_timer_);
  DeadlineQueue::Cancel(&stall_timer_);
  DeadlineQueue::Cancel(&header_timer_);
  DeadlineQueue::Cancel(&goaway_timer_);
}

void Http2Connection::Drain() {
  if (closed_ || closing_ || goaway_noticed_) return;
  goaway_noticed_ = true;
  session_.ShutdownNotice();
  w_->ArmTimer(&goaway_timer_, kTimerFinalGoaway, kFinalGoawayAfterMs);
  ScheduleSend();
}

void Http2Connection::GoAway() {
  if (closed_ || closing_) return;
  closing_ = true;
  DeadlineQueue::Cancel(&goaway_timer_);
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

void Http2Connection::KeepArmed(DeadlineNode* timer, bool wanted, TimeoutKind kind,
                                uint32_t ms) {
  // Armed from when its condition began, not re-armed on every turn.
  if (!wanted) {
    DeadlineQueue::Cancel(timer);
  } else if (!timer->armed()) {
    w_->ArmTimer(timer, static_cast<uint8_t>(kind), ms);
  }
}

void Http2Connection::UpdateTimers() {
  const Timeouts& t = gen_->config().server.timeouts;
  // A header block left unfinished (HEADERS without END_HEADERS and no
  // CONTINUATION) holds a stream open: it gets the request header timeout.
  // Response bytes waiting on the client: its windows (TCP or HTTP/2) must
  // open within the send timeout, counted from the last progress.
  // Each stream's own wait counts (a stream whose window stays shut is
  // cancelled even while others make progress), and so does the
  // transport's: the timer is set for the oldest.
  const uint64_t now = w_->now_ms();
  if (transport_->backlog() == 0) {
    backlog_since_ms_ = 0;
  } else if (backlog_since_ms_ == 0) {
    backlog_since_ms_ = now;
  }
  bool partial_head = false;
  uint64_t oldest = backlog_since_ms_ != 0 ? backlog_since_ms_ : UINT64_MAX;
  for (Http2Stream* s : live_) {
    partial_head = partial_head || (!s->head_done && !s->refused);
    if (s->unsent() > 0 && !s->refused) oldest = std::min(oldest, s->progress_ms);
  }
  KeepArmed(&idle_timer_, live_.empty(), TimeoutKind::kKeepalive, t.keepalive_ms);
  KeepArmed(&header_timer_, partial_head, TimeoutKind::kRequestHeader, t.request_header_ms);
  if (oldest == UINT64_MAX) {
    DeadlineQueue::Cancel(&stall_timer_);
  } else if (!stall_timer_.armed()) {
    // Armed early at worst (progress since moves the deadline): OnDeadline
    // then finds nothing due and UpdateTimers arms it again.
    const uint64_t due = oldest + t.send_ms;
    w_->ArmTimer(&stall_timer_, static_cast<uint8_t>(TimeoutKind::kSend),
                 static_cast<uint32_t>(due > now ? due - now : 0));
  }
}

void Http2Connection::OnDeadline(uint8_t kind) {
  if (closed_) return;
  if (kind == kTimerFinalGoaway) return GoAway();
  auto k = static_cast<TimeoutKind>(kind);
  if (k != TimeoutKind::kSend) w_->CountTimeout(k);
  if (k == TimeoutKind::kKeepalive) return GoAway();
  if (k == TimeoutKind::kRequestHeader) {
    session_.Terminate(NGHTTP2_PROTOCOL_ERROR);
    closing_ = true;
    ScheduleSend();
    return;
  }
  // kSend: the client stopped taking bytes, on the connection (TCP window)
  // or on some streams (their HTTP/2 windows).
  const uint64_t now = w_->now_ms();
  const uint32_t send_ms = gen_->config().server.timeouts.send_ms;
  if (backlog_since_ms_ != 0 && now - backlog_since_ms_ >= send_ms && transport_->backlog() > 0) {
    w_->CountTimeout(k);
    TearDown();
    transport_->Abort();
    return;
  }
  bool expired = false;
  for (Http2Stream* s : live_) {
    if (s->unsent() == 0 || s->refused || now - s->progress_ms < send_ms) continue;
    expired = true;
    if (s->log_pending) LogStream(s, s->status, "send_timeout");
    if (s->tunnel_live) EndTunnel(s, "send_timeout");
    s->exchange.Abandon();
    session_.ResetStream(s, NGHTTP2_CANCEL);
  }
  // Counted once per expiry that cancelled something, as before.
  if (!expired) return UpdateTimers();
  w_->CountTimeout(k);
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
  p->progress_ms = 0;
  p->budget_paused = p->tunnel_req = p->tunnel_live = false;
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
  Unbuffer(s->unsent());
  to_start_.erase(std::remove(to_start_.begin(), to_start_.end(), s), to_start_.end());
  live_.erase(std::remove(live_.begin(), live_.end(), s), live_.end());
  if (s->tunnel_live) EndTunnel(s, error_code == 0 ? nullptr : "reset");
  if (s->log_pending) LogStream(s, s->status, error_code == 0 ? "aborted" : "reset");
  s->exchange.Abandon();
  s->early_body.clear();
  s->out.clear();
  s->out_off = 0;
  // A pooled stream keeps small buffers, not a past body's.
  if (s->out.capacity() > 64 * 1024) std::string().swap(s->out);
  if (s->early_body.capacity() > 64 * 1024) std::string().swap(s->early_body);
  Recycle(s);
  WakeBudgetPaused();
  if (live_.empty()) ScheduleSend();  // idle timer, or the close after a drain
}

void Http2Connection::Recycle(Http2Stream* s) {
  if (s->relay.busy()) {
    draining_.push_back(s);  // back in the pool at OnTunnelReleased
  } else {
    free_.push_back(std::unique_ptr<Http2Stream>(s));
  }
}

void Http2Connection::Buffered(Http2Stream* s, size_t n) {
  // The send timeout counts from when bytes began to wait, not from the
  // stream's last progress long ago.
  if (s->unsent() == n) s->progress_ms = w_->now_ms();
  buffered_ += n;
  gen_->listener_metrics(listener_).h2.response_buffered.Inc(n);
}

void Http2Connection::Unbuffer(size_t n) {
  n = std::min(n, buffered_);
  buffered_ -= n;
  gen_->listener_metrics(listener_).h2.response_buffered.Dec(n);
}

bool Http2Connection::BudgetAllows(const Http2Stream* s) const {
  return s->unsent() == 0 || buffered_ < gen_->config().server.h2.connection_buffer;
}

void Http2Connection::WakeBudgetPaused() {
  if (buffered_ >= gen_->config().server.h2.connection_buffer / 2) return;
  for (Http2Stream* s : live_) {
    if (!s->budget_paused) continue;
    s->budget_paused = false;
    if (s->tunnel_live) {
      s->relay.ResumeDown();
    } else if (s->exchange.active()) {
      s->exchange.OnSinkWritable();
    }
  }
}

uint64_t Http2Connection::now_ms() const { return w_->now_ms(); }

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

bool Http2Connection::OnOutput(std::string_view bytes) {
  wbuf_.append(bytes);
  return wbuf_.size() < kGather;
}

void Http2Connection::OnResponseDataSent(http2::Stream* stream, size_t n) {
  auto* s = static_cast<Http2Stream*>(stream);
  Unbuffer(n);
  // Progress: the stream's send timeout counts from here.
  s->progress_ms = w_->now_ms();
  if (backlog_since_ms_ != 0) backlog_since_ms_ = s->progress_ms;
  if (s->tunnel_live) {
    s->relay.ResumeDown();
  } else if (s->exchange.active() && s->unsent() < upstream::kMaxResponseBacklog / 2) {
    s->exchange.OnSinkWritable();
  }
  WakeBudgetPaused();
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

}  // namespace ktlb
