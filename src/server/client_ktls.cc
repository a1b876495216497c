// Kernel TLS for a client connection (../shared/KTLS.md): taking OpenSSL's TX
// keys at the right point of the output stream, installing RX ourselves after
// the handshake at an exact record boundary, and the control records (alerts,
// KeyUpdate) an offloaded socket delivers out of band.
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <openssl/crypto.h>

#include "client_connection.h"
#include "worker.h"

namespace ktlb {

void ClientConnection::FallBack(tls::KtlsFallback why) {
  // One count per connection (the first reason), whichever directions stay
  // in userspace: the metric counts connections.
  if (!fallback_counted_) {
    fallback_counted_ = true;
    w_->metrics().listeners[listener_].ktls_fallbacks[static_cast<size_t>(why)].Inc();
  }
  // May run inside an OpenSSL callback: the connection is closed by the
  // caller's next check, never from here.
  if (w_->config().listeners[listener_].ktls == KtlsMode::kRequire) require_failed_ = true;
}

bool ClientConnection::OfferTx(const tls::KtlsCryptoInfo& info) {
  if (!ktls_allowed_ || tx_taken_) return false;
  if (!ulp_attached_) {
    int rc = tls::AttachTlsUlp(fd_);
    if (rc != 0) {
      FallBack(rc == ENOENT ? tls::KtlsFallback::kNoModule : tls::KtlsFallback::kSetsockopt);
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

bool ClientConnection::OfferRx(const tls::KtlsCryptoInfo& info) {
  // TLS 1.2 offers RX at the peer's ChangeCipherSpec, before its Finished.
  // Declined: OpenSSL keeps decrypting until the handshake is done and we
  // install at an exact record boundary with the right sequence number.
  if (ktls_allowed_) {
    rx12_info_ = info;
    rx12_offered_ = true;
  }
  return false;
}

void ClientConnection::OnClientTrafficSecret(const unsigned char* secret, size_t len) {
  if (len > sizeof client_secret_) return;
  memcpy(client_secret_, secret, len);
  client_secret_len_ = len;
}

void ClientConnection::OnServerTrafficSecret(const unsigned char* secret, size_t len) {
  if (len > sizeof server_secret_) return;
  memcpy(server_secret_, secret, len);
  server_secret_len_ = len;
}

void ClientConnection::WipeTrafficSecrets() {
  OPENSSL_cleanse(client_secret_, sizeof client_secret_);
  OPENSSL_cleanse(server_secret_, sizeof server_secret_);
  client_secret_len_ = server_secret_len_ = 0;
  tls13_cipher_ = nullptr;
}

bool ClientConnection::InstallTxNow(const tls::KtlsCryptoInfo& key) {
  int rc = tls::InstallKtls(fd_, tls::kTlsTx, key);
  if (tx_active_) {
    // A rekey after our KeyUpdate went out: the peer now expects the next
    // key, so without it the connection is over.
    if (rc != 0) {
      fprintf(stderr, "ktlb: tls: new TLS_TX key for %s:%u failed: %s\n", peer_ip_.c_str(),
              peer_port_, strerror(rc));
    }
    return rc == 0;
  }
  if (rc != 0) {
    // OpenSSL already writes plaintext for this connection: it cannot go back
    // to userspace crypto, so it ends here (and is counted).
    fprintf(stderr, "ktlb: tls: TLS_TX for %s:%u failed: %s\n", peer_ip_.c_str(), peer_port_,
            strerror(rc));
    FallBack(rc == ENOENT || rc == EOPNOTSUPP || rc == EINVAL ? tls::KtlsFallback::kUnsupportedCipher
                                                               : tls::KtlsFallback::kSetsockopt);
    return false;
  }
  tx_active_ = true;
  w_->metrics().listeners[listener_].ktls_tx.Inc();
  if (tls::KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s:%u: kTLS TX on\n", peer_ip_.c_str(), peer_port_);
  }
  return true;
}

void ClientConnection::StartRxOffload() {
  // Called the moment SSL_do_handshake() returned 1; bio_.in holds whatever
  // arrived after the peer's Finished (often the first request).
  int version = SSL_version(ssl_.get());
  // OpenSSL offers only what the kernel struct can carry (no CBC, ...), and
  // nothing at all for some sessions (max_fragment_length).
  const tls::KtlsFallback not_offered =
      tls::CipherHasKtlsLayout(SSL_get_current_cipher(ssl_.get()))
          ? tls::KtlsFallback::kOpenSslDeclined
          : tls::KtlsFallback::kUnsupportedCipher;
  if (!tx_taken_) FallBack(not_offered);  // TX stays in OpenSSL; RX may still go
  if (version == TLS1_3_VERSION && client_secret_len_ == 0) {
    FallBack(tls::KtlsFallback::kNoSecret);
    return;
  }
  if (version == TLS1_2_VERSION && !rx12_offered_) {
    FallBack(not_offered);
    return;
  }
  if (version != TLS1_2_VERSION && version != TLS1_3_VERSION) return;
  if (!ulp_attached_) {
    int rc = tls::AttachTlsUlp(fd_);
    if (rc != 0) {
      FallBack(rc == ENOENT ? tls::KtlsFallback::kNoModule : tls::KtlsFallback::kSetsockopt);
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
  tls::CountRecords(bio_.in, &complete, &missing);
  rx_records_ = complete + (missing > 0 ? 1 : 0);
  exact_need_ = 0;
  rx_sync_ = RxSync::kPending;
  if (tls::KtlsDebugLog()) {
    fprintf(stderr,
            "ktlb: ktls: %s:%u: handshake done, after Finished: %zu whole, %zu bytes missing\n",
            peer_ip_.c_str(), peer_port_, complete, missing);
  }
}

void ClientConnection::ArmRecvExact(size_t n) {
  // Reads only the missing bytes of the held record, appended to it.
  exact_need_ = n;
  size_t have = cipher_stash_.size();
  if (tls::KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s:%u: reading exactly %zu bytes (%zu of the record held)\n",
            peer_ip_.c_str(), peer_port_, n, have);
  }
  cipher_stash_.resize(have + n);
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_recv(sqe, fd_, cipher_stash_.data() + have, n, 0);
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kRecvExact)));
  recv_inflight_ = true;
  ++inflight_;
}

void ClientConnection::OnRecvExact(int res) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res <= 0) {
    peer_eof_ = true;
    return CloseNow();
  }
  // A short read keeps what arrived; FinishRxOffload asks for the rest
  // (first the header's remainder, then the body it announces).
  cipher_stash_.resize(cipher_stash_.size() - exact_need_ + static_cast<size_t>(res));
  exact_need_ = 0;
  FinishRxOffload();
  if (state_ == State::kClosed) return;
  if (keyupdate_unanswerable_) return CloseUnanswerableKeyUpdate();
  FlushSend();
  ArmRecv();
}

