// A client connection on a terminate listener: TLS over io_uring, then
// HTTP/1.1 requests proxied one at a time (pipelined requests wait in the
// plaintext buffer, so responses go out in request order).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ktlb/deadline_queue.h"
#include "ktlb/http1.h"
#include "ktlb/ktls.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/output_queue.h"
#include "ktlb/splice_pipe.h"
#include "ktlb/tls.h"

namespace ktlb {

class Worker;
class UpstreamConnection;

class ClientConnection final : public DeadlineTarget, public tls::KtlsHooks {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  void Start(Worker* w, size_t listener_index, int fd, const sockaddr_storage& peer,
             const tls::ServerTlsContext& tls);

  void OnRecv(int res, uint32_t flags);
  void OnSend(int res);
  // Completions of the kTLS side paths (control records, RX resync reads).
  void OnRecvMsg(int res);
  void OnRecvExact(int res);
  // Readiness for the request-body splice pump (client_splice.cc).
  void OnSplicePoll(uint8_t op, int res);
  void OnDeadline(uint8_t kind) override;
  // Arms the recv again after the buffer ring ran dry.
  void RetryRecv() { ArmRecv(); }
  // Drain: close now if idle between requests, else after the current response.
  void Drain();
  // The drain deadline cuts this connection: log the request in flight.
  void LogIfPending(const char* error);

  // --- called by the UpstreamConnection serving the current request ---
  // Response bytes (head already rewritten, or body) to encrypt and send.
  void SendToClient(std::string_view plain);
  // The worker's end-of-turn flush for SendToClient.
  void OnScheduledFlush();
  // The response is complete; `upstream_reusable` says nothing is left unread.
  void OnResponseComplete(int status);
  // The response head arrived (used for the status metric and keep-alive).
  void OnResponseHead(int status, bool close_after);
  // The upstream failed before a response head: 502/504 or a retry.
  void OnUpstreamFailed(bool timed_out, bool got_response_bytes);
  // The upstream failed mid-response: the client connection cannot be saved.
  void OnUpstreamAborted();
  // Bytes queued towards the client, for upstream backpressure.
  size_t ClientBacklog() const { return out_.bytes(); }
  // Splice support: the kernel encrypts what is written to the socket (TLS_TX
  // is on) and nothing of ours is queued before it, so bytes may go straight
  // from a pipe to the socket.
  bool CanSplice() const { return tx_active_ && state_ == State::kProxying; }
  bool SpliceReady() const { return out_.empty() && !send_inflight_ && state_ == State::kProxying; }
  int fd() const { return fd_; }
  void CountSpliced(uint64_t n);
  // The upstream drained its send queue: more request body may be read.
  void OnUpstreamWritable();
  const std::string& upstream_request_head() const { return up_head_; }
  bool request_body_pending() const { return !req_body_done_; }

  // tls::KtlsHooks (called from inside OpenSSL through the BIO).
  bool OfferTx(const tls::KtlsCryptoInfo& info) override;
  bool OfferRx(const tls::KtlsCryptoInfo& info) override;
  bool TxTaken() const override { return tx_taken_; }
  bool RxTaken() const override { return false; }  // RX is always installed by us
  void OnClientTrafficSecret(const unsigned char* secret, size_t len) override;
  void OnServerTrafficSecret(const unsigned char* secret, size_t len) override;
  void OnPeerKeyUpdate(bool update_requested) override {
    peer_keyupdate_seen_ = true;
    // OpenSSL's answer would go out under keys the kernel does not use: TX
    // is the kernel's (KTLS.md: OpenSSL must never rekey an offloaded
    // direction). The connection is closed before OpenSSL writes again.
    if (update_requested && tx_taken_) keyupdate_unanswerable_ = true;
  }
  int request_version_minor() const { return request_version_minor_; }
  // True when this response is the connection's last (say "Connection: close").
  bool closing_after_response() const;

 private:
  // Stop decrypting more client bytes while this much is queued either way;
  // it bounds a connection's memory however large the bodies are.
  static constexpr size_t kMaxUpstreamBacklog = 256 * 1024;
  static constexpr size_t kMaxClientBacklog = 512 * 1024;
  static constexpr uint32_t kLingerMs = 2000;
  static constexpr size_t kPlainChunk = 16 * 1024;  // slack over the head limit

  enum class State { kHandshake, kReadingHead, kProxying, kClosing, kLingering, kClosed };
  // Where the RX offload stands after the handshake.
  enum class RxSync { kNone, kPending, kDone };

