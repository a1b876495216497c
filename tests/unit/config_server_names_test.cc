// Host names in an upstream's `servers`: splitting host:port, telling a
// name from an address, expanding entries into servers, merging answers,
// and resolving a parsed config (with a fake resolver: no DNS here).

#include "ktlb/server_names.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "ktlb/config.h"

namespace ktlb {
namespace {

namespace fs = std::filesystem;

SocketAddress V4(const char* ip, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  inet_pton(AF_INET, ip, &sin.sin_addr);
  return SocketAddressOf(reinterpret_cast<const sockaddr*>(&sin), sizeof sin);
}

std::vector<std::string> Texts(const std::vector<UpstreamServer>& servers) {
  std::vector<std::string> out;
  for (const UpstreamServer& s : servers) out.push_back(s.address.text);
  return out;
}

TEST(SplitHostPort, NamesAddressesAndBrackets) {
  auto a = SplitHostPort("app.internal:9001");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "app.internal");
  EXPECT_EQ(a->port, 9001);
  EXPECT_FALSE(a->bracketed);

  auto b = SplitHostPort("[fd00::7]:443");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "fd00::7");
  EXPECT_EQ(b->port, 443);
  EXPECT_TRUE(b->bracketed);

  EXPECT_EQ(SplitHostPort("::1:80").status().message(),
            "invalid address \"::1:80\": IPv6 addresses must be in brackets, e.g. \"[::1]:8443\"");
  EXPECT_EQ(SplitHostPort("[::1:80").status().message(),
            "invalid address \"[::1:80\": missing ']' after IPv6 address");
  EXPECT_EQ(SplitHostPort("[::1]80").status().message(),
            "invalid address \"[::1]80\": expected \":port\" after ']'");
  EXPECT_EQ(SplitHostPort(":80").status().message(), "invalid address \":80\": missing host");
  EXPECT_EQ(SplitHostPort("app").status().message(),
            "invalid address \"app\": expected \"host:port\" or \"[ipv6]:port\"");
  EXPECT_EQ(SplitHostPort("app:http").status().message(),
            "invalid address \"app:http\": port must be a number between 0 and 65535");
  EXPECT_FALSE(SplitHostPort("app:65536").ok());
}

TEST(IsHostName, Rfc1123) {
  EXPECT_TRUE(IsHostName("app"));
  EXPECT_TRUE(IsHostName("app.internal"));
  EXPECT_TRUE(IsHostName("app.internal."));
  EXPECT_TRUE(IsHostName("a-1.b2.example"));
  EXPECT_TRUE(IsHostName("3com.net"));
  EXPECT_FALSE(IsHostName(""));
  EXPECT_FALSE(IsHostName("."));
  EXPECT_FALSE(IsHostName("-app.internal"));
  EXPECT_FALSE(IsHostName("app-.internal"));
  EXPECT_FALSE(IsHostName("app..internal"));
  EXPECT_FALSE(IsHostName("app_x.internal"));
  EXPECT_FALSE(IsHostName(std::string(64, 'a')));
  EXPECT_TRUE(IsHostName(std::string(63, 'a')));
  // Malformed addresses are not names (getaddrinfo would take them as IPv4).
  EXPECT_FALSE(IsHostName("10.1.2"));
  EXPECT_FALSE(IsHostName("127.0.0.1"));
  EXPECT_FALSE(IsHostName("300.1.1.1"));
}

TEST(SocketAddressOf, TextLikeTheConfigWritesIt) {
  EXPECT_EQ(V4("127.0.0.2", 9001).text, "127.0.0.2:9001");
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(443);
  inet_pton(AF_INET6, "fd00::7", &sin6.sin6_addr);
  SocketAddress a = SocketAddressOf(reinterpret_cast<const sockaddr*>(&sin6), sizeof sin6);
  EXPECT_EQ(a.text, "[fd00::7]:443");
  EXPECT_EQ(a.len, sizeof sin6);
  EXPECT_EQ(a.storage.ss_family, AF_INET6);
}