void ClientConnection::FinishRxOffload() {
  // cipher_stash_ holds nothing but the start of the one record OpenSSL has
  // not seen (or nothing at all): complete it first.
  size_t complete = 0, missing = 0;
  tls::CountRecords(cipher_stash_, &complete, &missing);
  if (missing > 0) return ArmRecvExact(missing);
  if (!cipher_stash_.empty()) {
    // The held record is whole: OpenSSL decrypts it like every one before.
    bio_.in = cipher_stash_;
    DriveTls();
    bio_.in = {};
    cipher_stash_.clear();
    if (state_ == State::kClosed) return;
  }
  rx_sync_ = RxSync::kDone;
  if (SSL_pending(ssl_.get()) > 0) {
    // Not expected (every SSL_read drained to WANT_READ), but installing now
    // would lose the plaintext OpenSSL still holds.
    WipeTrafficSecrets();
    FallBack(tls::KtlsFallback::kSetsockopt);
    return;
  }
  if (peer_keyupdate_seen_) {
    // The keys derived from the handshake's traffic secret are already stale;
    // OpenSSL holds the current ones and keeps decrypting.
    WipeTrafficSecrets();
    FallBack(tls::KtlsFallback::kEarlyKeyUpdate);
    return;
  }
  tls::KtlsCryptoInfo info;
  const SSL_CIPHER* tls13_cipher = nullptr;
  if (SSL_version(ssl_.get()) == TLS1_3_VERSION) {
    auto built = tls::Tls13CryptoInfo(ssl_.get(), client_secret_, client_secret_len_, rx_records_);
    if (!built.ok()) {
      WipeTrafficSecrets();
      FallBack(tls::KtlsFallback::kUnsupportedCipher);
      return;
    }
    info = *built;
    tls13_cipher = SSL_get_current_cipher(ssl_.get());
  } else {
    // The peer's Finished was record 0 under these keys.
    info = rx12_info_;
    info.SetRecordSequence(1 + rx_records_);
  }
  int rc = tls::InstallKtls(fd_, tls::kTlsRx, info);
  info.Wipe();
  rx12_info_.Wipe();
  if (rc != 0) {
    // Nothing was read past the boundary, so OpenSSL simply keeps RX.
    WipeTrafficSecrets();
    FallBack(rc == ENOENT || rc == EOPNOTSUPP || rc == EINVAL ? tls::KtlsFallback::kUnsupportedCipher
                                                               : tls::KtlsFallback::kSetsockopt);
    return;
  }
  rx_active_ = true;
  // Kept for KeyUpdates (TLS 1.3 only: TLS 1.2 has none).
  tls13_cipher_ = tls13_cipher;
  if (tls13_cipher_ == nullptr) WipeTrafficSecrets();
  w_->metrics().listeners[listener_].ktls_rx.Inc();
  MaybeDropSsl();
  if (tls::KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s:%u: kTLS RX on at record %llu\n", peer_ip_.c_str(),
            peer_port_, static_cast<unsigned long long>(rx12_offered_
                                                            ? 1 + rx_records_
                                                            : rx_records_));
  }
}

