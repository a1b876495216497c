// mTLS in memory: client_auth loading, require / optional, the per-certificate
// policy SNI selects, the failure reasons, and the identity copied out.
#include <memory>
#include <string>
#include <vector>

#include <openssl/ssl.h>

#include "gtest/gtest.h"
#include "ktlb/tls.h"
#include "ktlb/tls_transport.h"
#include "tls_test_util.h"

namespace ktlb::tls {
namespace {

using testing::Handshake;
using testing::MakeCert;
using testing::MakeClientCtx;
using testing::MakeEcKey;
using testing::MakeListener;
using testing::SetSni;

// A client CA with one client ("alice"), and an unrelated CA with its own
// ("mallory"), made once per binary.
struct ClientPki {
  UniqueEvpPkey ca_key, rogue_key, alice_key, mallory_key;
  UniqueX509 ca, rogue, alice, mallory;

  static const ClientPki& Get() {
    static const ClientPki pki = [] {
      ClientPki p;
      p.ca_key = MakeEcKey();
      p.ca = MakeCert({.cn = "client CA", .ca = true}, p.ca_key.get());
      p.rogue_key = MakeEcKey();
      p.rogue = MakeCert({.cn = "rogue CA", .ca = true}, p.rogue_key.get());
      p.alice_key = MakeEcKey();
      p.alice = MakeCert({.cn = "alice",
                          .san = "DNS:alice.test,URI:spiffe://ktlb.test/alice,"
                                 "email:alice@ktlb.test,IP:10.0.0.1"},
                         p.alice_key.get(), p.ca.get(), p.ca_key.get());
      p.mallory_key = MakeEcKey();
      p.mallory = MakeCert({.cn = "mallory"}, p.mallory_key.get(), p.rogue.get(),
                           p.rogue_key.get());
      return p;
    }();
    return pki;
  }
};

class TlsClientAuthTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    config_.certificates = testing::WriteStandardCerts(dir_);
    ca_path_ = dir_.Write("clients-ca.crt", testing::CertPem(ClientPki::Get().ca.get()));
    rogue_path_ = dir_.Write("rogue-ca.crt", testing::CertPem(ClientPki::Get().rogue.get()));
  }

  ClientAuthConfig Auth(const std::string& ca, ClientAuthMode mode) const {
    ClientAuthConfig c;
    c.enabled = true;
    c.mode = mode;
    c.ca_path = ca;
    c.key = "listeners[0].client_auth";
    return c;
  }

  // site + other, `other` with its own client_auth when `other_auth` is set.
  std::unique_ptr<ServerTlsContext> Server(const ClientAuthConfig& listener_auth,
                                           const ClientAuthConfig& other_auth = {}) {
    config_.certificates[1].client_auth = other_auth;
    absl::StatusOr<std::vector<CertificatePtr>> certs = LoadCertificates(config_);
    EXPECT_TRUE(certs.ok()) << certs.status();
    absl::StatusOr<ClientAuthPtr> auth = LoadClientAuth(listener_auth, "");
    EXPECT_TRUE(auth.ok()) << auth.status();
    if (!certs.ok() || !auth.ok()) return nullptr;
    absl::StatusOr<std::unique_ptr<ServerTlsContext>> ctx = ServerTlsContext::Create(
        MakeListener({"site", "other"}), {(*certs)[0], (*certs)[1]}, keys_, *auth);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return ctx.ok() ? *std::move(ctx) : nullptr;
  }

  UniqueSslCtx Client(X509* cert = nullptr, EVP_PKEY* key = nullptr) const {
    UniqueSslCtx ctx = MakeClientCtx(GetParam(), GetParam());
    if (cert != nullptr) {
      EXPECT_EQ(SSL_CTX_use_certificate(ctx.get(), cert), 1);
      EXPECT_EQ(SSL_CTX_use_PrivateKey(ctx.get(), key), 1);
    }
    return ctx;
  }

  // Runs one handshake with SNI `sni` (kept in h_ until the next one).
  Handshake* Run(const ServerTlsContext& server, SSL_CTX* client, const char* sni) {
    h_ = std::make_unique<Handshake>(server, client);
    SetSni(h_->client.ssl.get(), sni);
    h_->Run();
    return h_.get();
  }

  testing::TempDir dir_;
  Config config_;
  std::string ca_path_, rogue_path_;
  TicketKeys keys_ = TicketKeys::Generate();
  std::unique_ptr<Handshake> h_;
};