TEST(NormalizeAddresses, OrderAndDuplicatesDoNotCount) {
  std::vector<SocketAddress> a = {V4("10.0.0.2", 80), V4("10.0.0.1", 80), V4("10.0.0.2", 80)};
  std::vector<SocketAddress> b = {V4("10.0.0.1", 80), V4("10.0.0.2", 80)};
  EXPECT_FALSE(SameAddresses(a, b));
  NormalizeAddresses(&a);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].text, "10.0.0.1:80");
  EXPECT_TRUE(SameAddresses(a, b));
  EXPECT_FALSE(SameAddresses(a, {V4("10.0.0.1", 80)}));
}

UpstreamConfig TwoEntries() {
  UpstreamConfig u;
  u.name = "app";
  ServerEntry literal;
  literal.port = 9000;
  literal.addresses = {V4("127.0.0.1", 9000)};
  ServerEntry named;
  named.host = "app.internal";
  named.port = 9001;
  named.weight = 3;
  u.server_entries = {literal, named};
  ExpandServers(&u);
  return u;
}

TEST(ExpandServers, EachAddressOneServerWithTheEntrysWeight) {
  UpstreamConfig u = TwoEntries();
  // Unresolved: only the literal.
  EXPECT_EQ(Texts(u.servers), std::vector<std::string>{"127.0.0.1:9000"});

  EXPECT_TRUE(MergeAnswer(&u, "app.internal", 9001,
                          {V4("127.0.0.3", 9001), V4("127.0.0.2", 9001)}));
  EXPECT_EQ(Texts(u.servers),
            (std::vector<std::string>{"127.0.0.1:9000", "127.0.0.2:9001", "127.0.0.3:9001"}));
  EXPECT_EQ(u.servers[0].weight, 1u);
  EXPECT_EQ(u.servers[1].weight, 3u);
  EXPECT_EQ(u.servers[2].weight, 3u);

  // The same set in another order: no change.
  EXPECT_FALSE(MergeAnswer(&u, "app.internal", 9001,
                           {V4("127.0.0.2", 9001), V4("127.0.0.3", 9001)}));
  // Another name or port: not this upstream's.
  EXPECT_FALSE(MergeAnswer(&u, "other.internal", 9001, {V4("10.0.0.1", 9001)}));
  EXPECT_FALSE(MergeAnswer(&u, "app.internal", 9002, {V4("10.0.0.1", 9002)}));
  EXPECT_EQ(u.servers.size(), 3u);

  EXPECT_TRUE(MergeAnswer(&u, "app.internal", 9001, {V4("127.0.0.4", 9001)}));
  EXPECT_EQ(Texts(u.servers), (std::vector<std::string>{"127.0.0.1:9000", "127.0.0.4:9001"}));
}

class ResolveServerNamesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ktlb_names_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (const char* f : {"site.crt", "site.key"}) std::ofstream(dir_ / f) << "x\n";
    path_ = (dir_ / "ktlb.toml").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  absl::StatusOr<std::shared_ptr<const Config>> Load(const std::string& servers,
                                                     const std::string& extra = "") {
    std::ofstream(path_) << "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\n"
                            "certificates = [\"site\"]\n\n[[certificates]]\nname = \"site\"\n"
                            "cert = \"site.crt\"\nkey = \"site.key\"\n\n[[routes]]\n"
                            "listener = \"public\"\nupstream = \"app\"\n\n[[upstreams]]\n"
                            "name = \"app\"\n"
                         << "servers = " << servers << "\n" << extra;
    return LoadConfigFile(path_);
  }

  // Answers from `answers_`; a name not there does not resolve.
  HostResolver Fake() {
    return [this](const std::string& host, uint16_t port)
               -> absl::StatusOr<std::vector<SocketAddress>> {
      ++lookups_;
      auto it = answers_.find(host);
      if (it == answers_.end()) return absl::UnavailableError("Name or service not known");
      std::vector<SocketAddress> out;
      for (const std::string& ip : it->second) out.push_back(V4(ip.c_str(), port));
      return out;
    };
  }

  fs::path dir_;
  std::string path_;
  std::map<std::string, std::vector<std::string>> answers_;
  int lookups_ = 0;
};

