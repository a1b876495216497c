// TLS 1.3 KeyUpdate with kernel TLS: NextTrafficSecret, ParseKeyUpdate and
// KeyUpdateMessage, checked against OpenSSL's own SSL_key_update. A real
// client and server talk over memory BIOs; the test plays the kernel of a
// ktlb server socket: it opens the client's records (RX) and seals the
// server's (TX) with the crypto info ktlb would install after each KeyUpdate,
// so a wrong label, hash, key layout or sequence number fails here the way it
// would fail on the socket (EBADMSG, or the client's bad_record_mac).
#include "ktlb/ktls.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>

#include <cstring>
#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>

#include "gtest/gtest.h"
#include "ktlb/openssl_ptr.h"
#include "tls_test_util.h"

namespace ktlb::tls {
namespace {

using namespace std::string_literals;

std::string Unhex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  }
  return out;
}

const unsigned char* U(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

const SSL_CIPHER* FindCipher(SSL* ssl, uint16_t id) {
  unsigned char wire[2] = {static_cast<unsigned char>(id >> 8), static_cast<unsigned char>(id)};
  return SSL_CIPHER_find(ssl, wire);
}

// --- The kernel's side of a TLS 1.3 record ------------------------------------------------

// What the kernel takes from the crypto info, rebuilt from its bytes (not
// from the derivation) so that the layout Tls13CryptoInfo writes is checked
// too: GCM iv[8] key[16|32] salt[4], nonce base = salt || iv; ChaCha20
// iv[12] key[32]; rec_seq[8] last.
struct Keys {
  uint16_t cipher = 0;
  std::string key;
  std::string nonce_base;  // 12 bytes
  uint64_t seq = 0;
};

Keys KeysOf(const KtlsCryptoInfo& info) {
  Keys k;
  k.cipher = info.cipher_type();
  const char* p = reinterpret_cast<const char*>(info.bytes) + 4;
  if (k.cipher == kCipherChaCha20Poly1305) {
    k.nonce_base.assign(p, 12);
    k.key.assign(p + 12, 32);
  } else {
    size_t key_len = k.cipher == kCipherAesGcm128 ? 16 : 32;
    k.key.assign(p + 8, key_len);
    k.nonce_base = std::string(p + 8 + key_len, 4) + std::string(p, 8);
  }
  for (size_t i = info.len - 8; i < info.len; ++i) k.seq = k.seq << 8 | info.bytes[i];
  return k;
}

// The keys ktlb would install for `secret`, starting at `rec_seq`.
Keys KernelKeys(const SSL_CIPHER* cipher, const std::string& secret, uint64_t rec_seq) {
  auto info = Tls13CryptoInfo(cipher, U(secret), secret.size(), rec_seq);
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? KeysOf(*info) : Keys{};
}

std::string Next(const SSL_CIPHER* cipher, const std::string& secret) {
  std::string next(secret.size(), '\0');
  absl::Status s = NextTrafficSecret(cipher, U(secret), secret.size(),
                                     reinterpret_cast<unsigned char*>(next.data()));
  EXPECT_TRUE(s.ok()) << s;
  return next;
}

const EVP_CIPHER* AeadOf(uint16_t cipher) {
  switch (cipher) {
    case kCipherAesGcm128: return EVP_aes_128_gcm();
    case kCipherAesGcm256: return EVP_aes_256_gcm();
    default: return EVP_chacha20_poly1305();
  }
}

// RFC 8446 5.3: the record's nonce is the static iv XOR the 64-bit sequence
// number, left-padded to 12 bytes.
std::string Nonce(const Keys& k) {
  std::string n = k.nonce_base;
  for (int i = 0; i < 8; ++i) n[4 + i] = static_cast<char>(n[4 + i] ^ (k.seq >> (56 - 8 * i)));
  return n;
}

bool Aead(bool seal, const Keys& k, const std::string& aad, const std::string& in,
          std::string* out, std::string* tag) {
  if (k.key.empty() || k.nonce_base.size() != 12) return false;
  std::unique_ptr<EVP_CIPHER_CTX, OpenSslDeleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>> ctx(
      EVP_CIPHER_CTX_new());
  std::string nonce = Nonce(k);
  int n = 0;
  if (EVP_CipherInit_ex(ctx.get(), AeadOf(k.cipher), nullptr, nullptr, nullptr, seal) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, U(k.key), U(nonce), seal) != 1) {
    return false;
  }
  if (!seal && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, 16, tag->data()) != 1) {
    return false;
  }
  if (EVP_CipherUpdate(ctx.get(), nullptr, &n, U(aad), static_cast<int>(aad.size())) != 1) {
    return false;
  }
  out->resize(in.size());
  if (EVP_CipherUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out->data()), &n, U(in),
                       static_cast<int>(in.size())) != 1) {
    return false;
  }
  int fin = 0;
  if (EVP_CipherFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out->data()) + n, &fin) != 1) {
    return false;
  }
  if (seal) {
    tag->resize(16);
    return EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, 16, tag->data()) == 1;
  }
  return true;
}