  uint64_t Tag(uint8_t op) const;
  void ArmRecv();
  void FlushSend();
  void DriveTls();
  void OnHandshakeDone();
  void FailHandshake(int ssl_error);
  void ProcessPlain();
  bool ReadingAllowed() const;
  void StartExchange();
  bool ConnectUpstream(int avoid_server);
  void FinishExchange();
  void RespondError(int status, bool close);
  // Access log: the request's fields are taken from its head at the start,
  // the line is written once, when the response is complete or given up.
  void LogRequestStart();
  void LogRequest(int status, const char* error);
  void RefuseRequest(http1::RequestError e);
  void BeginClose();  // flush what is queued, then close
  void EnterLinger();
  void CloseNow();
  void MaybeRelease();
  void ShrinkIdleBuffers();
  void DetachUpstream(bool reusable);
  void ForwardRequestBody();
  // A malformed body after the head went upstream: 400 if nothing was
  // answered yet, else close.
  void FailRequestBody();
  // kTLS (client_ktls.cc).
  void FallBack(tls::KtlsFallback why);
  bool InstallTxNow(const tls::KtlsCryptoInfo& key);
  void StartRxOffload();
  void FinishRxOffload();
  void ArmRecvMsg();
  void ArmRecvExact(size_t n);
  void HandleControlRecord(int type, std::string_view payload);
  // A TLS 1.3 KeyUpdate read from the kTLS RX socket: next RX key into the
  // kernel, and when asked, our own KeyUpdate then the next TX key.
  void HandlePeerKeyUpdate(std::string_view payload);
  // Ends the connection after the current exchange, counted by reason.
  void CloseAfterKeyUpdate(tls::KeyUpdateClose why, int err);
  void WipeTrafficSecrets();
  void HandlePlainFromKernel(std::string_view data);
  void RefuseWithoutOffload();
  // Closes at once after OnPeerKeyUpdate set keyupdate_unanswerable_.
  void CloseUnanswerableKeyUpdate();
  // Request bodies (client_splice.cc): a large Content-Length body, or the
  // data of large chunks, from a kTLS RX socket moves client socket -> pipe
  // -> backend socket.
  void MaybeSpliceRequestBody();
  void PumpRequestBody();
  void ReadRequestFraming();
  void StopRequestSplice(bool done);
  void ArmSplicePoll(int fd, bool out);
  // Encrypts (OpenSSL) or queues as plaintext (both directions in the kernel).
  bool WritePlain(std::string_view plain);
  // Once TLS_TX and TLS_RX are both on, OpenSSL has nothing left to do for
  // this connection: free the SSL (most of an idle connection's memory).
  void MaybeDropSsl();

  Worker* w_ = nullptr;
  size_t listener_ = 0;
  int fd_ = -1;
  sockaddr_storage peer_{};
  std::string peer_ip_;
  std::string sni_;  // the client's SNI, kept past the SSL object
  uint16_t peer_port_ = 0;

  UniqueSsl ssl_;
  tls::BioIo bio_;
  std::string cipher_stash_;  // received ciphertext OpenSSL has not taken yet
  OutputQueue out_;           // bytes (and kTLS events) waiting to be sent
  bool recv_inflight_ = false;
  bool send_inflight_ = false;
  bool peer_eof_ = false;
  bool flush_scheduled_ = false;
  int inflight_ = 0;

  // kTLS state.
  bool ktls_allowed_ = false;  // listener allows it and the kernel has it
  bool tx_taken_ = false;      // OpenSSL handed TX to us; install pending or done
  bool tx_active_ = false;     // TLS_TX is on the socket
  bool rx_active_ = false;     // TLS_RX is on the socket
  bool ulp_attached_ = false;
  bool rx12_offered_ = false;
  bool require_failed_ = false;  // ktls = "require" and offload failed
  bool fallback_counted_ = false;
  bool peer_keyupdate_seen_ = false;  // OpenSSL itself processed a KeyUpdate
  bool keyupdate_unanswerable_ = false;  // ... asking for an answer OpenSSL cannot give
  RxSync rx_sync_ = RxSync::kNone;
  uint64_t rx_records_ = 0;  // post-handshake records OpenSSL decrypted
  tls::KtlsCryptoInfo rx12_info_;
  // TLS 1.3 application traffic secrets: the first ones from the key-log
  // callback, then each KeyUpdate's successor. The RX offload needs the
  // client's; rekeying after a KeyUpdate needs both and the cipher
  // (SSL_CIPHERs are static in OpenSSL, so the pointer outlives the SSL).
  unsigned char client_secret_[64] = {};
  size_t client_secret_len_ = 0;
  unsigned char server_secret_[64] = {};
  size_t server_secret_len_ = 0;
  const SSL_CIPHER* tls13_cipher_ = nullptr;  // set once RX is offloaded
  tls::KeyUpdateLimiter keyupdate_limiter_;
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

  State state_ = State::kClosed;
  DeadlineNode timer_;
  DeadlineNode trim_timer_;  // idle keep-alive: release buffers (kTimerTrim)

  std::string plain_;  // decrypted bytes not yet consumed
  size_t plain_off_ = 0;
  std::optional<http1::RequestParser> parser_;
  http1::RequestHead head_;
  std::string up_head_;  // the rewritten request head for the upstream (kept for retries)
  std::string scratch_;

  // The current exchange.
  UpstreamConnection* up_ = nullptr;
  int upstream_index_ = -1;
  int server_index_ = -1;
  int attempts_ = 0;
  bool req_body_done_ = true;
  bool resp_head_seen_ = false;
  bool resp_done_ = false;
  bool keep_alive_ = true;
  bool request_idempotent_ = false;
  bool request_has_body_ = false;
  int resp_status_ = 0;
  int request_version_minor_ = 1;
  uint64_t req_content_length_ = 0;  // 0 unless the body is Content-Length framed
  uint64_t req_body_seen_ = 0;       // body bytes forwarded by the parser path
  SplicePipe req_pipe_;  // active while a request body is being spliced
  // Access log state of the current request.
  bool log_pending_ = false;
  const char* refuse_reason_ = nullptr;  // a request refused before it had a head
  uint64_t log_start_ms_ = 0;
  uint64_t resp_bytes_ = 0;  // response bytes to the client, spliced ones included
  std::string log_req_;      // its "method", "target" and "host" members, JSON
  bool splice_poll_in_ = false;
  bool splice_poll_out_ = false;
};

}  // namespace ktlb
