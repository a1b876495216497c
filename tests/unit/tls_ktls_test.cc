// kTLS building blocks that need no kTLS kernel: record counting, the kernel
// crypto-info layouts, TLS 1.3 key derivation (RFC 8448 known answer), the
// buffer BIO's kTLS controls, and a full in-memory handshake in which the test
// plays the kernel: it seals what the server queues after "install TX" and
// opens the client's records with the RX info ktlb would install. The kTLS
// guest test (tests/ktls/ktlb_ktls.sh) proves the same against Linux itself.
#include "ktlb/ktls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>

#include <cstring>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/output_queue.h"
#include "ktlb/tls.h"
#include "tls_test_util.h"

#if __has_include(<linux/tls.h>)
#include <linux/tls.h>
#define KTLB_HAVE_LINUX_TLS_H 1
#endif

namespace ktlb::tls {
namespace {

std::string Hex(std::string_view bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

std::string Unhex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  }
  return out;
}

std::string InfoHex(const KtlsCryptoInfo& info) {
  return Hex(std::string_view(reinterpret_cast<const char*>(info.bytes), info.len));
}

std::string Record(uint8_t type, size_t body_len) {
  std::string r;
  r += static_cast<char>(type);
  r += "\x03\x03";
  r += static_cast<char>(body_len >> 8);
  r += static_cast<char>(body_len & 0xff);
  r.append(body_len, 'x');
  return r;
}

// --- CountRecords ---------------------------------------------------------------------------

struct Count {
  size_t complete, missing, tail;
};
Count CountOf(std::string_view bytes) {
  Count c{99, 99, 99};
  CountRecords(bytes, &c.complete, &c.missing, &c.tail);
  return c;
}

TEST(CountRecords, EmptyInputIsABoundary) {
  Count c = CountOf("");
  EXPECT_EQ(c.complete, 0u);
  EXPECT_EQ(c.missing, 0u);
  EXPECT_EQ(c.tail, 0u);
}

TEST(CountRecords, WholeRecordsEndOnABoundary) {
  std::string two = Record(23, 10) + Record(21, 2);
  Count c = CountOf(two);
  EXPECT_EQ(c.complete, 2u);
  EXPECT_EQ(c.missing, 0u);
  EXPECT_EQ(c.tail, two.size());
  // The tail offset is optional.
  size_t complete = 0, missing = 0;
  CountRecords(two, &complete, &missing);
  EXPECT_EQ(complete, 2u);
  EXPECT_EQ(missing, 0u);
}

TEST(CountRecords, PartialBodyNeedsTheRestOfTheBody) {
  std::string whole = Record(23, 85 - 5);
  std::string bytes = Record(23, 3) + whole.substr(0, 10);
  Count c = CountOf(bytes);
  EXPECT_EQ(c.complete, 1u);
  EXPECT_EQ(c.missing, 75u);
  EXPECT_EQ(c.tail, 8u);
}

TEST(CountRecords, PartialHeaderNeedsTheRestOfTheHeaderFirst) {
  for (size_t have = 1; have < 5; ++have) {
    std::string bytes = Record(23, 0) + Record(23, 300).substr(0, have);
    Count c = CountOf(bytes);
    EXPECT_EQ(c.complete, 1u) << have;
    EXPECT_EQ(c.missing, 5 - have) << have;
    EXPECT_EQ(c.tail, 5u) << have;
  }
}

TEST(CountRecords, HeaderOnlyRecordNeedsItsWholeBody) {
  Count c = CountOf(Record(23, 16384 + 256).substr(0, 5));
  EXPECT_EQ(c.complete, 0u);
  EXPECT_EQ(c.missing, 16384u + 256u);
  EXPECT_EQ(c.tail, 0u);
  EXPECT_EQ(RecordBodyLength(reinterpret_cast<const unsigned char*>(Record(23, 0x1234).data())),
            0x1234u);
}

// --- CryptoInfoFromOpenSsl --------------------------------------------------------------------

// OpenSSL 3.0's ktls_crypto_info_t: the kernel struct (a union of all of them)
// followed by a size_t.
struct FakeOpenSslInfo {
  unsigned char bytes[64];
  size_t tls_crypto_info_len;
};

FakeOpenSslInfo MakeOpenSslInfo(uint16_t version, uint16_t cipher_type) {
  FakeOpenSslInfo f;
  for (size_t i = 0; i < sizeof f.bytes; ++i) f.bytes[i] = static_cast<unsigned char>(i);
  f.bytes[0] = static_cast<unsigned char>(version);
  f.bytes[1] = static_cast<unsigned char>(version >> 8);
  f.bytes[2] = static_cast<unsigned char>(cipher_type);
  f.bytes[3] = static_cast<unsigned char>(cipher_type >> 8);
  f.tls_crypto_info_len = 12345;  // never trusted
  return f;
}

TEST(CryptoInfoFromOpenSsl, LengthComesFromTheCipherType) {
  struct Case {
    uint16_t cipher;
    size_t len;
  };
  for (Case c : {Case{kCipherAesGcm128, 40}, Case{kCipherAesGcm256, 56},
                 Case{kCipherAesCcm128, 40}, Case{kCipherChaCha20Poly1305, 56}}) {
    FakeOpenSslInfo f = MakeOpenSslInfo(TLS1_2_VERSION, c.cipher);
    auto info = CryptoInfoFromOpenSsl(&f);
    ASSERT_TRUE(info.ok()) << c.cipher;
    EXPECT_EQ(info->len, c.len) << c.cipher;
    EXPECT_EQ(info->version(), TLS1_2_VERSION);
    EXPECT_EQ(info->cipher_type(), c.cipher);
    EXPECT_EQ(memcmp(info->bytes, f.bytes, c.len), 0);
    // Nothing past the kernel struct is copied.
    for (size_t i = c.len; i < sizeof info->bytes; ++i) EXPECT_EQ(info->bytes[i], 0) << i;
  }
}

#ifdef KTLB_HAVE_LINUX_TLS_H
TEST(CryptoInfoFromOpenSsl, LengthsMatchTheKernelUapi) {
  EXPECT_EQ(kSolTls, SOL_TLS);
  EXPECT_EQ(kTlsTx, TLS_TX);
  EXPECT_EQ(kTlsRx, TLS_RX);
  EXPECT_EQ(kTlsSetRecordType, TLS_SET_RECORD_TYPE);
  EXPECT_EQ(kTlsGetRecordType, TLS_GET_RECORD_TYPE);
  EXPECT_EQ(kCipherAesGcm128, TLS_CIPHER_AES_GCM_128);
  EXPECT_EQ(kCipherAesGcm256, TLS_CIPHER_AES_GCM_256);
  EXPECT_EQ(kCipherAesCcm128, TLS_CIPHER_AES_CCM_128);
  EXPECT_EQ(kCipherChaCha20Poly1305, TLS_CIPHER_CHACHA20_POLY1305);
  auto len = [](uint16_t cipher) {
    FakeOpenSslInfo f = MakeOpenSslInfo(TLS1_3_VERSION, cipher);
    return CryptoInfoFromOpenSsl(&f)->len;
  };
  EXPECT_EQ(len(kCipherAesGcm128), sizeof(tls12_crypto_info_aes_gcm_128));
  EXPECT_EQ(len(kCipherAesGcm256), sizeof(tls12_crypto_info_aes_gcm_256));
  EXPECT_EQ(len(kCipherAesCcm128), sizeof(tls12_crypto_info_aes_ccm_128));
  EXPECT_EQ(len(kCipherChaCha20Poly1305), sizeof(tls12_crypto_info_chacha20_poly1305));
  // rec_seq is the struct's last 8 bytes for every cipher (SetRecordSequence).
  EXPECT_EQ(offsetof(tls12_crypto_info_aes_gcm_128, rec_seq) + 8,
            sizeof(tls12_crypto_info_aes_gcm_128));
  EXPECT_EQ(offsetof(tls12_crypto_info_aes_gcm_256, rec_seq) + 8,
            sizeof(tls12_crypto_info_aes_gcm_256));
  EXPECT_EQ(offsetof(tls12_crypto_info_chacha20_poly1305, rec_seq) + 8,
            sizeof(tls12_crypto_info_chacha20_poly1305));
}
#endif

TEST(CryptoInfoFromOpenSsl, UnknownCipherTypeIsRefused) {
  FakeOpenSslInfo f = MakeOpenSslInfo(TLS1_2_VERSION, 99);
  EXPECT_FALSE(CryptoInfoFromOpenSsl(&f).ok());
}

TEST(KtlsCryptoInfo, RecordSequenceIsTheLastEightBytesBigEndian) {
  FakeOpenSslInfo f = MakeOpenSslInfo(TLS1_2_VERSION, kCipherAesGcm128);
  auto info = CryptoInfoFromOpenSsl(&f);
  ASSERT_TRUE(info.ok());
  info->SetRecordSequence(0x0102030405060708ull);
  EXPECT_EQ(Hex(std::string_view(reinterpret_cast<char*>(info->bytes) + 32, 8)),
            "0102030405060708");
  EXPECT_EQ(info->bytes[31], f.bytes[31]);  // the salt before it is untouched
  info->Wipe();
  for (unsigned char b : info->bytes) EXPECT_EQ(b, 0);
}

// --- Tls13CryptoInfo ------------------------------------------------------------------------

const SSL_CIPHER* FindCipher(SSL* ssl, uint16_t id) {
  unsigned char wire[2] = {static_cast<unsigned char>(id >> 8), static_cast<unsigned char>(id)};
  return SSL_CIPHER_find(ssl, wire);
}

// RFC 8448 section 3 (Simple 1-RTT Handshake), TLS_AES_128_GCM_SHA256:
// client_application_traffic_secret_0 and "{client} derive write traffic keys
// for application data": key 17422dda..., iv 5b78923d....
constexpr char kRfc8448ClientAppSecret[] =
    "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
constexpr char kRfc8448ClientAppKey[] = "17422dda596ed5d9acd890e3c63f5051";
constexpr char kRfc8448ClientAppIv[] = "5b78923dee08579033e523d9";

class Tls13CryptoInfoTest : public ::testing::Test {
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

TEST_F(Tls13CryptoInfoTest, Rfc8448KnownAnswerAes128Gcm) {
  std::string secret = Unhex(kRfc8448ClientAppSecret);
  const SSL_CIPHER* c = FindCipher(ssl_.get(), 0x1301);
  ASSERT_NE(c, nullptr);
  auto info = Tls13CryptoInfo(c, reinterpret_cast<const unsigned char*>(secret.data()),
                              secret.size(), 3);
  ASSERT_TRUE(info.ok()) << info.status();
  std::string iv = kRfc8448ClientAppIv;
  // struct tls12_crypto_info_aes_gcm_128: version 0x0304 and cipher type 51
  // (little-endian), iv = iv[4..11], key, salt = iv[0..3], rec_seq big-endian.
  EXPECT_EQ(InfoHex(*info), std::string("04033300") + iv.substr(8) + kRfc8448ClientAppKey +
                                iv.substr(0, 8) + "0000000000000003");
  EXPECT_EQ(info->len, 40u);
}

TEST_F(Tls13CryptoInfoTest, ChaChaKeepsTheWholeIvAndAes256HasA32ByteKey) {
  std::string secret = Unhex(kRfc8448ClientAppSecret);
  const auto* s = reinterpret_cast<const unsigned char*>(secret.data());
  // ChaCha20-Poly1305 uses SHA-256 too, so the 12-byte iv is RFC 8448's.
  auto chacha = Tls13CryptoInfo(FindCipher(ssl_.get(), 0x1303), s, secret.size(), 0);
  ASSERT_TRUE(chacha.ok()) << chacha.status();
  EXPECT_EQ(chacha->len, 56u);
  EXPECT_EQ(chacha->cipher_type(), kCipherChaCha20Poly1305);
  std::string hex = InfoHex(*chacha);
  EXPECT_EQ(hex.substr(8, 24), kRfc8448ClientAppIv);
  EXPECT_EQ(hex.substr(96), "0000000000000000");
  // The key is a 32-byte expansion, not the 16-byte one padded.
  EXPECT_NE(hex.substr(32, 32), kRfc8448ClientAppKey);

  std::string secret48(48, '\x42');  // SHA-384 suites take 48-byte secrets
  auto aes256 = Tls13CryptoInfo(FindCipher(ssl_.get(), 0x1302),
                                reinterpret_cast<const unsigned char*>(secret48.data()), 48, 7);
  ASSERT_TRUE(aes256.ok()) << aes256.status();
  EXPECT_EQ(aes256->len, 56u);
  EXPECT_EQ(aes256->cipher_type(), kCipherAesGcm256);
  EXPECT_EQ(InfoHex(*aes256).substr(96), "0000000000000007");
}

TEST_F(Tls13CryptoInfoTest, NonTls13CipherIsRefused) {
  // ECDHE-RSA-AES128-GCM-SHA256 is a TLS 1.2 suite.
  const SSL_CIPHER* c = FindCipher(ssl_.get(), 0xc02f);
  ASSERT_NE(c, nullptr);
  unsigned char secret[32] = {};
  EXPECT_FALSE(Tls13CryptoInfo(c, secret, sizeof secret, 0).ok());
  EXPECT_FALSE(Tls13CryptoInfo(static_cast<const SSL_CIPHER*>(nullptr), secret, 32, 0).ok());
}

// --- The buffer BIO's kTLS controls -------------------------------------------------------

// Plays ClientConnection's part: taking TX puts the "install TX here" marker
// in the output queue (when there is one).
class FakeHooks final : public KtlsHooks {
 public:
  bool OfferTx(const KtlsCryptoInfo& info) override {
    ++tx_offers;
    tx = info;
    tx_taken = accept_tx;
    if (accept_tx && queue != nullptr) queue->AppendInstallTx(std::string_view(reinterpret_cast<const char*>(info.bytes), info.len));
    return accept_tx;
  }
  bool OfferRx(const KtlsCryptoInfo& info) override {
    ++rx_offers;
    rx = info;
    return false;  // like ktlb: RX is installed after the handshake
  }
  bool TxTaken() const override { return tx_taken; }
  bool RxTaken() const override { return false; }
  void OnClientTrafficSecret(const unsigned char* secret, size_t len) override {
    client_secret.assign(reinterpret_cast<const char*>(secret), len);
  }