// TLS 1.3 records all look like application data on the wire (RFC 8446 5.2).
std::string Header(size_t body_len) {
  return "\x17\x03\x03"s + static_cast<char>(body_len >> 8) + static_cast<char>(body_len & 0xff);
}

// Seals one record as kTLS TX does: inner plaintext = data || type, AAD = the
// record header. Advances k->seq.
std::string Seal(Keys* k, uint8_t type, const std::string& plain) {
  std::string inner = plain + static_cast<char>(type);
  std::string ct, tag;
  std::string header = Header(inner.size() + 16);
  EXPECT_TRUE(Aead(true, *k, header, inner, &ct, &tag));
  ++k->seq;
  return header + ct + tag;
}

// Opens the first record of *wire as kTLS RX does (strips the zero padding
// and the inner content type). On success consumes it and advances k->seq;
// on failure leaves both alone.
bool Open(Keys* k, std::string* wire, uint8_t* type, std::string* plain) {
  if (wire->size() < 5) return false;
  size_t len = RecordBodyLength(U(*wire));
  if (wire->size() < 5 + len || len < 17) return false;
  std::string header = wire->substr(0, 5);
  std::string body = wire->substr(5, len - 16);
  std::string tag = wire->substr(5 + len - 16, 16);
  if (!Aead(false, *k, header, body, plain, &tag)) return false;
  while (!plain->empty() && plain->back() == 0) plain->pop_back();
  if (plain->empty()) return false;
  *type = static_cast<uint8_t>(plain->back());
  plain->pop_back();
  wire->erase(0, 5 + len);
  ++k->seq;
  return true;
}

// Opens a copy: true when `keys` (at their current sequence) authenticate
// the first record of `wire`.
bool Opens(Keys keys, std::string wire) {
  uint8_t type;
  std::string plain;
  return Open(&keys, &wire, &type, &plain);
}

// --- Pure functions ---------------------------------------------------------------------------

class KeyUpdateFunctions : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_.reset(SSL_CTX_new(TLS_method()));
    ASSERT_NE(ctx_, nullptr);
    ssl_.reset(SSL_new(ctx_.get()));
    ASSERT_NE(ssl_, nullptr);
  }
  UniqueSslCtx ctx_;
  UniqueSsl ssl_;
};

// HKDF-Expand-Label built by hand (RFC 8446 7.1: HkdfLabel = uint16 length,
// opaque label<7..255> = "tls13 " + label, opaque context<0..255>) and
// expanded with plain HKDF, so the check does not share TLS13-KDF with the
// code under test.
std::string ExpandLabelByHand(const char* digest, const std::string& secret,
                              const std::string& label, size_t len) {
  std::string full_label = "tls13 " + label;
  std::string info = std::string(1, static_cast<char>(len >> 8)) + static_cast<char>(len & 0xff) +
                     static_cast<char>(full_label.size()) + full_label + '\0';
  std::unique_ptr<EVP_KDF, OpenSslDeleter<EVP_KDF, EVP_KDF_free>> kdf(
      EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  EXPECT_NE(kdf, nullptr);
  if (kdf == nullptr) return "";
  std::unique_ptr<EVP_KDF_CTX, OpenSslDeleter<EVP_KDF_CTX, EVP_KDF_CTX_free>> ctx(
      EVP_KDF_CTX_new(kdf.get()));
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(secret.data()),
                                        secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  std::string out(len, '\0');
  EXPECT_GT(EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), len, params),
            0);
  return out;
}

// RFC 8448 section 3's client_application_traffic_secret_0 (SHA-256).
constexpr char kRfc8448ClientAppSecret[] =
    "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";

