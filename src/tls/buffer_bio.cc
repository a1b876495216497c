// The BIO between OpenSSL and an io_uring connection. It performs no I/O:
// reads consume the ciphertext the connection already received (io->in),
// writes append to the connection's output (io->out), and the connection
// moves the bytes with io_uring. OpenSSL sees "would block" when `in` runs dry.
#include <algorithm>
#include <climits>
#include <cstddef>
#include <string>

#include <openssl/bio.h>

#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

BioIo* IoOf(BIO* b) { return static_cast<BioIo*>(BIO_get_data(b)); }

int BufferRead(BIO* b, char* buf, int len) {
  BIO_clear_retry_flags(b);
  BioIo* io = IoOf(b);
  if (io == nullptr || buf == nullptr || len <= 0) return 0;
  if (io->in.empty()) {
    if (io->in_eof) return 0;  // orderly end of the peer's stream
    // No bytes yet: the connection will receive more and call OpenSSL again.
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = std::min(io->in.size(), static_cast<size_t>(len));
  io->in.copy(buf, n);
  io->in.remove_prefix(n);
  return static_cast<int>(n);
}

int BufferWrite(BIO* b, const char* buf, int len) {
  BIO_clear_retry_flags(b);
  BioIo* io = IoOf(b);
  if (io == nullptr || (io->out == nullptr && io->queue == nullptr)) return -1;
  if (buf == nullptr || len <= 0) return 0;
  // Always accept everything: the connection owns the output queue and its
  // backpressure. A retry here would surface from SSL_write/handshake as
  // WANT_WRITE with nothing the caller could wait on. After TX went to the
  // kernel OpenSSL hands us the caller's plaintext buffer: it is copied here.
  std::string_view bytes(buf, static_cast<size_t>(len));
  if (io->queue != nullptr) {
    if (io->ctrl_record_type >= 0) {
      // A non-application record on an offloaded socket (alert,
      // NewSessionTicket, TLS 1.2 Finished): it must go out alone with its
      // record type. Control 74 covers exactly one write: OpenSSL 3.0 never
      // sends control 75 after it (its socket BIO clears the flag itself once
      // the record is written), so without the reset every later SSL_write
      // would leave as a handshake or alert record.
      io->queue->AppendRecord(static_cast<uint8_t>(io->ctrl_record_type), bytes);
      io->ctrl_record_type = -1;
    } else {
      io->queue->Append(bytes);
    }
  } else {
    io->out->append(bytes);
  }
  return len;
}

// OpenSSL 3.0's internal BIO controls for kTLS (internal/bio.h).
constexpr int kCtrlSetKtls = 72;
constexpr int kCtrlGetKtlsSend = 73;
constexpr int kCtrlSetKtlsTxSendCtrlMsg = 74;
constexpr int kCtrlClearKtlsTxCtrlMsg = 75;
constexpr int kCtrlGetKtlsRecv = 76;

long BufferCtrl(BIO* b, int cmd, long num, void* ptr) {
  BioIo* io = IoOf(b);
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      // Must never fail or ask for a retry: OpenSSL's buffering BIO drops
      // retry flags (the caller would see SSL_ERROR_SYSCALL) and TLS 1.2
      // skips kTLS TX when the flush before it fails. Writes are already in
      // *io->out, so there is nothing to flush (KTLS.md, "Traps in the BIO").
      return 1;
    case BIO_CTRL_PENDING:  // bytes readable without more I/O
      return io == nullptr ? 0 : static_cast<long>(std::min<size_t>(io->in.size(), LONG_MAX));
    case BIO_CTRL_WPENDING:  // writes are never held back in the BIO
      return 0;
    case BIO_CTRL_EOF:
      // OpenSSL asks after a 0 read to tell a truncated stream (unexpected
      // EOF) from "no data yet".
      return io == nullptr || (io->in.empty() && io->in_eof) ? 1 : 0;
    case BIO_CTRL_GET_CLOSE:
      return BIO_get_shutdown(b);
    case BIO_CTRL_SET_CLOSE:
      // Recorded for BIO API symmetry; the BIO never owns `io` either way.
      BIO_set_shutdown(b, static_cast<int>(num));
      return 1;
    case BIO_CTRL_PUSH:
    case BIO_CTRL_POP:
      // Notifications that a filter was pushed on/popped off us. We are the
      // sink at the bottom of the chain; there is nothing below to tell.
      return 0;
    case BIO_CTRL_DUP:
      // Refuse: a duplicate would consume the same connection's bytes and
      // interleave writes into the same output behind the owner's back.
      return 0;
    // kTLS hand-off (KTLS.md, "The hand-off to a custom BIO"). Without hooks
    // every one answers 0: "this BIO cannot offload", userspace crypto stays.
    case kCtrlSetKtls: {
      // OpenSSL 3.0 passes `which & SSL3_CC_WRITE`: TX arrives as 2, RX as 0.
      if (io == nullptr || io->ktls == nullptr || ptr == nullptr) return 0;
      auto info = CryptoInfoFromOpenSsl(ptr);
      if (!info.ok()) return 0;
      return num != 0 ? io->ktls->OfferTx(*info) : io->ktls->OfferRx(*info);
    }
    case kCtrlGetKtlsSend:
      return io != nullptr && io->ktls != nullptr && io->ktls->TxTaken() ? 1 : 0;
    case kCtrlGetKtlsRecv:
      return io != nullptr && io->ktls != nullptr && io->ktls->RxTaken() ? 1 : 0;
    case kCtrlSetKtlsTxSendCtrlMsg:
      if (io == nullptr || io->queue == nullptr) return 0;
      io->ctrl_record_type = static_cast<int>(num);
      return 1;
    case kCtrlClearKtlsTxCtrlMsg:
      if (io == nullptr || io->queue == nullptr) return 0;
      io->ctrl_record_type = -1;
      return 1;
    default:
      return 0;
  }
}

