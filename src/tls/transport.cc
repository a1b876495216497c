// The transport's byte path: receive, decrypt (or take the kernel's plaintext
// once RX is offloaded), queue and send; the handshake; closing. The kTLS
// half is in transport_ktls.cc.
#include "ktlb/tls_transport.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace ktlb::tls {

namespace {
// TLS alert descriptions (RFC 8446 §6).
constexpr uint8_t kAlertBadRecordMac = 20;
constexpr uint8_t kAlertRecordOverflow = 22;
constexpr uint8_t kAlertDecodeError = 50;
constexpr uint8_t kAlertProtocolVersion = 70;
}  // namespace

Transport::~Transport() = default;

void Transport::Reset(const TransportOptions& options, TransportOwner* owner, int fd,
                      std::string_view peer_label) {
  loop_ = options.loop;
  slot_.Bind(loop_, this);
  owner_ = owner;
  log_ = options.log;
  metrics_ = options.metrics;
  handshake_timeouts_ = options.handshake_timeouts;
  fd_.reset(fd);
  peer_.assign(peer_label);
  info_ = HandshakeInfo{};
  verify_error_ = X509_V_OK;
  timer_.target = this;
  bio_ = BioIo{};
  bio_.queue = &out_;
  cipher_stash_.clear();
  out_.Clear();
  in_.clear();
  in_off_ = 0;
  input_end_ = InputEnd::kNone;
  peer_eof_ = recv_inflight_ = send_inflight_ = flush_scheduled_ = recv_deferred_ = false;
  preamble_pending_ = options.preamble;
  inflight_ = 0;
  ktls_allowed_ = options.ktls != KtlsMode::kOff && options.kernel_ktls;
  ktls_required_ = options.ktls == KtlsMode::kRequire;
  tx_taken_ = tx_active_ = rx_active_ = ulp_attached_ = rx12_offered_ = require_failed_ =
      fallback_counted_ = false;
  peer_keyupdate_seen_ = keyupdate_unanswerable_ = alert_sent_ = false;
  rx_sync_ = RxSync::kNone;
  rx_records_ = 0;
  WipeTrafficSecrets();
  keyupdate_limiter_ = KeyUpdateLimiter();
  exact_need_ = 0;
  state_ = State::kHandshake;
}

void Transport::StartServer(const TransportOptions& options, TransportOwner* owner, int fd,
                            const ServerTlsContext& ctx, std::string_view peer_label) {
  client_ = false;
  Reset(options, owner, fd, peer_label);
  ssl_ = ctx.NewSsl(NewBufferBio(&bio_));
  if (!ssl_) {
    log_->Log(ErrorLog::Level::kError, "tls", "%s: cannot create an SSL object", peer_.c_str());
    metrics_->handshake_failures[static_cast<size_t>(HandshakeFailure::kOther)].Inc();
    return CloseBy(CloseReason::kHandshakeFailed);
  }
  if (ktls_allowed_) {
    bio_.ktls = this;
    SSL_set_app_data(ssl_.get(), static_cast<KtlsHooks*>(this));
  } else if (options.ktls != KtlsMode::kOff) {
    FallBack(KtlsFallback::kNoModule);
  }
  loop_->ArmTimer(&timer_, kTimerHandshake, options.handshake_timeout_ms);
  ArmRecv();
}

void Transport::StartClient(const TransportOptions& options, TransportOwner* owner, int fd,
                            const ClientTlsContext& ctx, std::string_view server_host,
                            SessionSlot* session, std::string_view peer_label) {
  client_ = true;
  TransportOptions o = options;
  o.preamble = false;  // only a server hears a preamble
  Reset(o, owner, fd, peer_label);
  ssl_ = ctx.NewSsl(NewBufferBio(&bio_), server_host, session, ktls_allowed_);
  if (!ssl_) {
    log_->Log(ErrorLog::Level::kError, "tls", "%s: cannot create an SSL object", peer_.c_str());
    metrics_->handshake_failures[static_cast<size_t>(HandshakeFailure::kOther)].Inc();
    return CloseBy(CloseReason::kHandshakeFailed);
  }
  // Without kTLS in the kernel nothing is counted as a fallback: an upstream
  // connection has no "require" to fail, and the host's lack is logged once.
  if (ktls_allowed_) {
    bio_.ktls = this;
    SSL_set_app_data(ssl_.get(), static_cast<KtlsHooks*>(this));
  }
  loop_->ArmTimer(&timer_, kTimerHandshake, options.handshake_timeout_ms);
  // The client speaks first: the ClientHello goes out now.
  DriveTls();
  if (gone()) return;
  FlushSend();
  ArmRecv();
}

