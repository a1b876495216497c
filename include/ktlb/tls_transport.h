// The TLS transport: one TCP socket carrying TLS, driven by io_uring.
//
// It owns the socket, the SSL and its BIO, the output queue, the handshake,
// the kTLS TX/RX install and resync (../shared/KTLS.md), control records
// (alerts, KeyUpdate), close_notify and the closing linger. Above it sits a
// protocol (the HTTP/1.1 or HTTP/2 connection in the server role; an upstream
// connection in the client role, StartClient), which sees only plaintext and a handful of events through TransportOwner:
// handshake done (ALPN, SNI, version, cipher and peer identity copied out,
// so they outlive the SSL that kTLS lets us free), input arrived, writable,
// closed with a reason, released. The transport knows no HTTP.
//
// Ownership: the owner embeds the transport (pooled objects, reused) and
// outlives it; the transport registers itself with the worker's Loop once.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "ktlb/client_tls.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/error_log.h"
#include "ktlb/ktls.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/output_queue.h"
#include "ktlb/tls.h"
#include "ktlb/unique_fd.h"

namespace ktlb::tls {

// Why the transport closed on its own (the owner did not ask).
enum class CloseReason : uint8_t {
  kPeerGone,        // EOF or reset from the peer, or a failed send
  kHandshakeFailed, // counted in TlsMetrics::handshake_failures
  kProtocolError,   // a fatal TLS error after the handshake (alert sent)
  kKtlsRequired,    // ktls = "require" and offload failed
  kKeyUpdate,       // a KeyUpdate the connection cannot follow
  kPreambleFailed,  // the owner's OnPreamble refused the bytes before TLS
  kPreambleTimeout, // the preamble was not complete within the handshake timeout
};

// What the owner makes of the bytes ahead of TLS (TransportOptions::preamble).
enum class PreambleStatus : uint8_t { kNeedMore, kDone, kFailed };

// What the transport copies out of the SSL when the handshake completes.
struct HandshakeInfo {
  std::string sni;    // "" when the client sent none
  std::string alpn;   // negotiated protocol, "" if none
  int version = 0;    // TLS1_2_VERSION / TLS1_3_VERSION
  const char* cipher = "";  // static in OpenSSL
  bool resumed = false;
  // The client certificate (mTLS), copied out at the handshake's end because
  // kTLS may free the SSL right after. Empty, and never allocated, when the
  // client sent none. A certificate present here was verified: a failed
  // verification fails the handshake.
  bool peer_verified = false;
  std::string peer_subject;      // RFC 2253 ("CN=client,O=Example")
  std::string peer_san;          // "DNS:a.test,URI:spiffe://x,email:a@b.test,IP:10.0.0.1"
  std::string peer_fingerprint;  // SHA-256 of the DER, 64 lowercase hex digits
};

// Fills the peer_* fields of `info` from the handshake's peer certificate
// (resets them when there is none). Values are safe in an HTTP field: bytes
// outside printable ASCII (and ',' / '%' inside a SAN) are %XX-escaped.
void CopyPeerIdentity(const SSL* ssl, HandshakeInfo* info);

// How the owner wants input right now.
enum class InputWanted : uint8_t {
  kNo,    // backpressure: do not read
  kYes,   // read
  kIdle,  // read, but nothing is expected soon (wait for readiness first)
};

class TransportOwner {
 public:
  virtual void OnHandshakeDone() = 0;
  // input() grew, or input_end() changed.
  virtual void OnInput() = 0;
  // A send completed; backlog() may have fallen.
  virtual void OnWritable() = 0;
  // The transport is closing by itself (see CloseReason). Only
  // OnReleased follows.
  virtual void OnTransportClosed(CloseReason why) = 0;
  // The socket is closed and no operation is in flight.
  virtual void OnReleased() = 0;
  virtual InputWanted WantsInput() const = 0;
  // The first bytes are not TLS at all (plain HTTP to the TLS port): the
  // owner may answer with WriteRaw(); the transport then closes.
  virtual void OnNotTls() {}
  // With TransportOptions::preamble: `bytes` is everything received so far,
  // from the first byte. kDone: the first *consumed bytes were the preamble,
  // the rest is TLS. kFailed: the transport closes (kPreambleFailed). The
  // owner bounds the preamble's length (by failing). It must not close the
  // transport from here.
  virtual PreambleStatus OnPreamble(std::string_view bytes, size_t* consumed) {
    (void)bytes;
    *consumed = 0;
    return PreambleStatus::kDone;
  }