TEST_P(TlsClientAuthTest, RequireVerifiesAndCopiesTheIdentity) {
  const ClientPki& pki = ClientPki::Get();
  auto server = Server(Auth(ca_path_, ClientAuthMode::kRequire));
  ASSERT_NE(server, nullptr);

  UniqueSslCtx alice = Client(pki.alice.get(), pki.alice_key.get());
  Handshake* h = Run(*server, alice.get(), "site.example.test");
  ASSERT_TRUE(h->Succeeded()) << h->client.reason << " / " << h->server.reason;
  HandshakeInfo info;
  CopyPeerIdentity(h->server.ssl.get(), &info);
  EXPECT_TRUE(info.peer_verified);
  EXPECT_EQ(info.peer_subject, "CN=alice");
  EXPECT_EQ(info.peer_san,
            "DNS:alice.test,URI:spiffe://ktlb.test/alice,email:alice@ktlb.test,IP:10.0.0.1");
  ASSERT_EQ(info.peer_fingerprint.size(), 64u);
  EXPECT_EQ(info.peer_fingerprint.find_first_not_of("0123456789abcdef"), std::string::npos);

  UniqueSslCtx none = Client();
  h = Run(*server, none.get(), "site.example.test");
  EXPECT_FALSE(h->Succeeded());
  EXPECT_EQ(HandshakeFailureLabel(h->server.failure), std::string("client_cert_missing"))
      << h->server.reason;

  UniqueSslCtx mallory = Client(pki.mallory.get(), pki.mallory_key.get());
  h = Run(*server, mallory.get(), "site.example.test");
  EXPECT_FALSE(h->Succeeded());
  EXPECT_EQ(HandshakeFailureLabel(h->server.failure), std::string("client_cert_rejected"))
      << h->server.reason;
}

TEST_P(TlsClientAuthTest, OptionalLetsClientsWithoutCertificateIn) {
  auto server = Server(Auth(ca_path_, ClientAuthMode::kOptional));
  ASSERT_NE(server, nullptr);
  UniqueSslCtx none = Client();
  Handshake* h = Run(*server, none.get(), "site.example.test");
  ASSERT_TRUE(h->Succeeded()) << h->server.reason;
  HandshakeInfo info;
  info.peer_subject = "stale";
  CopyPeerIdentity(h->server.ssl.get(), &info);
  EXPECT_FALSE(info.peer_verified);
  EXPECT_EQ(info.peer_subject, "");
  EXPECT_EQ(info.peer_fingerprint, "");
}

TEST_P(TlsClientAuthTest, CertificatePolicyChosenBySniOverridesTheListener) {
  const ClientPki& pki = ClientPki::Get();
  // Listener: optional against the client CA; "other": require the rogue CA.
  auto server = Server(Auth(ca_path_, ClientAuthMode::kOptional),
                       Auth(rogue_path_, ClientAuthMode::kRequire));
  ASSERT_NE(server, nullptr);
  UniqueSslCtx none = Client();
  UniqueSslCtx alice = Client(pki.alice.get(), pki.alice_key.get());
  UniqueSslCtx mallory = Client(pki.mallory.get(), pki.mallory_key.get());

  EXPECT_TRUE(Run(*server, none.get(), "site.example.test")->Succeeded());
  EXPECT_TRUE(Run(*server, alice.get(), "site.example.test")->Succeeded());
  EXPECT_EQ(Run(*server, mallory.get(), "site.example.test")->server.failure,
            HandshakeFailure::kClientCertRejected);

  EXPECT_EQ(Run(*server, none.get(), "other.example.test")->server.failure,
            HandshakeFailure::kClientCertMissing);
  EXPECT_EQ(Run(*server, alice.get(), "other.example.test")->server.failure,
            HandshakeFailure::kClientCertRejected);
  Handshake* h = Run(*server, mallory.get(), "other.example.test");
  ASSERT_TRUE(h->Succeeded()) << h->server.reason;
  HandshakeInfo info;
  CopyPeerIdentity(h->server.ssl.get(), &info);
  EXPECT_EQ(info.peer_subject, "CN=mallory");
  EXPECT_EQ(info.peer_san, "");
}

INSTANTIATE_TEST_SUITE_P(Versions, TlsClientAuthTest,
                         ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == TLS1_2_VERSION ? "Tls12" : "Tls13";
                         });

TEST(LoadClientAuth, DisabledIsNull) {
  absl::StatusOr<ClientAuthPtr> auth = LoadClientAuth(ClientAuthConfig{}, "/etc/ktlb.toml");
  ASSERT_TRUE(auth.ok());
  EXPECT_EQ(*auth, nullptr);
}

TEST(LoadClientAuth, ErrorsNameTheConfigLineAndKey) {
  testing::TempDir dir;
  ClientAuthConfig c;
  c.enabled = true;
  c.key = "certificates[2].client_auth";
  c.ca_path = dir.Write("not-a-ca.pem", "hello\n");
  c.ca_line = 7;
  absl::StatusOr<ClientAuthPtr> auth = LoadClientAuth(c, "/etc/ktlb.toml");
  ASSERT_FALSE(auth.ok());
  EXPECT_EQ(auth.status().message(), "/etc/ktlb.toml:7: certificates[2].client_auth.ca: no PEM "
                                     "certificate in " + c.ca_path);
  c.ca_path = dir.Write("ca.pem", testing::CertPem(ClientPki::Get().ca.get()));
  c.crl_path = c.ca_path;
  c.crl_line = 8;
  auth = LoadClientAuth(c, "/etc/ktlb.toml");
  ASSERT_FALSE(auth.ok());
  EXPECT_EQ(auth.status().message(), "/etc/ktlb.toml:8: certificates[2].client_auth.crl: no PEM "
                                     "CRL in " + c.ca_path);
}

TEST(HandshakeFailure, ClientCertLabels) {
  EXPECT_STREQ(HandshakeFailureLabel(HandshakeFailure::kClientCertMissing), "client_cert_missing");
  EXPECT_STREQ(HandshakeFailureLabel(HandshakeFailure::kClientCertRejected),
               "client_cert_rejected");
}

}  // namespace
}  // namespace ktlb::tls
