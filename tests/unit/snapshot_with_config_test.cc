// WithConfig (a DNS change, or host names resolved at startup) must carry
// every loaded part of the running snapshot into the new one.
#include "ktlb/snapshot.h"

#include <gtest/gtest.h>

#include <memory>

#include "ktlb/ticket_keys.h"

namespace ktlb {
namespace {

TEST(SnapshotWithConfig, KeepsUpstreamTlsAndClientAuth) {
  auto config = std::make_shared<Config>();
  UpstreamConfig plain;
  plain.name = "plain";
  UpstreamConfig secure;
  secure.name = "secure";
  secure.tls.enabled = true;  // no CA file: the system store
  config->upstreams = {plain, secure};
  auto ctx = tls::ClientTlsContext::Create(secure.tls, "");
  ASSERT_TRUE(ctx.ok()) << ctx.status();

  Snapshot running(config, {}, tls::TicketKeys::Generate());
  running.upstream_tls = {nullptr, *ctx};
  running.listener_client_auth = {nullptr};

  auto next_config = std::make_shared<Config>(*config);
  std::shared_ptr<const Snapshot> next = WithConfig(running, next_config);
  EXPECT_EQ(next->config, next_config);
  ASSERT_EQ(next->upstream_tls.size(), 2u);
  EXPECT_EQ(next->upstream_tls[0], nullptr);
  EXPECT_EQ(next->upstream_tls[1], *ctx);
  EXPECT_EQ(next->listener_client_auth.size(), 1u);
}

}  // namespace
}  // namespace ktlb