  OutputQueue* queue = nullptr;
  bool accept_tx = true;
  bool tx_taken = false;
  int tx_offers = 0;
  int rx_offers = 0;
  KtlsCryptoInfo tx, rx;
  std::string client_secret;
};

constexpr int kCtrlSetKtls = 72;
constexpr int kCtrlGetKtlsSend = 73;
constexpr int kCtrlSetKtlsTxSendCtrlMsg = 74;
constexpr int kCtrlClearKtlsTxCtrlMsg = 75;
constexpr int kCtrlGetKtlsRecv = 76;

std::vector<std::pair<OutputQueue::Kind, std::string>> Drain(OutputQueue* q) {
  std::vector<std::pair<OutputQueue::Kind, std::string>> out;
  while (!q->empty()) {
    OutputQueue::Segment& s = q->front();
    std::string what = s.kind == OutputQueue::Kind::kRecord
                           ? std::to_string(s.record_type) + ":" + std::string(s.unsent())
                           : std::string(s.unsent());
    out.emplace_back(s.kind, what);
    q->PopFront();
  }
  return out;
}

TEST(BufferBioKtls, WithoutHooksNothingIsOffloaded) {
  OutputQueue q;
  BioIo io{.queue = &q};
  UniqueBio b(NewBufferBio(&io));
  FakeOpenSslInfo f = MakeOpenSslInfo(TLS1_3_VERSION, kCipherAesGcm128);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtls, 2, &f), 0);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlGetKtlsSend, 0, nullptr), 0);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlGetKtlsRecv, 0, nullptr), 0);
}