TEST_F(ResolveServerNamesTest, ParsingNeedsNoDns) {
  auto config = Load(R"(["app.internal:9001", { address = "LOCALHOST:9002", weight = 3 },
  { address = "db.internal:9003", weight = 2 }])");
  ASSERT_TRUE(config.ok()) << config.status();
  const UpstreamConfig& u = (*config)->upstreams[0];
  ASSERT_EQ(u.server_entries.size(), 3u);
  EXPECT_EQ(u.server_entries[0].host, "app.internal");
  EXPECT_EQ(u.server_entries[0].port, 9001);
  EXPECT_EQ(u.server_entries[0].key, "upstreams[0].servers[0]");
  EXPECT_EQ(u.server_entries[0].line, 17u);
  // localhost keeps its fixed meaning, as in every other address.
  EXPECT_EQ(u.server_entries[1].host, "");
  EXPECT_EQ(u.server_entries[2].host, "db.internal");
  EXPECT_EQ(u.server_entries[2].weight, 2u);
  EXPECT_EQ(u.server_entries[2].line, 18u);
  EXPECT_EQ(Texts(u.servers), std::vector<std::string>{"LOCALHOST:9002"});
  EXPECT_EQ(u.resolve_interval_ms, 30'000u);
  EXPECT_TRUE(HasServerNames(**config));
}

TEST_F(ResolveServerNamesTest, ResolvesIntoServers) {
  auto config = Load(R"(["app.internal:9001", { address = "db.internal:9003", weight = 2 }])",
                     "resolve_interval_ms = 0\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ((*config)->upstreams[0].resolve_interval_ms, 0u);
  answers_ = {{"app.internal", {"127.0.0.3", "127.0.0.2"}}, {"db.internal", {"127.0.0.4"}}};
  auto resolved = ResolveServerNames(*config, nullptr, Fake(), nullptr);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  const UpstreamConfig& u = (*resolved)->upstreams[0];
  EXPECT_EQ(Texts(u.servers),
            (std::vector<std::string>{"127.0.0.2:9001", "127.0.0.3:9001", "127.0.0.4:9003"}));
  EXPECT_EQ(u.servers[2].weight, 2u);
  // The parsed config is left as it was.
  EXPECT_TRUE((*config)->upstreams[0].servers.empty());
}

TEST_F(ResolveServerNamesTest, UnresolvableFailsWithFileLineUnlessALastGoodAnswerExists) {
  auto config = Load(R"(["127.0.0.1:9000",
  { address = "gone.internal:9001" }])");
  ASSERT_TRUE(config.ok()) << config.status();
  auto failed = ResolveServerNames(*config, nullptr, Fake(), nullptr);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().message(),
            path_ + ":18: upstreams[0].servers[1].address: cannot resolve \"gone.internal\": "
                    "Name or service not known");

  // A reload while the name does not resolve keeps the running answer.
  answers_ = {{"gone.internal", {"127.0.0.9"}}};
  auto running = ResolveServerNames(*config, nullptr, Fake(), nullptr);
  ASSERT_TRUE(running.ok());
  answers_.clear();
  std::vector<std::string> notes;
  auto reloaded = ResolveServerNames(*config, running->get(), Fake(), &notes);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(Texts((*reloaded)->upstreams[0].servers),
            (std::vector<std::string>{"127.0.0.1:9000", "127.0.0.9:9001"}));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("keeping its 1 last good address(es)"), std::string::npos) << notes[0];
}

TEST_F(ResolveServerNamesTest, NoNamesNoLookups) {
  auto config = Load(R"(["127.0.0.1:9000", "[::1]:9001"])");
  ASSERT_TRUE(config.ok());
  EXPECT_FALSE(HasServerNames(**config));
  auto resolved = ResolveServerNames(*config, nullptr, Fake(), nullptr);
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->get(), config->get());
  EXPECT_EQ(lookups_, 0);
}

TEST_F(ResolveServerNamesTest, BadHostsAreConfigErrors) {
  EXPECT_EQ(Load(R"(["app_x.internal:9001"])").status().message(),
            path_ + ":17: upstreams[0].servers[0]: invalid address \"app_x.internal:9001\": host "
                    "must be an IPv4 address, a bracketed IPv6 address or a host name");
  EXPECT_EQ(Load(R"(["app.internal:0"])").status().message(),
            path_ + ":17: upstreams[0].servers[0]: port 0 cannot be connected to");
  EXPECT_EQ(Load(R"(["app.internal:9001"])", "resolve_interval_ms = -1\n").status().message(),
            path_ + ":18: upstreams[0].resolve_interval_ms: must be between 0 and 86400000");
}

}  // namespace
}  // namespace ktlb