 protected:
  ~TransportOwner() = default;
};

// Why no more input will come (input_end()).
enum class InputEnd : uint8_t {
  kNone,
  kCloseNotify,  // the peer closed cleanly: answer what is in flight, then close
  kNoMoreReads,  // a KeyUpdate the kernel cannot follow: nothing more can be read
};

struct TransportOptions {
  Loop* loop = nullptr;
  ErrorLog* log = nullptr;
  TlsMetrics* metrics = nullptr;
  Counter* handshake_timeouts = nullptr;  // the worker's timeouts{kind="handshake"}
  uint32_t handshake_timeout_ms = 10000;
  KtlsMode ktls = KtlsMode::kAuto;
  bool kernel_ktls = false;  // the kernel has the tls ULP and OpenSSL can hand keys over
  // The peer sends something of the owner's before TLS (a PROXY protocol
  // header from an L4 balancer): its bytes go to OnPreamble first, under the
  // handshake timeout. A transport without one never looks for it.
  bool preamble = false;
};

class Transport final : public IoHandler, public DeadlineTarget, public KtlsHooks {
 public:
  Transport() = default;
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Server role: takes `fd` (an accepted socket) and starts the handshake.
  void StartServer(const TransportOptions& options, TransportOwner* owner, int fd,
                   const ServerTlsContext& ctx, std::string_view peer_label);

  // Client role: takes `fd` (a connected socket to `server_host`, a name or
  // an IP literal) and sends the ClientHello. The context decides SNI,
  // verification and ALPN; `session` resumes and receives the server's
  // session (may be null). OnHandshakeDone once the server is verified; a
  // failure is kHandshakeFailed, with verify_error() telling a refused
  // certificate from the rest.
  void StartClient(const TransportOptions& options, TransportOwner* owner, int fd,
                   const ClientTlsContext& ctx, std::string_view server_host,
                   SessionSlot* session, std::string_view peer_label);
  // Client role: the X509_V_ERR_* that failed the handshake (X509_V_OK:
  // it failed for another reason, or did not fail).
  long verify_error() const { return verify_error_; }

  // Hands the connection to another protocol object (ALPN chose HTTP/2):
  // every later event goes to `owner`.
  void SetOwner(TransportOwner* owner) { owner_ = owner; }

  const HandshakeInfo& info() const { return info_; }
  // The peer as log lines name it (the preamble may have told who it is).
  void SetPeerLabel(std::string_view label) { peer_.assign(label); }
  bool handshake_done() const { return state_ != State::kHandshake && state_ != State::kIdle; }

  // --- input ---
  std::string_view input() const {
    return std::string_view(in_).substr(in_off_);
  }
  void Consume(size_t n);
  // Replaces the (fully consumed) input with bytes the owner read from the
  // socket itself (framing read between spliced chunks).
  void SetInput(std::string_view bytes);
  InputEnd input_end() const { return input_end_; }
  // Asks for more input if the owner wants it (after backpressure eased).
  void ResumeInput() { ArmRecv(); }

  // --- output ---
  // Encrypts (or, with both directions in the kernel, queues plaintext).
  // False when the connection cannot take it (it is closing).
  bool Write(std::string_view plain);
  // Bytes that go on the wire as they are (the plaintext answer to a client
  // that did not speak TLS, OnNotTls).
  void WriteRaw(std::string_view bytes) { out_.Append(bytes); }
  // Sends what is queued at the end of this loop turn: everything one turn
  // produces leaves in one send.
  void ScheduleFlush();
  void Flush() { FlushSend(); }
  size_t backlog() const { return out_.bytes(); }

