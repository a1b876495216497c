// Session tickets: every worker builds its own ServerTlsContext from the same
// certificates and TicketKeys, so a session from one worker must resume on
// another. Two contexts in one process stand in for two workers.
#include <initializer_list>
#include <memory>
#include <optional>
#include <vector>

#include <openssl/ssl.h>

#include "gtest/gtest.h"
#include "ktlb/tls.h"
#include "tls_test_util.h"

namespace ktlb::tls {
namespace {

using testing::Handshake;
using testing::MakeClientCtx;
using testing::MakeListener;
using testing::SetSni;

using UniqueSession =
    std::unique_ptr<SSL_SESSION, OpenSslDeleter<SSL_SESSION, SSL_SESSION_free>>;

// Keys as a ticket_keys file would hold them.
TicketKeys FileKeys(std::initializer_list<TicketKey> keys) { return TicketKeys::FromFile(keys); }

class ResumptionTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    Config config;
    config.certificates = testing::WriteStandardCerts(dir_);
    absl::StatusOr<std::vector<CertificatePtr>> loaded = LoadCertificates(config);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    certs_ = {(*loaded)[0], (*loaded)[1]};
    client_ctx_ = MakeClientCtx(GetParam(), GetParam());
    // The client learns of tickets through the new-session callback, which
    // OpenSSL calls only with the client cache enabled.
    SSL_CTX_set_session_cache_mode(client_ctx_.get(),
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(client_ctx_.get(), [](SSL*, SSL_SESSION*) {
      ++tickets_seen_;
      return 0;  // we did not keep a reference
    });
    tickets_seen_ = 0;
  }

  std::unique_ptr<ServerTlsContext> Worker(const TicketKeys& keys) {
    absl::StatusOr<std::unique_ptr<ServerTlsContext>> ctx =
        ServerTlsContext::Create(MakeListener({"site", "other"}), certs_, keys);
    EXPECT_TRUE(ctx.ok()) << ctx.status();
    return ctx.ok() ? *std::move(ctx) : nullptr;
  }

  // A full handshake with `server`; returns the client's resumable session.
  UniqueSession FirstVisit(const ServerTlsContext& server, const char* sni) {
    Handshake h(server, client_ctx_.get());
    SetSni(h.client.ssl.get(), sni);
    h.Run();
    EXPECT_TRUE(h.Succeeded()) << h.client.reason << " / " << h.server.reason;
    EXPECT_FALSE(SSL_session_reused(h.client.ssl.get()));
    // TLS 1.3 tickets follow the handshake; the client reads them like data.
    EXPECT_EQ(h.ClientReadPending(), SSL_ERROR_WANT_READ);
    UniqueSession session(SSL_get1_session(h.client.ssl.get()));
    EXPECT_NE(session, nullptr);
    h.ShutdownClient();  // else freeing the SSL marks the session unresumable
    EXPECT_TRUE(session != nullptr && SSL_SESSION_is_resumable(session.get()));
    return session;
  }

  // Reconnects to `server` offering `session`; true if it was resumed.
  // `renewed`, when given, receives the ticket the server issued on the way.
  bool Revisit(const ServerTlsContext& server, SSL_SESSION* session, const char* sni,
               UniqueSession* renewed = nullptr,
               std::optional<TicketKeySource>* source = nullptr) {
    Handshake h(server, client_ctx_.get());
    SetSni(h.client.ssl.get(), sni);
    EXPECT_EQ(SSL_set_session(h.client.ssl.get(), session), 1);
    h.Run();
    EXPECT_TRUE(h.Succeeded()) << h.client.reason << " / " << h.server.reason;
    EXPECT_EQ(SSL_session_reused(h.client.ssl.get()), SSL_session_reused(h.server.ssl.get()));
    bool reused = SSL_session_reused(h.client.ssl.get()) == 1;
    if (source != nullptr) *source = ResumedTicketSource(h.server.ssl.get());
    if (renewed != nullptr) {
      h.ClientReadPending();  // TLS 1.3 tickets follow the handshake
      renewed->reset(SSL_get1_session(h.client.ssl.get()));
    }
    h.ShutdownClient();  // keeps `session` resumable for the next visit
    return reused;
  }

