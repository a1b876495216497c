// Full in-memory handshakes: a plain OpenSSL client against ServerTlsContext,
// both on ktlb's buffer BIO, bytes shuttled by the test.
#include <memory>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ktlb/tls.h"
#include "tls_test_util.h"

namespace ktlb::tls {
namespace {

using testing::Dup;
using testing::Handshake;
using testing::MakeClientCtx;
using testing::MakeListener;
using testing::Pki;
using testing::SetAlpn;
using testing::SetSni;

std::string Label(HandshakeFailure f) { return HandshakeFailureLabel(f); }

// Loads site (RSA, *.site.example.test), other (ECDSA, *.wild.example.test)
// and legacy (CN only) once per test.
class TlsHandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Config config;
    config.certificates = testing::WriteStandardCerts(dir_);
    absl::StatusOr<std::vector<CertificatePtr>> loaded = LoadCertificates(config);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    site_ = (*loaded)[0];
    other_ = (*loaded)[1];
    legacy_ = (*loaded)[2];
  }

  std::unique_ptr<ServerTlsContext> Server(const ListenerConfig& listener,
                                           const std::vector<CertificatePtr>& certs) {
    absl::StatusOr<std::unique_ptr<ServerTlsContext>> ctx =
        ServerTlsContext::Create(listener, certs, keys_);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return ctx.ok() ? *std::move(ctx) : nullptr;
  }

  testing::TempDir dir_;
  TicketKeys keys_ = TicketKeys::Generate();
  CertificatePtr site_, other_, legacy_;
};

X509* PeerLeaf(const Handshake& h) { return SSL_get0_peer_certificate(h.client.ssl.get()); }

// ---- certificate selection -------------------------------------------------

class SniSelectionTest : public TlsHandshakeTest, public ::testing::WithParamInterface<int> {};

TEST_P(SniSelectionTest, SniPicksTheCertificateThatNamesIt) {
  auto server = Server(MakeListener({"site", "other"}), {site_, other_});
  UniqueSslCtx client_ctx = MakeClientCtx(GetParam(), GetParam());
  const Pki& pki = Pki::Get();
  struct Case {
    const char* sni;
    X509* want;
  } cases[] = {
      {"site.example.test", pki.site.get()},  {"other.example.test", pki.other.get()},
      {"api.site.example.test", pki.site.get()}, {"x.wild.example.test", pki.other.get()},
      {"OTHER.Example.Test.", pki.other.get()},  // case and root dot
  };
  for (const Case& c : cases) {
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), c.sni);
    h.Run();
    ASSERT_TRUE(h.Succeeded()) << c.sni << ": " << h.client.reason << " / " << h.server.reason;
    EXPECT_EQ(X509_cmp(PeerLeaf(h), c.want), 0) << c.sni;
    EXPECT_EQ(SSL_version(h.server.ssl.get()), GetParam());
    EXPECT_EQ(ServerName(h.server.ssl.get()), c.sni);
  }
}

INSTANTIATE_TEST_SUITE_P(Versions, SniSelectionTest,
                         ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == TLS1_2_VERSION ? "Tls12" : "Tls13";
                         });

TEST_F(TlsHandshakeTest, ChainVerifiesWithOnlyTheRootTrusted) {
  // The client knows the root alone: verification succeeds only if the
  // server sends the intermediate from the certificate file.
  auto server = Server(MakeListener({"site", "other"}), {site_, other_});
  UniqueSslCtx client_ctx = MakeClientCtx();
  ASSERT_EQ(X509_STORE_add_cert(SSL_CTX_get_cert_store(client_ctx.get()), Pki::Get().root.get()),
            1);
  SSL_CTX_set_verify(client_ctx.get(), SSL_VERIFY_PEER, nullptr);
  for (const char* host : {"www.site.example.test", "other.example.test"}) {
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), host);
    ASSERT_EQ(SSL_set1_host(h.client.ssl.get(), host), 1);
    h.Run();
    ASSERT_TRUE(h.Succeeded()) << host << ": " << h.client.reason;
    EXPECT_EQ(SSL_get_verify_result(h.client.ssl.get()), X509_V_OK);
    EXPECT_EQ(sk_X509_num(SSL_get_peer_cert_chain(h.client.ssl.get())), 2);
  }
}