  // --- splice support (kTLS) ---
  int fd() const { return fd_.get(); }
  // TLS_TX is on and nothing of ours is queued: a pipe may write the socket.
  bool tx_offloaded() const { return tx_active_; }
  bool rx_offloaded() const { return rx_active_; }
  bool send_idle() const { return out_.empty() && !send_inflight_; }
  bool recv_inflight() const { return recv_inflight_; }
  // A splice from the socket met a control record (EINVAL/EIO): read it out
  // of band; OnInput follows.
  void ReadControlRecord() { ArmRecvMsg(); }
  // A read of the owner's own (a splice, a framing recv) failed with the
  // kernel's record error `err` (EBADMSG, EMSGSIZE, EINVAL): the alert the
  // RFC asks for goes out, then the close (OnTransportClosed follows).
  void FailReceive(int err) { FailKernelRecord(err); }

  // --- closing ---
  // Graceful: close_notify after what is queued, half-close, wait briefly
  // for the peer's FIN (so unread bytes do not turn into a reset), close.
  void Close();
  // At once; in-flight operations complete, then OnReleased.
  void Abort();
  bool closing() const { return state_ >= State::kClosing; }
  // Idle keep-alive: give back the buffers of a past exchange.
  void ShrinkIdle();

  // IoHandler.
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  void OnDeferred(uint8_t op) override;
  // DeadlineTarget (handshake timeout, linger).
  void OnDeadline(uint8_t kind) override;
  // KtlsHooks (called from inside OpenSSL through the BIO).
  bool OfferTx(const KtlsCryptoInfo& info) override;
  bool OfferRx(const KtlsCryptoInfo& info) override;
  bool TxTaken() const override { return tx_taken_; }
  bool RxTaken() const override { return false; }  // RX is always installed by us
  // The secrets are kept by direction (rx_/tx_): the server receives under
  // the client's secret, a client under the server's.
  void OnClientTrafficSecret(const unsigned char* secret, size_t len) override;
  void OnServerTrafficSecret(const unsigned char* secret, size_t len) override;
  void OnPeerKeyUpdate(bool update_requested) override;

 private:
  enum class State : uint8_t { kIdle, kHandshake, kOpen, kClosing, kLingering, kClosed };
  enum class RxSync : uint8_t { kNone, kPending, kDone };
  enum Op : uint8_t { kRecv = 1, kSend, kRecvMsg, kRecvExact, kDeferredRecv, kDeferredFlush };
  enum TimerKind : uint8_t { kTimerHandshake = 1, kTimerLinger };
  static constexpr uint32_t kLingerMs = 2000;

  uint64_t Tag(uint8_t op) const { return slot_.Tag(op); }
  // Closed, or already released: an owner callback may have ended the
  // connection (and released it, when nothing was in flight) under us.
  bool gone() const { return state_ == State::kClosed || state_ == State::kIdle; }
  void ArmRecv();
  void FlushSend();
  void OnRecv(int res, uint32_t flags);
  void OnSend(int res);
  void DriveTls();
  void HandshakeDone();
  void FailHandshake(int ssl_error);
  // What both roles reset before a connection starts.
  void Reset(const TransportOptions& options, TransportOwner* owner, int fd,
             std::string_view peer_label);
  void StoreSecret(bool rx, const unsigned char* secret, size_t len);
  // A fatal TLS error after the handshake: OpenSSL's alert goes out first.
  void FailProtocol(const char* what);
  // The kernel rejected a record (kTLS RX): send the alert the RFC asks for.
  void FailKernelRecord(int err);
  void CloseBy(CloseReason why);
  void EnterLinger();
  void CloseSocket();
  void MaybeRelease();
  void DeliverInput();
  void AppendInput(std::string_view data);
  // The preamble stage of OnRecv: false when nothing is left for TLS (more
  // is awaited, or the connection is closing); else the TLS bytes that
  // followed the preamble are in *data, or in cipher_stash_ when the
  // preamble had to be reassembled there.
  bool TakePreamble(std::string_view* data);
  // kTLS (transport_ktls.cc).
  void FallBack(KtlsFallback why);
  bool InstallTxNow(const KtlsCryptoInfo& key);
  void StartRxOffload();
  void FinishRxOffload();
  void ArmRecvMsg();
  void ArmRecvExact(size_t n);
  void OnRecvMsg(int res);
  void OnRecvExact(int res);
  void HandleControlRecord(int type, std::string_view payload);
  void HandlePeerKeyUpdate(std::string_view payload);
  void EndReadsAfterKeyUpdate(KeyUpdateClose why, int err);
  // A fatal alert from the kernel's TX (only when TX is offloaded), then close.
  void QueueAlert(uint8_t description);
  void FailWithAlert(uint8_t description, const char* what);
  void WipeTrafficSecrets();
  void MaybeDropSsl();
  void AfterInputEvent();

