#include "ktlb/proxy_header_parser.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <string>
#include <string_view>

#include "ktlb/proxy_protocol.h"

#include "inet_test_util.h"

namespace ktlb::passthrough {
namespace {

using ktlb::testing::V4;
using ktlb::testing::V6;

// "ip:port" of an AF_INET / AF_INET6 address, for readable expectations.
std::string Text(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(s->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(s->sin6_port));
  }
  return "family " + std::to_string(ss.ss_family);
}

std::string V2(uint8_t ver_cmd, uint8_t fam, std::string_view payload) {
  std::string out(kProxyV2Signature, sizeof(kProxyV2Signature));
  out.push_back(static_cast<char>(ver_cmd));
  out.push_back(static_cast<char>(fam));
  out.push_back(static_cast<char>(payload.size() >> 8));
  out.push_back(static_cast<char>(payload.size() & 0xff));
  out.append(payload);
  return out;
}

// Every proper prefix of a header needs more, and the header decides once
// whole: the answer never depends on how the bytes were split.
void ExpectNeedsEveryByte(std::string_view header) {
  for (size_t n = 0; n < header.size(); ++n) {
    EXPECT_EQ(ParseProxyHeader(header.substr(0, n)).status, ProxyHeaderStatus::kNeedMore)
        << "prefix of " << n << " bytes";
  }
}

constexpr std::string_view kHello = "\x16\x03\x01\x02\x00\x01";  // a ClientHello's start

TEST(ProxyHeaderV1, Tcp4) {
  const std::string header = "PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n";
  ExpectNeedsEveryByte(header);
  ProxyHeaderResult r = ParseProxyHeader(header + std::string(kHello));
  ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << r.error;
  EXPECT_EQ(r.version, 1);
  EXPECT_EQ(r.consumed, header.size());
  ASSERT_TRUE(r.has_addresses);
  EXPECT_EQ(Text(r.source), "203.0.113.7:51234");
  EXPECT_EQ(Text(r.destination), "192.0.2.1:443");
}

TEST(ProxyHeaderV1, Tcp6) {
  const std::string header = "PROXY TCP6 2001:db8::1 2001:db8::2 1 8443\r\n";
  ProxyHeaderResult r = ParseProxyHeader(header);
  ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << r.error;
  EXPECT_EQ(r.consumed, header.size());
  EXPECT_EQ(Text(r.source), "[2001:db8::1]:1");
  EXPECT_EQ(Text(r.destination), "[2001:db8::2]:8443");
}

TEST(ProxyHeaderV1, UnknownKeepsTheSocketAddresses) {
  for (std::string header : {"PROXY UNKNOWN\r\n",
                             "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"}) {
    ProxyHeaderResult r = ParseProxyHeader(header + "rest");
    ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << header;
    EXPECT_EQ(r.consumed, header.size());
    EXPECT_FALSE(r.has_addresses);
  }
}

TEST(ProxyHeaderV1, LongestLineIsAccepted) {
  // The specification's worst case: 107 bytes with CRLF.
  const std::string header =
      "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
      "65535 65535\r\n";
  ASSERT_EQ(header.size(), kProxyV1MaxBytes);
  ExpectNeedsEveryByte(header);
  ProxyHeaderResult r = ParseProxyHeader(header);
  ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << r.error;
  EXPECT_EQ(r.consumed, kProxyV1MaxBytes);
}

TEST(ProxyHeaderV1, NoLineEndWithin107BytesFails) {
  const std::string line = "PROXY UNKNOWN " + std::string(200, 'x');
  ProxyHeaderResult r = ParseProxyHeader(line.substr(0, kProxyV1MaxBytes - 2));
  EXPECT_EQ(r.status, ProxyHeaderStatus::kNeedMore);
  r = ParseProxyHeader(line.substr(0, kProxyV1MaxBytes - 1));
  EXPECT_EQ(r.status, ProxyHeaderStatus::kFailed);
  EXPECT_EQ(r.failure, ProxyHeaderFailure::kInvalidV1);
  EXPECT_EQ(ParseProxyHeader(line).failure, ProxyHeaderFailure::kInvalidV1);
}

TEST(ProxyHeaderV1, MalformedLines) {
  for (const char* line : {
           "PROXY\r\n",
           "PROXY \r\n",
           "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
           "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n",  // family mismatch
           "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  // leading zero
           "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  // LF without CR
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
           "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
       }) {
    ProxyHeaderResult r = ParseProxyHeader(line);
    EXPECT_EQ(r.status, ProxyHeaderStatus::kFailed) << line;
    EXPECT_EQ(r.failure, ProxyHeaderFailure::kInvalidV1) << line;
    EXPECT_STRNE(r.error, "") << line;
  }
}

TEST(ProxyHeaderV2, Tcp4WithTlvs) {
  std::string payload("\xcb\x00\x71\x07" "\xc0\x00\x02\x01" "\xc8\x22" "\x01\xbb", 12);
  payload += std::string("\x04\x00\x03" "abc", 6);  // a TLV (PP2_TYPE_NOOP), skipped
  const std::string header = V2(kProxyV2Proxy, kProxyV2Tcp4, payload);
  ExpectNeedsEveryByte(header);
  ProxyHeaderResult r = ParseProxyHeader(header + std::string(kHello));
  ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << r.error;
  EXPECT_EQ(r.version, 2);
  EXPECT_EQ(r.consumed, header.size());
  ASSERT_TRUE(r.has_addresses);
  EXPECT_EQ(Text(r.source), "203.0.113.7:51234");
  EXPECT_EQ(Text(r.destination), "192.0.2.1:443");
}

// What ktlb's own writer sends, ktlb's reader reads back.
TEST(ProxyHeaderV2, ReadsWhatTheWriterWrites) {
  struct Case {
    sockaddr_storage client, local;
    const char* source;
    const char* destination;
  } cases[] = {
      {V4("198.51.100.9", 40000), V4("127.0.0.1", 8444), "198.51.100.9:40000", "127.0.0.1:8444"},
      {V6("2001:db8::7", 1), V6("::1", 443), "[2001:db8::7]:1", "[::1]:443"},
      {V4("10.0.0.1", 5), V6("::1", 443), "[::ffff:10.0.0.1]:5", "[::1]:443"},
  };
  for (const Case& c : cases) {
    std::string header;
    AppendProxyV2Header(c.client, c.local, &header);
    ProxyHeaderResult r = ParseProxyHeader(header);
    ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << r.error;
    EXPECT_EQ(r.consumed, header.size());
    ASSERT_TRUE(r.has_addresses);
    EXPECT_EQ(Text(r.source), c.source);
    EXPECT_EQ(Text(r.destination), c.destination);
  }
}

TEST(ProxyHeaderV2, LocalAndUnusableFamiliesKeepTheSocketAddresses) {
  const std::string inet4(12, '\x01');
  const std::string unix_block(216, '\0');
  for (const std::string& header : {
           V2(kProxyV2Local, 0x00, ""),                 // a balancer's health check
           V2(kProxyV2Local, kProxyV2Tcp4, inet4),      // LOCAL: the block is ignored
           V2(kProxyV2Proxy, 0x00, ""),                 // UNSPEC
           V2(kProxyV2Proxy, 0x31, unix_block),         // UNIX stream
           V2(kProxyV2Proxy, 0x12, inet4),              // UDP over IPv4
       }) {
    ProxyHeaderResult r = ParseProxyHeader(header);
    ASSERT_EQ(r.status, ProxyHeaderStatus::kDone) << r.error;
    EXPECT_EQ(r.consumed, header.size());
    EXPECT_FALSE(r.has_addresses);
  }
}

TEST(ProxyHeaderV2, Malformed) {
  const std::string inet4(12, '\x01');
  struct Case {
    std::string bytes;
    size_t decided_at;  // the byte count that proves it
  } cases[] = {
      {V2(0x11, kProxyV2Tcp4, inet4), 13},                      // version 1
      {V2(0x22, kProxyV2Tcp4, inet4), 13},                      // command 2
      {V2(kProxyV2Proxy, 0x41, inet4), 14},                     // family 4
      {V2(kProxyV2Proxy, 0x13, inet4), 14},                     // transport 3
      {V2(kProxyV2Proxy, kProxyV2Tcp4, inet4.substr(0, 11)), 16},  // short IPv4 block
      {V2(kProxyV2Proxy, kProxyV2Tcp6, inet4), 16},             // short IPv6 block
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ParseProxyHeader(std::string_view(c.bytes).substr(0, c.decided_at - 1)).status,
              ProxyHeaderStatus::kNeedMore);
    ProxyHeaderResult r = ParseProxyHeader(std::string_view(c.bytes).substr(0, c.decided_at));
    EXPECT_EQ(r.status, ProxyHeaderStatus::kFailed);
    EXPECT_EQ(r.failure, ProxyHeaderFailure::kInvalidV2);
    EXPECT_EQ(ParseProxyHeader(c.bytes).failure, ProxyHeaderFailure::kInvalidV2);
  }
}