TEST_F(TlsHandshakeTest, UnknownSniWithDefaultServesTheFirstListedCertificate) {
  const Pki& pki = Pki::Get();
  auto site_first = Server(MakeListener({"site", "other"}), {site_, other_});
  auto other_first = Server(MakeListener({"other", "site"}), {other_, site_});
  UniqueSslCtx client_ctx = MakeClientCtx();
  for (const char* sni : {"nope.example.test", "a.b.wild.example.test", ""}) {
    Handshake a(*site_first, client_ctx.get());
    if (*sni != '\0') SetSni(a.client.ssl.get(), sni);
    a.Run();
    ASSERT_TRUE(a.Succeeded()) << sni;
    EXPECT_EQ(X509_cmp(PeerLeaf(a), pki.site.get()), 0) << sni;

    Handshake b(*other_first, client_ctx.get());
    if (*sni != '\0') SetSni(b.client.ssl.get(), sni);
    b.Run();
    ASSERT_TRUE(b.Succeeded()) << sni;
    EXPECT_EQ(X509_cmp(PeerLeaf(b), pki.other.get()), 0) << sni;
  }
}

TEST_F(TlsHandshakeTest, UnknownSniWithRejectFailsWithUnrecognizedName) {
  auto server = Server(MakeListener({"site", "other"}, UnknownSniPolicy::kReject), {site_, other_});
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    UniqueSslCtx client_ctx = MakeClientCtx(version, version);
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), "nope.example.test");
    h.Run();
    EXPECT_TRUE(h.server.failed);
    EXPECT_EQ(Label(h.server.failure), "unknown_sni");
    EXPECT_TRUE(h.client.failed);
    EXPECT_EQ(h.client.reason, "tlsv1 unrecognized name");  // the alert reached the client
    EXPECT_EQ(ERR_peek_error(), 0u);
  }
}

TEST_F(TlsHandshakeTest, NoSniWithRejectFails) {
  auto server = Server(MakeListener({"site"}, UnknownSniPolicy::kReject), {site_});
  UniqueSslCtx client_ctx = MakeClientCtx();
  Handshake h(*server, client_ctx.get());
  h.Run();
  EXPECT_TRUE(h.server.failed);
  EXPECT_EQ(Label(h.server.failure), "unknown_sni");
  EXPECT_EQ(ServerName(h.server.ssl.get()), "");
}

TEST_F(TlsHandshakeTest, KnownSniWithRejectSucceeds) {
  auto server = Server(MakeListener({"site", "other"}, UnknownSniPolicy::kReject), {site_, other_});
  UniqueSslCtx client_ctx = MakeClientCtx();
  Handshake h(*server, client_ctx.get());
  SetSni(h.client.ssl.get(), "other.example.test");
  h.Run();
  ASSERT_TRUE(h.Succeeded());
  EXPECT_EQ(X509_cmp(PeerLeaf(h), Pki::Get().other.get()), 0);
}

TEST_F(TlsHandshakeTest, CnOnlyCertificateIsSelectableByItsCn) {
  auto server = Server(MakeListener({"site", "legacy"}), {site_, legacy_});
  UniqueSslCtx client_ctx = MakeClientCtx();
  Handshake h(*server, client_ctx.get());
  SetSni(h.client.ssl.get(), "legacy.example.test");
  h.Run();
  ASSERT_TRUE(h.Succeeded());
  EXPECT_EQ(X509_cmp(PeerLeaf(h), Pki::Get().legacy.get()), 0);
}

TEST_F(TlsHandshakeTest, FirstListedCertificateWinsASharedName) {
  auto with_names = [](const LoadedCertificate& from, std::vector<std::string> names) {
    auto c = std::make_shared<LoadedCertificate>();
    c->name = from.name;
    c->leaf = Dup(from.leaf.get());
    for (const UniqueX509& x : from.chain) c->chain.push_back(Dup(x.get()));
    EVP_PKEY_up_ref(from.key.get());
    c->key.reset(from.key.get());
    c->dns_names = std::move(names);
    return CertificatePtr(std::move(c));
  };
  CertificatePtr a = with_names(*site_, {"shared.example.test"});
  CertificatePtr b = with_names(*other_, {"*.example.test", "shared.example.test"});
  const Pki& pki = Pki::Get();
  UniqueSslCtx client_ctx = MakeClientCtx();
  struct Case {
    std::vector<CertificatePtr> order;
    const char* sni;
    X509* want;
  } cases[] = {
      {{a, b}, "shared.example.test", pki.site.get()},
      {{b, a}, "shared.example.test", pki.other.get()},
      {{a, b}, "else.example.test", pki.other.get()},  // wildcard of the second
  };
  for (const Case& c : cases) {
    auto server = Server(MakeListener({c.order[0]->name, c.order[1]->name}), c.order);
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), c.sni);
    h.Run();
    ASSERT_TRUE(h.Succeeded());
    EXPECT_EQ(X509_cmp(PeerLeaf(h), c.want), 0) << c.sni;
  }
}

