// Kernel TLS: turning an established OpenSSL connection's record crypto over
// to the kernel (TLS_TX and TLS_RX on the socket), see ../shared/KTLS.md.
//
// OpenSSL 3.0 offers TX keys (and TLS 1.2 RX keys) through BIO control 72;
// TLS 1.3 RX keys are derived here from the client traffic secret that the
// key-log callback reveals. The connection decides when to install each
// direction so that no byte is encrypted or decrypted twice.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ktlb::tls {

// Linux uapi constants (linux/tls.h is not always installed; values are ABI).
inline constexpr int kSolTls = 282;
inline constexpr int kTcpUlp = 31;
inline constexpr int kTlsTx = 1;
inline constexpr int kTlsRx = 2;
inline constexpr int kTlsSetRecordType = 1;
inline constexpr int kTlsGetRecordType = 2;
inline constexpr uint16_t kCipherAesGcm128 = 51;
inline constexpr uint16_t kCipherAesGcm256 = 52;
inline constexpr uint16_t kCipherAesCcm128 = 53;
inline constexpr uint16_t kCipherChaCha20Poly1305 = 54;
inline constexpr uint8_t kRecordAlert = 21;
inline constexpr uint8_t kRecordHandshake = 22;
inline constexpr uint8_t kRecordApplicationData = 23;
inline constexpr uint8_t kHandshakeKeyUpdate = 24;  // a handshake message type, not a record type
inline constexpr uint8_t kHandshakeNewSessionTicket = 4;  // TLS 1.3: server -> client after the handshake

// Exactly the struct tls12_crypto_info_* the kernel takes, as bytes.
struct KtlsCryptoInfo {
  unsigned char bytes[64] = {};
  size_t len = 0;
  uint16_t version() const { return static_cast<uint16_t>(bytes[0] | (bytes[1] << 8)); }
  uint16_t cipher_type() const { return static_cast<uint16_t>(bytes[2] | (bytes[3] << 8)); }
  // rec_seq is the last 8 bytes for every supported cipher, big-endian.
  void SetRecordSequence(uint64_t seq);
  void Wipe();
};

// Copies OpenSSL 3.0's ktls_crypto_info_t (BIO control 72's pointer); the
// length comes from the cipher type, never from OpenSSL's trailing field.
// Fails for cipher types the kernel struct layout is not known for.
absl::StatusOr<KtlsCryptoInfo> CryptoInfoFromOpenSsl(const void* ptr);

// Builds the RX (or TX) info for a TLS 1.3 connection from a traffic secret:
// HKDF-Expand-Label(secret, "key"/"iv") with the cipher's handshake digest;
// GCM: salt = iv[0..3], iv = iv[4..11]; ChaCha20-Poly1305: iv = all 12 bytes.
// `rec_seq` is the sequence number of the first record the kernel will see.
absl::StatusOr<KtlsCryptoInfo> Tls13CryptoInfo(const SSL_CIPHER* cipher,
                                               const unsigned char* secret, size_t secret_len,
                                               uint64_t rec_seq);
// The same for the connection's negotiated cipher.
absl::StatusOr<KtlsCryptoInfo> Tls13CryptoInfo(const SSL* ssl, const unsigned char* secret,
                                               size_t secret_len, uint64_t rec_seq);

// --- TLS 1.3 KeyUpdate (RFC 8446 4.6.3) ---------------------------------------------------
//
// Once a direction is in the kernel, OpenSSL no longer sees its records or
// holds its keys, so a KeyUpdate has to be followed here: Linux from about
// 6.14 accepts TLS_RX / TLS_TX again on a TLS 1.3 socket with the next
// generation of keys (6.1 cannot: see KTLS.md, which also marks the 6.14
// behaviour as not yet run). RX: the peer's KeyUpdate arrives as a handshake
// record, and later reads fail (EKEYEXPIRED) until the new TLS_RX is set. TX:
// the KeyUpdate goes out under the old key (TLS_SET_RECORD_TYPE 22), then the
// new TLS_TX is set, so the peer switches keys exactly where we do.

