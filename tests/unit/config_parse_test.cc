// Tests for ParseConfig / LoadConfigFile: a full config lands in the structs,
// and every class of mistake produces the exact "FILE:LINE: key: problem"
// message that `ktlb --check` prints.

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include <arpa/inet.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ktlb/config.h"

namespace ktlb {
namespace {

namespace fs = std::filesystem;

// Lines: 1 [[listeners]], 6 [[certificates]], 11 [[routes]], 15 [[upstreams]].
// Error tests edit one line at a time so the expected line numbers stay
// readable against this listing.
constexpr std::string_view kMinimal = R"([[listeners]]
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
servers = ["127.0.0.1:9001"]
)";

// Returns `text` with the single occurrence of `from` replaced by `to`;
// fails the test if `from` is not there, so a typo in a test cannot turn
// it into a test of the unmodified config.
std::string Edit(std::string_view text, std::string_view from, std::string_view to) {
  std::string out(text);
  const size_t pos = out.find(from);
  EXPECT_NE(pos, std::string::npos) << "test bug: '" << from << "' not in config";
  if (pos != std::string::npos) out.replace(pos, from.size(), to);
  return out;
}

class ConfigParseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ktlb_config_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    WriteFile("site.crt", "not parsed here\n");
    WriteFile("site.key", "not parsed here\n");
    path_ = (dir_ / "ktlb.toml").string();
  }

  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void WriteFile(const std::string& rel, std::string_view content) {
    const fs::path p = dir_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary);
    out << content;
    ASSERT_TRUE(out.good()) << p;
  }

  absl::StatusOr<std::shared_ptr<const Config>> Load(std::string_view text) {
    WriteFile("ktlb.toml", text);
    return LoadConfigFile(path_);
  }

  // The message of the error `text` must produce; "" (and a test failure)
  // if it loads.
  std::string Error(std::string_view text) {
    absl::StatusOr<std::shared_ptr<const Config>> config = Load(text);
    EXPECT_FALSE(config.ok()) << "config unexpectedly valid:\n" << text;
    if (config.ok()) return "";
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(config.status().message());
  }

  // "FILE:LINE: " for this test's config file.
  std::string At(int line) const { return path_ + ":" + std::to_string(line) + ": "; }

  fs::path dir_;
  std::string path_;
};

TEST_F(ConfigParseTest, MinimalConfigGetsDefaults) {
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(kMinimal);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Config& c = **loaded;
  EXPECT_EQ(c.path, path_);
  EXPECT_EQ(c.server.workers, 0u);
  EXPECT_FALSE(c.server.has_admin);
  EXPECT_EQ(c.server.timeouts.handshake_ms, 10'000u);
  EXPECT_EQ(c.server.max_request_line, 8192u);
  ASSERT_EQ(c.listeners.size(), 1u);
  EXPECT_EQ(c.listeners[0].mode, ListenerMode::kTerminate);
  EXPECT_EQ(c.listeners[0].unknown_sni, UnknownSniPolicy::kDefault);
  EXPECT_THAT(c.listeners[0].alpn, ::testing::ElementsAre("http/1.1"));
  EXPECT_EQ(c.listeners[0].ktls, KtlsMode::kAuto);
  EXPECT_FALSE(c.listeners[0].accept_proxy);
  ASSERT_EQ(c.upstreams.size(), 1u);
  EXPECT_EQ(c.upstreams[0].balance, BalanceAlgorithm::kRoundRobin);
  EXPECT_EQ(c.upstreams[0].hash_key.kind, HashKeyKind::kNone);
  EXPECT_EQ(c.upstreams[0].servers[0].weight, 1u);
  EXPECT_EQ(c.upstreams[0].max_idle_per_server, 256u);
  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].sni, "");
  EXPECT_EQ(c.routes[0].host, "");
  EXPECT_EQ(c.routes[0].path_prefix, "");
}

