// Kernel TLS for a transport (../shared/KTLS.md): taking OpenSSL's TX keys
// at the right point of the output stream, installing RX ourselves after the
// handshake at an exact record boundary, and the control records (alerts,
// KeyUpdate) an offloaded socket delivers out of band.
#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "ktlb/tls_transport.h"

namespace ktlb::tls {

namespace {
constexpr uint8_t kAlertUnexpectedMessage = 10;
constexpr uint8_t kAlertIllegalParameter = 47;
constexpr uint8_t kAlertDecodeError = 50;

// The alert OpenSSL 3.0 sends for a malformed KeyUpdate (checked against
// nginx and s_server): a body of more than one byte or a value other than
// 0/1 is illegal_parameter, an empty or truncated one decode_error.
uint8_t KeyUpdateAlert(std::string_view msg) {
  if (msg.size() < 4) return kAlertDecodeError;
  size_t declared = (size_t{static_cast<uint8_t>(msg[1])} << 16) |
                    (size_t{static_cast<uint8_t>(msg[2])} << 8) | static_cast<uint8_t>(msg[3]);
  if (declared > 1) return kAlertIllegalParameter;
  if (declared == 0 || msg.size() != 5) return kAlertDecodeError;
  return kAlertIllegalParameter;  // one byte, but neither 0 nor 1
}
}  // namespace

void Transport::FallBack(KtlsFallback why) {
  // One count per connection (the first reason), whichever directions stay
  // in userspace: the metric counts connections.
  if (!fallback_counted_) {
    fallback_counted_ = true;
    metrics_->ktls_fallbacks[static_cast<size_t>(why)].Inc();
  }
  // May run inside an OpenSSL callback: the connection is closed by the
  // caller's next check, never from here.
  if (ktls_required_) require_failed_ = true;
}

bool Transport::OfferTx(const KtlsCryptoInfo& info) {
  if (!ktls_allowed_ || tx_taken_) return false;
  if (!ulp_attached_) {
    int rc = AttachTlsUlp(fd_.get());
    if (rc != 0) {
      FallBack(rc == ENOENT ? KtlsFallback::kNoModule : KtlsFallback::kSetsockopt);
      ktls_allowed_ = false;
      return false;
    }
    ulp_attached_ = true;
  }
  // OpenSSL has queued ciphertext up to here; from now on it hands us
  // plaintext. TLS_TX goes on when the queue reaches this marker.
  out_.AppendInstallTx(std::string_view(reinterpret_cast<const char*>(info.bytes), info.len));
  tx_taken_ = true;
  return true;
}

bool Transport::OfferRx(const KtlsCryptoInfo& info) {
  // TLS 1.2 offers RX at the peer's ChangeCipherSpec, before its Finished.
  // Declined: OpenSSL keeps decrypting until the handshake is done and we
  // install at an exact record boundary with the right sequence number.
  if (ktls_allowed_) {
    rx12_info_ = info;
    rx12_offered_ = true;
  }
  return false;
}

void Transport::StoreSecret(bool rx, const unsigned char* secret, size_t len) {
  unsigned char* to = rx ? rx_secret_ : tx_secret_;
  if (len > sizeof rx_secret_) return;
  memcpy(to, secret, len);
  (rx ? rx_secret_len_ : tx_secret_len_) = len;
}

// The kernel's TLS_RX/TLS_TX name directions of this socket, the key log
// names who speaks: a client receives under the server's secret.
void Transport::OnClientTrafficSecret(const unsigned char* secret, size_t len) {
  StoreSecret(!client_, secret, len);
}

void Transport::OnServerTrafficSecret(const unsigned char* secret, size_t len) {
  StoreSecret(client_, secret, len);
}

void Transport::OnPeerKeyUpdate(bool update_requested) {
  peer_keyupdate_seen_ = true;
  // OpenSSL's answer would go out under keys the kernel does not use: TX is
  // the kernel's (KTLS.md: OpenSSL must never rekey an offloaded direction).
  // The connection is closed before OpenSSL writes again.
  if (update_requested && tx_taken_) keyupdate_unanswerable_ = true;
}

void Transport::WipeTrafficSecrets() {
  OPENSSL_cleanse(rx_secret_, sizeof rx_secret_);
  OPENSSL_cleanse(tx_secret_, sizeof tx_secret_);
  rx_secret_len_ = tx_secret_len_ = 0;
  tls13_cipher_ = nullptr;
}

bool Transport::InstallTxNow(const KtlsCryptoInfo& key) {
  int rc = InstallKtls(fd_.get(), kTlsTx, key);
  if (tx_active_) {
    // A rekey after our KeyUpdate went out: the peer now expects the next
    // key, so without it the connection is over.
    if (rc != 0) {
      log_->Log(ErrorLog::Level::kWarn, "tls", "%s: new TLS_TX key failed: %s", peer_.c_str(),
                strerror(rc));
    }
    return rc == 0;
  }
  if (rc != 0) {
    // OpenSSL already writes plaintext for this connection: it cannot go back
    // to userspace crypto, so it ends here (and is counted).
    log_->Log(ErrorLog::Level::kWarn, "tls", "%s: TLS_TX failed: %s", peer_.c_str(),
              strerror(rc));
    FallBack(rc == ENOENT || rc == EOPNOTSUPP || rc == EINVAL ? KtlsFallback::kUnsupportedCipher
                                                               : KtlsFallback::kSetsockopt);
    return false;
  }
  tx_active_ = true;
  // Bodies may now be spliced into this socket from the worker: a
  // pipe -> socket splice blocks on a full socket unless the file itself is
  // O_NONBLOCK (SPLICE_F_NONBLOCK only covers the pipe). io_uring's own
  // operations do not care.
  if (int fl = fcntl(fd_.get(), F_GETFL); fl >= 0 && (fl & O_NONBLOCK) == 0) {
    fcntl(fd_.get(), F_SETFL, fl | O_NONBLOCK);
  }
  metrics_->ktls_tx.Inc();
  if (KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s: kTLS TX on\n", peer_.c_str());
  }
  return true;
}

void Transport::StartRxOffload() {
  // Called the moment SSL_do_handshake() returned 1; bio_.in holds whatever
  // arrived after the peer's Finished (often the first request).
  int version = SSL_version(ssl_.get());
  // OpenSSL offers only what the kernel struct can carry (no CBC, ...), and
  // nothing at all for some sessions (max_fragment_length).
  const KtlsFallback not_offered =
      CipherHasKtlsLayout(SSL_get_current_cipher(ssl_.get()))
          ? KtlsFallback::kOpenSslDeclined
          : KtlsFallback::kUnsupportedCipher;
  if (!tx_taken_) FallBack(not_offered);  // TX stays in OpenSSL; RX may still go
  if (version == TLS1_3_VERSION && rx_secret_len_ == 0) {
    FallBack(KtlsFallback::kNoSecret);
    return;
  }
  if (version == TLS1_2_VERSION && !rx12_offered_) {
    FallBack(not_offered);
    return;
  }
  if (version != TLS1_2_VERSION && version != TLS1_3_VERSION) return;
  if (!ulp_attached_) {
    int rc = AttachTlsUlp(fd_.get());
    if (rc != 0) {
      FallBack(rc == ENOENT ? KtlsFallback::kNoModule : KtlsFallback::kSetsockopt);
      return;
    }
    ulp_attached_ = true;
  }
  // Every record after the handshake that OpenSSL decrypts shifts the
  // kernel's starting sequence number by one. A partial last record is held
  // back from OpenSSL (DriveTls leaves it in cipher_stash_), completed with
  // exact reads (no byte further) and then decrypted by OpenSSL, so the
  // socket resumes at a record boundary. Holding it back matters when only
  // part of its 5-byte header came: OpenSSL would swallow those bytes and
  // nothing could tell how long the body is.
  size_t complete = 0, missing = 0;
  CountRecords(bio_.in, &complete, &missing);
  rx_records_ = complete + (missing > 0 ? 1 : 0);
  exact_need_ = 0;
  rx_sync_ = RxSync::kPending;
  if (KtlsDebugLog()) {
    fprintf(stderr,
            "ktlb: ktls: %s: handshake done, after Finished: %zu whole, %zu bytes missing\n",
            peer_.c_str(), complete, missing);
  }
}

void Transport::ArmRecvExact(size_t n) {
  // Reads only the missing bytes of the held record, appended to it.
  exact_need_ = n;
  size_t have = cipher_stash_.size();
  if (KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s: reading exactly %zu bytes (%zu of the record held)\n",
            peer_.c_str(), n, have);
  }
  cipher_stash_.resize(have + n);
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_recv(sqe, fd_.get(), cipher_stash_.data() + have, n, 0);
  io_uring_sqe_set_data64(sqe, Tag(kRecvExact));
  recv_inflight_ = true;
  ++inflight_;
}