TEST_F(KeyUpdateFunctions, NextTrafficSecretIsHkdfExpandLabelTrafficUpd) {
  struct Case {
    uint16_t id;
    const char* digest;
    std::string secret;
  };
  for (const Case& c : {Case{0x1301, "SHA256", Unhex(kRfc8448ClientAppSecret)},
                        Case{0x1303, "SHA256", Unhex(kRfc8448ClientAppSecret)},
                        Case{0x1302, "SHA384", std::string(48, '\x42')}}) {
    const SSL_CIPHER* cipher = FindCipher(ssl_.get(), c.id);
    ASSERT_NE(cipher, nullptr) << c.id;
    std::string next = Next(cipher, c.secret);
    EXPECT_EQ(next.size(), c.secret.size()) << c.id;
    EXPECT_EQ(next, ExpandLabelByHand(c.digest, c.secret, "traffic upd", c.secret.size())) << c.id;
    EXPECT_NE(next, c.secret) << c.id;
    // Chained: secret_2 from secret_1, and in place (out == secret).
    std::string in_place = next;
    unsigned char* p = reinterpret_cast<unsigned char*>(in_place.data());
    ASSERT_TRUE(NextTrafficSecret(cipher, p, in_place.size(), p).ok());
    EXPECT_EQ(in_place, ExpandLabelByHand(c.digest, next, "traffic upd", next.size())) << c.id;
  }
}

TEST_F(KeyUpdateFunctions, NextTrafficSecretRefusesBadInputsAndLeavesOutAlone) {
  const SSL_CIPHER* sha256 = FindCipher(ssl_.get(), 0x1301);
  const SSL_CIPHER* sha384 = FindCipher(ssl_.get(), 0x1302);
  const SSL_CIPHER* tls12 = FindCipher(ssl_.get(), 0xc02f);  // ECDHE-RSA-AES128-GCM-SHA256
  ASSERT_NE(sha256, nullptr);
  ASSERT_NE(sha384, nullptr);
  ASSERT_NE(tls12, nullptr);
  unsigned char secret[64];
  memset(secret, 0x42, sizeof secret);
  unsigned char out[64];
  memset(out, 0xaa, sizeof out);
  auto untouched = [&] {
    for (unsigned char b : out) {
      if (b != 0xaa) return false;
    }
    return true;
  };
  EXPECT_FALSE(NextTrafficSecret(nullptr, secret, 32, out).ok());
  EXPECT_FALSE(NextTrafficSecret(tls12, secret, 32, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha256, secret, 48, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha256, secret, 31, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha256, secret, 0, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha384, secret, 32, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha384, secret, 64, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha256, nullptr, 32, out).ok());
  EXPECT_FALSE(NextTrafficSecret(sha256, secret, 32, nullptr).ok());
  EXPECT_TRUE(untouched());
  absl::Status s = NextTrafficSecret(sha384, secret, 32, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  // The good cases write exactly the secret's length.
  const std::string s32(reinterpret_cast<char*>(secret), 32);
  const std::string s48(reinterpret_cast<char*>(secret), 48);
  ASSERT_TRUE(NextTrafficSecret(sha256, secret, 32, out).ok());
  EXPECT_EQ(std::string(reinterpret_cast<char*>(out), 32),
            ExpandLabelByHand("SHA256", s32, "traffic upd", 32));
  EXPECT_EQ(out[32], 0xaa);
  memset(out, 0xaa, sizeof out);
  ASSERT_TRUE(NextTrafficSecret(sha384, secret, 48, out).ok());
  EXPECT_EQ(std::string(reinterpret_cast<char*>(out), 48),
            ExpandLabelByHand("SHA384", s48, "traffic upd", 48));
  EXPECT_EQ(out[48], 0xaa);
}

TEST(KeyUpdateMessage, IsTheFiveByteHandshakeMessage) {
  EXPECT_EQ(KeyUpdateMessage(KeyUpdateRequest::kNotRequested), "\x18\x00\x00\x01\x00"s);
  EXPECT_EQ(KeyUpdateMessage(KeyUpdateRequest::kRequested), "\x18\x00\x00\x01\x01"s);
  for (KeyUpdateRequest r : {KeyUpdateRequest::kNotRequested, KeyUpdateRequest::kRequested}) {
    auto parsed = ParseKeyUpdate(KeyUpdateMessage(r));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, r);
  }
}