TEST_F(ConfigParseTest, FullConfigRoundTrips) {
  WriteFile("certs/site.crt", "x");
  WriteFile("certs/site.key", "x");
  WriteFile("abs/other.crt", "x");
  WriteFile("abs/other.key", "x");
  const std::string abs = (dir_ / "abs").string();
  const std::string text = R"([server]
workers = 4
admin_listen = "127.0.0.1:9901"
handshake_timeout_ms = 5000
request_header_timeout_ms = 6000
keepalive_timeout_ms = 7000
upstream_connect_timeout_ms = 8000
upstream_response_timeout_ms = 9000
drain_timeout_ms = 11000
max_request_line = 4096
max_header_bytes = 16384

[[listeners]]
name = "public"
listen = "127.0.0.1:8443"
mode = "terminate"
certificates = ["site", "other"]
unknown_sni = "reject"
alpn = ["h2", "http/1.1"]
ktls = "require"

[[listeners]]
name = "tunnel"
listen = "[::1]:8444"
mode = "passthrough"

[[certificates]]
name = "site"
cert = "certs/site.crt"
key = "./certs/../certs/site.key"

[[certificates]]
name = "other"
cert = ")" + abs + R"(/other.crt"
key = ")" + abs + R"(/other.key"

[[routes]]
listener = "public"
sni = "*.Example.TEST"
host = "API.example.test"
path_prefix = "/api/"
upstream = "app"

[[routes]]
listener = "public"
upstream = "app"

[[routes]]
listener = "tunnel"
sni = "db.example.test"
upstream = "tls_pool"

[[upstreams]]
name = "app"
servers = ["127.0.0.1:9001", "localhost:9002"]
balance = "round_robin"
max_idle_per_server = 8

[[upstreams]]
name = "tls_pool"
servers = ["[::1]:9443"]
)";
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(text);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Config& c = **loaded;

  EXPECT_EQ(c.server.workers, 4u);
  ASSERT_TRUE(c.server.has_admin);
  EXPECT_EQ(c.server.admin_listen.text, "127.0.0.1:9901");
  EXPECT_EQ(c.server.timeouts.handshake_ms, 5000u);
  EXPECT_EQ(c.server.timeouts.request_header_ms, 6000u);
  EXPECT_EQ(c.server.timeouts.keepalive_ms, 7000u);
  EXPECT_EQ(c.server.timeouts.upstream_connect_ms, 8000u);
  EXPECT_EQ(c.server.timeouts.upstream_response_ms, 9000u);
  EXPECT_EQ(c.server.timeouts.drain_ms, 11000u);
  EXPECT_EQ(c.server.max_request_line, 4096u);
  EXPECT_EQ(c.server.max_header_bytes, 16384u);

  ASSERT_EQ(c.listeners.size(), 2u);
  const ListenerConfig& pub = c.listeners[0];
  EXPECT_EQ(pub.name, "public");
  EXPECT_EQ(pub.listen.text, "127.0.0.1:8443");
  EXPECT_EQ(pub.listen.storage.ss_family, AF_INET);
  EXPECT_EQ(pub.mode, ListenerMode::kTerminate);
  EXPECT_THAT(pub.certificates, ::testing::ElementsAre("site", "other"));
  EXPECT_EQ(pub.unknown_sni, UnknownSniPolicy::kReject);
  EXPECT_THAT(pub.alpn, ::testing::ElementsAre("h2", "http/1.1"));
  EXPECT_EQ(pub.ktls, KtlsMode::kRequire);
  const ListenerConfig& tunnel = c.listeners[1];
  EXPECT_EQ(tunnel.name, "tunnel");
  EXPECT_EQ(tunnel.listen.storage.ss_family, AF_INET6);
  EXPECT_EQ(tunnel.mode, ListenerMode::kPassthrough);
  EXPECT_TRUE(tunnel.certificates.empty());
  EXPECT_TRUE(tunnel.alpn.empty());

  ASSERT_EQ(c.certificates.size(), 2u);
  EXPECT_EQ(c.certificates[0].name, "site");
  EXPECT_EQ(c.certificates[0].cert_path, (dir_ / "certs/site.crt").string());
  EXPECT_EQ(c.certificates[0].key_path, (dir_ / "certs/site.key").string());
  EXPECT_EQ(c.certificates[1].cert_path, abs + "/other.crt");
  EXPECT_EQ(c.certificates[1].key_path, abs + "/other.key");

  ASSERT_EQ(c.routes.size(), 3u);
  EXPECT_EQ(c.routes[0].listener, "public");
  EXPECT_EQ(c.routes[0].sni, "*.example.test");  // stored lowercase
  EXPECT_EQ(c.routes[0].host, "api.example.test");
  EXPECT_EQ(c.routes[0].path_prefix, "/api/");
  EXPECT_EQ(c.routes[0].upstream, "app");
  EXPECT_EQ(c.routes[1].sni, "");
  EXPECT_EQ(c.routes[2].listener, "tunnel");
  EXPECT_EQ(c.routes[2].upstream, "tls_pool");

  ASSERT_EQ(c.upstreams.size(), 2u);
  ASSERT_EQ(c.upstreams[0].servers.size(), 2u);
  EXPECT_EQ(c.upstreams[0].servers[0].address.text, "127.0.0.1:9001");
  EXPECT_EQ(c.upstreams[0].servers[1].address.text, "localhost:9002");
  EXPECT_EQ(c.upstreams[0].max_idle_per_server, 8u);
  EXPECT_EQ(c.upstreams[1].servers[0].address.storage.ss_family, AF_INET6);

  ASSERT_NE(c.FindCertificate("other"), nullptr);
  EXPECT_EQ(c.FindCertificate("other")->name, "other");
  EXPECT_EQ(c.FindCertificate("nope"), nullptr);
  ASSERT_NE(c.FindUpstream("tls_pool"), nullptr);
  EXPECT_EQ(c.FindUpstream("tls_pool")->servers.size(), 1u);
  EXPECT_EQ(c.FindUpstream("nope"), nullptr);
  ASSERT_NE(c.FindListener("tunnel"), nullptr);
  EXPECT_EQ(c.FindListener("nope"), nullptr);
}

// configs/reference.toml documents every key; it must stay valid. Its
// certificate files are provided as placeholders in the temp directory (only
// their presence is checked here; the TLS module parses them).
TEST_F(ConfigParseTest, ReferenceConfigIsValid) {
  const fs::path reference = fs::path(__FILE__).parent_path() / "../../configs/reference.toml";
  std::ifstream in(reference, std::ios::binary);
  ASSERT_TRUE(in.good()) << reference;
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* f : {"certs/site.crt", "certs/site.key", "certs/other.crt", "certs/other.key",
                        "certs/clients-ca.crt", "certs/clients.crl", "certs/partner-ca.crt"}) {
    WriteFile(f, "placeholder\n");
  }
  absl::StatusOr<std::shared_ptr<const Config>> loaded =
      ParseConfig(text, (dir_ / "reference.toml").string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Config& c = **loaded;
  EXPECT_TRUE(c.server.has_admin);
  EXPECT_EQ(c.listeners.size(), 2u);
  EXPECT_EQ(c.certificates.size(), 2u);
  EXPECT_EQ(c.routes.size(), 4u);
  EXPECT_EQ(c.upstreams.size(), 3u);
  EXPECT_EQ(c.routes[2].alpn, "h2");
  EXPECT_EQ(c.upstreams[2].proxy_protocol, ProxyProtocol::kV2);
  EXPECT_EQ(c.upstreams[0].servers[1].weight, 3u);
  EXPECT_EQ(c.upstreams[1].balance, BalanceAlgorithm::kMaglev);
  EXPECT_EQ(c.upstreams[1].hash_key.kind, HashKeyKind::kCookie);
  EXPECT_EQ(c.server.timeouts.tunnel_idle_ms, 600'000u);
  EXPECT_EQ(c.certificates[0].cert_path, (dir_ / "certs/site.crt").string());
  EXPECT_TRUE(c.listeners[0].client_auth.enabled);
  EXPECT_EQ(c.listeners[0].client_auth.mode, ClientAuthMode::kOptional);
  EXPECT_EQ(c.listeners[0].client_auth.crl_path, (dir_ / "certs/clients.crl").string());
  EXPECT_TRUE(c.listeners[0].mtls);
  EXPECT_FALSE(c.certificates[0].client_auth.enabled);
  EXPECT_EQ(c.certificates[1].client_auth.ca_path, (dir_ / "certs/partner-ca.crt").string());
  EXPECT_TRUE(c.routes[0].require_client_cert);
  EXPECT_FALSE(c.routes[1].require_client_cert);
}

TEST_F(ConfigParseTest, RelativePathsResolveAgainstConfigDirectory) {
  // The config lives in a subdirectory; its relative paths must resolve there,
  // not against the process's working directory.
  WriteFile("etc/tls/site.crt", "x");
  WriteFile("etc/tls/site.key", "x");
  WriteFile("etc/ktlb.toml", Edit(Edit(kMinimal, "\"site.crt\"", "\"tls/site.crt\""),
                                  "\"site.key\"", "\"tls/../tls/site.key\""));
  absl::StatusOr<std::shared_ptr<const Config>> loaded =
      LoadConfigFile((dir_ / "etc/ktlb.toml").string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->certificates[0].cert_path, (dir_ / "etc/tls/site.crt").string());
  EXPECT_EQ((*loaded)->certificates[0].key_path, (dir_ / "etc/tls/site.key").string());
  EXPECT_TRUE(fs::path((*loaded)->certificates[0].cert_path).is_absolute());
}

TEST_F(ConfigParseTest, UnknownKey) {
  EXPECT_EQ(Error(Edit(kMinimal, "listen =", "lisen =")),
            At(3) + "listeners[0].lisen: unknown key");
}

TEST_F(ConfigParseTest, UnknownKeyReportedBeforeTheMissingKeyItCauses) {
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "upstrem = \"app\"")),
            At(13) + "routes[0].upstrem: unknown key");
}