void ClientConnection::MaybeDropSsl() {
  if (!ssl_ || !tx_active_ || !rx_active_) return;
  ssl_.reset();  // frees the BIO too; bio_ itself belongs to us
  bio_.in = {};
  w_->metrics().listeners[listener_].ktls_ssl_released.Inc();
}

void ClientConnection::ArmRecvMsg() {
  if (recv_inflight_ || fd_ < 0) return;
  if (!recv_ctl_) recv_ctl_ = std::make_unique<ControlIo>();
  ControlIo& c = *recv_ctl_;
  c.iov.iov_base = c.data;
  c.iov.iov_len = sizeof c.data;
  c.msg = msghdr{};
  c.msg.msg_iov = &c.iov;
  c.msg.msg_iovlen = 1;
  c.msg.msg_control = c.cbuf;
  c.msg.msg_controllen = sizeof c.cbuf;
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_recvmsg(sqe, fd_, &c.msg, 0);
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kRecvMsg)));
  recv_inflight_ = true;
  ++inflight_;
}

void ClientConnection::OnRecvMsg(int res) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) return MaybeRelease();
  if (res <= 0) {
    peer_eof_ = true;
    if (res < 0) {
      fprintf(stderr, "ktlb: tls: kTLS record from %s:%u: %s\n", peer_ip_.c_str(), peer_port_,
              strerror(-res));
    }
    return CloseNow();
  }
  ControlIo& c = *recv_ctl_;
  int type = tls::RecordTypeFromCmsg(c.cbuf, c.msg.msg_controllen);
  std::string_view payload(c.data, static_cast<size_t>(res));
  if (type < 0 || type == tls::kRecordApplicationData) {
    HandlePlainFromKernel(payload);
  } else {
    HandleControlRecord(type, payload);
  }
  FlushSend();
  // A control record met in the middle of a spliced request body (a
  // KeyUpdate the kernel could take): the body goes on.
  if (req_pipe_.active() && state_ == State::kProxying) return PumpRequestBody();
  ArmRecv();
}

void ClientConnection::HandleControlRecord(int type, std::string_view payload) {
  if (tls::KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s:%u: record type %d (%zu bytes, first %d)%s\n",
            peer_ip_.c_str(), peer_port_, type, payload.size(),
            payload.empty() ? -1 : static_cast<unsigned char>(payload[0]),
            type == tls::kRecordAlert && payload.size() >= 2 && payload[1] == 0
                ? ": close_notify from peer"
                : "");
  }
  if (state_ == State::kLingering) {
    // Our side is done; the peer's last words (close_notify) end the wait.
    peer_eof_ = true;
    return CloseNow();
  }
  if (type == tls::kRecordAlert && payload.size() >= 2 && payload[1] == 0) {
    // close_notify: answer what is in flight, then close (unless the
    // request it ends was still sending its body: then it is cut short).
    peer_eof_ = true;
    keep_alive_ = false;
    if (state_ == State::kProxying && !req_body_done_) {
      w_->metrics().listeners[listener_].client_resets.Inc();
      return CloseNow();
    }
    if (state_ == State::kReadingHead) BeginClose();
    return;
  }
  if (type == tls::kRecordHandshake && !payload.empty() &&
      static_cast<uint8_t>(payload[0]) == tls::kHandshakeKeyUpdate) {
    w_->metrics().listeners[listener_].ktls_keyupdates.Inc();
    return HandlePeerKeyUpdate(payload);
  }
  // Any other alert or handshake message: the session is over.
  fprintf(stderr, "ktlb: tls: record type %d from %s:%u on a kTLS socket: closing\n", type,
          peer_ip_.c_str(), peer_port_);
  CloseNow();
}

