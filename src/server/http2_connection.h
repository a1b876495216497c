// A client connection that chose HTTP/2 (ALPN h2): the TLS transport below
// (borrowed from the Http1Connection that accepted it), an nghttp2 server
// session (http2::Session), and one upstream exchange per stream.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ktlb/cluster.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/exchange.h"
#include "ktlb/http1.h"
#include "ktlb/http2.h"
#include "ktlb/loop.h"
#include "ktlb/tls_transport.h"
#include "http2_tunnel.h"

namespace ktlb {

class Generation;
class Worker;
class Http2Connection;

// One request stream: the session's view of it plus its upstream exchange.
class Http2Stream final : public http2::Stream,
                          public upstream::ExchangeSink,
                          public Http2Tunnel::Host {
 public:
  // upstream::ExchangeSink.
  void OnResponseHead(const http1::ResponseHead& head) override;
  void OnResponseBody(std::string_view bytes) override;
  void OnResponseTrailers(const std::vector<http1::Header>& trailers) override;
  void OnResponseComplete() override;
  void OnExchangeFailed(upstream::ExchangeFailure why, bool response_started) override;
  void OnRequestWritable() override;
  size_t ResponseBacklog() const override;
  bool TakesResponsePipe() const override;
  void OnResponsePiped() override;
  void OnUpgraded(UniqueFd backend, std::string_view already_read) override;
  // Http2Tunnel::Host (http2_websocket.cc).
  bool TunnelDownFull() const override;
  void OnTunnelDown(std::string_view bytes) override;
  void OnTunnelDownEnd() override;
  void OnTunnelUpSent(size_t n) override;
  void OnTunnelFailed(const char* error) override;
  void OnTunnelReleased() override;

  Http2Connection* conn = nullptr;
  upstream::Exchange exchange;
  http1::RequestHead req_head;  // the request as HTTP/1.1 sees it
  std::string up_head;  // the HTTP/1.1 request head for the backend
  const upstream::Cluster* cluster = nullptr;
  bool exchange_started = false;
  bool chunked_up = false;     // the body goes upstream chunked (no content-length)
  bool body_closed = false;    // the body's end went upstream
  bool discard_body = false;   // answered already: request bytes are dropped
  std::string early_body;      // body bytes that came before the exchange started
  size_t unconsumed = 0;       // body bytes not yet given back to the client's window
  int status = 0;
  bool log_pending = false;
  uint64_t start_ms = 0;
  uint64_t resp_bytes = 0;
  std::string nv_storage;
  std::vector<nghttp2_nv> nva;
  // Send timeout: when the stream's unsent bytes last moved (or appeared).
  uint64_t progress_ms = 0;
  // Paused by the connection's response budget: woken when it frees up.
  mutable bool budget_paused = false;
  // RFC 8441 extended CONNECT: the request, and the relay once the backend
  // answered 101 (tunnel_live: counted in the active gauge).
  bool tunnel_req = false;
  bool tunnel_live = false;
  char ws_key[25] = {};  // Sec-WebSocket-Key ktlb sends the backend
  Http2Tunnel relay;
};

class Http2Connection final : public IoHandler,
                              public DeadlineTarget,
                              public tls::TransportOwner,
                              public http2::SessionOwner {
 public:
  // Told when the transport is released (the host pools both objects).
  class Host {
   public:
    virtual void OnHttp2Released() = 0;

   protected:
    ~Host() = default;
  };

  // Takes over `transport` right after its handshake chose h2.
  void Start(Worker* w, Generation* gen, size_t listener, tls::Transport* transport,
             std::string_view peer_ip, uint16_t peer_port, Host* host);
  // Graceful close in two steps (RFC 9113 6.8): a GOAWAY notice that still
  // admits streams the client has on the way, then, kFinalGoawayAfterMs
  // later, the GOAWAY with the last stream id; streams in flight finish,
  // then the connection closes.
  void Drain();
  void LogIfPending(const char* error);

  // tls::TransportOwner.
  void OnHandshakeDone() override {}
  void OnInput() override;
  void OnWritable() override;
  void OnTransportClosed(tls::CloseReason why) override;
  void OnReleased() override;
  tls::InputWanted WantsInput() const override;
  // IoHandler (the end-of-turn send).
  void OnDeferred(uint8_t op) override;
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  // DeadlineTarget.
  void OnDeadline(uint8_t kind) override;

  // http2::SessionOwner.
  http2::Stream* OpenStream(int32_t id) override;
  void OnRequestHead(http2::Stream* s) override;
  void OnRequestData(http2::Stream* s, std::string_view data) override;
  void OnRequestEnd(http2::Stream* s) override;
  void OnStreamClosed(http2::Stream* s, uint32_t error_code) override;
  bool OnOutput(std::string_view bytes) override;
  void OnResponseDataSent(http2::Stream* s, size_t n) override;
  void OnRefused(http2::Refusal r) override;
  void OnGlitch(http2::Glitch g, bool exhausted) override;
  void OnResetSent(uint32_t code) override;
  void OnResetReceived(uint32_t code) override;
  void OnGoawaySent(uint32_t code) override;
  size_t PipedBytes(http2::Stream* s) override;
  int SendPipedData(http2::Stream* s, const uint8_t* framehd, size_t length) override;

  // --- for the streams ---
  // Response DATA may be spliced: the kernel encrypts (kTLS TX).
  bool splices_data() const { return !closed_ && transport_->tx_offloaded(); }
  http2::Session& session() { return session_; }
  // Sends what the session has queued at the end of this loop turn.
  void ScheduleSend();
  void FinishStream(Http2Stream* s, int status, const char* error);
  // Gives request window back for what the backend took.
  void ConsumeBody(Http2Stream* s);
  void SendBodyUpstream(Http2Stream* s, std::string_view data);
  void EndBodyUpstream(Http2Stream* s);
  // ktlb's own small answer (404, 501, 502, 503, 504); `retry_after_s`, if
  // not 0, becomes a retry-after field (503: every server is down).
  void RespondError(Http2Stream* s, int status, const char* error, uint32_t retry_after_s = 0);
  void CountResponse(int status);
  // --- the connection's response budget (h2_connection_buffer) ---
  // `n` bytes joined s->out (ktlb's own answer, the backend's, a tunnel's).
  void Buffered(Http2Stream* s, size_t n);
  // Whether s may buffer more response bytes now: while the connection is
  // under h2_connection_buffer, or while s holds nothing unsent (so streams
  // whose clients do not read cannot starve the others). A connection then
  // holds at most the budget plus one receive buffer per stream.
  bool BudgetAllows(const Http2Stream* s) const;
  // `n` of them left (sent, or dropped with their stream).
  void Unbuffer(size_t n);
  // --- RFC 8441 (http2_websocket.cc) ---
  void PrepareTunnelRequest(Http2Stream* s);
  // The backend's 101: the client's answer is a 200 (RFC 8441 5).
  void AcceptTunnelHead(Http2Stream* s, const http1::ResponseHead& head);
  void StartTunnel(Http2Stream* s, UniqueFd backend, std::string_view already_read);
  // The stream is over for its tunnel: stop it, log, and keep the stream out
  // of the pool until the tunnel's operations are back.
  void EndTunnel(Http2Stream* s, const char* error);
  void OnTunnelReleased(Http2Stream* s);
  uint64_t now_ms() const;

 private:
  enum Op : uint8_t { kSend = 1, kPollOut };
  enum TimerKind : uint8_t { kTimerIdle = 1, kTimerStall };
  // A timer kind past the counted TimeoutKinds (and the worker's trim).
  static constexpr uint8_t kTimerFinalGoaway = static_cast<uint8_t>(TimeoutKind::kCount) + 1;
  // About a round trip and then some, as h2o: a request the client sent
  // before it saw the notice arrives within it.
  static constexpr uint32_t kFinalGoawayAfterMs = 1000;
  // The final GOAWAY; the connection closes once its streams are done.
  void GoAway();
  // Stop producing frames while this much waits in the transport.
  static constexpr size_t kOutputHighWater = 256 * 1024;

  // Returns a closed stream to the pool, or parks it while its tunnel is busy.
  void Recycle(Http2Stream* s);
  void WakeBudgetPaused();
  void StartStreams();
  void StartExchange(Http2Stream* s);
  void Pump();
  void UpdateTimers();
  // Arms `timer` while `wanted` holds (once), cancels it when not.
  void KeepArmed(DeadlineNode* timer, bool wanted, TimeoutKind kind, uint32_t ms);
  void CloseWhenDone();
  void TearDown();
  void LogStream(Http2Stream* s, int status, const char* error);
  void MaybeRelease();
  // Finishes the piped DATA frame in progress with zero bytes.
  void PadPipedFrame();

  Worker* w_ = nullptr;
  Generation* gen_ = nullptr;
  Host* host_ = nullptr;
  HandlerSlot slot_;
  size_t listener_ = 0;
  std::string peer_ip_;
  uint16_t peer_port_ = 0;
  tls::Transport* transport_ = nullptr;
  http2::Session session_;
  DeadlineNode idle_timer_;
  DeadlineNode stall_timer_;
  DeadlineNode goaway_timer_;  // from the notice to the final GOAWAY
  DeadlineNode header_timer_;
  std::string wbuf_;  // frames of this turn, written to the transport at once
  bool send_scheduled_ = false;
  bool closing_ = false;
  bool goaway_noticed_ = false;  // Drain() sent the first GOAWAY
  bool closed_ = false;
  bool in_receive_ = false;
  bool transport_released_ = false;
  bool broken_ = false;  // a piped frame was cut short: close
  // Zero-copy DATA (SendPipedData): the frame being written, which nghttp2
  // asks for again after a WOULDBLOCK until it is complete.
  struct PipedFrame {
    Http2Stream* stream = nullptr;
    uint8_t header[9] = {};
    size_t header_sent = 0;
    size_t left = 0;  // payload bytes still to splice
  } piped_;
  bool poll_out_inflight_ = false;
  int inflight_ = 0;
  std::vector<Http2Stream*> to_start_;  // streams whose exchange starts after this read
  std::vector<Http2Stream*> live_;
  std::vector<std::unique_ptr<Http2Stream>> free_;
  // Closed streams whose tunnel still has operations in flight.
  std::vector<Http2Stream*> draining_;
  size_t buffered_ = 0;  // unsent response bytes over all streams
  // Since when the transport holds unsent bytes with no DATA made (0: none).
  uint64_t backlog_since_ms_ = 0;
};

}  // namespace ktlb
