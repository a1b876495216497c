#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ktlb/tls.h"
#include "tls_test_util.h"

namespace ktlb::tls {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::CertPem;
using testing::KeyPem;
using testing::Pki;
using testing::TempDir;

Config WithCerts(std::vector<CertificateConfig> certs) {
  Config c;
  c.path = "/etc/ktlb/ktlb.toml";
  c.certificates = std::move(certs);
  return c;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(LoadCertificates, LoadsLeafChainKeyAndNamesInConfigOrder) {
  TempDir dir;
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts(testing::WriteStandardCerts(dir)));
  ASSERT_TRUE(certs.ok()) << certs.status();
  ASSERT_EQ(certs->size(), 3u);
  const Pki& pki = Pki::Get();

  const LoadedCertificate& site = *(*certs)[0];
  EXPECT_EQ(site.name, "site");
  EXPECT_EQ(X509_cmp(site.leaf.get(), pki.site.get()), 0);
  ASSERT_EQ(site.chain.size(), 1u);
  EXPECT_EQ(X509_cmp(site.chain[0].get(), pki.inter.get()), 0);
  EXPECT_TRUE(EVP_PKEY_is_a(site.key.get(), "RSA"));
  EXPECT_THAT(site.dns_names, ElementsAre("site.example.test", "*.site.example.test"));

  const LoadedCertificate& other = *(*certs)[1];
  EXPECT_EQ(other.name, "other");
  EXPECT_TRUE(EVP_PKEY_is_a(other.key.get(), "EC"));
  // SAN names are lowercased; the CN ("other") is not used when SAN exists.
  EXPECT_THAT(other.dns_names, ElementsAre("other.example.test", "*.wild.example.test"));

  const LoadedCertificate& legacy = *(*certs)[2];
  EXPECT_TRUE(legacy.chain.empty());
  EXPECT_THAT(legacy.dns_names, ElementsAre("legacy.example.test"));  // CN fallback
}

TEST(LoadCertificates, NoCertificatesIsFine) {
  absl::StatusOr<std::vector<CertificatePtr>> certs = LoadCertificates(Config{});
  ASSERT_TRUE(certs.ok());
  EXPECT_TRUE(certs->empty());
}

TEST(LoadCertificates, MismatchedKeyNamesBothFiles) {
  TempDir dir;
  const Pki& pki = Pki::Get();
  std::string crt = dir.Write("site.crt", CertPem(pki.site.get()));
  std::string key = dir.Write("site.key", KeyPem(pki.other_key.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(certs.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(certs.status()),
            "certificate \"site\": key " + key + " does not match certificate " + crt);
}

TEST(LoadCertificates, MismatchedKeyOfTheSameType) {
  TempDir dir;
  const Pki& pki = Pki::Get();
  std::string crt = dir.Write("other.crt", CertPem(pki.other.get()));
  std::string key = dir.Write("other.key", KeyPem(pki.legacy_key.get()));  // also P-256
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"other", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()),
            "certificate \"other\": key " + key + " does not match certificate " + crt);
}

TEST(LoadCertificates, MissingFileNamesPathAndErrno) {
  TempDir dir;
  std::string key = dir.Write("site.key", KeyPem(Pki::Get().site_key.get()));
  std::string crt = dir.path() + "/nope.crt";
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()),
            "certificate \"site\": cannot read " + crt + ": No such file or directory");
}

TEST(LoadCertificates, DirectoryIsNotAFile) {
  TempDir dir;
  std::string crt = dir.Write("site.crt", CertPem(Pki::Get().site.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, dir.path()}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()),
            "certificate \"site\": cannot read " + dir.path() + ": Is a directory");
}

TEST(LoadCertificates, EmptyFiles) {
  TempDir dir;
  const Pki& pki = Pki::Get();
  std::string empty = dir.Write("empty", "");
  std::string crt = dir.Write("site.crt", CertPem(pki.site.get()));
  std::string key = dir.Write("site.key", KeyPem(pki.site_key.get()));

  absl::StatusOr<std::vector<CertificatePtr>> a = LoadCertificates(WithCerts({{"a", empty, key}}));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(Message(a.status()), "certificate \"a\": " + empty + " is empty");

  absl::StatusOr<std::vector<CertificatePtr>> b = LoadCertificates(WithCerts({{"b", crt, empty}}));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(Message(b.status()), "certificate \"b\": " + empty + " is empty");
}

TEST(LoadCertificates, NoPemCertificate) {
  TempDir dir;
  std::string crt = dir.Write("site.crt", "this is not PEM\n");
  std::string key = dir.Write("site.key", KeyPem(Pki::Get().site_key.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()), "certificate \"site\": no PEM certificate in " + crt);
  EXPECT_EQ(ERR_peek_error(), 0u);  // no OpenSSL leftovers on the thread
}