// ---- ALPN --------------------------------------------------------------------

struct AlpnCase {
  std::vector<std::string> listener;
  std::vector<std::string> client;
  std::string want;  // "" = no ALPN negotiated
};

class AlpnTest : public TlsHandshakeTest, public ::testing::WithParamInterface<AlpnCase> {};

TEST_P(AlpnTest, SelectsOnlyWhatTheServerSpeaks) {
  ListenerConfig listener = MakeListener({"site", "other"});
  listener.alpn = GetParam().listener;
  auto server = Server(listener, {site_, other_});
  UniqueSslCtx client_ctx = MakeClientCtx();
  // Both the initial context and one switched to by SNI must answer ALPN.
  for (const char* sni : {"site.example.test", "other.example.test"}) {
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), sni);
    if (!GetParam().client.empty()) SetAlpn(h.client.ssl.get(), GetParam().client);
    h.Run();
    ASSERT_TRUE(h.Succeeded()) << sni << ": " << h.client.reason << " / " << h.server.reason;
    const unsigned char* proto = nullptr;
    unsigned int len = 0;
    SSL_get0_alpn_selected(h.server.ssl.get(), &proto, &len);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(proto), len), GetParam().want) << sni;
    SSL_get0_alpn_selected(h.client.ssl.get(), &proto, &len);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(proto), len), GetParam().want) << sni;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AlpnTest,
    ::testing::Values(
        // The listener's order of preference wins, whatever the client's.
        AlpnCase{{"h2", "http/1.1"}, {"h2", "http/1.1"}, "h2"},
        AlpnCase{{"h2", "http/1.1"}, {"http/1.1", "h2"}, "h2"},
        AlpnCase{{"http/1.1", "h2"}, {"h2", "http/1.1"}, "http/1.1"},
        AlpnCase{{"http/1.1"}, {"spdy/3", "http/1.1"}, "http/1.1"},
        AlpnCase{{"h2", "http/1.1"}, {"h2"}, "h2"},
        // A protocol the server cannot speak is never chosen.
        AlpnCase{{"spdy/3", "http/1.1"}, {"spdy/3", "http/1.1"}, "http/1.1"},
        // Offered, nothing acceptable: carry on without ALPN.
        AlpnCase{{"h2", "http/1.1"}, {"acme-tls/1"}, ""},
        AlpnCase{{"h2"}, {"http/1.1"}, ""},
        AlpnCase{{}, {"http/1.1"}, ""},
        // Not offered at all.
        AlpnCase{{"h2", "http/1.1"}, {}, ""}));

// ---- failures and their names -------------------------------------------------

TEST_F(TlsHandshakeTest, OldProtocolVersionsAreNamed) {
  auto server = Server(MakeListener({"site"}), {site_});
  for (int version : {TLS1_VERSION, TLS1_1_VERSION}) {
    UniqueSslCtx client_ctx = MakeClientCtx(version, version);
    // OpenSSL 3 refuses TLS < 1.2 above security level 0, even as a client.
    SSL_CTX_set_security_level(client_ctx.get(), 0);
    ASSERT_EQ(SSL_CTX_set_cipher_list(client_ctx.get(), "DEFAULT:@SECLEVEL=0"), 1);
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), "site.example.test");
    h.Run();
    ASSERT_TRUE(h.server.failed) << version;
    EXPECT_EQ(Label(h.server.failure), "protocol_version") << h.server.reason;
  }
}

TEST_F(TlsHandshakeTest, CbcOnlyTls12ClientHasNoSharedCipher) {
  auto server = Server(MakeListener({"site", "other"}), {site_, other_});
  UniqueSslCtx client_ctx = MakeClientCtx(TLS1_2_VERSION, TLS1_2_VERSION);
  ASSERT_EQ(SSL_CTX_set_cipher_list(client_ctx.get(),
                                    "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:"
                                    "ECDHE-RSA-AES256-SHA384:AES128-SHA256:AES128-SHA"),
            1);
  for (const char* sni : {"site.example.test", "other.example.test"}) {
    Handshake h(*server, client_ctx.get());
    SetSni(h.client.ssl.get(), sni);
    h.Run();
    ASSERT_TRUE(h.server.failed) << sni;
    EXPECT_EQ(Label(h.server.failure), "no_shared_cipher") << h.server.reason;
  }
}

