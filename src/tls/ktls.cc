#include "ktlb/ktls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/obj_mac.h>
#include <openssl/params.h>
#include <openssl/tls1.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "ktlb/unique_fd.h"

namespace ktlb::tls {

namespace {

// Sizes of the kernel's struct tls12_crypto_info_* (uapi/linux/tls.h).
size_t InfoLength(uint16_t cipher_type) {
  switch (cipher_type) {
    case kCipherAesGcm128: return 40;
    case kCipherAesGcm256: return 56;
    case kCipherAesCcm128: return 40;
    case kCipherChaCha20Poly1305: return 56;
    default: return 0;
  }
}

bool ExpandLabel(const char* digest, const unsigned char* secret, size_t secret_len,
                 const char* label, unsigned char* out, size_t out_len) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr);
  if (kdf == nullptr) return false;
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static const char kPrefix[] = "tls13 ";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<unsigned char*>(secret),
                                        secret_len),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, const_cast<char*>(kPrefix),
                                        sizeof(kPrefix) - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label),
                                        strlen(label)),
      // No OSSL_KDF_PARAM_DATA: the context is empty for "key", "iv" and
      // "traffic upd", and OpenSSL 3.0 rejects an octet-string parameter
      // whose data pointer is NULL (tls13_hkdf_expand leaves it out the
      // same way).
      OSSL_PARAM_construct_end(),
  };
  bool ok = EVP_KDF_derive(ctx, out, out_len, params) > 0;
  EVP_KDF_CTX_free(ctx);
  return ok;
}

void PutLe16(unsigned char* p, uint16_t v) {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
}

}  // namespace

void KtlsCryptoInfo::SetRecordSequence(uint64_t seq) {
  for (int i = 0; i < 8; ++i) bytes[len - 1 - i] = static_cast<unsigned char>(seq >> (8 * i));
}

void KtlsCryptoInfo::Wipe() { OPENSSL_cleanse(bytes, sizeof bytes); }

absl::StatusOr<KtlsCryptoInfo> CryptoInfoFromOpenSsl(const void* ptr) {
  KtlsCryptoInfo info;
  memcpy(info.bytes, ptr, 4);
  size_t len = InfoLength(info.cipher_type());
  if (len == 0) return absl::UnimplementedError("cipher type not supported by kTLS");
  memcpy(info.bytes, ptr, len);
  info.len = len;
  return info;
}

absl::StatusOr<KtlsCryptoInfo> Tls13CryptoInfo(const SSL* ssl, const unsigned char* secret,
                                               size_t secret_len, uint64_t rec_seq) {
  return Tls13CryptoInfo(SSL_get_current_cipher(ssl), secret, secret_len, rec_seq);
}

absl::StatusOr<KtlsCryptoInfo> Tls13CryptoInfo(const SSL_CIPHER* cipher,
                                               const unsigned char* secret, size_t secret_len,
                                               uint64_t rec_seq) {
  if (cipher == nullptr) return absl::FailedPreconditionError("no cipher");
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(cipher);
  if (md == nullptr) return absl::FailedPreconditionError("no handshake digest");
  const char* digest = EVP_MD_get0_name(md);
  uint16_t cipher_type;
  size_t key_len;
  switch (SSL_CIPHER_get_id(cipher)) {
    case TLS1_3_CK_AES_128_GCM_SHA256: cipher_type = kCipherAesGcm128; key_len = 16; break;
    case TLS1_3_CK_AES_256_GCM_SHA384: cipher_type = kCipherAesGcm256; key_len = 32; break;
    case TLS1_3_CK_CHACHA20_POLY1305_SHA256: cipher_type = kCipherChaCha20Poly1305; key_len = 32; break;
    default: return absl::UnimplementedError("TLS 1.3 cipher not supported by kTLS");
  }
  unsigned char key[32], iv[12];
  if (!ExpandLabel(digest, secret, secret_len, "key", key, key_len) ||
      !ExpandLabel(digest, secret, secret_len, "iv", iv, sizeof iv)) {
    OPENSSL_cleanse(key, sizeof key);
    return absl::InternalError("TLS13-KDF failed");
  }
  KtlsCryptoInfo info;
  info.len = InfoLength(cipher_type);
  PutLe16(info.bytes, TLS1_3_VERSION);
  PutLe16(info.bytes + 2, cipher_type);
  unsigned char* p = info.bytes + 4;
  if (cipher_type == kCipherChaCha20Poly1305) {
    // struct: iv[12] key[32] (no salt) rec_seq[8]
    memcpy(p, iv, 12);
    memcpy(p + 12, key, 32);
  } else {
    // struct: iv[8] key[16|32] salt[4] rec_seq[8]; the TLS 1.3 nonce is salt || iv.
    memcpy(p, iv + 4, 8);
    memcpy(p + 8, key, key_len);
    memcpy(p + 8 + key_len, iv, 4);
  }
  info.SetRecordSequence(rec_seq);
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(iv, sizeof iv);
  return info;
}