TEST(LoadCertificates, DamagedSecondCertificate) {
  TempDir dir;
  const Pki& pki = Pki::Get();
  std::string inter = CertPem(pki.inter.get());
  inter[inter.size() / 2] = '!';  // not base64
  std::string crt = dir.Write("site.crt", CertPem(pki.site.get()) + inter);
  std::string key = dir.Write("site.key", KeyPem(pki.site_key.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_THAT(Message(certs.status()),
              HasSubstr("certificate \"site\": bad PEM certificate in " + crt + " (after 1 good"));
}

TEST(LoadCertificates, KeyFileWithoutKey) {
  TempDir dir;
  std::string crt = dir.Write("site.crt", CertPem(Pki::Get().site.get()));
  std::string key = dir.Write("site.key", CertPem(Pki::Get().site.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()), "certificate \"site\": no PEM private key in " + key);
}

TEST(LoadCertificates, DamagedKey) {
  TempDir dir;
  std::string pem = KeyPem(Pki::Get().site_key.get());
  pem[pem.size() / 2] = '!';
  std::string crt = dir.Write("site.crt", CertPem(Pki::Get().site.get()));
  std::string key = dir.Write("site.key", pem);
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()),
            "certificate \"site\": cannot decode the private key in " + key);
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(LoadCertificates, EncryptedKeyIsRefusedClearly) {
  TempDir dir;
  const Pki& pki = Pki::Get();
  UniqueBio bio(BIO_new(BIO_s_mem()));
  static const char kPass[] = "secret";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio.get(), pki.other_key.get(), EVP_aes_256_cbc(),
                                          kPass, sizeof(kPass) - 1, nullptr, nullptr),
            1);
  std::string crt = dir.Write("other.crt", CertPem(pki.other.get()));
  std::string key = dir.Write("other.key", testing::BioContents(bio.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"other", crt, key}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()), "certificate \"other\": key " + key +
                                         " is encrypted; ktlb needs an unencrypted PEM key");
}

TEST(LoadCertificates, EcKeyWithParametersBlockAndTraditionalFormat) {
  // What `openssl ecparam -genkey` writes: EC PARAMETERS, then EC PRIVATE KEY.
  TempDir dir;
  const Pki& pki = Pki::Get();
  UniqueBio bio(BIO_new(BIO_s_mem()));
  ASSERT_EQ(PEM_write_bio_Parameters(bio.get(), pki.other_key.get()), 1);
  ASSERT_EQ(PEM_write_bio_PrivateKey_traditional(bio.get(), pki.other_key.get(), nullptr,
                                                 nullptr, 0, nullptr, nullptr),
            1);
  std::string pem = testing::BioContents(bio.get());
  ASSERT_THAT(pem, HasSubstr("BEGIN EC PARAMETERS"));
  ASSERT_THAT(pem, HasSubstr("BEGIN EC PRIVATE KEY"));
  std::string crt = dir.Write("other.crt", CertPem(pki.other.get()));
  std::string key = dir.Write("other.key", pem);
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"other", crt, key}}));
  ASSERT_TRUE(certs.ok()) << certs.status();
}

TEST(LoadCertificates, CombinedCertAndKeyFile) {
  TempDir dir;
  const Pki& pki = Pki::Get();
  std::string both = dir.Write("site.pem", KeyPem(pki.site_key.get()) + CertPem(pki.site.get()) +
                                               CertPem(pki.inter.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"site", both, both}}));
  ASSERT_TRUE(certs.ok()) << certs.status();
  EXPECT_EQ((*certs)[0]->chain.size(), 1u);
}

TEST(LoadCertificates, Ed25519IsRefused) {
  TempDir dir;
  UniqueEvpPkey key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_NE(key, nullptr);
  UniqueX509 cert = testing::MakeCert({.cn = "ed", .san = "DNS:ed.example.test"}, key.get());
  std::string crt = dir.Write("ed.crt", CertPem(cert.get()));
  std::string keyfile = dir.Write("ed.key", KeyPem(key.get()));
  absl::StatusOr<std::vector<CertificatePtr>> certs =
      LoadCertificates(WithCerts({{"ed", crt, keyfile}}));
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(Message(certs.status()),
            "certificate \"ed\": key " + keyfile + " is ED25519; use an RSA or ECDSA key");
}

TEST(LoadCertificates, FirstBadEntryStopsLoading) {
  TempDir dir;
  std::vector<CertificateConfig> list = testing::WriteStandardCerts(dir);
  list[1].key_path = list[0].key_path;
  absl::StatusOr<std::vector<CertificatePtr>> certs = LoadCertificates(WithCerts(list));
  ASSERT_FALSE(certs.ok());
  EXPECT_THAT(Message(certs.status()), HasSubstr("certificate \"other\": key "));
}

TEST(LoadCertificates, SanWithoutDnsFallsBackToCn) {
  TempDir dir;
  UniqueEvpPkey key = testing::MakeEcKey();
  UniqueX509 cert = testing::MakeCert({.cn = "Ip.Example.Test", .san = "IP:127.0.0.1"}, key.get());
  absl::StatusOr<std::vector<CertificatePtr>> certs = LoadCertificates(WithCerts(
      {{"ip", dir.Write("ip.crt", CertPem(cert.get())), dir.Write("ip.key", KeyPem(key.get()))}}));
  ASSERT_TRUE(certs.ok()) << certs.status();
  EXPECT_THAT((*certs)[0]->dns_names, ElementsAre("ip.example.test"));
}

}  // namespace
}  // namespace ktlb::tls