TEST(ParseKeyUpdate, AcceptsExactlyTheTwoLegalMessages) {
  auto no = ParseKeyUpdate("\x18\x00\x00\x01\x00"s);
  ASSERT_TRUE(no.ok()) << no.status();
  EXPECT_EQ(*no, KeyUpdateRequest::kNotRequested);
  auto yes = ParseKeyUpdate("\x18\x00\x00\x01\x01"s);
  ASSERT_TRUE(yes.ok()) << yes.status();
  EXPECT_EQ(*yes, KeyUpdateRequest::kRequested);
}

TEST(ParseKeyUpdate, RefusesEverythingElse) {
  const std::string ku = "\x18\x00\x00\x01\x00"s;
  const std::string bad[] = {
      ""s,
      "\x18"s,
      "\x18\x00\x00"s,
      "\x18\x00\x00\x01"s,              // split across records
      "\x18\x00\x00\x01\x02"s,          // request_update > 1
      "\x18\x00\x00\x01\xff"s,
      "\x18\x00\x00\x00"s,              // empty body
      "\x18\x00\x00\x02\x00\x00"s,      // body of two
      "\x18\x01\x00\x01\x00"s,          // length 0x010001
      "\x18\x00\x01\x01\x00"s,
      ku + '\0',                        // padding-like trailing byte
      ku + ku,                          // two KeyUpdates in one record
      "\x18\x00\x00\x01\x01"s + ku,
      // NewSessionTicket (only a server may send one), alone and before a KeyUpdate.
      "\x04\x00\x00\x05\x00\x00\x00\x00\x00"s,
      "\x04\x00\x00\x01\x00"s,
      "\x04\x00\x00\x01\x00"s + ku,
      "\x14\x00\x00\x01\x00"s,          // Finished
      "\x0d\x00\x00\x01\x00"s,          // CertificateRequest
      "\x01\x00\x00\x01\x00"s,          // ClientHello (renegotiation does not exist in 1.3)
      "\x00\x00\x00\x01\x00"s,
  };
  for (const std::string& b : bad) {
    auto r = ParseKeyUpdate(b);
    EXPECT_FALSE(r.ok()) << ::testing::PrintToString(b);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

// --- Against OpenSSL's SSL_key_update ----------------------------------------------------------

struct Suite {
  const char* name;
  const char* ciphersuite;
  uint16_t kernel_cipher;
  size_t secret_len;
};

void PrintTo(const Suite& s, std::ostream* os) { *os << s.name; }

void CaptureSecret(const SSL* ssl, const char* line) {
  // "<LABEL> <client random hex> <secret hex>"
  auto* secrets = static_cast<std::map<std::string, std::string>*>(SSL_get_app_data(ssl));
  std::string_view l(line);
  size_t sp1 = l.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : l.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return;
  (*secrets)[std::string(l.substr(0, sp1))] = Unhex(l.substr(sp2 + 1));
}

// A TLS 1.3 client and server over memory BIOs, handshake done and the
// client's NewSessionTickets read. The server's secrets come from its key-log
// callback, as in ktlb.
class KeyUpdateOpenSsl : public ::testing::TestWithParam<Suite> {
 protected:
  void SetUp() override {
    const Suite& s = GetParam();
    key_ = testing::MakeEcKey();
    cert_ = testing::MakeCert({.cn = "keyupdate.test"}, key_.get());

    sctx_.reset(SSL_CTX_new(TLS_server_method()));
    ASSERT_NE(sctx_, nullptr);
    SSL_CTX_set_min_proto_version(sctx_.get(), TLS1_3_VERSION);
    ASSERT_EQ(SSL_CTX_set_ciphersuites(sctx_.get(), s.ciphersuite), 1);
    ASSERT_EQ(SSL_CTX_use_certificate(sctx_.get(), cert_.get()), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey(sctx_.get(), key_.get()), 1);
    // Explicit, so the test knows the server's TX sequence is not 0 at the
    // KeyUpdate (it is counted below anyway).
    ASSERT_EQ(SSL_CTX_set_num_tickets(sctx_.get(), 2), 1);
    SSL_CTX_set_keylog_callback(sctx_.get(), CaptureSecret);

    cctx_.reset(SSL_CTX_new(TLS_client_method()));
    ASSERT_NE(cctx_, nullptr);
    SSL_CTX_set_min_proto_version(cctx_.get(), TLS1_3_VERSION);
    ASSERT_EQ(SSL_CTX_set_ciphersuites(cctx_.get(), s.ciphersuite), 1);
    SSL_CTX_set_verify(cctx_.get(), SSL_VERIFY_NONE, nullptr);

    server_.reset(SSL_new(sctx_.get()));
    client_.reset(SSL_new(cctx_.get()));
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(client_, nullptr);
    SSL_set_app_data(server_.get(), &secrets_);
    Attach(server_.get(), &server_in_, &server_out_);
    Attach(client_.get(), &client_in_, &client_out_);
    SSL_set_accept_state(server_.get());
    SSL_set_connect_state(client_.get());

    bool server_done = false, client_done = false;
    std::string tickets;
    for (int round = 0; round < 10 && !(server_done && client_done); ++round) {
      if (!client_done) {
        int rc = SSL_do_handshake(client_.get());
        client_done = rc == 1;
        if (!client_done) {
          ASSERT_EQ(SSL_get_error(client_.get(), rc), SSL_ERROR_WANT_READ)
              << testing::FirstErrorReason();
        }
      }
      Put(server_in_, Take(client_out_));
      if (!server_done) {
        int rc = SSL_do_handshake(server_.get());
        server_done = rc == 1;
        if (server_done) {
          // Written by the call that finished the handshake: only what
          // follows the server Finished, under SERVER_TRAFFIC_SECRET_0.
          tickets = Take(server_out_);
        } else {
          ASSERT_EQ(SSL_get_error(server_.get(), rc), SSL_ERROR_WANT_READ)
              << testing::FirstErrorReason();
        }
      }
      Put(client_in_, Take(server_out_));
    }
    ASSERT_TRUE(server_done && client_done);
    cipher_ = SSL_get_current_cipher(server_.get());
    ASSERT_NE(cipher_, nullptr);
    ASSERT_EQ(SSL_CIPHER_get_name(cipher_), std::string(s.ciphersuite));
    client_secret_0_ = secrets_["CLIENT_TRAFFIC_SECRET_0"];
    server_secret_0_ = secrets_["SERVER_TRAFFIC_SECRET_0"];
    ASSERT_EQ(client_secret_0_.size(), s.secret_len);
    ASSERT_EQ(server_secret_0_.size(), s.secret_len);

    // The tickets, opened as the kernel would have sealed them: they fix the
    // sequence number the server's KeyUpdate goes out with.
    size_t complete = 0, missing = 0;
    CountRecords(tickets, &complete, &missing);
    ASSERT_EQ(complete, 2u);
    ASSERT_EQ(missing, 0u);
    Keys old_tx = KernelKeys(cipher_, server_secret_0_, 0);
    std::string wire = tickets;
    for (size_t i = 0; i < complete; ++i) {
      uint8_t type = 0;
      std::string plain;
      ASSERT_TRUE(Open(&old_tx, &wire, &type, &plain)) << "ticket " << i;
      EXPECT_EQ(type, kRecordHandshake);
      EXPECT_EQ(plain[0], 4);  // NewSessionTicket
    }
    server_tx_seq_ = old_tx.seq;

    Put(client_in_, tickets);
    std::string none;
    ASSERT_EQ(ClientRead(&none), SSL_ERROR_WANT_READ);
    EXPECT_TRUE(none.empty());
  }

  static void Attach(SSL* ssl, BIO** in, BIO** out) {
    *in = BIO_new(BIO_s_mem());
    *out = BIO_new(BIO_s_mem());
    // An empty input BIO means "retry later", not end of stream.
    BIO_set_mem_eof_return(*in, -1);
    SSL_set_bio(ssl, *in, *out);
  }

  static std::string Take(BIO* out) {
    std::string bytes;
    char buf[4096];
    int n;
    while ((n = BIO_read(out, buf, sizeof buf)) > 0) bytes.append(buf, static_cast<size_t>(n));
    return bytes;
  }

  static void Put(BIO* in, const std::string& bytes) {
    if (!bytes.empty()) {
      ASSERT_EQ(BIO_write(in, bytes.data(), static_cast<int>(bytes.size())),
                static_cast<int>(bytes.size()));
    }
  }

  // The client's records for `data`.
  std::string ClientWrite(const std::string& data) {
    EXPECT_EQ(SSL_write(client_.get(), data.data(), static_cast<int>(data.size())),
              static_cast<int>(data.size()))
        << testing::FirstErrorReason();
    return Take(client_out_);
  }

  // Reads until the client wants more input; returns that SSL_get_error.
  int ClientRead(std::string* got) { return Read(client_.get(), got); }
  int ServerRead(std::string* got) { return Read(server_.get(), got); }
  static int Read(SSL* ssl, std::string* got) {
    char buf[16384];
    for (;;) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) {
        int err = SSL_get_error(ssl, n);
        ERR_clear_error();
        return err;
      }
      got->append(buf, static_cast<size_t>(n));
    }
  }

  // The server's TX side after answering the client's update_requested the
  // way ktlb does: KeyUpdate(update_not_requested) as a type-22 record under
  // the old key, then `data` under the next key. Each key's sequence starts
  // where the options say (for the negative tests).
  struct TxVariant {
    bool derive_next = true;      // false: keep SERVER_TRAFFIC_SECRET_0's key
    uint64_t new_rec_seq = 0;     // the rec_seq given to Tls13CryptoInfo
  };
  std::string ServerKeyUpdateAndData(const std::string& data, TxVariant v) {
    Keys old_tx = KernelKeys(cipher_, server_secret_0_, server_tx_seq_);
    std::string wire = Seal(&old_tx, kRecordHandshake,
                            std::string(KeyUpdateMessage(KeyUpdateRequest::kNotRequested)));
    Keys new_tx;
    if (v.derive_next) {
      new_tx = KernelKeys(cipher_, Next(cipher_, server_secret_0_), v.new_rec_seq);
    } else {
      new_tx = old_tx;  // the kernel without a new TLS_TX: old key, next sequence
    }
    return wire + Seal(&new_tx, kRecordApplicationData, data);
  }

  // The client asks for an update (so ktlb must answer), then sends `data`;
  // the test as kernel RX opens both with the keys ktlb would install.
  void ClientRequestsKeyUpdate() {
    ASSERT_EQ(SSL_key_update(client_.get(), SSL_KEY_UPDATE_REQUESTED), 1);
    std::string wire = ClientWrite("ping");
    Keys rx = KernelKeys(cipher_, client_secret_0_, 0);
    uint8_t type = 0;
    std::string plain;
    ASSERT_TRUE(Open(&rx, &wire, &type, &plain));
    ASSERT_EQ(type, kRecordHandshake);
    auto request = ParseKeyUpdate(plain);
    ASSERT_TRUE(request.ok()) << request.status();
    EXPECT_EQ(*request, KeyUpdateRequest::kRequested);
    rx = KernelKeys(cipher_, Next(cipher_, client_secret_0_), 0);
    ASSERT_TRUE(Open(&rx, &wire, &type, &plain));
    EXPECT_EQ(type, kRecordApplicationData);
    EXPECT_EQ(plain, "ping");
    EXPECT_TRUE(wire.empty());
  }

  UniqueEvpPkey key_;
  UniqueX509 cert_;
  UniqueSslCtx sctx_, cctx_;
  UniqueSsl server_, client_;
  BIO* server_in_ = nullptr;  // owned by server_
  BIO* server_out_ = nullptr;
  BIO* client_in_ = nullptr;  // owned by client_
  BIO* client_out_ = nullptr;
  std::map<std::string, std::string> secrets_;
  const SSL_CIPHER* cipher_ = nullptr;
  std::string client_secret_0_, server_secret_0_;
  uint64_t server_tx_seq_ = 0;
};