// application_traffic_secret_N+1 =
//   HKDF-Expand-Label(application_traffic_secret_N, "traffic upd", "", Hash.length)
// (RFC 8446 7.2), with the cipher's handshake digest, as Tls13CryptoInfo does
// for "key" and "iv". `secret_len` must be that digest's size (32 for the
// SHA-256 suites, 48 for TLS_AES_256_GCM_SHA384): a secret of another length
// is a bug in the caller, not something to expand anyway. `out` receives
// `secret_len` bytes and may be `secret` itself (update in place). The new
// kernel info is then Tls13CryptoInfo(cipher, out, secret_len, 0): each key
// generation starts its record sequence at 0.
absl::Status NextTrafficSecret(const SSL_CIPHER* cipher, const unsigned char* secret,
                               size_t secret_len, unsigned char* out);

// KeyUpdate.request_update (RFC 8446 4.6.3).
enum class KeyUpdateRequest {
  kNotRequested = 0,  // update_not_requested: only the peer's sending key changed
  kRequested = 1,     // update_requested: we must answer with our own KeyUpdate
};

// Parses the plaintext of a handshake record (type 22) that a kTLS RX socket
// delivered after the handshake. The only content accepted is exactly one
// KeyUpdate, `18 00 00 01 XX` with XX 0 or 1: a client sends no other
// post-handshake message to a server that never asks for a certificate after
// the handshake (NewSessionTicket is server-only), and the KeyUpdate must end
// its record (RFC 8446 5.1: no message may straddle a key change). Anything
// else, including a KeyUpdate split across records or followed by another
// message, is refused: the caller closes the connection rather than guess
// which key the next record uses. (RFC 8446 names the alerts: XX > 1 is
// illegal_parameter, a wrong length decode_error, another type
// unexpected_message.)
absl::StatusOr<KeyUpdateRequest> ParseKeyUpdate(std::string_view handshake_bytes);

// The 5-byte KeyUpdate handshake message (`18 00 00 01 XX`) to send as the
// payload of one type-22 record. The answer to a peer's update_requested is
// always kNotRequested (RFC 8446 4.6.3), which also keeps two peers from
// asking each other forever.
std::string_view KeyUpdateMessage(KeyUpdateRequest request);

// Why a connection on a kTLS RX socket was closed after a KeyUpdate. Stable
// metric labels.
enum class KeyUpdateClose {
  kKernelCannotRekey = 0,  // a second TLS_RX failed (EBUSY before ~6.14)
  kRateLimited,            // more KeyUpdates than KeyUpdateLimiter allows
  kMalformed,              // not exactly one KeyUpdate message (ParseKeyUpdate)
  kNotOffloaded,           // the other direction is still in OpenSSL, which must not rekey
  kCount,
};
const char* KeyUpdateCloseLabel(KeyUpdateClose c);

// At most kBurst KeyUpdates per connection in any kWindowMs: a peer that
// sends them without pause (a JDK bug does) costs two setsockopt calls and
// two key schedules each, so it is cut off instead.
class KeyUpdateLimiter {
 public:
  static constexpr uint32_t kBurst = 8;
  static constexpr uint64_t kWindowMs = 60'000;
  // Records one KeyUpdate at `now_ms`; false when it is over the limit.
  bool Allow(uint64_t now_ms) {
    if (count_ == 0 || now_ms - window_start_ms_ >= kWindowMs) {
      window_start_ms_ = now_ms;
      count_ = 0;
    }
    return ++count_ <= kBurst;
  }

 private:
  uint64_t window_start_ms_ = 0;
  uint32_t count_ = 0;
};

// True for the AEAD ciphers whose kernel struct layout ktlb knows (AES-GCM,
// ChaCha20-Poly1305): with one of these, a missing key offer from OpenSSL is
// OpenSSL's choice (e.g. max_fragment_length), not the cipher's.
bool CipherHasKtlsLayout(const SSL_CIPHER* cipher);