TEST(ProxyHeader, MissingIsRefusedOnTheFirstWrongByte) {
  for (std::string_view bytes : {kHello, std::string_view("GET / HTTP/1.1\r\n"),
                                 std::string_view("PROXX"), std::string_view("\r\n\r\n\0X", 6)}) {
    ProxyHeaderResult r = ParseProxyHeader(bytes);
    EXPECT_EQ(r.status, ProxyHeaderStatus::kFailed);
    EXPECT_EQ(r.failure, ProxyHeaderFailure::kMissing);
  }
  // A TLS client is refused on its first byte.
  EXPECT_EQ(ParseProxyHeader(kHello.substr(0, 1)).status, ProxyHeaderStatus::kFailed);
  EXPECT_EQ(ParseProxyHeader("").status, ProxyHeaderStatus::kNeedMore);
  EXPECT_EQ(ParseProxyHeader("PROX").status, ProxyHeaderStatus::kNeedMore);
  EXPECT_EQ(ParseProxyHeader(std::string_view("\r\n\r\n\0\r", 6)).status,
            ProxyHeaderStatus::kNeedMore);
}

TEST(ProxyHeader, FailureLabels) {
  EXPECT_STREQ(ProxyHeaderFailureLabel(ProxyHeaderFailure::kMissing), "missing");
  EXPECT_STREQ(ProxyHeaderFailureLabel(ProxyHeaderFailure::kInvalidV1), "invalid_v1");
  EXPECT_STREQ(ProxyHeaderFailureLabel(ProxyHeaderFailure::kInvalidV2), "invalid_v2");
  EXPECT_STREQ(ProxyHeaderFailureLabel(ProxyHeaderFailure::kTruncated), "truncated");
  EXPECT_STREQ(ProxyHeaderFailureLabel(ProxyHeaderFailure::kTimeout), "timeout");
}

}  // namespace
}  // namespace ktlb::passthrough