TEST_F(ConfigParseTest, UnknownTopLevelTable) {
  EXPECT_EQ(Error(std::string("[sever]\nworkers = 1\n") + std::string(kMinimal)),
            At(1) + "sever: unknown key");
}

TEST_F(ConfigParseTest, UnknownDottedKeyInServer) {
  EXPECT_EQ(Error(std::string("[server]\nworkers = 1\ntimeouts.handshake = 5\n") +
                  std::string(kMinimal)),
            At(3) + "server.timeouts: unknown key");
}

TEST_F(ConfigParseTest, UnknownQuotedKeyIsEscaped) {
  EXPECT_EQ(Error(Edit(kMinimal, "listen =", "\"a.b\\n\" = 1\nlisten =")),
            At(3) + "listeners[0].\"a.b\\n\": unknown key");
}

TEST_F(ConfigParseTest, BadMode) {
  EXPECT_EQ(Error(Edit(kMinimal, "listen = \"127.0.0.1:8443\"",
                       "listen = \"127.0.0.1:8443\"\nmode = \"terminat\"")),
            At(4) + "listeners[0].mode: must be \"terminate\" or \"passthrough\"");
}

TEST_F(ConfigParseTest, PassthroughForwarding) {
  absl::StatusOr<std::shared_ptr<const Config>> dflt = Load(kMinimal);
  ASSERT_TRUE(dflt.ok()) << dflt.status();
  EXPECT_EQ((*dflt)->server.passthrough_forwarding, PassthroughForwarding::kSplice);
  for (const auto& [text, want] :
       {std::pair{"splice", PassthroughForwarding::kSplice},
        std::pair{"sockmap", PassthroughForwarding::kSockmap},
        std::pair{"auto", PassthroughForwarding::kAuto}}) {
    absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(
        "[server]\npassthrough_forwarding = \"" + std::string(text) + "\"\n" + std::string(kMinimal));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->server.passthrough_forwarding, want) << text;
  }
  EXPECT_EQ(Error("[server]\npassthrough_forwarding = \"ebpf\"\n" + std::string(kMinimal)),
            At(2) + "server.passthrough_forwarding: must be \"splice\", \"sockmap\" or \"auto\"");
}

TEST_F(ConfigParseTest, BadKtlsAndUnknownSni) {
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\nktls = \"on\"")),
            At(5) + "listeners[0].ktls: must be \"auto\", \"off\" or \"require\"");
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\nunknown_sni = \"drop\"")),
            At(5) + "listeners[0].unknown_sni: must be \"default\" or \"reject\"");
}

TEST_F(ConfigParseTest, ClientAuthOnListenerCertificateAndRoute) {
  WriteFile("ca.crt", "x");
  WriteFile("ca.crl", "x");
  std::string text = Edit(kMinimal, "certificates = [\"site\"]",
                          "certificates = [\"site\"]\n"
                          "client_auth = { ca = \"ca.crt\", mode = \"optional\", crl = \"ca.crl\" }");
  text = Edit(text, "key = \"site.key\"", "key = \"site.key\"\nclient_auth = { ca = \"ca.crt\" }");
  text = Edit(text, "upstream = \"app\"\n\n", "upstream = \"app\"\nrequire_client_cert = true\n\n");
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(text);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Config& c = **loaded;
  const ClientAuthConfig& l = c.listeners[0].client_auth;
  EXPECT_TRUE(l.enabled);
  EXPECT_EQ(l.mode, ClientAuthMode::kOptional);
  EXPECT_EQ(l.ca_path, (dir_ / "ca.crt").string());
  EXPECT_EQ(l.crl_path, (dir_ / "ca.crl").string());
  EXPECT_EQ(l.key, "listeners[0].client_auth");
  EXPECT_EQ(l.ca_line, 5u);
  EXPECT_TRUE(c.listeners[0].mtls);
  const ClientAuthConfig& cert = c.certificates[0].client_auth;
  EXPECT_TRUE(cert.enabled);
  EXPECT_EQ(cert.mode, ClientAuthMode::kRequire);  // the default
  EXPECT_EQ(cert.crl_path, "");
  EXPECT_EQ(cert.key, "certificates[0].client_auth");
  EXPECT_TRUE(c.routes[0].require_client_cert);
}

