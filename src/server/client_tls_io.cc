// The client connection's byte path: receive, decrypt (or take the kernel's
// plaintext once RX is offloaded), queue and send.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include <openssl/err.h>

#include "client_connection.h"
#include "upstream_connection.h"
#include "worker.h"

namespace ktlb {

void ClientConnection::ArmRecv() {
  if (recv_inflight_ || peer_eof_ || fd_ < 0 || state_ == State::kClosed) return;
  if (rx_sync_ == RxSync::kPending) return;  // the RX resync reads exact byte counts
  if (!ReadingAllowed()) return;
  io_uring_sqe* sqe = w_->ring().Sqe();
  io_uring_prep_recv(sqe, fd_, nullptr, w_->buffers().buf_size(), 0);
  if (state_ == State::kReadingHead && plain_off_ == plain_.size()) {
    // Waiting for the next request: it is almost never there yet, so skip
    // the first receive attempt and go straight to waiting for readiness.
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  }
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = w_->buffers().group_id();
  io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kRecv)));
  recv_inflight_ = true;
  ++inflight_;
}

void ClientConnection::FlushSend() {
  if (send_inflight_ || fd_ < 0 || state_ == State::kClosed) return;
  while (!out_.empty()) {
    OutputQueue::Segment& f = out_.front();
    io_uring_sqe* sqe = nullptr;
    switch (f.kind) {
      case OutputQueue::Kind::kInstallTx: {
        // Everything before this point was sent under the previous keys (or
        // was ciphertext OpenSSL made).
        tls::KtlsCryptoInfo key;
        key.len = std::min(f.data.size(), sizeof(key.bytes));
        memcpy(key.bytes, f.data.data(), key.len);
        out_.PopFront();
        bool ok = InstallTxNow(key);
        key.Wipe();
        if (!ok) return CloseNow();
        continue;
      }
      case OutputQueue::Kind::kBytes: {
        std::string_view u = f.unsent();
        if (u.empty()) {
          out_.PopFront();
          continue;
        }
        sqe = w_->ring().Sqe();
        io_uring_prep_send(sqe, fd_, u.data(), u.size(), MSG_NOSIGNAL);
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
        cm->cmsg_level = tls::kSolTls;
        cm->cmsg_type = tls::kTlsSetRecordType;
        cm->cmsg_len = CMSG_LEN(1);
        *CMSG_DATA(cm) = f.record_type;
        sqe = w_->ring().Sqe();
        io_uring_prep_sendmsg(sqe, fd_, &c.msg, MSG_NOSIGNAL);
        break;
      }
    }
    io_uring_sqe_set_data64(sqe, Tag(static_cast<uint8_t>(ConnOp::kSend)));
    out_.set_front_busy(true);
    send_inflight_ = true;
    ++inflight_;
    return;
  }
}

void ClientConnection::OnSend(int res) {
  send_inflight_ = false;
  --inflight_;
  out_.set_front_busy(false);
  if (state_ == State::kClosed) return MaybeRelease();
  if (res < 0) {
    if (res == -EAGAIN || res == -EINTR) return FlushSend();
    w_->metrics().listeners[listener_].client_resets.Inc();
    return CloseNow();
  }
  out_.Consume(static_cast<size_t>(res));
  FlushSend();
  MaybeDropSsl();
  if (state_ == State::kClosing && !send_inflight_ && out_.empty()) return EnterLinger();
  if (state_ == State::kProxying && up_ != nullptr && ClientBacklog() < kMaxClientBacklog) {
    up_->OnClientWritable();
  }
}

