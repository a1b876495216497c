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
  // OpenSSL read a KeyUpdate from the peer (it then holds newer RX keys than
  // the traffic secret captured at the handshake).
  virtual void OnPeerKeyUpdate() {}

 protected:
  ~KtlsHooks() = default;
};

// Installs the key-log callback that feeds OnClientTrafficSecret, and a
// message callback that reports a peer KeyUpdate (OnPeerKeyUpdate), to the
// KtlsHooks stored as the SSL's app data (SSL_set_app_data).
void EnableTrafficSecretCapture(SSL_CTX* ctx);

}  // namespace ktlb::tls
