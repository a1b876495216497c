// [[upstreams]] health, eject and slow_start_ms: defaults, values landing in
// the structs, and a "FILE:LINE: key: problem" for every kind of mistake.

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "gtest/gtest.h"
#include "ktlb/config.h"

namespace ktlb {
namespace {

namespace fs = std::filesystem;

// The [[upstreams]] table starts at line 15; `extra` begins at line 18.
std::string WithUpstreamLines(std::string_view extra) {
  return std::string(R"([[listeners]]
name = "public"
listen = "127.0.0.1:8443"
certificates = ["site"]

[[certificates]]
name = "site"
cert = "site.crt"
key = "site.key"

[[routes]]
listener = "public"
upstream = "app"

[[upstreams]]
name = "app"
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
)") + std::string(extra);
}

class UpstreamHealthConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ktlb_health_cfg.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (const char* f : {"site.crt", "site.key"}) std::ofstream(dir_ / f) << "x\n";
    path_ = (dir_ / "ktlb.toml").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  absl::StatusOr<std::shared_ptr<const Config>> Load(std::string_view extra) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << WithUpstreamLines(extra);
    return LoadConfigFile(path_);
  }
  std::string Error(std::string_view extra) {
    auto config = Load(extra);
    EXPECT_FALSE(config.ok()) << "unexpectedly valid:\n" << extra;
    return config.ok() ? "" : std::string(config.status().message());
  }
  std::string At(int line) const { return path_ + ":" + std::to_string(line) + ": "; }

  fs::path dir_;
  std::string path_;
};