TEST(BufferBioKtls, Control72OffersTxAsTwoAndRxAsZero) {
  OutputQueue q;
  FakeHooks hooks;
  BioIo io{.queue = &q, .ktls = &hooks};
  UniqueBio b(NewBufferBio(&io));
  FakeOpenSslInfo f = MakeOpenSslInfo(TLS1_2_VERSION, kCipherAesGcm256);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlGetKtlsSend, 0, nullptr), 0);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtls, 0, &f), 0);  // RX: declined
  EXPECT_EQ(hooks.rx_offers, 1);
  EXPECT_EQ(hooks.tx_offers, 0);
  EXPECT_EQ(hooks.rx.len, 56u);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtls, 2, &f), 1);  // TX: taken
  EXPECT_EQ(hooks.tx_offers, 1);
  EXPECT_EQ(memcmp(hooks.tx.bytes, f.bytes, 56), 0);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlGetKtlsSend, 0, nullptr), 1);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlGetKtlsRecv, 0, nullptr), 0);

  hooks.accept_tx = false;
  hooks.tx_taken = false;
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtls, 2, &f), 0);
  // An unknown cipher type never reaches the hooks.
  FakeOpenSslInfo bad = MakeOpenSslInfo(TLS1_2_VERSION, 77);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtls, 2, &bad), 0);
  EXPECT_EQ(hooks.tx_offers, 2);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtls, 2, nullptr), 0);
}