// Feeds raw bytes to a fresh server SSL and classifies its failure.
HandshakeFailure FailureFor(const ServerTlsContext& server, std::string bytes, bool eof) {
  std::string out;
  BioIo io{.in = bytes, .in_eof = eof, .out = &out};
  UniqueSsl ssl = server.NewSsl(NewBufferBio(&io));
  int rc = SSL_do_handshake(ssl.get());
  EXPECT_NE(rc, 1);
  HandshakeFailure f = ClassifyHandshakeFailure(ssl.get(), SSL_get_error(ssl.get(), rc));
  EXPECT_EQ(ERR_peek_error(), 0u) << "Classify must empty the error queue";
  return f;
}

TEST_F(TlsHandshakeTest, PlainHttpOnTheTlsPort) {
  auto server = Server(MakeListener({"site"}), {site_});
  for (const char* request : {"GET / HTTP/1.1\r\n\r\n", "POST /x HTTP/1.1\r\n\r\n",
                              "HEAD / HTTP/1.0\r\n\r\n", "CONNECT a.test:443 HTTP/1.1\r\n\r\n"}) {
    EXPECT_EQ(Label(FailureFor(*server, request, false)), "plain_http") << request;
  }
}

TEST_F(TlsHandshakeTest, MalformedBytesAreBadRecords) {
  auto server = Server(MakeListener({"site"}), {site_});
  // Not a TLS record header at all.
  EXPECT_EQ(Label(FailureFor(*server, std::string(16, '\0'), false)), "bad_record");
  EXPECT_EQ(Label(FailureFor(*server, "SSH-2.0-OpenSSH_9.2\r\n", false)), "bad_record");
  // A handshake record longer than any record may be.
  EXPECT_EQ(Label(FailureFor(*server, std::string("\x16\x03\x01\xff\xff", 5) + "xxxx", false)),
            "bad_record");
  // A well-framed record holding a truncated ClientHello.
  EXPECT_EQ(Label(FailureFor(*server, std::string("\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", 10),
                             false)),
            "bad_record");
}

TEST_F(TlsHandshakeTest, EofMidHandshakeIsClientReset) {
  auto server = Server(MakeListener({"site"}), {site_});
  EXPECT_EQ(Label(FailureFor(*server, "", true)), "client_reset");
  // Half a record header, then the peer is gone.
  EXPECT_EQ(Label(FailureFor(*server, std::string("\x16\x03\x01", 3), true)), "client_reset");

  // Half of a real ClientHello.
  UniqueSslCtx client_ctx = MakeClientCtx();
  Handshake h(*server, client_ctx.get());
  SetSni(h.client.ssl.get(), "site.example.test");
  h.client.WithIo([&] { return SSL_do_handshake(h.client.ssl.get()); });
  ERR_clear_error();
  std::string hello = h.client.outbox;
  ASSERT_GT(hello.size(), 100u);
  EXPECT_EQ(Label(FailureFor(*server, hello.substr(0, hello.size() / 2), true)), "client_reset");
}

TEST(HandshakeFailure, ClassifyWithEmptyQueue) {
  ERR_clear_error();
  EXPECT_EQ(Label(ClassifyHandshakeFailure(nullptr, SSL_ERROR_SYSCALL)), "client_reset");
  EXPECT_EQ(Label(ClassifyHandshakeFailure(nullptr, SSL_ERROR_ZERO_RETURN)), "client_reset");
  EXPECT_EQ(Label(ClassifyHandshakeFailure(nullptr, SSL_ERROR_SSL)), "other");
}