void Transport::OnRecvExact(int res) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res <= 0) {
    peer_eof_ = true;
    return CloseBy(CloseReason::kPeerGone);
  }
  // A short read keeps what arrived; FinishRxOffload asks for the rest
  // (first the header's remainder, then the body it announces).
  cipher_stash_.resize(cipher_stash_.size() - exact_need_ + static_cast<size_t>(res));
  exact_need_ = 0;
  FinishRxOffload();
  AfterInputEvent();
}

void Transport::FinishRxOffload() {
  // cipher_stash_ holds nothing but the start of the one record OpenSSL has
  // not seen (or nothing at all): complete it first.
  size_t complete = 0, missing = 0;
  CountRecords(cipher_stash_, &complete, &missing);
  if (missing > 0) return ArmRecvExact(missing);
  if (!cipher_stash_.empty()) {
    // The held record is whole: OpenSSL decrypts it like every one before.
    bio_.in = cipher_stash_;
    DriveTls();
    bio_.in = {};
    cipher_stash_.clear();
    if (state_ != State::kOpen) return;
  }
  rx_sync_ = RxSync::kDone;
  if (SSL_pending(ssl_.get()) > 0) {
    // Not expected (every SSL_read drained to WANT_READ), but installing now
    // would lose the plaintext OpenSSL still holds.
    WipeTrafficSecrets();
    FallBack(KtlsFallback::kSetsockopt);
    return;
  }
  if (peer_keyupdate_seen_) {
    // The keys derived from the handshake's traffic secret are already stale;
    // OpenSSL holds the current ones and keeps decrypting.
    WipeTrafficSecrets();
    FallBack(KtlsFallback::kEarlyKeyUpdate);
    return;
  }
  KtlsCryptoInfo info;
  const SSL_CIPHER* tls13_cipher = nullptr;
  if (SSL_version(ssl_.get()) == TLS1_3_VERSION) {
    auto built = Tls13CryptoInfo(ssl_.get(), rx_secret_, rx_secret_len_, rx_records_);
    if (!built.ok()) {
      WipeTrafficSecrets();
      FallBack(KtlsFallback::kUnsupportedCipher);
      return;
    }
    info = *built;
    tls13_cipher = SSL_get_current_cipher(ssl_.get());
  } else {
    // The peer's Finished was record 0 under these keys.
    info = rx12_info_;
    info.SetRecordSequence(1 + rx_records_);
  }
  int rc = InstallKtls(fd_.get(), kTlsRx, info);
  info.Wipe();
  rx12_info_.Wipe();
  if (rc != 0) {
    // Nothing was read past the boundary, so OpenSSL simply keeps RX.
    WipeTrafficSecrets();
    FallBack(rc == ENOENT || rc == EOPNOTSUPP || rc == EINVAL ? KtlsFallback::kUnsupportedCipher
                                                               : KtlsFallback::kSetsockopt);
    return;
  }
  rx_active_ = true;
  // Kept for KeyUpdates (TLS 1.3 only: TLS 1.2 has none).
  tls13_cipher_ = tls13_cipher;
  if (tls13_cipher_ == nullptr) WipeTrafficSecrets();
  metrics_->ktls_rx.Inc();
  MaybeDropSsl();
  if (KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s: kTLS RX on at record %llu\n", peer_.c_str(),
            static_cast<unsigned long long>(rx12_offered_ ? 1 + rx_records_ : rx_records_));
  }
}

