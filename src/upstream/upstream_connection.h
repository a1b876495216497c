// A connection from a worker to one backend server, carrying one HTTP/1.1
// exchange at a time, then parked in its cluster's keep-alive pool.
// Private to src/upstream: the rest of ktlb sees Exchange and Cluster.
//
// Its bytes go over one of two channels: the plain socket, driven here by
// io_uring, or (the cluster has `tls`) the TLS transport in its client role
// (upstream_tls.cc), which owns the socket once the TCP connect is done.
// Everything above the channel (the HTTP/1.1 framing, pooling, backpressure,
// timeouts) is one code path: bytes arrive in OnBytes / OnPeerEnd, leave
// through out_ and FlushSend, and the backlog is SendBacklog().
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ktlb/cluster.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/exchange.h"
#include "ktlb/http1.h"
#include "ktlb/loop.h"
#include "ktlb/splice_pipe.h"
#include "ktlb/tls_transport.h"
#include "ktlb/unique_fd.h"

namespace ktlb::upstream {

class UpstreamConnection final : public IoHandler,
                                 public DeadlineTarget,
                                 private http1::BodyVisitor,
                                 private tls::TransportOwner {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  // Opens a socket and starts a connect; false (and counted) if the socket
  // could not even be created.
  bool Connect(Cluster* cluster, size_t server);
  // Binds to an exchange and sends its request head.
  void Begin(Exchange* exchange);
  // More request bytes (body) to send.
  void Send(std::string_view bytes);
  // The sink consumed output: resume reading the response if it was paused.
  void OnSinkWritable();
  // The client is still sending the request body: the response deadline
  // counts from the last byte of it, not from the head.
  void RequestBodyProgress();
  // The exchange was given up: close (the connection cannot be reused safely).
  void Abandon();
  // Shut down an idle pooled connection (drain / pool overflow).
  void CloseIdle();

  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  void OnDeferred(uint8_t op) override;
  void OnDeadline(uint8_t kind) override;

  size_t server() const { return server_; }
  // The socket a request body may be spliced into: the plain one, or a TLS
  // one whose TX the kernel encrypts (kTLS); -1 when bytes must go through
  // the TLS transport.
  int fd() const;
  bool connected() const { return state_ == State::kActive; }
  bool reused() const { return reused_; }
  // The connect succeeded (now or, pooled, earlier): request bytes may have
  // reached the backend.
  bool reached_server() const { return connected_once_; }
  // The TLS handshake with the server failed (no request byte left).
  bool tls_failed() const { return tls_failed_; }
  size_t SendBacklog() const {
    return out_.size() + (sending_.size() - sending_off_) + (tls_live_ ? tls_->backlog() : 0);
  }
  // A piped response body (StartPipe): bytes waiting in the pipe, and a
  // splice of up to `max` of them into `fd` (bytes moved, or -errno).
  size_t PipedBytes() const { return pipe_mode_ ? pipe_.in_pipe() : 0; }
  long SplicePipedTo(int fd, size_t max);
  bool idle() const { return state_ == State::kIdle; }

 private:
  enum class State { kConnecting, kActive, kIdle, kClosing, kClosed };
  enum Op : uint8_t { kRecv = 1, kSend, kConnect, kPollIn, kPollOut, kRetryRecv };

  uint64_t Tag(uint8_t op) const;
  void OnConnect(int res);
  void OnRecv(int res, uint32_t flags);
  // What either channel received: response bytes, or the end of them.
  void OnBytes(std::string_view data);
  void OnPeerEnd(bool error);
  void OnSend(int res);
  void ArmRecv();
  void FlushSend();
  void HandleBytes(std::string_view data);
  // http1::BodyVisitor: a decoded body (ExchangeRequest::decode_body).
  void OnBodyData(std::string_view data) override;
  void OnTrailerBytes(std::string_view bytes) override;
  void DeliverTrailers();
  // Splice (response_splice.cc): a large Content-Length body, or the data
  // of large chunks, to a kTLS client moves backend socket -> pipe -> client
  // socket without entering userspace.
  void StartSplice(uint64_t n);
  // The same into a pipe the sink drains itself (ExchangeSink::TakesResponsePipe).
  void StartPipe(uint64_t n);
  void PumpPipe();
  void OnSplicePoll(uint8_t op, int res);
  void Pump();
  void ReadFraming();
  void EndSplice(bool ok);
  void ArmPoll(int fd, bool out);
  // Fails the attempt; the exchange decides about a retry.
  void Fail(bool timed_out);
  // The response broke after its head reached the sink.
  void Abort();
  void CloseNow();
  void MaybeRelease();
  void Finish();
  // A 101 to an upgrade request: once the request has left completely, the
  // socket goes to the exchange's sink (OnUpgraded) and this object is done.
  void BeginHandOver(std::string_view already_read);
  void TryHandOver();
  ExchangeSink* sink() const { return exchange_ != nullptr ? exchange_->sink() : nullptr; }
  // Whether the response may bypass the channel: a plain socket, or a TLS
  // one whose RX the kernel decrypts (kTLS) with nothing of it read ahead.
  bool SpliceFromBackend() const {
    return !tls_on_ || (tls_live_ && tls_->rx_offloaded() && !tls_->recv_inflight() &&
                        tls_->input().empty() && tls_->input_end() == tls::InputEnd::kNone);
  }
  // The socket the response is spliced from.
  int backend_fd() const { return tls_on_ ? (tls_live_ ? tls_->fd() : -1) : fd_.get(); }
  // A splice from a kTLS backend stopped at a record that is not data
  // (EINVAL/EIO: an alert, a KeyUpdate, a ticket) or that the kernel refused:
  // the transport reads or answers it; true when it took over.
  bool TlsSpliceStopped();

  // --- the TLS channel (upstream_tls.cc) ---
  // After the TCP connect: hands the socket to the transport and starts
  // the handshake (the connect timer covers it).
  void StartTls();
  void TlsFlush();
  void TlsArmRecv();
  void TlsClose();
  // tls::TransportOwner.
  void OnHandshakeDone() override;
  void OnInput() override;
  void OnWritable() override;
  void OnTransportClosed(tls::CloseReason why) override;
  void OnReleased() override;
  tls::InputWanted WantsInput() const override;

  Cluster* cluster_ = nullptr;
  Loop* loop_ = nullptr;
  HandlerSlot slot_;
  UniqueFd fd_;
  size_t server_ = 0;
  State state_ = State::kClosed;
  Exchange* exchange_ = nullptr;
  DeadlineNode timer_;

  std::string out_;
  std::string sending_;
  size_t sending_off_ = 0;
  bool recv_inflight_ = false;
  bool send_inflight_ = false;
  bool connect_inflight_ = false;
  int inflight_ = 0;

  bool reused_ = false;
  bool connected_once_ = false;
  bool tls_failed_ = false;
  bool got_bytes_ = false;
  bool head_done_ = false;
  bool resp_done_ = false;
  bool reusable_ = false;
  bool upgrading_ = false;    // a 101 arrived; waiting for our sends to finish
  std::string upgrade_rest_;  // bytes read past the 101 head
  SplicePipe pipe_;  // active while a response body is being spliced
  bool pipe_mode_ = false;  // ... into a pipe the sink drains (StartPipe)
  bool poll_in_inflight_ = false;
  bool poll_out_inflight_ = false;
  std::optional<http1::ResponseParser> parser_;
  http1::ResponseHead head_;
  std::string head_buf_;
  std::string trailer_bytes_;  // a decoded chunked body's trailer section
  std::vector<http1::Header> trailers_;

  // TLS channel: tls_on_ for the life of a connection to a TLS upstream;
  // tls_live_ while the transport holds the socket (counted in inflight_).
  // The transport is kept across reuses of this pooled object.
  std::unique_ptr<tls::Transport> tls_;
  bool tls_on_ = false;
  bool tls_live_ = false;
  std::string tls_rx_;  // plaintext taken from the transport, being parsed
};

}  // namespace ktlb::upstream