TEST(HandshakeFailure, FirstKnownReasonWinsAndQueueIsCleared) {
  ERR_clear_error();
  ERR_raise(ERR_LIB_EVP, 1);  // noise from a lower layer
  ERR_raise(ERR_LIB_SSL, SSL_R_NO_SHARED_CIPHER);
  ERR_raise(ERR_LIB_SSL, SSL_R_WRONG_VERSION_NUMBER);
  EXPECT_EQ(Label(ClassifyHandshakeFailure(nullptr, SSL_ERROR_SSL)), "no_shared_cipher");
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(HandshakeFailure, ReasonCodesFromOtherLibrariesAreNotSslReasons) {
  ERR_clear_error();
  ERR_raise(ERR_LIB_X509, SSL_R_HTTP_REQUEST);  // same number, different library
  EXPECT_EQ(Label(ClassifyHandshakeFailure(nullptr, SSL_ERROR_SSL)), "other");
}

TEST(HandshakeFailure, Labels) {
  EXPECT_EQ(Label(HandshakeFailure::kUnknownSni), "unknown_sni");
  EXPECT_EQ(Label(HandshakeFailure::kNoSharedCipher), "no_shared_cipher");
  EXPECT_EQ(Label(HandshakeFailure::kProtocolVersion), "protocol_version");
  EXPECT_EQ(Label(HandshakeFailure::kPlainHttp), "plain_http");
  EXPECT_EQ(Label(HandshakeFailure::kTimeout), "timeout");
  EXPECT_EQ(Label(HandshakeFailure::kClientReset), "client_reset");
  EXPECT_EQ(Label(HandshakeFailure::kBadRecord), "bad_record");
  EXPECT_EQ(Label(HandshakeFailure::kOther), "other");
}

// ---- context settings ----------------------------------------------------------

TEST_F(TlsHandshakeTest, KtlsOptionFollowsTheListener) {
  for (KtlsMode mode : {KtlsMode::kOff, KtlsMode::kAuto, KtlsMode::kRequire}) {
    ListenerConfig listener = MakeListener({"site"});
    listener.ktls = mode;
    auto server = Server(listener, {site_});
    BioIo io;
    UniqueSsl ssl = server->NewSsl(NewBufferBio(&io));
    ASSERT_NE(ssl, nullptr);
    EXPECT_EQ((SSL_get_options(ssl.get()) & SSL_OP_ENABLE_KTLS) != 0, mode != KtlsMode::kOff);
  }
}

TEST_F(TlsHandshakeTest, NewSslIsAServerWithTheAgreedSettings) {
  auto server = Server(MakeListener({"site"}), {site_});
  BioIo io;
  UniqueSsl ssl = server->NewSsl(NewBufferBio(&io));
  ASSERT_NE(ssl, nullptr);
  EXPECT_TRUE(SSL_is_server(ssl.get()));
  EXPECT_EQ(SSL_get_min_proto_version(ssl.get()), TLS1_2_VERSION);
  EXPECT_EQ(SSL_get_max_proto_version(ssl.get()), TLS1_3_VERSION);
  uint64_t opts = SSL_get_options(ssl.get());
  EXPECT_NE(opts & SSL_OP_NO_COMPRESSION, 0u);
  EXPECT_NE(opts & SSL_OP_NO_RENEGOTIATION, 0u);
  EXPECT_NE(opts & SSL_OP_CIPHER_SERVER_PREFERENCE, 0u);
  EXPECT_EQ(opts & SSL_OP_NO_TICKET, 0u);
  long mode = SSL_get_mode(ssl.get());
  EXPECT_NE(mode & SSL_MODE_RELEASE_BUFFERS, 0);
  EXPECT_NE(mode & SSL_MODE_ENABLE_PARTIAL_WRITE, 0);
  EXPECT_NE(mode & SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, 0);
  EXPECT_EQ(SSL_CTX_get_session_cache_mode(SSL_get_SSL_CTX(ssl.get())), SSL_SESS_CACHE_OFF);
  // TLS 1.2 suites: ECDHE + AEAD only.
  STACK_OF(SSL_CIPHER)* ciphers = SSL_get_ciphers(ssl.get());
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
    if (SSL_CIPHER_get_kx_nid(c) == NID_kx_any) continue;  // a TLS 1.3 suite
    EXPECT_TRUE(SSL_CIPHER_is_aead(c)) << SSL_CIPHER_get_name(c);
    EXPECT_EQ(SSL_CIPHER_get_kx_nid(c), NID_kx_ecdhe) << SSL_CIPHER_get_name(c);
  }
}

TEST_F(TlsHandshakeTest, CreateNeedsACertificate) {
  absl::StatusOr<std::unique_ptr<ServerTlsContext>> ctx =
      ServerTlsContext::Create(MakeListener({}), {}, keys_);
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(std::string(ctx.status().message()), "listener \"public\": no certificates");
}

}  // namespace
}  // namespace ktlb::tls