void ClientConnection::OnRecv(int res, uint32_t flags) {
  recv_inflight_ = false;
  --inflight_;
  if (state_ == State::kClosed) {
    w_->buffers().RecycleFrom(flags);
    return MaybeRelease();
  }
  if (res == -ENOBUFS) {
    w_->DeferRecv(Tag(static_cast<uint8_t>(ConnOp::kRecv)));
    return;
  }
  if (res == -EIO && rx_active_) {
    // The kernel met a non-application record (alert, KeyUpdate): read it
    // with recvmsg, which returns its type.
    return ArmRecvMsg();
  }
  if (res <= 0) {
    if (res < 0 && rx_active_ && res != -ECONNRESET && res != -EPIPE) {
      fprintf(stderr, "ktlb: tls: kTLS receive from %s:%u failed: %s\n", peer_ip_.c_str(),
              peer_port_, strerror(-res));
    }
    peer_eof_ = true;
    if (state_ == State::kLingering) return CloseNow();
    if (state_ == State::kHandshake) {
      w_->metrics().listeners[listener_].handshake_failures[static_cast<size_t>(
          tls::HandshakeFailure::kClientReset)].Inc();
      return CloseNow();
    }
    if (state_ == State::kProxying || (state_ == State::kReadingHead && plain_.size() > plain_off_)) {
      w_->metrics().listeners[listener_].client_resets.Inc();
    }
    return CloseNow();
  }
  uint16_t bid = BufferRing::BufferId(flags);
  std::string_view data = w_->buffers().Data(bid, static_cast<uint32_t>(res));
  if (state_ == State::kLingering) {
    w_->buffers().Recycle(bid);
    return ArmRecv();
  }
  if (rx_active_) {
    HandlePlainFromKernel(data);
    w_->buffers().Recycle(bid);
    FlushSend();
    ArmRecv();
    return;
  }
  if (state_ == State::kHandshake && cipher_stash_.empty() && SSL_in_before(ssl_.get()) &&
      static_cast<uint8_t>(data[0]) != 0x16) {
    // Not a TLS handshake record: most likely plain HTTP sent to the TLS port.
    w_->buffers().Recycle(bid);
    w_->metrics().listeners[listener_].handshake_failures[static_cast<size_t>(
        tls::HandshakeFailure::kPlainHttp)].Inc();
    DeadlineQueue::Cancel(&timer_);
    out_.Clear();
    scratch_.clear();
    http1::BuildErrorResponse(400, true, &scratch_);
    out_.Append(scratch_);
    BeginClose();
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
  if (!bio_.in.empty() && state_ != State::kClosed) {
    std::string rest(bio_.in);
    cipher_stash_.swap(rest);
  } else {
    cipher_stash_.clear();
  }
  bio_.in = {};
  w_->buffers().Recycle(bid);
  if (rx_sync_ == RxSync::kPending && state_ != State::kClosed) {
    // The handshake just ended: cipher_stash_ holds the partial record
    // DriveTls kept from OpenSSL, if any.
    FinishRxOffload();
  }
  if (require_failed_ && state_ != State::kHandshake) return RefuseWithoutOffload();
  if (keyupdate_unanswerable_ && state_ != State::kClosed) return CloseUnanswerableKeyUpdate();
  FlushSend();
  ArmRecv();
}

void ClientConnection::CloseUnanswerableKeyUpdate() {
  w_->metrics().listeners[listener_].ktls_keyupdate_closes[static_cast<size_t>(
      tls::KeyUpdateClose::kNotOffloaded)].Inc();
  fprintf(stderr, "ktlb: tls: %s:%u: KeyUpdate asking for an answer before RX was offloaded: "
          "closing\n", peer_ip_.c_str(), peer_port_);
  CloseNow();
}

void ClientConnection::RefuseWithoutOffload() {
  fprintf(stderr, "ktlb: tls: %s:%u: kTLS offload failed and ktls = \"require\": closing\n",
          peer_ip_.c_str(), peer_port_);
  CloseNow();
}

void ClientConnection::DriveTls() {
  size_t held = 0;  // bytes of bio_.in kept from OpenSSL, right after its end
  if (state_ == State::kHandshake) {
    int r = SSL_do_handshake(ssl_.get());
    if (r != 1) {
      int err = SSL_get_error(ssl_.get(), r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
      return FailHandshake(err);
    }
    OnHandshakeDone();
    if (rx_sync_ == RxSync::kPending) {
      // RX goes to the kernel at the next record boundary: OpenSSL gets
      // every whole record that came after the Finished, the partial last
      // one stays in bio_.in for the caller to keep (see StartRxOffload).
      size_t complete = 0, missing = 0, tail = 0;
      tls::CountRecords(bio_.in, &complete, &missing, &tail);
      held = bio_.in.size() - tail;
      bio_.in.remove_suffix(held);
    }
  }
  // Decrypt everything available into the plaintext buffer.
  for (;;) {
    if (state_ == State::kClosed || state_ == State::kClosing || state_ == State::kLingering) return;
    if (plain_off_ > 0 && plain_off_ == plain_.size()) {
      plain_.clear();
      plain_off_ = 0;
    }
    // Decrypt into the worker's scratch, so the connection's buffer grows
    // only by what arrived (no 16 KiB zero-fill per read).
    char* scratch = w_->read_scratch();
    int n = SSL_read(ssl_.get(), scratch, static_cast<int>(Worker::kReadScratch));
    if (n > 0) {
      plain_.append(scratch, static_cast<size_t>(n));
      continue;
    }
    int err = SSL_get_error(ssl_.get(), n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      peer_eof_ = true;  // close_notify: finish what is buffered, then close
      break;
    }
    ERR_clear_error();
    w_->metrics().listeners[listener_].client_resets.Inc();
    return CloseNow();
  }
  // The held bytes follow whatever OpenSSL left unread, in the same buffer.
  if (held > 0) bio_.in = std::string_view(bio_.in.data(), bio_.in.size() + held);
  ProcessPlain();
  if (peer_eof_ && state_ == State::kReadingHead) BeginClose();
}

void ClientConnection::HandlePlainFromKernel(std::string_view data) {
  if (plain_off_ > 0 && plain_off_ == plain_.size()) {
    plain_.clear();
    plain_off_ = 0;
  }
  plain_.append(data);
  ProcessPlain();
  if (peer_eof_ && state_ == State::kReadingHead) BeginClose();
}

}  // namespace ktlb