TEST_F(ConfigParseTest, ClientAuthErrors) {
  WriteFile("ca.crt", "x");
  const std::string cert_line = "certificates = [\"site\"]";
  auto with = [&](std::string_view client_auth) {
    return Edit(kMinimal, cert_line, cert_line + "\nclient_auth = " + std::string(client_auth));
  };
  EXPECT_EQ(Error(with("{ ca = \"nope.crt\" }")),
            At(5) + "listeners[0].client_auth.ca: cannot read \"" + (dir_ / "nope.crt").string() +
                "\": No such file or directory");
  EXPECT_EQ(Error(with("{ ca = \"ca.crt\", mode = \"maybe\" }")),
            At(5) + "listeners[0].client_auth.mode: must be \"require\" or \"optional\"");
  EXPECT_EQ(Error(with("{ mode = \"require\" }")),
            At(5) + "listeners[0].client_auth.ca: missing required key");
  EXPECT_EQ(Error(with("{ ca = \"ca.crt\", verify = 2 }")),
            At(5) + "listeners[0].client_auth.verify: unknown key");
  EXPECT_EQ(Error(with("\"ca.crt\"")),
            At(5) + "listeners[0].client_auth: expected a table ([client_auth]), got a string");
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"\n\n",
                       "upstream = \"app\"\nrequire_client_cert = true\n\n")),
            At(14) + "routes[0].require_client_cert: listener \"public\" asks for no client "
                     "certificate; set client_auth on it or on one of its certificates");
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"\n\n",
                       "upstream = \"app\"\nrequire_client_cert = \"yes\"\n\n")),
            At(14) + "routes[0].require_client_cert: expected a boolean (true or false), got a string");
}

TEST_F(ConfigParseTest, BadBalance) {
  EXPECT_EQ(Error(std::string(kMinimal) + "balance = \"random\"\n"),
            At(18) + "upstreams[0].balance: must be \"round_robin\", \"least_conn\", \"p2c\" or "
                     "\"maglev\"");
}

TEST_F(ConfigParseTest, MissingNameUsesTableLine) {
  EXPECT_EQ(Error(Edit(kMinimal, "name = \"public\"", "# no name")),
            At(1) + "listeners[0].name: missing required key");
}

TEST_F(ConfigParseTest, EmptyName) {
  EXPECT_EQ(Error(Edit(kMinimal, "name = \"public\"", "name = \"\"")),
            At(2) + "listeners[0].name: must not be empty");
}

TEST_F(ConfigParseTest, NameWithBadCharacters) {
  EXPECT_EQ(Error(Edit(kMinimal, "name = \"app\"", "name = \"my app\"")),
            At(16) + "upstreams[0].name: must be 1-64 characters of letters, digits, '-', '_' or '.'");
}

TEST_F(ConfigParseTest, DuplicateUpstreamName) {
  EXPECT_EQ(Error(std::string(kMinimal) +
                  "\n[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:9002\"]\n"),
            At(20) + "upstreams[1].name: duplicate name \"app\" (first defined at line 16)");
}

TEST_F(ConfigParseTest, DuplicateListenerName) {
  EXPECT_EQ(Error(std::string(kMinimal) +
                  "\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8444\"\n"),
            At(20) + "listeners[1].name: duplicate name \"public\" (first defined at line 2)");
}

TEST_F(ConfigParseTest, DuplicateListenAddress) {
  // localhost and 127.0.0.1 are the same socket address.
  EXPECT_EQ(Error(std::string(kMinimal) +
                  "\n[[listeners]]\nname = \"tunnel\"\nlisten = \"localhost:8443\"\n"
                  "mode = \"passthrough\"\n"),
            At(21) + "listeners[1].listen: address \"localhost:8443\" is already used by "
                     "listeners[0]");
}

TEST_F(ConfigParseTest, ListenAddressCollidesWithAdmin) {
  EXPECT_EQ(Error(std::string("[server]\nadmin_listen = \"127.0.0.1:8443\"\n") +
                  std::string(kMinimal)),
            At(5) + "listeners[0].listen: address \"127.0.0.1:8443\" is already used by "
                    "server.admin_listen");
}

TEST_F(ConfigParseTest, PortZeroListenersDoNotCollide) {
  // Port 0 means "any free port", chosen per bind.
  const std::string text =
      Edit(kMinimal, "127.0.0.1:8443", "127.0.0.1:0") +
      "\n[[listeners]]\nname = \"tunnel\"\nlisten = \"127.0.0.1:0\"\nmode = \"passthrough\"\n"
      "\n[[routes]]\nlistener = \"tunnel\"\nupstream = \"app\"\n";
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(text);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
}

TEST_F(ConfigParseTest, RouteToMissingUpstream) {
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "upstream = \"nope\"")),
            At(13) + "routes[0].upstream: no [[upstreams]] entry named \"nope\"");
}

TEST_F(ConfigParseTest, RouteToMissingListener) {
  EXPECT_EQ(Error(Edit(kMinimal, "listener = \"public\"", "listener = \"pubic\"")),
            At(12) + "routes[0].listener: no [[listeners]] entry named \"pubic\"");
}

TEST_F(ConfigParseTest, RouteMissingUpstreamKey) {
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "")),
            At(11) + "routes[0].upstream: missing required key");
}

TEST_F(ConfigParseTest, BadAddressHost) {
  EXPECT_EQ(Error(Edit(kMinimal, "127.0.0.1:8443", "example.com:8443")),
            At(3) + "listeners[0].listen: invalid address \"example.com:8443\": host must be an "
                    "IPv4 address, a bracketed IPv6 address or \"localhost\" (names are not "
                    "resolved)");
}

TEST_F(ConfigParseTest, BadPort) {
  EXPECT_EQ(Error(Edit(kMinimal, "127.0.0.1:8443", "127.0.0.1:65536")),
            At(3) + "listeners[0].listen: invalid address \"127.0.0.1:65536\": port must be a "
                    "number between 0 and 65535");
}