TEST(BufferBioKtls, ControlMessageCoversExactlyOneWrite) {
  // OpenSSL 3.0 sends control 74 before each non-application record and
  // never control 75 after it (its socket BIO clears the flag on write).
  OutputQueue q;
  FakeHooks hooks;
  BioIo io{.queue = &q, .ktls = &hooks};
  UniqueBio b(NewBufferBio(&io));
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtlsTxSendCtrlMsg, 22, nullptr), 1);
  EXPECT_EQ(BIO_write(b.get(), "ticket", 6), 6);
  EXPECT_EQ(BIO_write(b.get(), "GET / ", 6), 6);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtlsTxSendCtrlMsg, 21, nullptr), 1);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlClearKtlsTxCtrlMsg, 0, nullptr), 1);
  EXPECT_EQ(BIO_write(b.get(), "HTTP/1.1", 8), 8);
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtlsTxSendCtrlMsg, 21, nullptr), 1);
  EXPECT_EQ(BIO_write(b.get(), "\x01\x00", 2), 2);
  auto segs = Drain(&q);
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs[0].first, OutputQueue::Kind::kRecord);
  EXPECT_EQ(segs[0].second, "22:ticket");
  EXPECT_EQ(segs[1].first, OutputQueue::Kind::kBytes);
  EXPECT_EQ(segs[1].second, "GET / HTTP/1.1");
  EXPECT_EQ(segs[2].first, OutputQueue::Kind::kRecord);
  EXPECT_EQ(segs[2].second, std::string("21:\x01\x00", 5));
}