void Transport::Consume(size_t n) {
  in_off_ += n;
  if (in_off_ >= in_.size()) {
    in_.clear();
    in_off_ = 0;
  }
}

void Transport::SetInput(std::string_view bytes) {
  in_.assign(bytes);
  in_off_ = 0;
}

void Transport::AppendInput(std::string_view data) {
  if (in_off_ > 0 && in_off_ == in_.size()) {
    in_.clear();
    in_off_ = 0;
  }
  in_.append(data);
}

void Transport::OnCompletion(uint8_t op, int res, uint32_t flags) {
  switch (op) {
    case kRecv: return OnRecv(res, flags);
    case kSend: return OnSend(res);
    case kRecvMsg: return OnRecvMsg(res);
    case kRecvExact: return OnRecvExact(res);
    default: return;
  }
}

void Transport::OnDeferred(uint8_t op) {
  if (op == kDeferredFlush) {
    flush_scheduled_ = false;
    if (!gone()) FlushSend();
  } else if (op == kDeferredRecv) {
    recv_deferred_ = false;
    ArmRecv();
  }
}

void Transport::ArmRecv() {
  if (recv_inflight_ || recv_deferred_ || peer_eof_ || fd_.get() < 0) return;
  if (state_ == State::kClosed || state_ == State::kClosing || state_ == State::kIdle) return;
  if (rx_sync_ == RxSync::kPending) return;  // the RX resync reads exact byte counts
  bool poll_first = false;
  if (state_ == State::kOpen) {
    InputWanted want = owner_->WantsInput();
    if (want == InputWanted::kNo) return;
    // Waiting for the next request: it is almost never there yet, so skip
    // the first receive attempt and go straight to waiting for readiness.
    poll_first = want == InputWanted::kIdle && input().empty();
  }
  loop_->PrepRecv(fd_.get(), Tag(kRecv), poll_first);
  recv_inflight_ = true;
  ++inflight_;
}

void Transport::ScheduleFlush() {
  if (flush_scheduled_ || gone()) return;
  flush_scheduled_ = true;
  loop_->AtTurnEnd(Tag(kDeferredFlush));
}

void Transport::FlushSend() {
  if (send_inflight_ || fd_.get() < 0 || gone()) return;
  while (!out_.empty()) {
    OutputQueue::Segment& f = out_.front();
    io_uring_sqe* sqe = nullptr;
    switch (f.kind) {
      case OutputQueue::Kind::kInstallTx: {
        // Everything before this point was sent under the previous keys (or
        // was ciphertext OpenSSL made).
        KtlsCryptoInfo key;
        key.len = std::min(f.data.size(), sizeof(key.bytes));
        memcpy(key.bytes, f.data.data(), key.len);
        out_.PopFront();
        bool ok = InstallTxNow(key);
        key.Wipe();
        if (!ok) return CloseBy(CloseReason::kKtlsRequired);
        continue;
      }
      case OutputQueue::Kind::kBytes: {
        std::string_view u = f.unsent();
        if (u.empty()) {
          out_.PopFront();
          continue;
        }
        sqe = loop_->Sqe();
        io_uring_prep_send(sqe, fd_.get(), u.data(), u.size(), MSG_NOSIGNAL);
        break;
      }
      case OutputQueue::Kind::kRecord: {
        // A non-application record on a kTLS socket: the type travels in a
        // control message and the kernel frames and encrypts the payload.
        if (!send_ctl_) send_ctl_ = std::make_unique<ControlIo>();
        ControlIo& c = *send_ctl_;
        std::string_view u = f.unsent();
        c.iov.iov_base = const_cast<char*>(u.data());
        c.iov.iov_len = u.size();
        c.msg = msghdr{};
        c.msg.msg_iov = &c.iov;
        c.msg.msg_iovlen = 1;
        c.msg.msg_control = c.cbuf;
        c.msg.msg_controllen = CMSG_SPACE(1);
        cmsghdr* cm = CMSG_FIRSTHDR(&c.msg);
        cm->cmsg_level = kSolTls;
        cm->cmsg_type = kTlsSetRecordType;
        cm->cmsg_len = CMSG_LEN(1);
        *CMSG_DATA(cm) = f.record_type;
        sqe = loop_->Sqe();
        io_uring_prep_sendmsg(sqe, fd_.get(), &c.msg, MSG_NOSIGNAL);
        break;
      }
    }
    io_uring_sqe_set_data64(sqe, Tag(kSend));
    out_.set_front_busy(true);
    send_inflight_ = true;
    ++inflight_;
    return;
  }
}