TEST_F(ConfigParseTest, BadUpstreamServer) {
  EXPECT_EQ(Error(Edit(kMinimal, "servers = [\"127.0.0.1:9001\"]",
                       "servers = [\"127.0.0.1:9001\",\n  \"::1:9002\"]")),
            At(18) + "upstreams[0].servers[1]: invalid address \"::1:9002\": IPv6 addresses "
                     "must be in brackets, e.g. \"[::1]:8443\"");
  EXPECT_EQ(Error(Edit(kMinimal, "127.0.0.1:9001", "127.0.0.1:0")),
            At(17) + "upstreams[0].servers[0]: port 0 cannot be connected to");
  EXPECT_EQ(Error(Edit(kMinimal, "servers = [\"127.0.0.1:9001\"]", "servers = []")),
            At(17) + "upstreams[0].servers: must list at least one server");
  EXPECT_EQ(Error(Edit(kMinimal, "servers = [\"127.0.0.1:9001\"]", "")),
            At(15) + "upstreams[0].servers: missing required key");
}

TEST_F(ConfigParseTest, MissingCertificateFile) {
  EXPECT_EQ(Error(Edit(kMinimal, "\"site.crt\"", "\"missing.crt\"")),
            At(8) + "certificates[0].cert: cannot read \"" + (dir_ / "missing.crt").string() +
                "\": No such file or directory");
}

TEST_F(ConfigParseTest, CertificatePathIsDirectory) {
  fs::create_directories(dir_ / "keys");
  EXPECT_EQ(Error(Edit(kMinimal, "\"site.key\"", "\"keys\"")),
            At(9) + "certificates[0].key: \"" + (dir_ / "keys").string() +
                "\" is not a regular file");
}

TEST_F(ConfigParseTest, UnreadableKeyFile) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads any file";
  ASSERT_EQ(chmod((dir_ / "site.key").c_str(), 0), 0);
  EXPECT_EQ(Error(kMinimal), At(9) + "certificates[0].key: cannot read \"" +
                                 (dir_ / "site.key").string() + "\": Permission denied");
}

TEST_F(ConfigParseTest, CertificateMissingKey) {
  EXPECT_EQ(Error(Edit(kMinimal, "key = \"site.key\"", "")),
            At(6) + "certificates[0].key: missing required key");
}

TEST_F(ConfigParseTest, BadAlpn) {
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\nalpn = [\"h2\", \"spdy/3\"]")),
            At(5) + "listeners[0].alpn[1]: must be \"h2\" or \"http/1.1\"");
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\nalpn = [\"h2\", \"h2\"]")),
            At(5) + "listeners[0].alpn[1]: \"h2\" is listed twice");
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\nalpn = []")),
            At(5) + "listeners[0].alpn: must list at least one protocol");
}

TEST_F(ConfigParseTest, WrongTypes) {
  EXPECT_EQ(Error(Edit(kMinimal, "\"127.0.0.1:8443\"", "8443")),
            At(3) + "listeners[0].listen: expected a string, got an integer");
  EXPECT_EQ(Error(std::string("[server]\nworkers = \"4\"\n") + std::string(kMinimal)),
            At(2) + "server.workers: expected an integer, got a string");
  EXPECT_EQ(Error(Edit(kMinimal, "[\"site\"]", "\"site\"")),
            At(4) + "listeners[0].certificates: expected an array of strings, got a string");
  EXPECT_EQ(Error(Edit(kMinimal, "[\"site\"]", "[\"site\", 2]")),
            At(4) + "listeners[0].certificates[1]: expected a string, got an integer");
  EXPECT_EQ(Error(std::string("server = 1\n") + std::string(kMinimal)),
            At(1) + "server: expected a table ([server]), got an integer");
}

TEST_F(ConfigParseTest, SingleTableWhereArrayOfTablesExpected) {
  EXPECT_EQ(Error(Edit(kMinimal, "[[upstreams]]", "[upstreams]")),
            At(15) + "upstreams: expected an array of tables ([[upstreams]]), got a table");
}

TEST_F(ConfigParseTest, IntegerRanges) {
  EXPECT_EQ(Error(std::string("[server]\nworkers = 2000\n") + std::string(kMinimal)),
            At(2) + "server.workers: must be between 0 and 1024");
  EXPECT_EQ(Error(std::string("[server]\nworkers = -1\n") + std::string(kMinimal)),
            At(2) + "server.workers: must be between 0 and 1024");
  EXPECT_EQ(Error(std::string("[server]\ndrain_timeout_ms = 0\n") + std::string(kMinimal)),
            At(2) + "server.drain_timeout_ms: must be between 1 and 86400000");
  EXPECT_EQ(Error(std::string(kMinimal) + "max_idle_per_server = 70000\n"),
            At(18) + "upstreams[0].max_idle_per_server: must be between 0 and 65535");
}

TEST_F(ConfigParseTest, SyntaxError) {
  EXPECT_EQ(Error(Edit(kMinimal, "name = \"public\"", "name = \"public")),
            At(2) + "(toml): Error while parsing string: unescaped control characters other "
                    "than TAB (U+0009) are explicitly prohibited");
  EXPECT_EQ(Error(Edit(kMinimal, "[[routes]]", "[[routes]")),
            At(11) + "(toml): Error while parsing table header: expected ']', saw '\\n'");
}

TEST_F(ConfigParseTest, DuplicateKeyIsSyntaxError) {
  EXPECT_EQ(Error(Edit(kMinimal, "name = \"public\"", "name = \"public\"\nname = \"x\"")),
            At(3) + "(toml): Error while parsing key-value pair: cannot redefine existing "
                    "string 'name'");
}

TEST_F(ConfigParseTest, PathPrefixWithoutSlash) {
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "path_prefix = \"api/\"\nupstream = \"app\"")),
            At(13) + "routes[0].path_prefix: must start with \"/\"");
}

TEST_F(ConfigParseTest, BadSniWildcard) {
  const std::string problem =
      "routes[0].sni: must be a host name (\"example.test\") or a wildcard of the leftmost "
      "label (\"*.example.test\")";
  for (const char* sni : {"a.*.b", "*", "*.", "*a.example", "a..b", "exa mple.test"}) {
    EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"",
                         std::string("sni = \"") + sni + "\"\nupstream = \"app\"")),
              At(13) + problem)
        << sni;
  }
}