TEST(BufferBioKtls, ControlMessagesNeedAQueue) {
  std::string out;
  FakeHooks hooks;
  BioIo io{.out = &out, .ktls = &hooks};
  UniqueBio b(NewBufferBio(&io));
  EXPECT_EQ(BIO_ctrl(b.get(), kCtrlSetKtlsTxSendCtrlMsg, 22, nullptr), 0);
  EXPECT_EQ(BIO_write(b.get(), "abc", 3), 3);
  EXPECT_EQ(out, "abc");
}

// --- A whole connection with the test as the kernel -----------------------------------------

// What the kernel's struct holds, by cipher (uapi/linux/tls.h).
struct Keys {
  std::string key, salt, iv;  // GCM: nonce = salt || iv; ChaCha: nonce = iv (12)
  uint64_t seq = 0;
  uint16_t version = 0, cipher = 0;
};
Keys KeysOf(const KtlsCryptoInfo& info) {
  Keys k;
  const char* p = reinterpret_cast<const char*>(info.bytes) + 4;
  k.version = info.version();
  k.cipher = info.cipher_type();
  size_t key_len = k.cipher == kCipherAesGcm128 ? 16 : 32;
  if (k.cipher == kCipherChaCha20Poly1305) {
    k.iv.assign(p, 12);
    k.key.assign(p + 12, 32);
  } else {
    k.iv.assign(p, 8);
    k.key.assign(p + 8, key_len);
    k.salt.assign(p + 8 + key_len, 4);
  }
  for (size_t i = info.len - 8; i < info.len; ++i) k.seq = k.seq << 8 | info.bytes[i];
  return k;
}

const EVP_CIPHER* AeadOf(uint16_t cipher) {
  switch (cipher) {
    case kCipherAesGcm128: return EVP_aes_128_gcm();
    case kCipherAesGcm256: return EVP_aes_256_gcm();
    default: return EVP_chacha20_poly1305();
  }
}

// The per-record nonce as Linux builds it: TLS 1.3 and ChaCha20 XOR the
// sequence number into the static iv (tls_xor_iv_with_seq); TLS 1.2 GCM sends
// salt || iv and counts the iv up per record (tls_advance_record_sn).
std::string Nonce(const Keys& k, uint64_t seq) {
  std::string n;
  if (k.cipher == kCipherChaCha20Poly1305) {
    n = k.iv;
  } else if (k.version == TLS1_3_VERSION) {
    n = k.salt + k.iv;
  } else {
    return k.salt + k.iv;
  }
  for (int i = 0; i < 8; ++i) n[4 + i] = static_cast<char>(n[4 + i] ^ (seq >> (56 - 8 * i)));
  return n;
}

void IncrementBigEndian(std::string* v) {
  for (size_t i = v->size(); i-- > 0;) {
    (*v)[i] = static_cast<char>(static_cast<unsigned char>((*v)[i]) + 1);
    if ((*v)[i] != 0) break;
  }
}

bool Aead(bool seal, const Keys& k, const std::string& nonce, const std::string& aad,
          const std::string& in, std::string* out, std::string* tag) {
  std::unique_ptr<EVP_CIPHER_CTX, OpenSslDeleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>> ctx(
      EVP_CIPHER_CTX_new());
  int n = 0;
  const auto* key = reinterpret_cast<const unsigned char*>(k.key.data());
  const auto* iv = reinterpret_cast<const unsigned char*>(nonce.data());
  if (EVP_CipherInit_ex(ctx.get(), AeadOf(k.cipher), nullptr, nullptr, nullptr, seal) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, key, iv, seal) != 1) {
    return false;
  }
  if (!seal && EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, 16, tag->data()) != 1) {
    return false;
  }
  if (EVP_CipherUpdate(ctx.get(), nullptr, &n, reinterpret_cast<const unsigned char*>(aad.data()),
                       static_cast<int>(aad.size())) != 1) {
    return false;
  }
  out->resize(in.size());
  if (EVP_CipherUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out->data()), &n,
                       reinterpret_cast<const unsigned char*>(in.data()),
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

