// TLS policy names are checked against the linked OpenSSL, one name at a
// time (OpenSSL 3.0 silently drops an unknown cipher or TLS 1.3 suite from a
// longer list), with the FILE:LINE: key form --check prints.
#include <string>

#include <openssl/ssl.h>

#include "gtest/gtest.h"
#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

// A config with one terminate listener whose policy `edit` changes, and a
// passthrough listener that is never checked.
Config WithPolicy(void (*edit)(TlsPolicy&)) {
  Config c;
  c.path = "/etc/ktlb.toml";
  c.listeners.resize(2);
  c.listeners[0].mode = ListenerMode::kPassthrough;
  c.listeners[1].mode = ListenerMode::kTerminate;
  edit(c.listeners[1].tls);
  return c;
}

std::string Check(void (*edit)(TlsPolicy&)) {
  absl::Status s = CheckTlsPolicies(WithPolicy(edit));
  return s.ok() ? "ok" : std::string(s.message());
}

TEST(CheckTlsPolicies, DefaultsAndOperatorAdditionsPass) {
  EXPECT_EQ(Check([](TlsPolicy&) {}), "ok");
  EXPECT_EQ(Check([](TlsPolicy& p) { p.groups = "X25519:P-256:P-384:X448:P-521:ffdhe2048"; }), "ok");
  EXPECT_EQ(Check([](TlsPolicy& p) { p.ciphers = "ECDHE+AESGCM:!aNULL:@STRENGTH"; }), "ok");
  EXPECT_EQ(Check([](TlsPolicy& p) { p.ciphersuites = "TLS_AES_256_GCM_SHA384"; }), "ok");
}

TEST(CheckTlsPolicies, UnknownGroup) {
  EXPECT_EQ(Check([](TlsPolicy& p) {
              p.groups = "X25519:X9999";
              p.groups_line = 7;
            }),
            "/etc/ktlb.toml:7: listeners[1].tls_groups: \"X9999\" is not a group OpenSSL knows "
            "(e.g. X25519, P-256, P-384, P-521, X448, ffdhe2048)");
}

TEST(CheckTlsPolicies, UnknownCipherAmongKnownOnes) {
  // OpenSSL alone would accept this list and drop the typo.
  EXPECT_EQ(Check([](TlsPolicy& p) {
              p.ciphers = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA265";
              p.ciphers_line = 8;
            }),
            "/etc/ktlb.toml:8: listeners[1].tls_ciphers: \"ECDHE-RSA-AES128-GCM-SHA265\" matches "
            "no TLS 1.2 cipher (e.g. ECDHE-RSA-AES128-GCM-SHA256; TLS 1.3 suites go in "
            "tls_ciphersuites)");
  // A TLS 1.3 suite in the TLS 1.2 list.
  EXPECT_NE(Check([](TlsPolicy& p) { p.ciphers = "TLS_AES_128_GCM_SHA256"; }), "ok");
}

TEST(CheckTlsPolicies, UnknownSuiteAmongKnownOnes) {
  EXPECT_EQ(Check([](TlsPolicy& p) {
              p.ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_512_GCM_SHA256";
              p.ciphersuites_line = 9;
            }),
            "/etc/ktlb.toml:9: listeners[1].tls_ciphersuites: \"TLS_AES_512_GCM_SHA256\" is not "
            "a TLS 1.3 suite OpenSSL knows (e.g. TLS_AES_128_GCM_SHA256; TLS 1.2 ciphers go in "
            "tls_ciphers)");
  EXPECT_NE(Check([](TlsPolicy& p) { p.ciphersuites = "ECDHE-RSA-AES128-GCM-SHA256"; }), "ok");
}

TEST(CheckTlsPolicies, KnownNamesThatLeaveNothing) {
  std::string err = Check([](TlsPolicy& p) {
    p.ciphers = "!ALL";
    p.ciphers_line = 3;
  });
  EXPECT_EQ(err.rfind("/etc/ktlb.toml:3: listeners[1].tls_ciphers: OpenSSL refuses \"!ALL\": ", 0),
            0u)
      << err;
}

TEST(ApplyTlsPolicy, SetsVersionsAndSuites) {
  UniqueSslCtx ctx(SSL_CTX_new(TLS_server_method()));
  TlsPolicy p;
  p.min_version = TLS1_3_VERSION;
  p.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
  ASSERT_TRUE(ApplyTlsPolicy(ctx.get(), p).ok());
  EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx.get()), TLS1_3_VERSION);
  EXPECT_EQ(SSL_CTX_get_max_proto_version(ctx.get()), TLS1_3_VERSION);
  STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx.get());
  ASSERT_GT(sk_SSL_CIPHER_num(ciphers), 0);
  EXPECT_STREQ(SSL_CIPHER_standard_name(sk_SSL_CIPHER_value(ciphers, 0)),
               "TLS_CHACHA20_POLY1305_SHA256");
}

}  // namespace
}  // namespace ktlb::tls