absl::Status NextTrafficSecret(const SSL_CIPHER* cipher, const unsigned char* secret,
                               size_t secret_len, unsigned char* out) {
  if (cipher == nullptr) return absl::FailedPreconditionError("no cipher");
  // TLS 1.2 suites have a handshake digest too, but no KeyUpdate: their
  // "next secret" would be a key nobody else computes.
  if (SSL_CIPHER_get_kx_nid(cipher) != NID_kx_any) {
    return absl::FailedPreconditionError("KeyUpdate needs a TLS 1.3 cipher suite");
  }
  if (secret == nullptr || out == nullptr) return absl::InvalidArgumentError("no secret buffer");
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(cipher);
  if (md == nullptr) return absl::FailedPreconditionError("no handshake digest");
  // Hash.length is both the secret's length and the output's: a mismatch
  // means the caller holds the wrong secret (or a truncated one), and
  // expanding it would only fail later as EBADMSG on the socket.
  const int md_len = EVP_MD_get_size(md);
  if (md_len <= 0 || secret_len != static_cast<size_t>(md_len)) {
    return absl::InvalidArgumentError(absl::StrCat("traffic secret is ", secret_len,
                                                   " bytes, the suite's hash ", md_len));
  }
  // Derive into a local buffer so that `out` may alias `secret`.
  unsigned char next[EVP_MAX_MD_SIZE];
  if (!ExpandLabel(EVP_MD_get0_name(md), secret, secret_len, "traffic upd", next, secret_len)) {
    OPENSSL_cleanse(next, sizeof next);
    return absl::InternalError("TLS13-KDF failed");
  }
  memcpy(out, next, secret_len);
  OPENSSL_cleanse(next, sizeof next);
  return absl::OkStatus();
}

absl::StatusOr<KeyUpdateRequest> ParseKeyUpdate(std::string_view handshake_bytes) {
  const auto* b = reinterpret_cast<const unsigned char*>(handshake_bytes.data());
  const size_t n = handshake_bytes.size();
  // Handshake message: msg_type(1) length(3) body; KeyUpdate's body is the
  // one request_update byte.
  if (n < 4) return absl::InvalidArgumentError("truncated handshake message header");
  if (b[0] != kHandshakeKeyUpdate) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected post-handshake message type ",
                                                   static_cast<int>(b[0])));
  }
  const size_t body_len = static_cast<size_t>(b[1]) << 16 | static_cast<size_t>(b[2]) << 8 | b[3];
  if (body_len != 1) {
    return absl::InvalidArgumentError(absl::StrCat("KeyUpdate body length ", body_len));
  }
  if (n < 5) return absl::InvalidArgumentError("KeyUpdate split across records");
  if (n > 5) return absl::InvalidArgumentError("bytes after the KeyUpdate in its record");
  switch (b[4]) {
    case 0: return KeyUpdateRequest::kNotRequested;
    case 1: return KeyUpdateRequest::kRequested;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("KeyUpdate request_update ", static_cast<int>(b[4])));
  }
}

std::string_view KeyUpdateMessage(KeyUpdateRequest request) {
  static constexpr char kNotRequested[] = {kHandshakeKeyUpdate, 0, 0, 1, 0};
  static constexpr char kRequested[] = {kHandshakeKeyUpdate, 0, 0, 1, 1};
  return request == KeyUpdateRequest::kRequested ? std::string_view(kRequested, 5)
                                                 : std::string_view(kNotRequested, 5);
}

const char* KtlsFallbackLabel(KtlsFallback f) {
  switch (f) {
    case KtlsFallback::kDisabled: return "disabled";
    case KtlsFallback::kNoModule: return "no_tls_module";
    case KtlsFallback::kUnsupportedCipher: return "unsupported_cipher";
    case KtlsFallback::kOpenSslVersion: return "openssl_version";
    case KtlsFallback::kSetsockopt: return "setsockopt_error";
    case KtlsFallback::kNoSecret: return "no_traffic_secret";
    case KtlsFallback::kOpenSslDeclined: return "openssl_declined";
    case KtlsFallback::kEarlyKeyUpdate: return "early_keyupdate";
    case KtlsFallback::kCount: break;
  }
  return "other";
}

bool CipherHasKtlsLayout(const SSL_CIPHER* cipher) {
  if (cipher == nullptr) return false;
  switch (SSL_CIPHER_get_cipher_nid(cipher)) {
    case NID_aes_128_gcm:
    case NID_aes_256_gcm:
    case NID_chacha20_poly1305:
      return true;
    default:
      return false;
  }
}

const char* KeyUpdateCloseLabel(KeyUpdateClose c) {
  switch (c) {
    case KeyUpdateClose::kKernelCannotRekey: return "kernel_cannot_rekey";
    case KeyUpdateClose::kRateLimited: return "rate_limited";
    case KeyUpdateClose::kMalformed: return "malformed";
    case KeyUpdateClose::kNotOffloaded: return "not_offloaded";
    case KeyUpdateClose::kCount: break;
  }
  return "other";
}