// RX: the client updates its sending key twice; every record it sends is
// opened with the keys ktlb would install, and the sequence of each new key
// starts at 0. The same bytes then go to the real server, which must agree.
TEST_P(KeyUpdateOpenSsl, RxFollowsTheClientsKeyUpdates) {
  const std::string before = "GET / HTTP/1.1\r\nHost: keyupdate.test\r\n\r\n";
  std::string after(20000, 'a');  // two records under the new key: seq 0 and 1
  after.replace(0, 5, "POST ");
  const std::string after2 = "after the second update";

  std::string wire0 = ClientWrite(before);
  ASSERT_EQ(SSL_key_update(client_.get(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  std::string wire1 = ClientWrite(after);
  ASSERT_EQ(SSL_key_update(client_.get(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  std::string wire2 = ClientWrite(after2);
  const std::string all = wire0 + wire1 + wire2;

  uint8_t type = 0;
  std::string plain;
  // Generation 0: the request (seq 0), then the KeyUpdate (seq 1), both
  // under CLIENT_TRAFFIC_SECRET_0.
  Keys rx0 = KernelKeys(cipher_, client_secret_0_, 0);
  EXPECT_EQ(rx0.cipher, GetParam().kernel_cipher);
  ASSERT_TRUE(Open(&rx0, &wire0, &type, &plain));
  EXPECT_EQ(type, kRecordApplicationData);
  EXPECT_EQ(plain, before);
  EXPECT_TRUE(wire0.empty());
  ASSERT_TRUE(Open(&rx0, &wire1, &type, &plain));
  EXPECT_EQ(type, kRecordHandshake);
  EXPECT_EQ(plain, KeyUpdateMessage(KeyUpdateRequest::kNotRequested));
  auto request = ParseKeyUpdate(plain);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(*request, KeyUpdateRequest::kNotRequested);

  // The kernel without a new TLS_RX (old key, next sequence) or the old key
  // from 0 cannot open what follows: the test would notice a stale key.
  EXPECT_FALSE(Opens(rx0, wire1));
  EXPECT_FALSE(Opens(KernelKeys(cipher_, client_secret_0_, 0), wire1));

  // Generation 1: NextTrafficSecret, sequence 0 again.
  std::string secret1 = Next(cipher_, client_secret_0_);
  EXPECT_NE(secret1, client_secret_0_);
  Keys rx1 = KernelKeys(cipher_, secret1, 0);
  EXPECT_EQ(rx1.seq, 0u);
  // Not continuing the old sequence, and not starting at 1.
  EXPECT_FALSE(Opens(KernelKeys(cipher_, secret1, 2), wire1));
  EXPECT_FALSE(Opens(KernelKeys(cipher_, secret1, 1), wire1));
  std::string got;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(Open(&rx1, &wire1, &type, &plain)) << "record " << i;
    EXPECT_EQ(type, kRecordApplicationData);
    got += plain;
  }
  EXPECT_EQ(got, after);
  EXPECT_TRUE(wire1.empty());

  // Generation 2, chained from generation 1 (in place, as a connection
  // would keep one buffer): KeyUpdate at seq 2 of generation 1.
  ASSERT_TRUE(Open(&rx1, &wire2, &type, &plain));
  EXPECT_EQ(type, kRecordHandshake);
  ASSERT_TRUE(ParseKeyUpdate(plain).ok());
  EXPECT_FALSE(Opens(rx1, wire2));
  // secret_2 is not a second expansion of secret_0.
  EXPECT_FALSE(Opens(KernelKeys(cipher_, secret1, 0), wire2));
  std::string secret2 = secret1;
  auto* p = reinterpret_cast<unsigned char*>(secret2.data());
  ASSERT_TRUE(NextTrafficSecret(cipher_, p, secret2.size(), p).ok());
  Keys rx2 = KernelKeys(cipher_, secret2, 0);
  ASSERT_TRUE(Open(&rx2, &wire2, &type, &plain));
  EXPECT_EQ(type, kRecordApplicationData);
  EXPECT_EQ(plain, after2);
  EXPECT_TRUE(wire2.empty());

  // The real server reads the same bytes the same way.
  Put(server_in_, all);
  std::string server_got;
  EXPECT_EQ(ServerRead(&server_got), SSL_ERROR_WANT_READ);
  EXPECT_EQ(server_got, before + after + after2);
}

// TX: the client asks for an update; the "kernel" sends ktlb's answer under
// the old server key and then data under NextTrafficSecret's, sequence 0.
// The real client must read it, and go on reading after a second update.
TEST_P(KeyUpdateOpenSsl, TxAnswerIsWhatTheClientExpects) {
  ClientRequestsKeyUpdate();
  if (HasFatalFailure()) return;
  Put(client_in_, ServerKeyUpdateAndData("HTTP/1.1 200 OK\r\n\r\npong", {}));
  std::string got;
  EXPECT_EQ(ClientRead(&got), SSL_ERROR_WANT_READ) << testing::FirstErrorReason();
  EXPECT_EQ(got, "HTTP/1.1 200 OK\r\n\r\npong");

  // ktlb may also rekey on its own: generation 1's second record (seq 1)
  // carries the KeyUpdate, generation 2 starts at 0.
  std::string secret1 = Next(cipher_, server_secret_0_);
  Keys tx1 = KernelKeys(cipher_, secret1, 1);
  std::string wire = Seal(&tx1, kRecordHandshake,
                          std::string(KeyUpdateMessage(KeyUpdateRequest::kNotRequested)));
  Keys tx2 = KernelKeys(cipher_, Next(cipher_, secret1), 0);
  wire += Seal(&tx2, kRecordApplicationData, "second");
  wire += Seal(&tx2, kRecordApplicationData, "third");
  Put(client_in_, wire);
  got.clear();
  EXPECT_EQ(ClientRead(&got), SSL_ERROR_WANT_READ) << testing::FirstErrorReason();
  EXPECT_EQ(got, "secondthird");
}

// The same answer with the data left under the old key: the client has moved
// on and must refuse it, so the positive test above is not vacuous.
TEST_P(KeyUpdateOpenSsl, TxWithoutNewKeysIsRejected) {
  ClientRequestsKeyUpdate();
  if (HasFatalFailure()) return;
  Put(client_in_, ServerKeyUpdateAndData("pong", {.derive_next = false}));
  std::string got;
  EXPECT_EQ(ClientRead(&got), SSL_ERROR_SSL);
  EXPECT_TRUE(got.empty());
}

// New keys, but the sequence not restarted at 0.
TEST_P(KeyUpdateOpenSsl, TxWithoutSequenceRestartIsRejected) {
  ClientRequestsKeyUpdate();
  if (HasFatalFailure()) return;
  Put(client_in_, ServerKeyUpdateAndData("pong", {.new_rec_seq = server_tx_seq_ + 1}));
  std::string got;
  EXPECT_EQ(ClientRead(&got), SSL_ERROR_SSL);
  EXPECT_TRUE(got.empty());
}

INSTANTIATE_TEST_SUITE_P(
    Suites, KeyUpdateOpenSsl,
    ::testing::Values(Suite{"Aes128Gcm", "TLS_AES_128_GCM_SHA256", kCipherAesGcm128, 32},
                      Suite{"Aes256Gcm", "TLS_AES_256_GCM_SHA384", kCipherAesGcm256, 48},
                      Suite{"ChaCha20Poly1305", "TLS_CHACHA20_POLY1305_SHA256",
                            kCipherChaCha20Poly1305, 32}),
    [](const ::testing::TestParamInfo<Suite>& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace ktlb::tls

namespace ktlb::tls {
namespace {

TEST(KeyUpdateLimiter, AllowsABurstPerWindowThenRefuses) {
  KeyUpdateLimiter l;
  uint64_t t = 1'000'000;
  for (uint32_t i = 0; i < KeyUpdateLimiter::kBurst; ++i) EXPECT_TRUE(l.Allow(t + i)) << i;
  EXPECT_FALSE(l.Allow(t + 100));
  EXPECT_FALSE(l.Allow(t + KeyUpdateLimiter::kWindowMs - 1));
  // A new window starts once the first one is over.
  EXPECT_TRUE(l.Allow(t + KeyUpdateLimiter::kWindowMs));
}

TEST(KeyUpdateLimiter, SlowUpdatesNeverHitTheLimit) {
  KeyUpdateLimiter l;
  for (int i = 0; i < 100; ++i) {
    EXPECT_TRUE(l.Allow(static_cast<uint64_t>(i) * KeyUpdateLimiter::kWindowMs / 4)) << i;
  }
}

TEST(KeyUpdateCloseLabel, StableLabels) {
  EXPECT_STREQ(KeyUpdateCloseLabel(KeyUpdateClose::kKernelCannotRekey), "kernel_cannot_rekey");
  EXPECT_STREQ(KeyUpdateCloseLabel(KeyUpdateClose::kRateLimited), "rate_limited");
  EXPECT_STREQ(KeyUpdateCloseLabel(KeyUpdateClose::kMalformed), "malformed");
  EXPECT_STREQ(KeyUpdateCloseLabel(KeyUpdateClose::kNotOffloaded), "not_offloaded");
}

}  // namespace
}  // namespace ktlb::tls
