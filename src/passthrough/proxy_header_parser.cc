#include "ktlb/proxy_header_parser.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "ktlb/proxy_protocol.h"

namespace ktlb::passthrough {

const char* ProxyHeaderFailureLabel(ProxyHeaderFailure f) {
  switch (f) {
    case ProxyHeaderFailure::kMissing: return "missing";
    case ProxyHeaderFailure::kInvalidV1: return "invalid_v1";
    case ProxyHeaderFailure::kInvalidV2: return "invalid_v2";
    case ProxyHeaderFailure::kTruncated: return "truncated";
    case ProxyHeaderFailure::kTimeout: return "timeout";
    case ProxyHeaderFailure::kCount: break;
  }
  return "unknown";
}

namespace {

constexpr std::string_view kV1Signature = "PROXY";
constexpr std::string_view kV2Signature(kProxyV2Signature, sizeof(kProxyV2Signature));

ProxyHeaderResult Fail(ProxyHeaderFailure why, const char* error) {
  ProxyHeaderResult r;
  r.status = ProxyHeaderStatus::kFailed;
  r.failure = why;
  r.error = error;
  return r;
}

ProxyHeaderResult NeedMore() { return ProxyHeaderResult{}; }

ProxyHeaderResult Done(uint8_t version, size_t consumed) {
  ProxyHeaderResult r;
  r.status = ProxyHeaderStatus::kDone;
  r.version = version;
  r.consumed = consumed;
  return r;
}

// The next space-separated field of a v1 line, or false when there is none
// (an empty field is two spaces in a row: not the format).
bool NextField(std::string_view* rest, std::string_view* field) {
  if (rest->empty() || rest->front() != ' ') return false;
  rest->remove_prefix(1);
  size_t end = std::min(rest->find(' '), rest->size());
  *field = rest->substr(0, end);
  rest->remove_prefix(end);
  return !field->empty();
}

// inet_pton wants a NUL-terminated string; an IPv6 address is at most 45
// characters (INET6_ADDRSTRLEN with its NUL).
bool ParseIp(std::string_view text, int family, void* out) {
  char buf[INET6_ADDRSTRLEN];
  if (text.size() >= sizeof(buf)) return false;
  memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  return inet_pton(family, buf, out) == 1;
}

// 0..65535 in decimal without leading zeros (proxy-protocol.txt 2.1).
bool ParsePort(std::string_view text, uint16_t* port) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return false;
  uint32_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v > 65535) return false;
  *port = static_cast<uint16_t>(v);
  return true;
}

void SetAddress(sockaddr_storage* ss, int family, const void* addr, uint16_t port) {
  *ss = sockaddr_storage{};
  if (family == AF_INET) {
    auto* s4 = reinterpret_cast<sockaddr_in*>(ss);
    s4->sin_family = AF_INET;
    memcpy(&s4->sin_addr, addr, 4);
    s4->sin_port = htons(port);
  } else {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(ss);
    s6->sin6_family = AF_INET6;
    memcpy(&s6->sin6_addr, addr, 16);
    s6->sin6_port = htons(port);
  }
}

// "PROXY TCP4 src dst sport dport" (the line without its CRLF).
ProxyHeaderResult ParseV1Line(std::string_view line, size_t consumed) {
  std::string_view rest = line.substr(kV1Signature.size());
  std::string_view proto;
  if (!NextField(&rest, &proto)) return Fail(ProxyHeaderFailure::kInvalidV1, "no protocol");
  if (proto == "UNKNOWN") {
    // The balancer could not tell: whatever follows is to be ignored
    // (section 2.1), and the socket's own addresses stand.
    return Done(1, consumed);
  }
  int family = 0;
  if (proto == "TCP4") {
    family = AF_INET;
  } else if (proto == "TCP6") {
    family = AF_INET6;
  } else {
    return Fail(ProxyHeaderFailure::kInvalidV1, "protocol is not TCP4, TCP6 or UNKNOWN");
  }
  std::string_view src, dst, sport, dport;
  if (!NextField(&rest, &src) || !NextField(&rest, &dst) || !NextField(&rest, &sport) ||
      !NextField(&rest, &dport) || !rest.empty()) {
    return Fail(ProxyHeaderFailure::kInvalidV1, "not four fields after the protocol");
  }
  unsigned char src_addr[16], dst_addr[16];
  if (!ParseIp(src, family, src_addr) || !ParseIp(dst, family, dst_addr)) {
    return Fail(ProxyHeaderFailure::kInvalidV1, "an address does not match the protocol");
  }
  uint16_t src_port = 0, dst_port = 0;
  if (!ParsePort(sport, &src_port) || !ParsePort(dport, &dst_port)) {
    return Fail(ProxyHeaderFailure::kInvalidV1, "a port is not 0..65535");
  }
  ProxyHeaderResult r = Done(1, consumed);
  r.has_addresses = true;
  SetAddress(&r.source, family, src_addr, src_port);
  SetAddress(&r.destination, family, dst_addr, dst_port);
  return r;
}

