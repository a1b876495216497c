#include "ktlb/proxy_protocol.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstring>
#include <string>

#include "inet_test_util.h"

namespace ktlb::passthrough {
namespace {

using ktlb::testing::V4;
using ktlb::testing::V6;

std::string Hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(d[c >> 4]);
    out.push_back(d[c & 15]);
  }
  return out;
}

// The signature, then version/command, family, length: haproxy's
// proxy-protocol.txt section 2.2.
constexpr const char* kSig = "0d0a0d0a000d0a515549540a";

TEST(ProxyV2, Ipv4) {
  std::string out = "x";  // appends
  AppendProxyV2Header(V4("203.0.113.7", 51234), V4("192.0.2.1", 443), &out);
  EXPECT_EQ(Hex(out), std::string("78") + kSig + "21" + "11" + "000c" + "cb007107" + "c0000201" +
                          "c822" + "01bb");
  EXPECT_EQ(out.size(), 1u + 16 + 12);
}

TEST(ProxyV2, Ipv6) {
  std::string out;
  AppendProxyV2Header(V6("2001:db8::1", 1), V6("2001:db8::2", 8443), &out);
  EXPECT_EQ(Hex(out), std::string(kSig) + "21" + "21" + "0024" + "20010db8000000000000000000000001" +
                          "20010db8000000000000000000000002" + "0001" + "20fb");
}

TEST(ProxyV2, MixedFamiliesAreSentAsMappedIpv6) {
  std::string out;
  AppendProxyV2Header(V4("10.0.0.1", 5), V6("::1", 443), &out);
  EXPECT_EQ(Hex(out).substr(24, 8), "21210024");
  EXPECT_EQ(Hex(out).substr(32, 32), "00000000000000000000ffff0a000001");
}

TEST(ProxyV2, UnknownFamilyIsLocal) {
  sockaddr_storage unix_addr{};
  unix_addr.ss_family = AF_UNIX;
  std::string out;
  AppendProxyV2Header(unix_addr, V4("127.0.0.1", 1), &out);
  EXPECT_EQ(Hex(out), std::string(kSig) + "20" + "00" + "0000");
}

}  // namespace
}  // namespace ktlb::passthrough