int BufferCreate(BIO* b) {
  // Not usable until NewBufferBio attaches a BioIo.
  BIO_set_init(b, 0);
  BIO_set_data(b, nullptr);
  return 1;
}

int BufferDestroy(BIO* b) {
  // The BioIo belongs to the connection; only forget it.
  BIO_set_data(b, nullptr);
  BIO_set_init(b, 0);
  return 1;
}

// Built once per process and never freed: every BIO created from it points
// at it until the BIO dies, and BIOs may live until exit. A function-local
// static gives thread-safe one-time initialization across workers.
const BIO_METHOD* BufferBioMethod() {
  static const BIO_METHOD* const method = [] {
    int index = BIO_get_new_index();
    if (index == -1) return static_cast<BIO_METHOD*>(nullptr);
    BIO_METHOD* m = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "ktlb buffer");
    if (m == nullptr) return static_cast<BIO_METHOD*>(nullptr);
    if (BIO_meth_set_read(m, BufferRead) != 1 || BIO_meth_set_write(m, BufferWrite) != 1 ||
        BIO_meth_set_ctrl(m, BufferCtrl) != 1 || BIO_meth_set_create(m, BufferCreate) != 1 ||
        BIO_meth_set_destroy(m, BufferDestroy) != 1) {
      BIO_meth_free(m);
      return static_cast<BIO_METHOD*>(nullptr);
    }
    return m;
  }();
  return method;
}

}  // namespace

BIO* NewBufferBio(BioIo* io) {
  const BIO_METHOD* method = BufferBioMethod();
  if (method == nullptr || io == nullptr) return nullptr;
  BIO* b = BIO_new(method);
  if (b == nullptr) return nullptr;
  BIO_set_data(b, io);
  BIO_set_init(b, 1);
  return b;
}

}  // namespace ktlb::tls