void ClientConnection::HandlePeerKeyUpdate(std::string_view payload) {
  absl::StatusOr<tls::KeyUpdateRequest> request = tls::ParseKeyUpdate(payload);
  if (!request.ok()) return CloseAfterKeyUpdate(tls::KeyUpdateClose::kMalformed, 0);
  if (!keyupdate_limiter_.Allow(w_->now_ms())) {
    return CloseAfterKeyUpdate(tls::KeyUpdateClose::kRateLimited, 0);
  }
  const bool answer = *request == tls::KeyUpdateRequest::kRequested;
  // Our answer must come from the kernel too: OpenSSL must never rekey a
  // connection whose other direction it does not own (KTLS.md).
  if (tls13_cipher_ == nullptr || client_secret_len_ == 0 ||
      (answer && (!tx_active_ || server_secret_len_ == 0))) {
    return CloseAfterKeyUpdate(tls::KeyUpdateClose::kNotOffloaded, 0);
  }
  // Every record after the KeyUpdate uses the client's next key; kernels
  // that can rekey hold them back (EKEYEXPIRED) until TLS_RX is set again.
  // Older ones (6.1) refuse the second TLS_RX with EBUSY.
  if (!tls::NextTrafficSecret(tls13_cipher_, client_secret_, client_secret_len_, client_secret_)
           .ok()) {
    return CloseAfterKeyUpdate(tls::KeyUpdateClose::kKernelCannotRekey, EINVAL);
  }
  auto rx = tls::Tls13CryptoInfo(tls13_cipher_, client_secret_, client_secret_len_, 0);
  if (!rx.ok()) return CloseAfterKeyUpdate(tls::KeyUpdateClose::kKernelCannotRekey, EINVAL);
  int rc = tls::InstallKtls(fd_, tls::kTlsRx, *rx);
  rx->Wipe();
  if (rc != 0) return CloseAfterKeyUpdate(tls::KeyUpdateClose::kKernelCannotRekey, rc);
  if (answer) {
    // update_requested: our KeyUpdate goes out under the current TX key,
    // in order after everything queued; TLS_TX is replaced once it is sent
    // (the kInstallTx marker), so every later byte uses the next key.
    if (!tls::NextTrafficSecret(tls13_cipher_, server_secret_, server_secret_len_, server_secret_)
             .ok()) {
      return CloseNow();
    }
    auto tx = tls::Tls13CryptoInfo(tls13_cipher_, server_secret_, server_secret_len_, 0);
    if (!tx.ok()) return CloseNow();
    out_.AppendRecord(tls::kRecordHandshake,
                      tls::KeyUpdateMessage(tls::KeyUpdateRequest::kNotRequested));
    out_.AppendInstallTx(std::string_view(reinterpret_cast<const char*>(tx->bytes), tx->len));
    tx->Wipe();
  }
  w_->metrics().listeners[listener_].ktls_rekeys.Inc();
  if (tls::KtlsDebugLog()) {
    fprintf(stderr, "ktlb: ktls: %s:%u: KeyUpdate: new RX key%s\n", peer_ip_.c_str(), peer_port_,
            answer ? ", answered, new TX key queued" : "");
  }
}

void ClientConnection::CloseAfterKeyUpdate(tls::KeyUpdateClose why, int err) {
  w_->metrics().listeners[listener_].ktls_keyupdate_closes[static_cast<size_t>(why)].Inc();
  fprintf(stderr, "ktlb: tls: KeyUpdate from %s:%u on a kTLS RX socket: closing (%s%s%s)\n",
          peer_ip_.c_str(), peer_port_, tls::KeyUpdateCloseLabel(why), err != 0 ? ": " : "",
          err != 0 ? strerror(err) : "");
  // Nothing more can be read; what is in flight is answered, then close
  // (never spin on the errors the socket now returns).
  peer_eof_ = true;
  keep_alive_ = false;
  // A request body still to come can never arrive: that exchange is lost.
  if (state_ == State::kProxying && !req_body_done_) return CloseNow();
  if (state_ == State::kReadingHead || state_ == State::kHandshake) BeginClose();
}

}  // namespace ktlb