void Transport::OnSend(int res) {
  send_inflight_ = false;
  --inflight_;
  out_.set_front_busy(false);
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0) {
    if (res == -EAGAIN || res == -EINTR) return FlushSend();
    // A record the kernel refused on RX (tls_err_abort) fails sends with
    // that error too, before any receive reported it: answer it as such.
    if (rx_active_ && (res == -EBADMSG || res == -EMSGSIZE || res == -EINVAL) &&
        state_ != State::kClosing) {
      return FailKernelRecord(-res);
    }
    return CloseBy(CloseReason::kPeerGone);
  }
  out_.Consume(static_cast<size_t>(res));
  FlushSend();
  MaybeDropSsl();
  if (state_ == State::kClosing && !send_inflight_ && out_.empty()) return EnterLinger();
  if (state_ == State::kOpen) owner_->OnWritable();
}

void Transport::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  ProvidedRecv recv(loop_->buffers(), res, flags);
  if (state_ == State::kClosed) return MaybeRelease();
  if (recv.no_buffer()) {
    recv_deferred_ = true;
    loop_->NextTurn(Tag(kDeferredRecv));
    return;
  }
  if (res == -EIO && rx_active_) {
    // The kernel met a non-application record (alert, KeyUpdate): read it
    // with recvmsg, which returns its type.
    return ArmRecvMsg();
  }
  if (res <= 0) {
    peer_eof_ = true;
    if (state_ == State::kLingering) return CloseSocket();
    if (res < 0 && rx_active_ && res != -ECONNRESET && res != -EPIPE) {
      return FailKernelRecord(-res);
    }
    // TLS never began: not a handshake failure (the owner counts its own).
    if (preamble_pending_) return CloseBy(CloseReason::kPeerGone);
    if (state_ == State::kHandshake) {
      metrics_->handshake_failures[static_cast<size_t>(HandshakeFailure::kClientReset)].Inc();
      return CloseBy(CloseReason::kHandshakeFailed);
    }
    return CloseBy(CloseReason::kPeerGone);
  }
  std::string_view data = recv.data();
  if (state_ == State::kLingering) return ArmRecv();
  if (rx_active_) {
    AppendInput(data);
    recv.Recycle();  // AppendInput copied the bytes
    DeliverInput();
    return AfterInputEvent();
  }
  if (preamble_pending_ && !TakePreamble(&data)) return;
  // The first TLS byte is in the stash only when a preamble was reassembled
  // there: no TLS byte was handed to OpenSSL yet.
  if (!client_ && state_ == State::kHandshake && SSL_in_before(ssl_.get()) &&
      static_cast<uint8_t>(cipher_stash_.empty() ? data[0] : cipher_stash_[0]) != 0x16) {
    // Not a TLS handshake record: most likely plain HTTP sent to the TLS port.
    metrics_->handshake_failures[static_cast<size_t>(HandshakeFailure::kPlainHttp)].Inc();
    Loop::CancelTimer(&timer_);
    out_.Clear();
    owner_->OnNotTls();
    if (gone()) return;
    state_ = State::kOpen;  // so Close() sends no close_notify of a session that never was
    ssl_.reset();
    tx_active_ = false;
    Close();
    return;
  }
  if (cipher_stash_.empty()) {
    bio_.in = data;
  } else {
    cipher_stash_.append(data);
    bio_.in = cipher_stash_;
  }
  DriveTls();
  // OpenSSL takes every byte it is offered into its own record buffer; what
  // is left only survives an early exit, so keep it off the ring buffer.
  if (!bio_.in.empty() && !gone()) {
    std::string rest(bio_.in);
    cipher_stash_.swap(rest);
  } else {
    cipher_stash_.clear();
  }
  bio_.in = {};
  recv.Recycle();
  if (rx_sync_ == RxSync::kPending && !gone()) {
    // The handshake just ended: cipher_stash_ holds the partial record
    // DriveTls kept from OpenSSL, if any.
    FinishRxOffload();
  }
  AfterInputEvent();
}