// Why a connection stays in userspace crypto. Stable metric labels.
enum class KtlsFallback {
  kDisabled = 0,      // ktls = "off"
  kNoModule,          // TCP_ULP "tls": ENOENT (no tls module in this kernel)
  kUnsupportedCipher,  // cipher or TLS version the kernel/OpenSSL path cannot take
  kOpenSslVersion,    // not OpenSSL 3.0.x: the control numbers are 3.0's
  kSetsockopt,        // any other ULP / TLS_TX / TLS_RX error
  kNoSecret,          // TLS 1.3 traffic secret not seen (key-log callback)
  kOpenSslDeclined,   // OpenSSL did not offer TX (e.g. max_fragment_length)
  kEarlyKeyUpdate,    // a KeyUpdate arrived before RX could be installed: RX stays in OpenSSL
  kCount,
};
const char* KtlsFallbackLabel(KtlsFallback f);

// Attaches the "tls" ULP to an established TCP socket. 0 or an errno.
int AttachTlsUlp(int fd);
// setsockopt(SOL_TLS, TLS_TX or TLS_RX). 0 or an errno.
int InstallKtls(int fd, int direction, const KtlsCryptoInfo& info);
// A record type from a recvmsg control buffer (SOL_TLS, TLS_GET_RECORD_TYPE),
// or -1 when absent.
int RecordTypeFromCmsg(const void* control, size_t control_len);

// Walks TLS record headers over `bytes` (which start at a record boundary):
// *complete records end inside it, and *missing is how many more bytes the
// last, partial record needs (0 when `bytes` ends on a boundary). When only
// part of the last record's 5-byte header is there, *missing is the rest of
// the header: the body length is unknown until it arrives. *tail_off (if
// given) is where the partial record starts (bytes.size() when none).
void CountRecords(std::string_view bytes, size_t* complete, size_t* missing,
                  size_t* tail_off = nullptr);
// The body length in a complete 5-byte TLS record header.
inline size_t RecordBodyLength(const unsigned char* header) {
  return static_cast<size_t>(header[3]) << 8 | header[4];
}

// True when KTLB_KTLS_DEBUG is set in the environment (read once): connections
// then log each offload step (record counts at the RX switch, control
// records). For the kTLS guest tests; too chatty for production.
bool KtlsDebugLog();

// True when this process may use the OpenSSL 3.0 control-72 hand-off.
bool OpenSslSupportsKtlsHandoff();
// Probes the kernel once: can a loopback TCP socket take the "tls" ULP?
// Returns 0 or the errno (ENOENT: module missing).
int ProbeKernelKtls();

// The connection's side of the BIO hand-off. The BIO calls these from inside
// OpenSSL (control 72-76); the connection owns the ordering.
class KtlsHooks {
 public:
  // OpenSSL offers keys for a direction. Return true to take them (OpenSSL
  // then stops doing that direction's record crypto), false to decline.
  virtual bool OfferTx(const KtlsCryptoInfo& info) = 0;
  virtual bool OfferRx(const KtlsCryptoInfo& info) = 0;
  // True once TX keys were taken (OpenSSL asks before every write).
  virtual bool TxTaken() const = 0;
  virtual bool RxTaken() const = 0;
  // TLS 1.3 CLIENT_TRAFFIC_SECRET_0 (server side), from the key-log callback.
  virtual void OnClientTrafficSecret(const unsigned char* secret, size_t len) = 0;
  // TLS 1.3 SERVER_TRAFFIC_SECRET_0: what the TX keys after a KeyUpdate
  // derive from.
  virtual void OnServerTrafficSecret(const unsigned char* /*secret*/, size_t /*len*/) {}
  // OpenSSL read a KeyUpdate from the peer (it then holds newer RX keys than
  // the traffic secret captured at the handshake). `update_requested`: OpenSSL
  // will answer with its own KeyUpdate at its next write.
  virtual void OnPeerKeyUpdate(bool /*update_requested*/) {}

 protected:
  ~KtlsHooks() = default;
};

// Installs the key-log callback that feeds OnClientTrafficSecret, and a
// message callback that reports a peer KeyUpdate (OnPeerKeyUpdate), to the
// KtlsHooks stored as the SSL's app data (SSL_set_app_data).
void EnableTrafficSecretCapture(SSL_CTX* ctx);

}  // namespace ktlb::tls
