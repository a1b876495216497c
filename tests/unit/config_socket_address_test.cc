// Tests for ParseSocketAddress: the accepted spellings fill the sockaddr the
// kernel will see, and everything else is refused with a reason (no DNS).

#include <arpa/inet.h>

#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "ktlb/config.h"

namespace ktlb {
namespace {

sockaddr_in AsV4(const SocketAddress& a) {
  sockaddr_in sin{};
  std::memcpy(&sin, &a.storage, sizeof(sin));
  return sin;
}

sockaddr_in6 AsV6(const SocketAddress& a) {
  sockaddr_in6 sin6{};
  std::memcpy(&sin6, &a.storage, sizeof(sin6));
  return sin6;
}

TEST(ConfigSocketAddressTest, Ipv4) {
  absl::StatusOr<SocketAddress> a = ParseSocketAddress("127.0.0.1:8443");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->len, sizeof(sockaddr_in));
  EXPECT_EQ(a->text, "127.0.0.1:8443");
  const sockaddr_in sin = AsV4(*a);
  EXPECT_EQ(sin.sin_family, AF_INET);
  EXPECT_EQ(ntohs(sin.sin_port), 8443);
  EXPECT_EQ(ntohl(sin.sin_addr.s_addr), 0x7f000001u);
}

TEST(ConfigSocketAddressTest, Ipv6InBrackets) {
  absl::StatusOr<SocketAddress> a = ParseSocketAddress("[::1]:8443");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->len, sizeof(sockaddr_in6));
  const sockaddr_in6 sin6 = AsV6(*a);
  EXPECT_EQ(sin6.sin6_family, AF_INET6);
  EXPECT_EQ(ntohs(sin6.sin6_port), 8443);
  EXPECT_EQ(std::memcmp(&sin6.sin6_addr, &in6addr_loopback, sizeof(in6_addr)), 0);
}

TEST(ConfigSocketAddressTest, LocalhostIsLoopbackWithoutDns) {
  for (const char* text : {"localhost:80", "LocalHost:80"}) {
    absl::StatusOr<SocketAddress> a = ParseSocketAddress(text);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->text, text);  // kept as written, for logs
    EXPECT_EQ(ntohl(AsV4(*a).sin_addr.s_addr), 0x7f000001u);
    EXPECT_EQ(ntohs(AsV4(*a).sin_port), 80);
  }
}

TEST(ConfigSocketAddressTest, PortBounds) {
  absl::StatusOr<SocketAddress> zero = ParseSocketAddress("0.0.0.0:0");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(ntohs(AsV4(*zero).sin_port), 0);
  absl::StatusOr<SocketAddress> max = ParseSocketAddress("[::]:65535");
  ASSERT_TRUE(max.ok()) << max.status();
  EXPECT_EQ(ntohs(AsV6(*max).sin6_port), 65535);
}

TEST(ConfigSocketAddressTest, Rejected) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"127.0.0.1:65536", "invalid address \"127.0.0.1:65536\": port must be a number between 0 "
                          "and 65535"},
      {"127.0.0.1:+80", "invalid address \"127.0.0.1:+80\": port must be a number between 0 and "
                        "65535"},
      {"127.0.0.1: 80", "invalid address \"127.0.0.1: 80\": port must be a number between 0 and "
                        "65535"},
      {"127.0.0.1:", "invalid address \"127.0.0.1:\": port must be a number between 0 and 65535"},
      {"127.0.0.1:0000080", "invalid address \"127.0.0.1:0000080\": port must be a number between "
                            "0 and 65535"},
      {"127.0.0.1", "invalid address \"127.0.0.1\": expected \"host:port\" or \"[ipv6]:port\""},
      {"", "invalid address \"\": expected \"host:port\" or \"[ipv6]:port\""},
      {":80", "invalid address \":80\": missing host"},
      {"::1:80", "invalid address \"::1:80\": IPv6 addresses must be in brackets, e.g. "
                 "\"[::1]:8443\""},
      {"[::1]", "invalid address \"[::1]\": expected \":port\" after ']'"},
      {"[::1]80", "invalid address \"[::1]80\": expected \":port\" after ']'"},
      {"[::1:80", "invalid address \"[::1:80\": missing ']' after IPv6 address"},
      {"[127.0.0.1]:80", "invalid address \"[127.0.0.1]:80\": not a valid IPv6 address"},
      {"[]:80", "invalid address \"[]:80\": missing host"},
      {"example.com:80", "invalid address \"example.com:80\": host must be an IPv4 address, a "
                         "bracketed IPv6 address or \"localhost\" (names are not resolved)"},
      {"1.2.3:80", "invalid address \"1.2.3:80\": host must be an IPv4 address, a bracketed IPv6 "
                   "address or \"localhost\" (names are not resolved)"},
      {"127.0.0.1\n:80", "invalid address \"127.0.0.1\\n:80\": host must be an IPv4 address, a "
                         "bracketed IPv6 address or \"localhost\" (names are not resolved)"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<SocketAddress> a = ParseSocketAddress(c.text);
    ASSERT_FALSE(a.ok()) << c.text;
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_EQ(a.status().message(), c.message) << c.text;
  }
}

}  // namespace
}  // namespace ktlb