TEST_F(ConfigParseTest, BadHost) {
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "host = \"api.test:443\"\nupstream = \"app\"")),
            At(13) + "routes[0].host: must not include a port (ports are ignored when matching)");
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "host = \"*.test\"\nupstream = \"app\"")),
            At(13) + "routes[0].host: must be a host name like \"api.example.test\"");
}

TEST_F(ConfigParseTest, TerminateListenerWithoutCertificates) {
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]", "")),
            At(1) + "listeners[0].certificates: required for mode = \"terminate\"");
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]", "certificates = []")),
            At(4) + "listeners[0].certificates: must list at least one certificate");
}

TEST_F(ConfigParseTest, ListenerNamesUnknownCertificate) {
  EXPECT_EQ(Error(Edit(kMinimal, "[\"site\"]", "[\"site\", \"other\"]")),
            At(4) + "listeners[0].certificates[1]: no [[certificates]] entry named \"other\"");
}

TEST_F(ConfigParseTest, PassthroughRejectsTerminateOnlyKeys) {
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "mode = \"passthrough\"\ncertificates = [\"site\"]")),
            At(5) + "listeners[0].certificates: only valid for mode = \"terminate\"");
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "mode = \"passthrough\"\nktls = \"off\"")),
            At(5) + "listeners[0].ktls: only valid for mode = \"terminate\"");
}

// Both modes may sit behind an L4 balancer that sends a PROXY header.
TEST_F(ConfigParseTest, AcceptProxyOnBothModes) {
  for (const char* mode : {"terminate", "passthrough"}) {
    std::string text = Edit(kMinimal, "listen = \"127.0.0.1:8443\"",
                            std::string("listen = \"127.0.0.1:8443\"\nmode = \"") + mode +
                                "\"\naccept_proxy = true");
    if (std::string_view(mode) == "passthrough") {
      text = Edit(text, "certificates = [\"site\"]\n", "");
    }
    absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(text);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE((*loaded)->listeners[0].accept_proxy) << mode;
  }
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\naccept_proxy = \"yes\"")),
            At(5) + "listeners[0].accept_proxy: expected a boolean (true or false), got a string");
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "certificates = [\"site\"]\naccept_proxy = 1")),
            At(5) + "listeners[0].accept_proxy: expected a boolean (true or false), got an integer");
}

TEST_F(ConfigParseTest, PassthroughAcceptsUnknownSni) {
  const std::string passthrough =
      Edit(kMinimal, "certificates = [\"site\"]", "mode = \"passthrough\"\nunknown_sni = \"reject\"");
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(passthrough);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->listeners[0].unknown_sni, UnknownSniPolicy::kReject);
  EXPECT_EQ(Error(Edit(passthrough, "\"reject\"", "\"drop\"")),
            At(5) + "listeners[0].unknown_sni: must be \"default\" or \"reject\"");
}

TEST_F(ConfigParseTest, PassthroughRejectsTlsPolicy) {
  EXPECT_EQ(Error(Edit(kMinimal, "certificates = [\"site\"]",
                       "mode = \"passthrough\"\ntls_groups = \"X25519\"")),
            At(5) + "listeners[0].tls_groups: only valid for mode = \"terminate\"");
}

TEST_F(ConfigParseTest, TlsPolicyDefaultsAndValues) {
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(kMinimal);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const TlsPolicy& d = (*loaded)->listeners[0].tls;
  EXPECT_EQ(d.min_version, 0x0303);
  EXPECT_EQ(d.max_version, 0x0304);
  EXPECT_EQ(d.groups, "X25519:P-256:P-384");
  EXPECT_EQ(d.groups_line, 0u);

  loaded = Load(Edit(kMinimal, "certificates = [\"site\"]",
                     "certificates = [\"site\"]\ntls_versions = [\"1.3\"]\n"
                     "tls_groups = \"X448:X25519\"\ntls_ciphers = \"ECDHE-RSA-AES256-GCM-SHA384\"\n"
                     "tls_ciphersuites = \"TLS_CHACHA20_POLY1305_SHA256\""));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const TlsPolicy& p = (*loaded)->listeners[0].tls;
  EXPECT_EQ(p.min_version, 0x0304);
  EXPECT_EQ(p.max_version, 0x0304);
  EXPECT_EQ(p.groups, "X448:X25519");
  EXPECT_EQ(p.groups_line, 6u);
  EXPECT_EQ(p.ciphers, "ECDHE-RSA-AES256-GCM-SHA384");
  EXPECT_EQ(p.ciphers_line, 7u);
  EXPECT_EQ(p.ciphersuites, "TLS_CHACHA20_POLY1305_SHA256");
  EXPECT_EQ(p.ciphersuites_line, 8u);

  loaded = Load(Edit(kMinimal, "certificates = [\"site\"]",
                     "certificates = [\"site\"]\ntls_versions = [\"1.2\"]"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->listeners[0].tls.min_version, 0x0303);
  EXPECT_EQ((*loaded)->listeners[0].tls.max_version, 0x0303);
}

TEST_F(ConfigParseTest, TlsPolicyShapeErrors) {
  auto with = [&](std::string_view line) {
    return Edit(kMinimal, "certificates = [\"site\"]",
                std::string("certificates = [\"site\"]\n") + std::string(line));
  };
  EXPECT_EQ(Error(with("tls_versions = []")),
            At(5) + "listeners[0].tls_versions: must list \"1.2\", \"1.3\" or both");
  EXPECT_EQ(Error(with("tls_versions = [\"1.3\", \"1.1\"]")),
            At(5) + "listeners[0].tls_versions[1]: must be \"1.2\" or \"1.3\" (older versions "
                    "are not offered)");
  EXPECT_EQ(Error(with("tls_versions = [\"1.3\", \"1.3\"]")),
            At(5) + "listeners[0].tls_versions[1]: \"1.3\" is listed twice");
  EXPECT_EQ(Error(with("tls_groups = \"\"")),
            At(5) + "listeners[0].tls_groups: must be a non-empty list of OpenSSL names, "
                    "\":\"-separated");
  EXPECT_EQ(Error(with("tls_ciphers = [\"a\"]")),
            At(5) + "listeners[0].tls_ciphers: expected a string, got an array");
}

TEST_F(ConfigParseTest, TicketKeysFile) {
  WriteFile("keys/ticket.keys", std::string(80, 'k'));
  absl::StatusOr<std::shared_ptr<const Config>> loaded =
      Load("[server]\nticket_keys = \"keys/ticket.keys\"\n" + std::string(kMinimal));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->server.ticket_keys, (dir_ / "keys/ticket.keys").string());
  EXPECT_EQ((*loaded)->server.ticket_keys_line, 2u);

  EXPECT_EQ(Error("[server]\nticket_keys = \"nope.keys\"\n" + std::string(kMinimal)),
            At(2) + "server.ticket_keys: cannot read \"" + (dir_ / "nope.keys").string() +
                "\": No such file or directory");
  EXPECT_EQ(Error("[server]\nticket_keys = \"\"\n" + std::string(kMinimal)),
            At(2) + "server.ticket_keys: must be a file path");
}

