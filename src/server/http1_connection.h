// A client connection on a terminate listener speaking HTTP/1.1: the TLS
// transport below (tls::Transport), the HTTP/1 codec (http1::RequestParser),
// and one upstream exchange at a time (pipelined requests wait in the
// transport's input, so responses go out in request order).
// It is the pooled object every accepted connection starts as: when ALPN
// picks h2 it hands its transport to an Http2Connection it keeps for that.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>

#include "ktlb/cluster.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/exchange.h"
#include "ktlb/http1.h"
#include "ktlb/loop.h"
#include "ktlb/proxy_header_stage.h"
#include "ktlb/splice_pipe.h"
#include "ktlb/tls.h"
#include "ktlb/tls_transport.h"
#include "http2_connection.h"
#include "websocket_tunnel.h"

namespace ktlb {

class Generation;
class Worker;

class Http1Connection final : public IoHandler,
                              public DeadlineTarget,
                              public tls::TransportOwner,
                              public upstream::ExchangeSink,
                              private Http2Connection::Host,
                              private WebSocketTunnel::Host {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  // `gen`: the worker's generation this connection lives on (referenced).
  void Start(Worker* w, Generation* gen, size_t listener_index, int fd,
             const sockaddr_storage& peer);

  // Drain: close now if idle between requests, else after the current response.
  void Drain();
  // The drain deadline cuts this connection: log the request in flight.
  void LogIfPending(const char* error);

  // upstream::ExchangeSink: the current request's exchange reports here;
  // this side writes the HTTP/1.1 response the client sees.
  void OnResponseHead(const http1::ResponseHead& head) override;
  void OnResponseBody(std::string_view bytes) override;
  void OnResponseComplete() override;
  void OnExchangeFailed(upstream::ExchangeFailure why, bool response_started) override;
  void OnRequestWritable() override;
  size_t ResponseBacklog() const override { return transport_.backlog() + pending_head_.size(); }
  // Splice support: the kernel encrypts what is written to the socket (TLS_TX
  // is on) and nothing of ours is queued before it, so bytes may go straight
  // from a pipe to the socket.
  int ResponseSpliceFd() const override;
  bool ResponseSpliceReady() const override;
  void OnResponseSpliced(uint64_t n) override;
  // A 101 to an upgrade request: the connection becomes a tunnel
  // (http1_upgrade.cc).
  void OnUpgraded(UniqueFd backend, std::string_view already_read) override;

  // IoHandler (splice readiness polls, the response head flush).
  void OnDeferred(uint8_t op) override;
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  // DeadlineTarget.
  void OnDeadline(uint8_t kind) override;
  // tls::TransportOwner.
  void OnHandshakeDone() override;
  void OnInput() override;
  void OnWritable() override;
  void OnTransportClosed(tls::CloseReason why) override;
  void OnReleased() override;
  tls::InputWanted WantsInput() const override;
  void OnNotTls() override;
  // accept_proxy: the PROXY header ahead of TLS names the client.
  tls::PreambleStatus OnPreamble(std::string_view bytes, size_t* consumed) override;

 private:
  static constexpr size_t kPlainChunk = 16 * 1024;  // slack over the head limit
  // Draining: how long a quiet keep-alive connection may still send one
  // more request (answered with Connection: close) before it is closed.
  static constexpr uint32_t kDrainQuietMs = 1000;
  enum Op : uint8_t { kPollIn = 1, kPollOut, kFlushHead };

  enum class State { kIdle, kHandshake, kReadingHead, kProxying, kTunnel, kClosing, kClosed, kHttp2 };
  // Http2Connection::Host: the h2 connection let the transport go.
  void OnHttp2Released() override;
  // WebSocketTunnel::Host (http1_upgrade.cc).
  void OnTunnelEnded(const char* error, bool graceful) override;
  void OnTunnelReleased() override;
  // The tunnel's access log line and gauge, once, however it ends.
  void FinishTunnel(const char* error);

  uint64_t Tag(uint8_t op) const;
  int fd() const { return transport_.fd(); }
  void ProcessPlain();
  void HandleInputEnd();
  void StartExchange();
  void FinishExchange();
  // Response bytes (the head, or body) to encrypt and send at the turn's end.
  void SendToClient(std::string_view plain);
  // True when this response is the connection's last (say "Connection: close").
  bool closing_after_response() const;
  // The response head waits for the first body bytes so both leave in one
  // TLS record; at the end of the loop turn at the latest.
  void WritePendingHead();
  void RespondError(int status, bool close, uint32_t retry_after_s = 0);
  // Access log: the request's fields are taken from its head at the start,
  // the line is written once, when the response is complete or given up.
  void LogRequestStart();
  void LogRequest(int status, const char* error);
  void RefuseRequest(http1::RequestError e);
  void BeginClose();  // flush what is queued, close_notify, close
  void CloseNow();
  // Everything this connection holds for an exchange is let go (the
  // transport is closing, by our hand or its own).
  void TearDown();
  void MaybeRelease();
  void ShrinkIdleBuffers();
  void ForwardRequestBody();
  // A malformed body after the head went upstream: 400 if nothing was
  // answered yet, else close.
  void FailRequestBody();
  // Request bodies (http1_request_splice.cc): a large Content-Length body,
  // or the data of large chunks, from a kTLS RX socket moves client socket
  // -> pipe -> backend socket.
  void MaybeSpliceRequestBody();
  void PumpRequestBody();
  void ReadRequestFraming();
  void StopRequestSplice(bool done);
  void ArmSplicePoll(int fd, bool out);
  void OnSplicePoll(uint8_t op, int res);

  Worker* w_ = nullptr;
  Generation* gen_ = nullptr;
  HandlerSlot slot_;
  size_t listener_ = 0;
  // The client: the socket's peer, or what its PROXY header says.
  std::string peer_ip_;
  uint16_t peer_port_ = 0;
  passthrough::ProxyHeaderStage proxy_header_;
  tls::Transport transport_;
  bool transport_released_ = true;
  // Made on the first h2 connection this slot carries, then reused.
  std::unique_ptr<Http2Connection> h2_;
  int inflight_ = 0;  // our own operations (splice polls)

  State state_ = State::kIdle;
  DeadlineNode timer_;
  DeadlineNode trim_timer_;  // idle keep-alive: release buffers (kTimerTrim)

  std::optional<http1::RequestParser> parser_;
  http1::Limits parser_limits_;
  http1::RequestHead head_;
  std::string up_head_;  // the rewritten request head for the upstream
  std::string scratch_;
  std::string pending_head_;  // the response head, until the first body bytes join it
  bool head_flush_scheduled_ = false;

  // The current exchange.
  upstream::Exchange exchange_;
  const upstream::Cluster* cluster_ = nullptr;  // of the current request, for the log
  bool req_body_done_ = true;
  bool resp_head_seen_ = false;
  bool resp_done_ = false;
  bool keep_alive_ = true;
  bool request_has_body_ = false;
  bool upgrade_requested_ = false;  // a 101 to this request opens a tunnel
  WebSocketTunnel tunnel_;
  int resp_status_ = 0;
  int request_version_minor_ = 1;
  uint64_t req_content_length_ = 0;  // 0 unless the body is Content-Length framed
  uint64_t req_body_seen_ = 0;       // body bytes forwarded by the parser path
  SplicePipe req_pipe_;  // active while a request body is being spliced
  bool splice_poll_in_ = false;
  bool splice_poll_out_ = false;
  // Access log state of the current request.
  bool log_pending_ = false;
  const char* refuse_reason_ = nullptr;  // a request refused before it had a head
  uint64_t log_start_ms_ = 0;
  uint64_t resp_bytes_ = 0;  // response bytes to the client, spliced ones included
  int64_t tunnel_bytes_up_ = -1;  // a tunnel's client -> backend bytes, logged as "bytes_up"
  std::string log_req_;      // its "method", "target" and "host" members, JSON
};

}  // namespace ktlb