// Why the preamble is a stage of the transport's own receive path, rather
// than a receive of the owner's before StartServer: the bytes that follow it
// (often in the same segment: a balancer sends the header and the
// ClientHello back to back) must reach OpenSSL exactly as they came, and
// here they already do, through the same provided-buffer receive and the
// same stash a partial TLS record uses; the handshake timer, the close
// paths and the not-TLS answer cover the preamble with no second copy of
// them; and a transport without a preamble pays one flag test per receive.
bool Transport::TakePreamble(std::string_view* data) {
  // Until the preamble is whole its bytes wait in cipher_stash_, which holds
  // nothing else before the first TLS byte.
  const bool reassembling = !cipher_stash_.empty();
  if (reassembling) cipher_stash_.append(*data);
  const std::string_view bytes = reassembling ? std::string_view(cipher_stash_) : *data;
  size_t consumed = 0;
  switch (owner_->OnPreamble(bytes, &consumed)) {
    case PreambleStatus::kNeedMore:
      if (!reassembling) cipher_stash_.assign(*data);
      ArmRecv();
      return false;
    case PreambleStatus::kFailed:
      CloseBy(CloseReason::kPreambleFailed);
      return false;
    case PreambleStatus::kDone:
      break;
  }
  preamble_pending_ = false;
  consumed = std::min(consumed, bytes.size());
  if (reassembling) {
    cipher_stash_.erase(0, consumed);
    *data = {};
  } else {
    data->remove_prefix(consumed);
  }
  if (!cipher_stash_.empty() || !data->empty()) return true;
  ArmRecv();
  return false;
}

void Transport::AfterInputEvent() {
  if (gone()) return;
  if (require_failed_ && state_ == State::kOpen) {
    log_->Log(ErrorLog::Level::kWarn, "tls",
              "%s: kTLS offload failed and ktls = \"require\": closing", peer_.c_str());
    return CloseBy(CloseReason::kKtlsRequired);
  }
  if (keyupdate_unanswerable_) {
    metrics_->ktls_keyupdate_closes[static_cast<size_t>(KeyUpdateClose::kNotOffloaded)].Inc();
    log_->Log(ErrorLog::Level::kWarn, "tls",
              "%s: KeyUpdate asking for an answer before RX was offloaded: closing",
              peer_.c_str());
    return CloseBy(CloseReason::kKeyUpdate);
  }
  FlushSend();
  ArmRecv();
}

void Transport::DriveTls() {
  size_t held = 0;  // bytes of bio_.in kept from OpenSSL, right after its end
  bool got_input = false;
  if (state_ == State::kHandshake) {
    int r = SSL_do_handshake(ssl_.get());
    if (r != 1) {
      int err = SSL_get_error(ssl_.get(), r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
      return FailHandshake(err);
    }
    HandshakeDone();
    if (state_ != State::kOpen) return;
    if (rx_sync_ == RxSync::kPending) {
      // RX goes to the kernel at the next record boundary: OpenSSL gets
      // every whole record that came after the Finished, the partial last
      // one stays in bio_.in for the caller to keep (see StartRxOffload).
      size_t complete = 0, missing = 0, tail = 0;
      CountRecords(bio_.in, &complete, &missing, &tail);
      held = bio_.in.size() - tail;
      bio_.in.remove_suffix(held);
    }
    got_input = true;  // the owner hears of the handshake's end through OnInput too
  }
  // Decrypt everything available into the plaintext buffer, through the
  // loop's scratch, so the buffer grows only by what arrived.
  for (;;) {
    if (state_ != State::kOpen) return;
    char* scratch = loop_->read_scratch();
    int n = SSL_read(ssl_.get(), scratch, static_cast<int>(Loop::kReadScratch));
    if (n > 0) {
      AppendInput(std::string_view(scratch, static_cast<size_t>(n)));
      got_input = true;
      continue;
    }
    int err = SSL_get_error(ssl_.get(), n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      // close_notify: the owner finishes what is buffered, then closes.
      peer_eof_ = true;
      input_end_ = InputEnd::kCloseNotify;
      got_input = true;
      break;
    }
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
      ERR_clear_error();
      return CloseBy(CloseReason::kPeerGone);
    }
    return FailProtocol("record");
  }
  // The held bytes follow whatever OpenSSL left unread, in the same buffer.
  if (held > 0) bio_.in = std::string_view(bio_.in.data(), bio_.in.size() + held);
  if (got_input) DeliverInput();
}