TEST_F(ConfigParseTest, PassthroughRouteCannotMatchHost) {
  EXPECT_EQ(Error(Edit(Edit(kMinimal, "certificates = [\"site\"]", "mode = \"passthrough\""),
                       "upstream = \"app\"", "host = \"a.test\"\nupstream = \"app\"")),
            At(13) + "routes[0].host: cannot be matched on passthrough listener \"public\" (only "
                     "sni is)");
}

TEST_F(ConfigParseTest, ListenerWithoutRoutes) {
  EXPECT_EQ(Error(std::string(kMinimal) +
                  "\n[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:8444\"\n"
                  "certificates = [\"site\"]\n"),
            At(19) + "listeners[1]: no [[routes]] entry has listener = \"second\"");
}

TEST_F(ConfigParseTest, NoListeners) {
  EXPECT_EQ(Error("[server]\nworkers = 1\n"),
            At(1) + "listeners: at least one [[listeners]] entry is required");
}

TEST_F(ConfigParseTest, ParseConfigUsesGivenPathInMessages) {
  absl::StatusOr<std::shared_ptr<const Config>> config =
      ParseConfig("[[listeners]]\nlisen = 1\n", "/etc/ktlb.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(), "/etc/ktlb.toml:2: listeners[0].lisen: unknown key");
}

TEST_F(ConfigParseTest, MissingConfigFile) {
  absl::StatusOr<std::shared_ptr<const Config>> config =
      LoadConfigFile((dir_ / "nope.toml").string());
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(config.status().message(),
            (dir_ / "nope.toml").string() + ": cannot open: No such file or directory");
}

TEST_F(ConfigParseTest, ConfigPathIsDirectory) {
  absl::StatusOr<std::shared_ptr<const Config>> config = LoadConfigFile(dir_.string());
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(), dir_.string() + ": is a directory");
}

TEST_F(ConfigParseTest, ProxyProtocolOnPassthroughRoutes) {
  const std::string passthrough =
      Edit(Edit(kMinimal, "certificates = [\"site\"]", "mode = \"passthrough\""),
           "servers = [\"127.0.0.1:9001\"]", "servers = [\"127.0.0.1:9001\"]\nproxy_protocol = \"v2\"");
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(passthrough);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->upstreams[0].proxy_protocol, ProxyProtocol::kV2);
  EXPECT_EQ((*loaded)->server.timeouts.tunnel_idle_ms, 600'000u);
}

TEST_F(ConfigParseTest, AlpnRouteMatcherIsPassthroughOnly) {
  const std::string passthrough = Edit(Edit(kMinimal, "certificates = [\"site\"]", "mode = \"passthrough\""),
                                       "upstream = \"app\"", "alpn = \"h2\"\nupstream = \"app\"");
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(passthrough);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->routes[0].alpn, "h2");
  EXPECT_EQ(Error(Edit(kMinimal, "upstream = \"app\"", "alpn = \"h2\"\nupstream = \"app\"")),
            At(13) + "routes[0].alpn: only passthrough listeners route on the ALPN a client "
                     "offers; \"public\" terminates TLS");
  EXPECT_EQ(Error(Edit(passthrough, "alpn = \"h2\"", "alpn = \"\"")),
            At(13) + "routes[0].alpn: must be a protocol name of 1..255 bytes, e.g. \"h2\"");
}

TEST_F(ConfigParseTest, ProxyProtocolRefusedBehindATerminateListener) {
  EXPECT_EQ(Error(Edit(kMinimal, "servers = [\"127.0.0.1:9001\"]",
                       "servers = [\"127.0.0.1:9001\"]\nproxy_protocol = \"v2\"")),
            At(13) + "routes[0].upstream: upstream \"app\" sets proxy_protocol (line 18), which "
                     "only passthrough listeners send; terminate listener \"public\" tells "
                     "backends the client address in X-Forwarded-For and Forwarded");
  EXPECT_EQ(Error(Edit(kMinimal, "servers = [\"127.0.0.1:9001\"]",
                       "servers = [\"127.0.0.1:9001\"]\nproxy_protocol = \"v1\"")),
            At(18) + "upstreams[0].proxy_protocol: must be \"none\" or \"v2\"");
}

// The [[upstreams]] table of kMinimal with `servers` and extra lines
// replaced; the servers line stays line 17.
std::string Upstream(std::string_view servers, std::string_view extra = "") {
  return Edit(kMinimal, "servers = [\"127.0.0.1:9001\"]\n",
              std::string(servers) + std::string(extra));
}