ProxyHeaderResult ParseV1(std::string_view bytes) {
  // The line ends at its first CR, which must be followed by LF, within 107
  // bytes; before it only printable US-ASCII.
  const size_t scan = std::min(bytes.size(), kProxyV1MaxBytes - 1);
  for (size_t i = kV1Signature.size(); i < scan; ++i) {
    const char c = bytes[i];
    if (c == '\r') {
      if (i + 1 == bytes.size()) return NeedMore();
      if (bytes[i + 1] != '\n') return Fail(ProxyHeaderFailure::kInvalidV1, "CR without LF");
      return ParseV1Line(bytes.substr(0, i), i + 2);
    }
    if (c < 0x20 || c > 0x7e) {
      return Fail(ProxyHeaderFailure::kInvalidV1, "a byte that is not printable ASCII");
    }
  }
  if (scan == kProxyV1MaxBytes - 1) {
    return Fail(ProxyHeaderFailure::kInvalidV1, "no CRLF within 107 bytes");
  }
  return NeedMore();
}

uint16_t Get16(std::string_view b, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[at]) << 8 | static_cast<uint8_t>(b[at + 1]));
}

ProxyHeaderResult ParseV2(std::string_view bytes) {
  // Byte 12: version (high nibble) and command; 13: family and transport;
  // 14-15: the payload length. Each is judged as soon as it is there.
  if (bytes.size() > 12) {
    const uint8_t ver_cmd = static_cast<uint8_t>(bytes[12]);
    if (ver_cmd != kProxyV2Local && ver_cmd != kProxyV2Proxy) {
      return Fail(ProxyHeaderFailure::kInvalidV2,
                  (ver_cmd >> 4) != 2 ? "version is not 2" : "command is not LOCAL or PROXY");
    }
  }
  if (bytes.size() > 13) {
    const uint8_t fam = static_cast<uint8_t>(bytes[13]);
    if ((fam >> 4) > 3 || (fam & 0x0f) > 2) {
      return Fail(ProxyHeaderFailure::kInvalidV2, "undefined address family or transport");
    }
  }
  if (bytes.size() < kProxyV2HeaderBytes) return NeedMore();
  const bool proxy = static_cast<uint8_t>(bytes[12]) == kProxyV2Proxy;
  const uint8_t family = static_cast<uint8_t>(bytes[13]) >> 4;
  const uint8_t transport = static_cast<uint8_t>(bytes[13]) & 0x0f;
  const uint16_t len = Get16(bytes, 14);
  // The address block a family needs must fit in the payload (TLVs may
  // follow it); LOCAL carries no addresses worth checking.
  static constexpr uint16_t kBlock[4] = {0, kProxyV2Inet4Bytes, kProxyV2Inet6Bytes,
                                         kProxyV2UnixBytes};
  if (proxy && len < kBlock[family]) {
    return Fail(ProxyHeaderFailure::kInvalidV2, "payload shorter than its addresses");
  }
  const size_t total = kProxyV2HeaderBytes + len;
  if (bytes.size() < total) return NeedMore();
  ProxyHeaderResult r = Done(2, total);
  // LOCAL (the balancer's own connection), UNSPEC, UNIX and UDP: the
  // socket's own addresses stand (section 2.2).
  if (!proxy || transport != 1 || (family != 1 && family != 2)) return r;
  const std::string_view block = bytes.substr(kProxyV2HeaderBytes);
  const int af = family == 1 ? AF_INET : AF_INET6;
  const size_t alen = family == 1 ? 4 : 16;
  r.has_addresses = true;
  SetAddress(&r.source, af, block.data(), Get16(block, 2 * alen));
  SetAddress(&r.destination, af, block.data() + alen, Get16(block, 2 * alen + 2));
  return r;
}

// Whether `bytes` (possibly short) agrees with `signature` so far.
bool MatchesSoFar(std::string_view bytes, std::string_view signature) {
  const size_t n = std::min(bytes.size(), signature.size());
  return bytes.substr(0, n) == signature.substr(0, n);
}

}  // namespace

ProxyHeaderResult ParseProxyHeader(std::string_view bytes) {
  if (bytes.empty()) return NeedMore();
  if (MatchesSoFar(bytes, kV1Signature)) {
    return bytes.size() <= kV1Signature.size() ? NeedMore() : ParseV1(bytes);
  }
  if (MatchesSoFar(bytes, kV2Signature)) {
    return bytes.size() <= kV2Signature.size() ? NeedMore() : ParseV2(bytes);
  }
  return Fail(ProxyHeaderFailure::kMissing, "the connection does not start with a PROXY header");
}

}  // namespace ktlb::passthrough