void Transport::MaybeDropSsl() {
  if (!ssl_ || !tx_active_ || !rx_active_) return;
  // A healthy connection, not a failed one: without a shutdown mark,
  // SSL_free takes the session for a bad one and makes it not resumable,
  // and a client role could never resume the session it keeps.
  SSL_set_shutdown(ssl_.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  ssl_.reset();  // frees the BIO too; bio_ itself belongs to us
  bio_.in = {};
  metrics_->ktls_ssl_released.Inc();
}

void Transport::ArmRecvMsg() {
  if (recv_inflight_ || fd_.get() < 0) return;
  if (!recv_ctl_) recv_ctl_ = std::make_unique<ControlIo>();
  ControlIo& c = *recv_ctl_;
  c.iov.iov_base = c.data;
  c.iov.iov_len = sizeof c.data;
  c.msg = msghdr{};
  c.msg.msg_iov = &c.iov;
  c.msg.msg_iovlen = 1;
  c.msg.msg_control = c.cbuf;
  c.msg.msg_controllen = sizeof c.cbuf;
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_recvmsg(sqe, fd_.get(), &c.msg, 0);
  io_uring_sqe_set_data64(sqe, Tag(kRecvMsg));
  recv_inflight_ = true;
  ++inflight_;
}

void Transport::OnRecvMsg(int res) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  ControlIo& c = *recv_ctl_;
  // A zero-length alert or handshake record reads as 0 bytes with its type
  // in the control message: not an EOF.
  int type = res >= 0 ? RecordTypeFromCmsg(c.cbuf, c.msg.msg_controllen) : -1;
  if (res < 0 || (res == 0 && (type < 0 || type == kRecordApplicationData))) {
    peer_eof_ = true;
    if (state_ == State::kLingering) return CloseSocket();
    if (res < 0 && res != -ECONNRESET && res != -EPIPE) return FailKernelRecord(-res);
    return CloseBy(CloseReason::kPeerGone);
  }
  std::string_view payload(c.data, static_cast<size_t>(res));
  if (type < 0 || type == kRecordApplicationData) {
    AppendInput(payload);
  } else {
    HandleControlRecord(type, payload);
  }
  // Also after a control record: one met in the middle of a spliced body
  // (a KeyUpdate the kernel could take) lets the owner's splice go on.
  DeliverInput();
  AfterInputEvent();
}