void Transport::DeliverInput() {
  if (state_ != State::kOpen) return;
  owner_->OnInput();
}

void Transport::HandshakeDone() {
  Loop::CancelTimer(&timer_);
  info_.sni.assign(ServerName(ssl_.get()));
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  info_.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
  info_.version = SSL_version(ssl_.get());
  info_.cipher = SSL_get_cipher_name(ssl_.get());
  info_.resumed = SSL_session_reused(ssl_.get()) != 0;
  (info_.resumed ? metrics_->handshakes_resumed : metrics_->handshakes_full).Inc();
  // Before StartRxOffload, which frees the SSL once both directions are in
  // the kernel.
  CopyPeerIdentity(ssl_.get(), &info_);
  if (info_.resumed && !client_) {
    if (std::optional<TicketKeySource> source = ResumedTicketSource(ssl_.get())) {
      metrics_->resumptions[static_cast<size_t>(*source)].Inc();
    }
  }
  state_ = State::kOpen;
  if (ktls_allowed_) StartRxOffload();
  owner_->OnHandshakeDone();
}

void Transport::FailHandshake(int ssl_error) {
  if (client_) {
    verify_error_ = SSL_get_verify_result(ssl_.get());
    if (verify_error_ != X509_V_OK) {
      log_->Log(ErrorLog::Level::kWarn, "tls", "%s: server certificate refused: %s",
                peer_.c_str(), X509_verify_cert_error_string(verify_error_));
    }
  }
  HandshakeFailure f = ClassifyHandshakeFailure(ssl_.get(), ssl_error);
  metrics_->handshake_failures[static_cast<size_t>(f)].Inc();
  if (f != HandshakeFailure::kClientReset) {
    log_->Log(ErrorLog::Level::kInfo, "tls", "handshake with %s failed: %s", peer_.c_str(),
              HandshakeFailureLabel(f));
  }
  // The alert OpenSSL queued, if any, goes out before the close.
  owner_->OnTransportClosed(CloseReason::kHandshakeFailed);
  if (!gone()) Close();
}

void Transport::FailProtocol(const char* what) {
  unsigned long e = ERR_peek_error();
  char reason[160];
  ERR_error_string_n(e, reason, sizeof reason);
  ERR_clear_error();
  metrics_->protocol_errors.Inc();
  log_->Log(ErrorLog::Level::kInfo, "tls", "%s: bad %s: %s", peer_.c_str(), what, reason);
  // OpenSSL queued its fatal alert in our BIO (bad_record_mac,
  // record_overflow, decode_error, unexpected_message, ...): RFC 8446 §6
  // wants it sent before the close. It marked the session shut down, so
  // Close() adds no close_notify.
  owner_->OnTransportClosed(CloseReason::kProtocolError);
  if (!gone()) Close();
}

void Transport::FailKernelRecord(int err) {
  // The kernel's record layer refused what the peer sent (KTLS.md): the
  // same alerts OpenSSL would have sent, from the kernel's TX.
  // EBADMSG: authentication failed, or (TLS 1.3) no content type or an
  // outer type other than 23, which the kernel cannot tell apart.
  // EMSGSIZE: over 2^14 plus the cipher's overhead. EINVAL: a bad record
  // version, which OpenSSL answers by version.
  uint8_t alert = info_.version == TLS1_2_VERSION ? kAlertProtocolVersion : kAlertDecodeError;
  if (err == EBADMSG) alert = kAlertBadRecordMac;
  if (err == EMSGSIZE) alert = kAlertRecordOverflow;
  metrics_->protocol_errors.Inc();
  log_->Log(ErrorLog::Level::kInfo, "tls", "%s: kTLS receive failed: %s", peer_.c_str(),
            strerror(err));
  // The kernel also left the error on the socket (tls_err_abort sets
  // sk_err), which fails every later send, the alert's too. Reading
  // SO_ERROR takes it off; TX itself is unharmed.
  int pending = 0;
  socklen_t len = sizeof pending;
  getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &pending, &len);
  QueueAlert(alert);
  owner_->OnTransportClosed(CloseReason::kProtocolError);
  if (!gone()) Close();
}