std::string Header(uint8_t type, size_t len) {
  std::string h;
  h += static_cast<char>(type);
  h += "\x03\x03";
  h += static_cast<char>(len >> 8);
  h += static_cast<char>(len & 0xff);
  return h;
}

std::string Tls12Aad(uint64_t seq, uint8_t type, size_t plain_len) {
  std::string a;
  for (int i = 7; i >= 0; --i) a += static_cast<char>(seq >> (8 * i));
  return a + Header(type, plain_len);
}

bool ExplicitNonce(const Keys& k) {
  return k.version == TLS1_2_VERSION && k.cipher != kCipherChaCha20Poly1305;
}

// Seals one record the way kTLS TX does; advances k->seq.
std::string Seal(Keys* k, uint8_t type, const std::string& plain) {
  std::string ct, tag, record;
  std::string nonce = Nonce(*k, k->seq);
  if (k->version == TLS1_3_VERSION) {
    std::string inner = plain + static_cast<char>(type);
    EXPECT_TRUE(Aead(true, *k, nonce, Header(23, inner.size() + 16), inner, &ct, &tag));
    record = Header(23, ct.size() + 16) + ct + tag;
  } else {
    EXPECT_TRUE(Aead(true, *k, nonce, Tls12Aad(k->seq, type, plain.size()), plain, &ct, &tag));
    std::string explicit_nonce = ExplicitNonce(*k) ? nonce.substr(4) : "";
    record = Header(type, explicit_nonce.size() + ct.size() + 16) + explicit_nonce + ct + tag;
    if (ExplicitNonce(*k)) IncrementBigEndian(&k->iv);
  }
  ++k->seq;
  return record;
}

// Opens the next record of `*wire` the way kTLS RX does; advances k->seq.
bool Open(Keys* k, std::string* wire, uint8_t* type, std::string* plain) {
  if (wire->size() < 5) return false;
  size_t len = RecordBodyLength(reinterpret_cast<const unsigned char*>(wire->data()));
  if (wire->size() < 5 + len || len < 16) return false;
  std::string header = wire->substr(0, 5);
  std::string body = wire->substr(5, len);
  wire->erase(0, 5 + len);
  std::string nonce = Nonce(*k, k->seq);
  if (ExplicitNonce(*k)) {
    nonce = k->salt + body.substr(0, 8);
    body.erase(0, 8);
  }
  std::string tag = body.substr(body.size() - 16);
  body.resize(body.size() - 16);
  std::string aad = k->version == TLS1_3_VERSION
                        ? header
                        : Tls12Aad(k->seq, static_cast<uint8_t>(header[0]), body.size());
  if (!Aead(false, *k, nonce, aad, body, plain, &tag)) return false;
  if (k->version == TLS1_3_VERSION) {
    while (!plain->empty() && plain->back() == 0) plain->pop_back();
    if (plain->empty()) return false;
    *type = static_cast<uint8_t>(plain->back());
    plain->pop_back();
  } else {
    *type = static_cast<uint8_t>(header[0]);
  }
  ++k->seq;
  return true;
}

struct Suite {
  const char* name;
  int version;
  const char* cipher;  // TLS 1.3 ciphersuite or TLS 1.2 cipher list
  uint16_t kernel_cipher;
};

void PrintTo(const Suite& s, std::ostream* os) { *os << s.name; }

class KtlsHandoff : public ::testing::TestWithParam<Suite> {};