TEST_F(UpstreamHealthConfigTest, DefaultsArePassiveOnly) {
  auto loaded = Load("");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const UpstreamConfig& u = (*loaded)->upstreams[0];
  EXPECT_FALSE(u.health.enabled);
  EXPECT_EQ(u.eject.consecutive_failures, 5u);
  EXPECT_EQ(u.eject.base_ms, 10'000u);
  EXPECT_EQ(u.eject.max_ms, 300'000u);
  EXPECT_EQ(u.slow_start_ms, 0u);
}

TEST_F(UpstreamHealthConfigTest, HttpAndTcpChecks) {
  auto loaded = Load(
      "health = { path = \"/ready\", interval_ms = 500, timeout_ms = 200, rise = 1, fall = 2 }\n"
      "eject = { consecutive_failures = 3, base_ms = 1000, max_ms = 8000 }\n"
      "slow_start_ms = 5000\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const UpstreamConfig& u = (*loaded)->upstreams[0];
  EXPECT_TRUE(u.health.enabled);
  EXPECT_EQ(u.health.type, HealthCheckType::kHttp);
  EXPECT_EQ(u.health.path, "/ready");
  EXPECT_EQ(u.health.interval_ms, 500u);
  EXPECT_EQ(u.health.timeout_ms, 200u);
  EXPECT_EQ(u.health.rise, 1u);
  EXPECT_EQ(u.health.fall, 2u);
  EXPECT_EQ(u.eject.consecutive_failures, 3u);
  EXPECT_EQ(u.eject.base_ms, 1000u);
  EXPECT_EQ(u.eject.max_ms, 8000u);
  EXPECT_EQ(u.slow_start_ms, 5000u);

  loaded = Load("health = { type = \"tcp\" }\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const HealthCheckConfig& h = (*loaded)->upstreams[0].health;
  EXPECT_EQ(h.type, HealthCheckType::kTcp);
  EXPECT_EQ(h.interval_ms, 2000u);
  EXPECT_EQ(h.timeout_ms, 1000u);
  EXPECT_EQ(h.rise, 2u);
  EXPECT_EQ(h.fall, 3u);

  loaded = Load("eject = { consecutive_failures = 0 }\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->upstreams[0].eject.consecutive_failures, 0u);
}

TEST_F(UpstreamHealthConfigTest, Mistakes) {
  EXPECT_EQ(Error("health = \"/healthz\"\n"),
            At(18) + "upstreams[0].health: expected a table ([health]), got a string");
  EXPECT_EQ(Error("health = { path = \"/h\", intervall_ms = 5 }\n"),
            At(18) + "upstreams[0].health.intervall_ms: unknown key");
  EXPECT_EQ(Error("health = { type = \"udp\" }\n"),
            At(18) + "upstreams[0].health.type: must be \"http\" or \"tcp\"");
  EXPECT_EQ(Error("health = { type = \"tcp\", path = \"/h\" }\n"),
            At(18) + "upstreams[0].health.path: only used with type = \"http\"");
  EXPECT_EQ(Error("health = { path = \"healthz\" }\n"),
            At(18) + "upstreams[0].health.path: must start with \"/\" and hold no spaces or "
                     "control characters");
  EXPECT_EQ(Error("health = { path = \"/a b\" }\n"),
            At(18) + "upstreams[0].health.path: must start with \"/\" and hold no spaces or "
                     "control characters");
  EXPECT_EQ(Error("health = { interval_ms = 0 }\n"),
            At(18) + "upstreams[0].health.interval_ms: must be between 10 and 86400000");
  EXPECT_EQ(Error("health = { rise = 0 }\n"),
            At(18) + "upstreams[0].health.rise: must be between 1 and 1000");
  EXPECT_EQ(Error("health = { fall = -1 }\n"),
            At(18) + "upstreams[0].health.fall: must be between 1 and 1000");
  // As a table of its own (inline tables are one line): the line of timeout_ms.
  EXPECT_EQ(Error("[upstreams.health]\ninterval_ms = 500\ntimeout_ms = 600\n"),
            At(20) + "upstreams[0].health.timeout_ms: must not exceed interval_ms (500)");
  EXPECT_EQ(Error("eject = { consecutive_failures = \"5\" }\n"),
            At(18) + "upstreams[0].eject.consecutive_failures: expected an integer, got a string");
  EXPECT_EQ(Error("eject = { base_ms = 0 }\n"),
            At(18) + "upstreams[0].eject.base_ms: must be between 1 and 86400000");
  EXPECT_EQ(Error("eject = { base_ms = 5000, max_ms = 1000 }\n"),
            At(18) + "upstreams[0].eject.max_ms: max_ms (1000) must be at least base_ms (5000)");
  EXPECT_EQ(Error("eject = { base_ms = 400000 }\n"),
            At(18) + "upstreams[0].eject.base_ms: max_ms (300000) must be at least base_ms "
                     "(400000)");
  EXPECT_EQ(Error("eject = { failures = 5 }\n"), At(18) + "upstreams[0].eject.failures: unknown key");
  EXPECT_EQ(Error("slow_start_ms = -5\n"),
            At(18) + "upstreams[0].slow_start_ms: must be between 0 and 86400000");
}

}  // namespace
// max_conns_per_server, queue_timeout_ms and retry_budget (issue 9, limits).
TEST_F(UpstreamHealthConfigTest, LimitsDefaultsAndValues) {
  auto loaded = Load("");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->upstreams[0].max_conns_per_server, 0u);
  EXPECT_EQ((*loaded)->upstreams[0].queue_timeout_ms, 1000u);
  EXPECT_DOUBLE_EQ((*loaded)->upstreams[0].retry_budget, 0.2);

  loaded = Load("max_conns_per_server = 2\nqueue_timeout_ms = 100\nretry_budget = 0.5\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const UpstreamConfig& u = (*loaded)->upstreams[0];
  EXPECT_EQ(u.max_conns_per_server, 2u);
  EXPECT_EQ(u.queue_timeout_ms, 100u);
  EXPECT_DOUBLE_EQ(u.retry_budget, 0.5);

  loaded = Load("retry_budget = 1\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_DOUBLE_EQ((*loaded)->upstreams[0].retry_budget, 1.0);
  loaded = Load("retry_budget = 0\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_DOUBLE_EQ((*loaded)->upstreams[0].retry_budget, 0.0);
}

TEST_F(UpstreamHealthConfigTest, LimitsMistakes) {
  EXPECT_EQ(Error("max_conns_per_server = -1\n"),
            At(18) + "upstreams[0].max_conns_per_server: must be between 0 and 1000000");
  EXPECT_EQ(Error("max_conns_per_server = \"2\"\n"),
            At(18) + "upstreams[0].max_conns_per_server: expected an integer, got a string");
  EXPECT_EQ(Error("queue_timeout_ms = 0\n"),
            At(18) + "upstreams[0].queue_timeout_ms: must be between 1 and 86400000");
  EXPECT_EQ(Error("retry_budget = 1.5\n"),
            At(18) + "upstreams[0].retry_budget: must be a fraction between 0 and 1");
  EXPECT_EQ(Error("retry_budget = -0.1\n"),
            At(18) + "upstreams[0].retry_budget: must be a fraction between 0 and 1");
  EXPECT_EQ(Error("retry_budget = \"20%\"\n"),
            At(18) + "upstreams[0].retry_budget: expected a number, got a string");
  EXPECT_EQ(Error("max_conns_per_servers = 2\n"),
            At(18) + "upstreams[0].max_conns_per_servers: unknown key");
}


// try_timeout_ms (issue 9, per-try timeout).
TEST_F(UpstreamHealthConfigTest, TryTimeout) {
  auto loaded = Load("");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->upstreams[0].try_timeout_ms, 0u);  // none
  loaded = Load("try_timeout_ms = 250\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->upstreams[0].try_timeout_ms, 250u);
  EXPECT_EQ(Error("try_timeout_ms = -5\n"),
            At(18) + "upstreams[0].try_timeout_ms: must be between 0 and 86400000");
  EXPECT_EQ(Error("try_timeout_ms = \"1s\"\n"),
            At(18) + "upstreams[0].try_timeout_ms: expected an integer, got a string");
}

}  // namespace ktlb