void Transport::QueueAlert(uint8_t description) {
  if (!tx_active_) return;  // OpenSSL owns TX and writes its own alerts
  const char alert[2] = {2, static_cast<char>(description)};  // fatal
  out_.AppendRecord(kRecordAlert, std::string_view(alert, 2));
  alert_sent_ = true;
}

bool Transport::Write(std::string_view plain) {
  if (state_ != State::kOpen) return false;
  if (!ssl_) {
    // Both directions are in the kernel and OpenSSL is gone: what goes on
    // the socket is plaintext the kernel encrypts.
    out_.Append(plain);
    return true;
  }
  if (keyupdate_unanswerable_) return false;  // SSL_write would send OpenSSL's answer
  // SSL_MODE_ENABLE_PARTIAL_WRITE + a BIO that never blocks: this loop ends
  // after one call unless the data exceeds what one call takes.
  while (!plain.empty()) {
    int n = SSL_write(ssl_.get(), plain.data(),
                      static_cast<int>(std::min<size_t>(plain.size(), 1 << 30)));
    if (n <= 0) {
      ERR_clear_error();
      return false;
    }
    plain.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void Transport::CloseBy(CloseReason why) {
  if (gone()) return;
  owner_->OnTransportClosed(why);
  Abort();
}

void Transport::Close() {
  if (gone() || state_ == State::kClosing || state_ == State::kLingering) return;
  if (state_ != State::kHandshake && !alert_sent_) {
    if (ssl_ && SSL_is_init_finished(ssl_.get())) {
      SSL_shutdown(ssl_.get());  // queue close_notify behind what is queued
    } else if (!ssl_ && tx_active_) {
      out_.AppendRecord(kRecordAlert, std::string_view("\x01\x00", 2));  // close_notify
    }
  }
  ERR_clear_error();
  state_ = State::kClosing;
  Loop::CancelTimer(&timer_);
  FlushSend();  // may end the connection (a TX key that cannot be installed)
  if (state_ == State::kClosing && !send_inflight_ && out_.empty()) EnterLinger();
}

void Transport::EnterLinger() {
  // The peer already closed its side: nothing left to wait for.
  if (peer_eof_) return CloseSocket();
  // Everything is out: half-close and wait briefly for the peer's FIN so
  // unread bytes do not turn our last bytes into a reset.
  state_ = State::kLingering;
  shutdown(fd_.get(), SHUT_WR);
  loop_->ArmTimer(&timer_, kTimerLinger, kLingerMs);
  ArmRecv();
}

void Transport::Abort() {
  if (gone()) return;
  CloseSocket();
}

void Transport::CloseSocket() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  Loop::CancelTimer(&timer_);
  // Pending ops complete (with 0 or an error) once the socket is shut down;
  // the socket is closed when the last one is back.
  if (fd_.get() >= 0) shutdown(fd_.get(), SHUT_RDWR);
  MaybeRelease();
}

void Transport::MaybeRelease() {
  if (state_ != State::kClosed || inflight_ > 0) return;
  fd_.reset();
  ssl_.reset();
  WipeTrafficSecrets();
  in_.clear();
  in_off_ = 0;
  ShrinkIdle();
  state_ = State::kIdle;
  owner_->OnReleased();
}

void Transport::OnDeadline(uint8_t kind) {
  if (kind == kTimerLinger) return CloseSocket();
  if (kind == kTimerHandshake && preamble_pending_) {
    // The handshake's deadline covers the preamble too; TLS never began,
    // so no handshake failure is counted (the owner counts its own).
    if (handshake_timeouts_ != nullptr) handshake_timeouts_->Inc();
    return CloseBy(CloseReason::kPreambleTimeout);
  }
  if (kind == kTimerHandshake && state_ == State::kHandshake) {
    if (handshake_timeouts_ != nullptr) handshake_timeouts_->Inc();
    metrics_->handshake_failures[static_cast<size_t>(HandshakeFailure::kTimeout)].Inc();
    return CloseBy(CloseReason::kHandshakeFailed);
  }
}

void Transport::ShrinkIdle() {
  if (in_.size() == in_off_) {
    std::string().swap(in_);
    in_off_ = 0;
  }
  if (!send_inflight_ && out_.empty()) out_.Shrink();
  if (cipher_stash_.empty()) std::string().swap(cipher_stash_);
}

}  // namespace ktlb::tls
