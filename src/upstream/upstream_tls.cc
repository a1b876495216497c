// The TLS channel of an upstream connection: the TLS transport in its client
// role carries the same HTTP/1.1 bytes the plain socket would. The TCP
// connect is ours (upstream_connection.cc); then the transport takes the
// socket, verifies the server, and from OnHandshakeDone on every byte goes
// through it: out_ is encrypted on FlushSend, plaintext comes back through
// OnInput into OnBytes, and WantsInput carries the client's backpressure.
#include <openssl/x509.h>

#include <cerrno>

#include "upstream_connection.h"

namespace ktlb::upstream {

void UpstreamConnection::StartTls() {
  if (!tls_) tls_ = std::make_unique<tls::Transport>();
  tls::TransportOptions o;
  o.loop = loop_;
  o.log = &cluster_->log();
  o.metrics = &cluster_->metrics().tls;
  // The connect timer (armed in Connect) still runs and bounds the
  // handshake too; the transport's own is the same length.
  o.handshake_timeout_ms = cluster_->limits().connect_timeout_ms;
  o.ktls = cluster_->tls()->config().ktls;
  o.kernel_ktls = cluster_->kernel_ktls();
  const Server& server = cluster_->server(server_);
  tls_live_ = true;
  ++inflight_;  // the transport, until OnReleased
  tls_->StartClient(o, this, fd_.release(), *cluster_->tls(),
                    server.host.empty() ? tls::HostOfAddress(server.address.text)
                                        : std::string_view(server.host),
                    cluster_->tls_session(server_),
                    server.address.text);
}

void UpstreamConnection::OnHandshakeDone() {
  if (state_ != State::kConnecting) return;
  state_ = State::kActive;
  connected_once_ = true;  // from here request bytes may reach the server
  loop_->ArmTimer(&timer_, static_cast<uint8_t>(TimeoutKind::kUpstreamResponse),
                  cluster_->limits().response_timeout_ms);
  FlushSend();  // the request head waited in out_
}

void UpstreamConnection::TlsFlush() {
  if (!tls_live_ || state_ != State::kActive) return;
  if (!out_.empty()) {
    if (!tls_->Write(out_)) return;  // closing: OnTransportClosed follows
    out_.clear();
  }
  tls_->ScheduleFlush();
}

void UpstreamConnection::TlsArmRecv() {
  // The transport reads whenever WantsInput lets it; this only tells it
  // that backpressure eased.
  if (tls_live_ && tls_->handshake_done()) tls_->ResumeInput();
}

void UpstreamConnection::TlsClose() {
  // After a complete exchange the server gets a close_notify; otherwise
  // (a failure, a response cut short) the socket just closes.
  if (tls_->handshake_done() && resp_done_ && !tls_->closing()) {
    tls_->Close();
  } else {
    tls_->Abort();
  }
}

tls::InputWanted UpstreamConnection::WantsInput() const {
  if (state_ == State::kIdle) return tls::InputWanted::kIdle;  // watch for the server closing
  // A splice reads the socket itself (kTLS RX).
  if (state_ != State::kActive || resp_done_ || sink() == nullptr || pipe_.active()) {
    return tls::InputWanted::kNo;
  }
  if (sink()->ResponseBacklog() >= kMaxResponseBacklog) return tls::InputWanted::kNo;
  return got_bytes_ ? tls::InputWanted::kYes : tls::InputWanted::kIdle;
}

void UpstreamConnection::OnInput() {
  if (state_ == State::kClosed) return;
  if (pipe_.active() && tls_->input().empty() && tls_->input_end() == tls::InputEnd::kNone) {
    // The control record that stopped a splice was read: it goes on.
    return pipe_mode_ ? PumpPipe() : Pump();
  }
  if (pipe_.active() && !tls_->input().empty()) {
    // Data read around the splice would reach the client out of order.
    cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "%s: data record read during a splice",
                        cluster_->server(server_).address.text.c_str());
    return Abort();
  }
  // The plaintext is copied out before parsing: a sink callback may close
  // this connection, which releases the transport's buffer under us.
  std::string_view in = tls_->input();
  if (!in.empty()) {
    tls_rx_.assign(in);
    tls_->Consume(in.size());
    OnBytes(tls_rx_);
    tls_rx_.clear();
  }
  if (state_ != State::kClosed && tls_live_ && tls_->input_end() != tls::InputEnd::kNone) {
    // close_notify (or reads the kernel cannot go on with): the end of
    // the bytes, like a FIN.
    OnPeerEnd(false);
  }
}

bool UpstreamConnection::TlsSpliceStopped() {
  if (!tls_on_ || !tls_live_) return false;
  const int err = pipe_.error();
  if (err == EINVAL || err == EIO) {
    tls_->ReadControlRecord();  // OnInput resumes the splice
    return true;
  }
  if (err == EBADMSG || err == EMSGSIZE) {
    tls_->FailReceive(err);  // the alert, then OnTransportClosed
    return true;
  }
  return false;
}

void UpstreamConnection::OnWritable() {
  if (state_ != State::kActive) return;
  if (sink() != nullptr && SendBacklog() == 0) sink()->OnRequestWritable();
}

void UpstreamConnection::OnTransportClosed(tls::CloseReason why) {
  if (state_ == State::kClosed) return;
  if (why == tls::CloseReason::kHandshakeFailed) {
    UpstreamMetrics& m = cluster_->metrics();
    const bool refused = tls_->verify_error() != X509_V_OK;
    (refused ? m.tls_verify_failures : m.tls_handshake_failures).Inc();
    cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "%s to %s failed%s%s",
                        refused ? "upstream_tls_verify" : "upstream tls handshake",
                        cluster_->server(server_).address.text.c_str(), refused ? ": " : "",
                        refused ? X509_verify_cert_error_string(tls_->verify_error()) : "");
    tls_failed_ = true;
    return Fail(false);
  }
  OnPeerEnd(why != tls::CloseReason::kPeerGone);
}

void UpstreamConnection::OnReleased() {
  tls_live_ = false;
  --inflight_;
  MaybeRelease();
}

}  // namespace ktlb::upstream
