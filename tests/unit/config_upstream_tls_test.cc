// [[upstreams]] tls = { ca, sni, verify, cert, key, ktls }: values landing in
// UpstreamTlsConfig, the files reaching Config::FilesRead (so a reload
// watches them), and a "FILE:LINE: key: problem" for every kind of mistake.

#include <unistd.h>

#include <algorithm>
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

class UpstreamTlsConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ktlb_upstream_tls_cfg.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (const char* f : {"site.crt", "site.key", "backend-ca.crt", "client.crt", "client.key"}) {
      std::ofstream(dir_ / f) << "x\n";
    }
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
  std::string File(const char* name) const { return (dir_ / name).string(); }

  fs::path dir_;
  std::string path_;
};

TEST_F(UpstreamTlsConfigTest, AbsentMeansPlainTcp) {
  auto loaded = Load("");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FALSE((*loaded)->upstreams[0].tls.enabled);
}

TEST_F(UpstreamTlsConfigTest, ValuesAndDefaults) {
  auto loaded = Load(
      "tls = { ca = \"backend-ca.crt\", sni = \"App.Internal.\", cert = \"client.crt\", "
      "key = \"client.key\", ktls = \"off\" }\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const UpstreamTlsConfig& t = (*loaded)->upstreams[0].tls;
  EXPECT_TRUE(t.enabled);
  EXPECT_EQ(t.ca_path, File("backend-ca.crt"));
  EXPECT_EQ(t.cert_path, File("client.crt"));
  EXPECT_EQ(t.key_path, File("client.key"));
  EXPECT_EQ(t.sni, "app.internal");  // lowercase, no trailing dot
  EXPECT_TRUE(t.verify);
  EXPECT_EQ(t.ktls, KtlsMode::kOff);
  EXPECT_EQ(t.key, "upstreams[0].tls");
  EXPECT_EQ(t.ca_line, 18u);

  // Every file it names is watched for reloads.
  std::vector<std::string> files = (*loaded)->FilesRead();
  for (const char* f : {"backend-ca.crt", "client.crt", "client.key"}) {
    EXPECT_NE(std::find(files.begin(), files.end(), File(f)), files.end()) << f;
  }

  loaded = Load("tls = { verify = false }\n");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const UpstreamTlsConfig& d = (*loaded)->upstreams[0].tls;
  EXPECT_TRUE(d.enabled);
  EXPECT_FALSE(d.verify);
  EXPECT_EQ(d.ca_path, "");
  EXPECT_EQ(d.sni, "");
  EXPECT_EQ(d.ktls, KtlsMode::kAuto);
}

TEST_F(UpstreamTlsConfigTest, Mistakes) {
  EXPECT_EQ(Error("tls = true\n"),
            At(18) + "upstreams[0].tls: expected a table ([tls]), got a boolean");
  EXPECT_EQ(Error("tls = { ca = \"backend-ca.crt\", cafile = \"x\" }\n"),
            At(18) + "upstreams[0].tls.cafile: unknown key");
  EXPECT_EQ(Error("tls = { ca = \"missing-ca.crt\" }\n"),
            At(18) + "upstreams[0].tls.ca: cannot read \"" + File("missing-ca.crt") +
                "\": No such file or directory");
  EXPECT_EQ(Error("tls = { ca = \"\" }\n"), At(18) + "upstreams[0].tls.ca: must not be empty");
  EXPECT_EQ(Error("tls = { cert = \"client.crt\" }\n"),
            At(18) + "upstreams[0].tls.cert: needs key too (a client certificate and its key)");
  EXPECT_EQ(Error("tls = { key = \"client.key\" }\n"),
            At(18) + "upstreams[0].tls.key: needs cert too (a client certificate and its key)");
  EXPECT_EQ(Error("tls = { ktls = \"require\" }\n"),
            At(18) + "upstreams[0].tls.ktls: must be \"auto\" or \"off\"");
  EXPECT_EQ(Error("tls = { verify = \"yes\" }\n"),
            At(18) + "upstreams[0].tls.verify: expected a boolean (true or false), got a string");
  EXPECT_EQ(Error("tls = { sni = \"*.app.internal\" }\n"),
            At(18) + "upstreams[0].tls.sni: must be a host name (letters, digits, '-', '_' and '.')");
  // As a table of its own: the line of the key that is wrong.
  EXPECT_EQ(Error("[upstreams.tls]\nsni = \"app.internal\"\nca = \"nope.crt\"\n"),
            At(20) + "upstreams[0].tls.ca: cannot read \"" + File("nope.crt") +
                "\": No such file or directory");
  if (geteuid() != 0) {
    fs::permissions(dir_ / "backend-ca.crt", fs::perms::none);
    EXPECT_EQ(Error("tls = { ca = \"backend-ca.crt\" }\n"),
              At(18) + "upstreams[0].tls.ca: cannot read \"" + File("backend-ca.crt") +
                  "\": Permission denied");
  }
}

}  // namespace
}  // namespace ktlb
