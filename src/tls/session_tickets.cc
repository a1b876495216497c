// Seals and opens session tickets with ktlb's own keys (ticket_keys.h)
// through OpenSSL 3.0's ticket key callback, the same way nginx does with
// ssl_session_ticket_key: AES-256-CBC and HMAC-SHA256, the key's 16-byte name
// in the clear at the front of the ticket. A file shared with nginx hosts
// would therefore open their tickets too.
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

// Function-local statics: OpenSSL hands out indexes under its own lock, and
// the static makes each request happen once per process.
int ReaderIndex() {  // SSL_CTX -> its TicketKeyReader
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}
int SourceIndex() {  // SSL -> the source of the keys that opened its ticket
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// Stable addresses to mark an SSL with, one per source.
TicketKeySource* SourceMark(TicketKeySource source) {
  static TicketKeySource marks[] = {TicketKeySource::kFile, TicketKeySource::kLocal};
  static_assert(sizeof(marks) / sizeof(marks[0]) == static_cast<size_t>(TicketKeySource::kCount));
  return &marks[static_cast<size_t>(source)];
}

// Fetched once: OpenSSL 3.0 would otherwise look the cipher up in its
// provider tables (under a lock) for every ticket sealed or opened.
const EVP_CIPHER* Aes256Cbc() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr);
  return cipher;
}

bool InitHmac(EVP_MAC_CTX* mac, const TicketKey& key) {
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
                                        const_cast<unsigned char*>(key.hmac.data()),
                                        key.hmac.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  return EVP_MAC_CTX_set_params(mac, params) == 1;
}

// OpenSSL's contract: on sealing (enc = 1) fill in the key name and IV and
// return 1; on opening return 0 for "no such key" (a full handshake follows),
// 1 to accept, 2 to accept and issue a fresh ticket; -1 fails the handshake.
int OnTicketKey(SSL* ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc) {
  auto* reader =
      static_cast<TicketKeyReader*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ReaderIndex()));
  const EVP_CIPHER* aes = Aes256Cbc();
  if (reader == nullptr || aes == nullptr) return -1;
  const TicketKeyList& keys = reader->Current(TicketClock::now());
  if (keys.empty()) return enc == 1 ? -1 : 0;

  if (enc == 1) {
    const TicketKey& key = keys.front();
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(aes)) != 1) return -1;
    if (EVP_EncryptInit_ex(cipher, aes, nullptr, key.aes.data(), iv) != 1) return -1;
    if (!InitHmac(mac, key)) return -1;
    std::memcpy(key_name, key.name.data(), key.name.size());
    return 1;
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    const TicketKey& key = keys[i];
    if (CRYPTO_memcmp(key_name, key.name.data(), key.name.size()) != 0) continue;
    if (!InitHmac(mac, key)) return -1;
    if (EVP_DecryptInit_ex(cipher, aes, nullptr, key.aes.data(), iv) != 1) return -1;
    SSL_set_ex_data(ssl, SourceIndex(), SourceMark(reader->source()));
    // A ticket under an older key is re-issued under the current one. TLS 1.3
    // always gets a fresh ticket: clients use each one once, and OpenSSL
    // sends none after a resumption the callback answered with 1.
    return (i != 0 || SSL_version(ssl) >= TLS1_3_VERSION) ? 2 : 1;
  }
  return 0;
}

}  // namespace

std::optional<TicketKeySource> ResumedTicketSource(const SSL* ssl) {
  const auto* mark = static_cast<const TicketKeySource*>(SSL_get_ex_data(ssl, SourceIndex()));
  if (mark == nullptr) return std::nullopt;
  return *mark;
}

namespace internal {

bool InstallTicketKeys(SSL_CTX* ctx, TicketKeyReader* reader) {
  return ReaderIndex() >= 0 && SourceIndex() >= 0 && Aes256Cbc() != nullptr &&
         SSL_CTX_set_ex_data(ctx, ReaderIndex(), reader) == 1 &&
         SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, &OnTicketKey) == 1;
}

}  // namespace internal
}  // namespace ktlb::tls
