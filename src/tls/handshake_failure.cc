// Names why a server handshake failed, as a stable metric label. OpenSSL
// reports the reason through its per-thread error queue; the reasons it
// cannot report (we refused an unknown SNI, or a resumption mTLS forbids,
// on purpose) are a mark the servername callback leaves on the SSL.
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

// One ex_data slot for the process; OpenSSL hands out indexes under its own
// lock, and the function-local static makes the request happen exactly once.
int RejectedIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// The mark is a pointer to one of these: never dereferenced for writing,
// static, so the SSL owns nothing to free.
const HandshakeFailure kMarks[] = {HandshakeFailure::kUnknownSni,
                                   HandshakeFailure::kClientCertMissing,
                                   HandshakeFailure::kClientCertRejected};

// Maps one queued error to a failure, or kOther if it says nothing we name.
HandshakeFailure FromError(unsigned long err, int ssl_error) {
  if (ERR_GET_LIB(err) == ERR_LIB_SYS) {
    // errno-level transport failure (ECONNRESET, EPIPE) from a socket BIO.
    return ssl_error == SSL_ERROR_SYSCALL ? HandshakeFailure::kClientReset
                                          : HandshakeFailure::kOther;
  }
  if (ERR_GET_LIB(err) != ERR_LIB_SSL) return HandshakeFailure::kOther;
  switch (ERR_GET_REASON(err)) {
    // Nothing in common to build a handshake from: ciphers (a TLS 1.2 client
    // with only CBC suites), groups or signature algorithms.
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_KEY_SHARE:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
      return HandshakeFailure::kNoSharedCipher;

    // Client below our TLS 1.2 floor (or it refused our version).
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_UNSUPPORTED_SSL_VERSION:
    case SSL_R_BAD_PROTOCOL_VERSION_NUMBER:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
      return HandshakeFailure::kProtocolVersion;

    // OpenSSL recognises "GET ", "POST ", "HEAD ", "PUT " and "CONNE" in
    // the first record header.
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
      return HandshakeFailure::kPlainHttp;

    // Bytes that are not well-formed TLS: record framing, or handshake
    // messages whose lengths and fields do not parse.
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_RECORD_TOO_SMALL:
    case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
    case SSL_R_DATA_LENGTH_TOO_LONG:
    case SSL_R_EXCEEDS_MAX_FRAGMENT_SIZE:
    case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
    case SSL_R_BAD_RECORD_TYPE:
    case SSL_R_UNEXPECTED_RECORD:
    case SSL_R_UNEXPECTED_MESSAGE:
    case SSL_R_UNEXPECTED_CCS_MESSAGE:
    case SSL_R_NOT_ON_RECORD_BOUNDARY:
    case SSL_R_FRAGMENTED_CLIENT_HELLO:
    case SSL_R_EXCESSIVE_MESSAGE_SIZE:
    case SSL_R_BAD_PACKET:
    case SSL_R_BAD_PACKET_LENGTH:
    case SSL_R_BAD_HANDSHAKE_LENGTH:
    case SSL_R_BAD_LENGTH:
    case SSL_R_LENGTH_MISMATCH:
    case SSL_R_LENGTH_TOO_SHORT:
    case SSL_R_LENGTH_TOO_LONG:
    case SSL_R_BAD_EXTENSION:
      return HandshakeFailure::kBadRecord;

    // mTLS: "require" and the client's Certificate message was empty (TLS
    // 1.2 and 1.3 alike).
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
      return HandshakeFailure::kClientCertMissing;
    // The chain did not verify: the verify result (unknown CA, expired,
    // revoked, a CRL missing) went to the client as the alert.
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_NO_CERTIFICATES_RETURNED:
      return HandshakeFailure::kClientCertRejected;

    // OpenSSL 3.0 reports a stream that ends mid-handshake as an SSL error
    // (not SSL_ERROR_SYSCALL) when the BIO says EOF.
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
      return HandshakeFailure::kClientReset;

    default:
      return HandshakeFailure::kOther;
  }
}

}  // namespace

namespace internal {

void MarkRejected(SSL* ssl, HandshakeFailure why) {
  int index = RejectedIndex();
  if (index < 0) return;
  for (const HandshakeFailure& mark : kMarks) {
    if (mark == why) SSL_set_ex_data(ssl, index, const_cast<HandshakeFailure*>(&mark));
  }
}

bool WasRejected(const SSL* ssl, HandshakeFailure* why) {
  int index = RejectedIndex();
  if (index < 0) return false;
  const auto* mark = static_cast<const HandshakeFailure*>(SSL_get_ex_data(ssl, index));
  if (mark == nullptr) return false;
  *why = *mark;
  return true;
}

}  // namespace internal

const char* HandshakeFailureLabel(HandshakeFailure f) {
  switch (f) {
    case HandshakeFailure::kUnknownSni: return "unknown_sni";
    case HandshakeFailure::kNoSharedCipher: return "no_shared_cipher";
    case HandshakeFailure::kProtocolVersion: return "protocol_version";
    case HandshakeFailure::kPlainHttp: return "plain_http";
    case HandshakeFailure::kTimeout: return "timeout";
    case HandshakeFailure::kClientReset: return "client_reset";
    case HandshakeFailure::kBadRecord: return "bad_record";
    case HandshakeFailure::kClientCertMissing: return "client_cert_missing";
    case HandshakeFailure::kClientCertRejected: return "client_cert_rejected";
    case HandshakeFailure::kOther: return "other";
  }
  return "other";
}

HandshakeFailure ClassifyHandshakeFailure(SSL* ssl, int ssl_error) {
  HandshakeFailure result = HandshakeFailure::kOther;
  bool queue_empty = true;
  // The queue usually holds one entry (the SSLfatal reason), but a lower
  // layer (EVP, a provider) may have queued its own first; the first entry
  // that names a known reason wins. Popping every entry also empties the
  // queue, which must not leak into the next connection on this thread.
  for (unsigned long err = ERR_get_error(); err != 0; err = ERR_get_error()) {
    queue_empty = false;
    if (result == HandshakeFailure::kOther) result = FromError(err, ssl_error);
  }
  ERR_clear_error();

  if (HandshakeFailure marked; ssl != nullptr && internal::WasRejected(ssl, &marked)) {
    return marked;
  }
  if (queue_empty &&
      (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN)) {
    // The peer went away (EOF, reset, or close_notify) with nothing wrong
    // in what it sent.
    return HandshakeFailure::kClientReset;
  }
  return result;
}

}  // namespace ktlb::tls