// The server is set up like ktlb's (SSL_OP_ENABLE_KTLS, key-log capture, the
// buffer BIO on an OutputQueue with hooks); the client is plain OpenSSL.
// Between them the test moves bytes and, once TX is taken, does what the
// kernel would do with the server's queue. RX is installed the way
// client_ktls.cc does: TLS 1.3 from the captured secret, TLS 1.2 from
// OpenSSL's declined offer with rec_seq 1 (the Finished was 0).
TEST_P(KtlsHandoff, KernelSideOfTheHandoffRoundTrips) {
  const Suite& s = GetParam();
  const testing::Pki& pki = testing::Pki::Get();

  UniqueSslCtx sctx(SSL_CTX_new(TLS_server_method()));
  ASSERT_NE(sctx, nullptr);
  SSL_CTX_set_min_proto_version(sctx.get(), s.version);
  SSL_CTX_set_max_proto_version(sctx.get(), s.version);
  if (s.version == TLS1_3_VERSION) {
    ASSERT_EQ(SSL_CTX_set_ciphersuites(sctx.get(), s.cipher), 1);
  } else {
    ASSERT_EQ(SSL_CTX_set_cipher_list(sctx.get(), s.cipher), 1);
  }
  SSL_CTX_set_options(sctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_ENABLE_KTLS);
  SSL_CTX_set_mode(sctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  ASSERT_EQ(SSL_CTX_use_certificate(sctx.get(), pki.other.get()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey(sctx.get(), pki.other_key.get()), 1);
  EnableTrafficSecretCapture(sctx.get());

  UniqueSslCtx cctx(SSL_CTX_new(TLS_client_method()));
  ASSERT_NE(cctx, nullptr);
  SSL_CTX_set_min_proto_version(cctx.get(), s.version);
  SSL_CTX_set_max_proto_version(cctx.get(), s.version);
  if (s.version == TLS1_3_VERSION) {
    ASSERT_EQ(SSL_CTX_set_ciphersuites(cctx.get(), s.cipher), 1);
  } else {
    ASSERT_EQ(SSL_CTX_set_cipher_list(cctx.get(), s.cipher), 1);
  }

  OutputQueue server_out;
  FakeHooks hooks;
  hooks.queue = &server_out;
  BioIo sio{.queue = &server_out, .ktls = &hooks};
  UniqueSsl server(SSL_new(sctx.get()));
  BIO* sb = NewBufferBio(&sio);
  SSL_set_bio(server.get(), sb, sb);
  SSL_set_accept_state(server.get());
  SSL_set_app_data(server.get(), static_cast<KtlsHooks*>(&hooks));

  std::string client_out;
  BioIo cio{.out = &client_out};
  UniqueSsl client(SSL_new(cctx.get()));
  BIO* cb = NewBufferBio(&cio);
  SSL_set_bio(client.get(), cb, cb);
  SSL_set_connect_state(client.get());

  std::string to_server, to_client;
  bool tx_on = false;
  Keys tx;
  std::vector<uint8_t> kernel_record_types;
  // The kernel side of the server's socket: ciphertext before the TX
  // marker goes out as is, afterwards the payload is sealed.
  auto kernel_send = [&] {
    while (!server_out.empty()) {
      OutputQueue::Segment& seg = server_out.front();
      std::string data(seg.unsent());
      switch (seg.kind) {
        case OutputQueue::Kind::kInstallTx:
          ASSERT_FALSE(tx_on);
          // The marker carries the very key OpenSSL offered.
          EXPECT_EQ(data, std::string(reinterpret_cast<const char*>(hooks.tx.bytes), hooks.tx.len));
          tx_on = true;
          tx = KeysOf(hooks.tx);
          break;
        case OutputQueue::Kind::kBytes:
          if (!tx_on) {
            to_client += data;
          } else {
            for (size_t off = 0; off < data.size(); off += 16384) {
              to_client += Seal(&tx, 23, data.substr(off, 16384));
              kernel_record_types.push_back(23);
            }
          }
          break;
        case OutputQueue::Kind::kRecord:
          ASSERT_TRUE(tx_on) << "a control record before TX was installed";
          to_client += Seal(&tx, seg.record_type, data);
          kernel_record_types.push_back(seg.record_type);
          break;
      }
      server_out.PopFront();
    }
  };
  auto with = [](BioIo* io, std::string* in, auto f) {
    io->in = *in;
    int rc = f();
    in->erase(0, in->size() - io->in.size());
    io->in = {};
    return rc;
  };

  bool server_done = false, client_done = false;
  for (int round = 0; round < 20 && !(server_done && client_done); ++round) {
    if (!client_done) {
      int rc = with(&cio, &to_client, [&] { return SSL_do_handshake(client.get()); });
      if (rc == 1) {
        client_done = true;
      } else {
        ASSERT_EQ(SSL_get_error(client.get(), rc), SSL_ERROR_WANT_READ) << testing::FirstErrorReason();
      }
    }
    to_server += client_out;
    client_out.clear();
    if (!server_done) {
      int rc = with(&sio, &to_server, [&] { return SSL_do_handshake(server.get()); });
      if (rc == 1) {
        server_done = true;
      } else {
        ASSERT_EQ(SSL_get_error(server.get(), rc), SSL_ERROR_WANT_READ) << testing::FirstErrorReason();
      }
    }
    kernel_send();
  }
  ASSERT_TRUE(server_done && client_done);
  EXPECT_EQ(hooks.tx_offers, 1);
  ASSERT_TRUE(tx_on);
  EXPECT_EQ(tx.version, s.version);
  EXPECT_EQ(tx.cipher, s.kernel_cipher);
  if (s.version == TLS1_3_VERSION) {
    EXPECT_EQ(hooks.rx_offers, 0);  // OpenSSL 3.0 never offers TLS 1.3 RX
    EXPECT_FALSE(hooks.client_secret.empty());
    // The two NewSessionTickets went through the "kernel" as records 0 and 1.
    ASSERT_EQ(kernel_record_types.size(), 2u);
    EXPECT_EQ(kernel_record_types[0], 22);
    EXPECT_EQ(kernel_record_types[1], 22);
  } else {
    EXPECT_EQ(hooks.rx_offers, 1);
    // The server Finished was the first record the kernel sealed.
    ASSERT_GE(kernel_record_types.size(), 1u);
    EXPECT_EQ(kernel_record_types[0], 22);
  }
  EXPECT_TRUE(to_server.empty());

  // Server -> client: plaintext through the BIO, sealed by the "kernel".
  std::string response(40000, 'r');
  response.replace(0, 17, "HTTP/1.1 200 OK\r\n");
  size_t sent = 0;
  while (sent < response.size()) {
    int n = SSL_write(server.get(), response.data() + sent, static_cast<int>(response.size() - sent));
    ASSERT_GT(n, 0) << testing::FirstErrorReason();
    sent += static_cast<size_t>(n);
  }
  kernel_send();
  std::string got;
  char buf[16384];
  for (;;) {
    int n = with(&cio, &to_client, [&] { return SSL_read(client.get(), buf, sizeof buf); });
    if (n <= 0) {
      ASSERT_EQ(SSL_get_error(client.get(), n), SSL_ERROR_WANT_READ) << testing::FirstErrorReason();
      break;
    }
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(got, response);

  // Client -> server: the records the kernel would decrypt with the RX info
  // ktlb installs after the handshake (no record arrived after the Finished).
  KtlsCryptoInfo rx;
  if (s.version == TLS1_3_VERSION) {
    auto built = Tls13CryptoInfo(server.get(),
                                 reinterpret_cast<const unsigned char*>(hooks.client_secret.data()),
                                 hooks.client_secret.size(), 0);
    ASSERT_TRUE(built.ok()) << built.status();
    rx = *built;
  } else {
    rx = hooks.rx;
    rx.SetRecordSequence(1);
  }
  Keys rk = KeysOf(rx);
  const std::string request = "GET /size/4194304 HTTP/1.1\r\nHost: localhost\r\n\r\n";
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(SSL_write(client.get(), request.data(), static_cast<int>(request.size())),
              static_cast<int>(request.size()));
  }
  std::string wire = client_out;
  client_out.clear();
  for (int i = 0; i < 3; ++i) {
    uint8_t type = 0;
    std::string plain;
    ASSERT_TRUE(Open(&rk, &wire, &type, &plain)) << "record " << i;
    EXPECT_EQ(type, 23);
    EXPECT_EQ(plain, request);
  }
  EXPECT_TRUE(wire.empty());

  // close_notify from the server: an alert record through the "kernel".
  kernel_record_types.clear();
  SSL_shutdown(server.get());
  kernel_send();
  ASSERT_EQ(kernel_record_types.size(), 1u);
  EXPECT_EQ(kernel_record_types[0], 21);
  int n = with(&cio, &to_client, [&] { return SSL_read(client.get(), buf, sizeof buf); });
  EXPECT_EQ(n, 0);
  EXPECT_EQ(SSL_get_error(client.get(), n), SSL_ERROR_ZERO_RETURN);
  ERR_clear_error();
}

INSTANTIATE_TEST_SUITE_P(
    Suites, KtlsHandoff,
    ::testing::Values(
        Suite{"Tls13Aes128Gcm", TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", kCipherAesGcm128},
        Suite{"Tls13Aes256Gcm", TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", kCipherAesGcm256},
        Suite{"Tls13ChaCha20", TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256",
              kCipherChaCha20Poly1305},
        Suite{"Tls12Aes128Gcm", TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", kCipherAesGcm128},
        Suite{"Tls12Aes256Gcm", TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", kCipherAesGcm256},
        Suite{"Tls12ChaCha20", TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305",
              kCipherChaCha20Poly1305}),
    [](const ::testing::TestParamInfo<Suite>& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace ktlb::tls