void Transport::HandleControlRecord(int type, std::string_view payload) {
  if (KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s: record type %d (%zu bytes, first %d)%s\n",
            peer_.c_str(), type, payload.size(),
            payload.empty() ? -1 : static_cast<unsigned char>(payload[0]),
            type == kRecordAlert && payload.size() >= 2 && payload[1] == 0
                ? ": close_notify from peer"
                : "");
  }
  if (state_ == State::kLingering) {
    // Our side is done; the peer's last words (close_notify) end the wait.
    peer_eof_ = true;
    return CloseSocket();
  }
  if (type == kRecordAlert) {
    // What OpenSSL answers to an alert record of another length.
    if (payload.size() != 2) return FailWithAlert(kAlertUnexpectedMessage, "alert record");
    if (payload[1] == 0) {
      // close_notify: the owner answers what is in flight, then closes.
      peer_eof_ = true;
      input_end_ = InputEnd::kCloseNotify;
      return;
    }
    // The peer's fatal alert: the session is over, nothing to answer.
    log_->Log(ErrorLog::Level::kInfo, "tls", "%s: alert %d from the peer", peer_.c_str(),
              static_cast<unsigned char>(payload[1]));
    peer_eof_ = true;
    return CloseBy(CloseReason::kPeerGone);
  }
  if (type == kRecordHandshake && !payload.empty() &&
      static_cast<uint8_t>(payload[0]) == kHandshakeKeyUpdate) {
    metrics_->ktls_keyupdates.Inc();
    return HandlePeerKeyUpdate(payload);
  }
  if (client_ && type == kRecordHandshake && !payload.empty() &&
      static_cast<uint8_t>(payload[0]) == kHandshakeNewSessionTicket) {
    // A TLS 1.3 ticket after RX went to the kernel: OpenSSL cannot take it
    // any more, so this connection's session is simply not kept.
    return;
  }
  // Any other handshake message (or record type) after the handshake.
  FailWithAlert(kAlertUnexpectedMessage, "record type");
}