  static inline int tickets_seen_ = 0;
  testing::TempDir dir_;
  std::vector<CertificatePtr> certs_;
  UniqueSslCtx client_ctx_;
};

TEST_P(ResumptionTest, SessionFromOneWorkerResumesOnAnother) {
  TicketKeys keys = TicketKeys::Generate();
  auto worker_a = Worker(keys);
  auto worker_b = Worker(keys);
  // The second certificate: its context is switched to by SNI, while
  // tickets are sealed by the initial one. Both paths must agree.
  for (const char* sni : {"site.example.test", "other.example.test"}) {
    // Both directions, each with a fresh ticket: TLS 1.3 clients use a
    // ticket once.
    UniqueSession from_a = FirstVisit(*worker_a, sni);
    ASSERT_NE(from_a, nullptr);
    EXPECT_TRUE(Revisit(*worker_b, from_a.get(), sni)) << sni;
    UniqueSession from_b = FirstVisit(*worker_b, sni);
    ASSERT_NE(from_b, nullptr);
    EXPECT_TRUE(Revisit(*worker_a, from_b.get(), sni)) << sni;
  }
}

TEST_P(ResumptionTest, OtherTicketKeysMeanAFullHandshake) {
  // The control for the test above: resumption depends on the shared keys.
  auto worker_a = Worker(TicketKeys::Generate());
  auto stranger = Worker(TicketKeys::Generate());
  UniqueSession session = FirstVisit(*worker_a, "site.example.test");
  ASSERT_NE(session, nullptr);
  EXPECT_FALSE(Revisit(*stranger, session.get(), "site.example.test"));
}

TEST_P(ResumptionTest, TicketsIssuedPerHandshake) {
  auto worker = Worker(TicketKeys::Generate());
  UniqueSession session = FirstVisit(*worker, "site.example.test");
  // One ticket per handshake in both versions (SSL_CTX_set_num_tickets(1)).
  EXPECT_EQ(tickets_seen_, 1);
}

TEST_P(ResumptionTest, ProcessesSharingAFileResumeEachOther) {
  // Two contexts built from separately parsed copies of the same file stand
  // in for two hosts of a fleet.
  const TicketKey key = TicketKey::Random();
  auto host_a = Worker(FileKeys({key}));
  auto host_b = Worker(FileKeys({key}));
  UniqueSession session = FirstVisit(*host_a, "site.example.test");
  ASSERT_NE(session, nullptr);
  std::optional<TicketKeySource> source;
  EXPECT_TRUE(Revisit(*host_b, session.get(), "site.example.test", nullptr, &source));
  EXPECT_EQ(source, TicketKeySource::kFile);
}

TEST_P(ResumptionTest, ATicketUnderTheSecondKeyResumesAndIsReissuedUnderTheFirst) {
  const TicketKey old_key = TicketKey::Random();
  const TicketKey new_key = TicketKey::Random();
  auto before = Worker(FileKeys({old_key}));
  auto after = Worker(FileKeys({new_key, old_key}));  // the file after a key rotation
  auto only_new = Worker(FileKeys({new_key}));        // ... and once the old key is gone

  UniqueSession session = FirstVisit(*before, "site.example.test");
  ASSERT_NE(session, nullptr);
  EXPECT_FALSE(Revisit(*only_new, session.get(), "site.example.test"));
  UniqueSession renewed;
  EXPECT_TRUE(Revisit(*after, session.get(), "site.example.test", &renewed));
  ASSERT_NE(renewed, nullptr);
  // The fresh ticket is sealed under the first key: a host with only that
  // key resumes it.
  EXPECT_TRUE(Revisit(*only_new, renewed.get(), "site.example.test"));
}

TEST_P(ResumptionTest, InProcessKeysAreCountedAsLocal) {
  auto worker = Worker(TicketKeys::Generate());
  UniqueSession session = FirstVisit(*worker, "site.example.test");
  ASSERT_NE(session, nullptr);
  std::optional<TicketKeySource> source;
  EXPECT_TRUE(Revisit(*worker, session.get(), "site.example.test", nullptr, &source));
  EXPECT_EQ(source, TicketKeySource::kLocal);
}

INSTANTIATE_TEST_SUITE_P(Versions, ResumptionTest,
                         ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == TLS1_2_VERSION ? "Tls12" : "Tls13";
                         });

}  // namespace
}  // namespace ktlb::tls