  Loop* loop_ = nullptr;
  HandlerSlot slot_;
  TransportOwner* owner_ = nullptr;
  ErrorLog* log_ = nullptr;
  TlsMetrics* metrics_ = nullptr;
  Counter* handshake_timeouts_ = nullptr;
  UniqueFd fd_;
  std::string peer_;  // "ip:port", for log lines
  State state_ = State::kIdle;
  DeadlineNode timer_;
  HandshakeInfo info_;
  bool client_ = false;  // the client role (StartClient)
  long verify_error_ = 0;  // X509_V_OK

  UniqueSsl ssl_;
  BioIo bio_;
  std::string cipher_stash_;  // received ciphertext OpenSSL has not taken yet
  OutputQueue out_;
  std::string in_;  // plaintext not yet consumed by the owner
  size_t in_off_ = 0;
  InputEnd input_end_ = InputEnd::kNone;
  bool peer_eof_ = false;  // nothing more will be read from the socket
  bool recv_inflight_ = false;
  bool send_inflight_ = false;
  bool flush_scheduled_ = false;
  bool recv_deferred_ = false;
  bool preamble_pending_ = false;  // OnPreamble has not said kDone yet
  int inflight_ = 0;

  // kTLS state.
  bool ktls_allowed_ = false;
  bool ktls_required_ = false;
  bool tx_taken_ = false;   // OpenSSL handed TX to us; install pending or done
  bool tx_active_ = false;  // TLS_TX is on the socket
  bool rx_active_ = false;  // TLS_RX is on the socket
  bool ulp_attached_ = false;
  bool rx12_offered_ = false;
  bool require_failed_ = false;
  bool fallback_counted_ = false;
  bool peer_keyupdate_seen_ = false;     // OpenSSL itself processed a KeyUpdate
  bool keyupdate_unanswerable_ = false;  // ... asking for an answer OpenSSL cannot give
  bool alert_sent_ = false;  // a fatal alert is queued: no close_notify after it
  RxSync rx_sync_ = RxSync::kNone;
  uint64_t rx_records_ = 0;  // post-handshake records OpenSSL decrypted
  KtlsCryptoInfo rx12_info_;
  // TLS 1.3 application traffic secrets (the peer's for RX, ours for TX):
  // the first from the key-log callback, then each KeyUpdate's successor.
  unsigned char rx_secret_[64] = {};
  size_t rx_secret_len_ = 0;
  unsigned char tx_secret_[64] = {};
  size_t tx_secret_len_ = 0;
  const SSL_CIPHER* tls13_cipher_ = nullptr;  // static in OpenSSL
  KeyUpdateLimiter keyupdate_limiter_;
  // sendmsg / recvmsg state for control records; allocated on first use.
  struct ControlIo {
    msghdr msg{};
    iovec iov{};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
    char data[512];
  };
  std::unique_ptr<ControlIo> send_ctl_;
  std::unique_ptr<ControlIo> recv_ctl_;
  size_t exact_need_ = 0;  // RX resync: bytes still to read into cipher_stash_
};

}  // namespace ktlb::tls