int AttachTlsUlp(int fd) {
  if (setsockopt(fd, IPPROTO_TCP, kTcpUlp, "tls", 3) == 0) return 0;
  return errno;
}

int InstallKtls(int fd, int direction, const KtlsCryptoInfo& info) {
  if (setsockopt(fd, kSolTls, direction, info.bytes, static_cast<socklen_t>(info.len)) == 0) {
    return 0;
  }
  return errno;
}

int RecordTypeFromCmsg(const void* control, size_t control_len) {
  msghdr msg{};
  msg.msg_control = const_cast<void*>(control);
  msg.msg_controllen = control_len;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == kSolTls && c->cmsg_type == kTlsGetRecordType) {
      return *static_cast<unsigned char*>(CMSG_DATA(c));
    }
  }
  return -1;
}

void CountRecords(std::string_view bytes, size_t* complete, size_t* missing, size_t* tail_off) {
  *complete = 0;
  *missing = 0;
  size_t off = 0;
  while (off < bytes.size()) {
    if (tail_off != nullptr) *tail_off = off;
    if (bytes.size() - off < 5) {
      // A partial header: at least the rest of the header is missing; the
      // body length is unknown until it arrives.
      *missing = 5 - (bytes.size() - off);
      return;
    }
    size_t body = (static_cast<unsigned char>(bytes[off + 3]) << 8) |
                  static_cast<unsigned char>(bytes[off + 4]);
    size_t end = off + 5 + body;
    if (end > bytes.size()) {
      *missing = end - bytes.size();
      return;
    }
    ++*complete;
    off = end;
  }
  if (tail_off != nullptr) *tail_off = off;
}

bool KtlsDebugLog() {
  static const bool on = getenv("KTLB_KTLS_DEBUG") != nullptr;
  return on;
}

bool OpenSslSupportsKtlsHandoff() {
  // Control 72's meaning and ktls_crypto_info_t's layout are OpenSSL 3.0's.
  unsigned long v = OpenSSL_version_num();
  return (v >> 28) == 3 && ((v >> 20) & 0xff) == 0;
}

int ProbeKernelKtls() {
  UniqueFd lfd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!lfd) return errno;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  int result = EIO;
  // Declared in this order so they close in reverse: the accepted end, the
  // probed client end, then the listener.
  UniqueFd cfd, afd;
  if (bind(lfd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      listen(lfd.get(), 1) == 0 &&
      getsockname(lfd.get(), reinterpret_cast<sockaddr*>(&a), &alen) == 0) {
    cfd.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (cfd && connect(cfd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      afd.reset(accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
      result = AttachTlsUlp(cfd.get());
    }
  }
  return result;
}

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void KeylogCallback(const SSL* ssl, const char* line) {
  // "CLIENT_TRAFFIC_SECRET_0 <client random hex> <secret hex>", and the
  // same for SERVER_: the first application traffic secrets, from which
  // every KeyUpdate's keys follow.
  static constexpr std::string_view kClient = "CLIENT_TRAFFIC_SECRET_0 ";
  static constexpr std::string_view kServer = "SERVER_TRAFFIC_SECRET_0 ";
  std::string_view l(line);
  const bool client = l.substr(0, kClient.size()) == kClient;
  if (!client && l.substr(0, kServer.size()) != kServer) return;
  auto* hooks = static_cast<KtlsHooks*>(SSL_get_app_data(ssl));
  if (hooks == nullptr) return;
  size_t sp = l.find(' ', kClient.size());
  if (sp == std::string_view::npos) return;
  std::string_view hex = l.substr(sp + 1);
  unsigned char secret[64];
  if (hex.size() % 2 != 0 || hex.size() / 2 > sizeof secret) return;
  size_t n = hex.size() / 2;
  for (size_t i = 0; i < n; ++i) {
    int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    secret[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  if (client) {
    hooks->OnClientTrafficSecret(secret, n);
  } else {
    hooks->OnServerTrafficSecret(secret, n);
  }
  OPENSSL_cleanse(secret, sizeof secret);
}

// A KeyUpdate that OpenSSL reads itself (in the same read as the peer's
// Finished, before RX moves to the kernel) makes the captured secret stale.
void MessageCallback(int write_p, int /*version*/, int content_type, const void* buf, size_t len,
                     SSL* ssl, void* /*arg*/) {
  if (write_p != 0 || content_type != SSL3_RT_HANDSHAKE || len < 1) return;
  const auto* msg = static_cast<const unsigned char*>(buf);
  if (msg[0] != kHandshakeKeyUpdate) return;
  const bool requested = len >= 5 && msg[4] == 1;
  if (auto* hooks = static_cast<KtlsHooks*>(SSL_get_app_data(ssl))) hooks->OnPeerKeyUpdate(requested);
}

}  // namespace

void EnableTrafficSecretCapture(SSL_CTX* ctx) {
  SSL_CTX_set_keylog_callback(ctx, KeylogCallback);
  SSL_CTX_set_msg_callback(ctx, MessageCallback);
}

}  // namespace ktlb::tls