void Transport::FailWithAlert(uint8_t description, const char* what) {
  metrics_->protocol_errors.Inc();
  log_->Log(ErrorLog::Level::kInfo, "tls", "%s: unexpected %s on a kTLS socket: closing",
            peer_.c_str(), what);
  peer_eof_ = true;
  QueueAlert(description);
  owner_->OnTransportClosed(CloseReason::kProtocolError);
  if (!gone()) Close();
}

void Transport::HandlePeerKeyUpdate(std::string_view payload) {
  absl::StatusOr<KeyUpdateRequest> request = ParseKeyUpdate(payload);
  if (!request.ok()) {
    metrics_->ktls_keyupdate_closes[static_cast<size_t>(KeyUpdateClose::kMalformed)].Inc();
    return FailWithAlert(KeyUpdateAlert(payload), "KeyUpdate");
  }
  if (!keyupdate_limiter_.Allow(loop_->now_ms())) {
    return EndReadsAfterKeyUpdate(KeyUpdateClose::kRateLimited, 0);
  }
  const bool answer = *request == KeyUpdateRequest::kRequested;
  // Our answer must come from the kernel too: OpenSSL must never rekey a
  // connection whose other direction it does not own (KTLS.md).
  if (tls13_cipher_ == nullptr || rx_secret_len_ == 0 ||
      (answer && (!tx_active_ || tx_secret_len_ == 0))) {
    return EndReadsAfterKeyUpdate(KeyUpdateClose::kNotOffloaded, 0);
  }
  // Every record after the KeyUpdate uses the client's next key; kernels
  // that can rekey hold them back (EKEYEXPIRED) until TLS_RX is set again.
  // Older ones (6.1) refuse the second TLS_RX with EBUSY.
  if (!NextTrafficSecret(tls13_cipher_, rx_secret_, rx_secret_len_, rx_secret_)
           .ok()) {
    return EndReadsAfterKeyUpdate(KeyUpdateClose::kKernelCannotRekey, EINVAL);
  }
  auto rx = Tls13CryptoInfo(tls13_cipher_, rx_secret_, rx_secret_len_, 0);
  if (!rx.ok()) return EndReadsAfterKeyUpdate(KeyUpdateClose::kKernelCannotRekey, EINVAL);
  int rc = InstallKtls(fd_.get(), kTlsRx, *rx);
  rx->Wipe();
  if (rc != 0) return EndReadsAfterKeyUpdate(KeyUpdateClose::kKernelCannotRekey, rc);
  if (answer) {
    // update_requested: our KeyUpdate goes out under the current TX key,
    // in order after everything queued; TLS_TX is replaced once it is sent
    // (the kInstallTx marker), so every later byte uses the next key.
    if (!NextTrafficSecret(tls13_cipher_, tx_secret_, tx_secret_len_, tx_secret_)
             .ok()) {
      return CloseBy(CloseReason::kKeyUpdate);
    }
    auto tx = Tls13CryptoInfo(tls13_cipher_, tx_secret_, tx_secret_len_, 0);
    if (!tx.ok()) return CloseBy(CloseReason::kKeyUpdate);
    out_.AppendRecord(kRecordHandshake,
                      KeyUpdateMessage(KeyUpdateRequest::kNotRequested));
    out_.AppendInstallTx(std::string_view(reinterpret_cast<const char*>(tx->bytes), tx->len));
    tx->Wipe();
  }
  metrics_->ktls_rekeys.Inc();
  if (KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s: KeyUpdate: new RX key%s\n", peer_.c_str(),
            answer ? ", answered, new TX key queued" : "");
  }
}

void Transport::EndReadsAfterKeyUpdate(KeyUpdateClose why, int err) {
  metrics_->ktls_keyupdate_closes[static_cast<size_t>(why)].Inc();
  log_->Log(ErrorLog::Level::kInfo, "tls", "KeyUpdate from %s on a kTLS RX socket: closing (%s%s%s)",
            peer_.c_str(), KeyUpdateCloseLabel(why), err != 0 ? ": " : "",
            err != 0 ? strerror(err) : "");
  // Nothing more can be read; the owner answers what is in flight, then
  // closes (never spin on the errors the socket now returns).
  peer_eof_ = true;
  input_end_ = InputEnd::kNoMoreReads;
}

}  // namespace ktlb::tls