TEST_F(ConfigParseTest, WeightedServersAndBalancers) {
  absl::StatusOr<std::shared_ptr<const Config>> loaded =
      Load(Upstream("servers = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\", weight = 3 },\n"
                    "  { address = \"[::1]:9003\" }]\n",
                    "balance = \"least_conn\"\n"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const UpstreamConfig& u = (*loaded)->upstreams[0];
  ASSERT_EQ(u.servers.size(), 3u);
  EXPECT_EQ(u.servers[0].address.text, "127.0.0.1:9001");
  EXPECT_EQ(u.servers[0].weight, 1u);
  EXPECT_EQ(u.servers[1].address.text, "127.0.0.1:9002");
  EXPECT_EQ(u.servers[1].weight, 3u);
  EXPECT_EQ(u.servers[2].weight, 1u);
  EXPECT_EQ(u.balance, BalanceAlgorithm::kLeastConn);
  EXPECT_EQ(u.hash_key.kind, HashKeyKind::kNone);

  loaded = Load(Upstream("servers = [\"127.0.0.1:9001\"]\n", "balance = \"p2c\"\n"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->upstreams[0].balance, BalanceAlgorithm::kP2c);
}

TEST_F(ConfigParseTest, MaglevHashKeys) {
  struct Case {
    const char* line;
    HashKeyKind kind;
    const char* name;
  } cases[] = {
      {"", HashKeyKind::kClientIp, ""},  // maglev's default
      {"hash_key = \"client_ip\"\n", HashKeyKind::kClientIp, ""},
      {"hash_key = \"header:X-User\"\n", HashKeyKind::kHeader, "x-user"},
      {"hash_key = \"cookie:SessionID\"\n", HashKeyKind::kCookie, "SessionID"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(
        Upstream("servers = [\"127.0.0.1:9001\"]\n", std::string("balance = \"maglev\"\n") + c.line));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const UpstreamConfig& u = (*loaded)->upstreams[0];
    EXPECT_EQ(u.balance, BalanceAlgorithm::kMaglev);
    EXPECT_EQ(u.hash_key.kind, c.kind) << c.line;
    EXPECT_EQ(u.hash_key.name, c.name) << c.line;
  }
}

TEST_F(ConfigParseTest, BadServerEntries) {
  const std::string one = "servers = [\"127.0.0.1:9001\",\n";
  EXPECT_EQ(Error(Upstream(one + "  42]\n")),
            At(18) + "upstreams[0].servers[1]: expected a string or a table { address, weight }, "
                     "got an integer");
  EXPECT_EQ(Error(Upstream(one + "  { address = \"127.0.0.1:9002\", weight = 0 }]\n")),
            At(18) + "upstreams[0].servers[1].weight: must be between 1 and 256");
  EXPECT_EQ(Error(Upstream(one + "  { address = \"127.0.0.1:9002\", weight = 257 }]\n")),
            At(18) + "upstreams[0].servers[1].weight: must be between 1 and 256");
  EXPECT_EQ(Error(Upstream(one + "  { address = \"127.0.0.1:9002\", weight = \"3\" }]\n")),
            At(18) + "upstreams[0].servers[1].weight: expected an integer, got a string");
  EXPECT_EQ(Error(Upstream(one + "  { weight = 2 }]\n")),
            At(18) + "upstreams[0].servers[1].address: missing required key");
  EXPECT_EQ(Error(Upstream(one + "  { address = \"127.0.0.1:9002\", wieght = 2 }]\n")),
            At(18) + "upstreams[0].servers[1].wieght: unknown key");
  EXPECT_EQ(Error(Upstream(one + "  { address = \"127.0.0.1:0\" }]\n")),
            At(18) + "upstreams[0].servers[1].address: port 0 cannot be connected to");
  EXPECT_EQ(Error(Upstream(one + "  { address = \"nowhere\" }]\n")),
            At(18) + "upstreams[0].servers[1].address: invalid address \"nowhere\": expected \"host:port\" "
                     "or \"[ipv6]:port\"");
  EXPECT_EQ(Error(Upstream("servers = \"127.0.0.1:9001\"\n")),
            At(17) + "upstreams[0].servers: expected an array of servers, got a string");
}

TEST_F(ConfigParseTest, BadHashKeys) {
  const std::string servers = "servers = [\"127.0.0.1:9001\"]\n";
  EXPECT_EQ(Error(Upstream(servers, "hash_key = \"client_ip\"\n")),
            At(18) + "upstreams[0].hash_key: only used with balance = \"maglev\"");
  EXPECT_EQ(Error(Upstream(servers, "balance = \"p2c\"\nhash_key = \"header:X-User\"\n")),
            At(19) + "upstreams[0].hash_key: only used with balance = \"maglev\"");
  EXPECT_EQ(Error(Upstream(servers, "balance = \"maglev\"\nhash_key = \"source_ip\"\n")),
            At(19) + "upstreams[0].hash_key: must be \"client_ip\", \"header:NAME\" or \"cookie:NAME\"");
  EXPECT_EQ(Error(Upstream(servers, "balance = \"maglev\"\nhash_key = \"header:\"\n")),
            At(19) + "upstreams[0].hash_key: header name \"\" must be a token (letters, digits and "
                     "!#$%&'*+-.^_`|~)");
  EXPECT_EQ(Error(Upstream(servers, "balance = \"maglev\"\nhash_key = \"cookie:a b\"\n")),
            At(19) + "upstreams[0].hash_key: cookie name \"a b\" must be a token (letters, digits "
                     "and !#$%&'*+-.^_`|~)");
  EXPECT_EQ(Error(Upstream(servers, "balance = \"maglev\"\nhash_key = 1\n")),
            At(19) + "upstreams[0].hash_key: expected a string, got an integer");
}

TEST_F(ConfigParseTest, PassthroughMaglevHashesOnlyTheClientAddress) {
  const std::string passthrough = Edit(kMinimal, "certificates = [\"site\"]", "mode = \"passthrough\"");
  const std::string servers = "servers = [\"127.0.0.1:9001\"]\n";
  absl::StatusOr<std::shared_ptr<const Config>> loaded = Load(
      Edit(passthrough, servers, servers + "balance = \"maglev\"\nhash_key = \"client_ip\"\n"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(Error(Edit(passthrough, servers,
                       servers + "balance = \"maglev\"\nhash_key = \"cookie:sid\"\n")),
            At(13) + "routes[0].upstream: upstream \"app\" hashes on a header or cookie (line 19), "
                     "which passthrough listener \"public\" never sees; use hash_key = \"client_ip\"");
}

}  // namespace
}  // namespace ktlb
