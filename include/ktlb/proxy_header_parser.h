// The PROXY protocol header a listener with accept_proxy = true reads before
// anything else (haproxy's proxy-protocol.txt): v1, one text line of at most
// 107 bytes, or v2, a 16-byte binary preamble and its payload. An L4
// balancer in front of ktlb (haproxy "send-proxy" / "send-proxy-v2", a cloud
// NLB) sends it so ktlb learns the client's address although the balancer
// made the TCP connection.
//
// Pure: no I/O, no allocation, no state between calls. ParseProxyHeader is
// given everything received so far, from the connection's first byte, and
// answers from those bytes alone; a caller re-parses the longer buffer when
// more arrives (the header is small: nothing is worth remembering). The
// signatures, the v1 line's characters and the v2 version, command and
// family bytes are judged as they arrive, so a client that speaks TLS at
// once is refused on its first byte; the v1 fields once the line is whole.
// Once an answer other than kNeedMore is given, every longer buffer with the
// same prefix gets the same answer: segmentation cannot change it.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ktlb::passthrough {

// Why a connection's PROXY header was refused (metric labels, in order).
// The first three come from the parser, the last two from the connection.
enum class ProxyHeaderFailure : uint8_t {
  kMissing,    // the first bytes are neither "PROXY " nor the v2 signature
  kInvalidV1,  // a v1 line that breaks the format (or runs past 107 bytes)
  kInvalidV2,  // a v2 header that breaks the format
  kTruncated,  // the peer closed before the header was complete
  kTimeout,    // not complete within the handshake timeout
  kCount,
};
// "missing", "invalid_v1", "invalid_v2", "truncated", "timeout".
const char* ProxyHeaderFailureLabel(ProxyHeaderFailure f);

enum class ProxyHeaderStatus : uint8_t { kNeedMore, kDone, kFailed };

struct ProxyHeaderResult {
  ProxyHeaderStatus status = ProxyHeaderStatus::kNeedMore;
  // kDone: how many of the bytes were the header; what follows is the
  // client's own stream (its TLS ClientHello), untouched.
  size_t consumed = 0;
  // kDone: 1 or 2.
  uint8_t version = 0;
  // kDone: true when the header carries the client's addresses (v1 TCP4 /
  // TCP6, v2 PROXY over TCP on IPv4 / IPv6). False for v1 UNKNOWN, v2 LOCAL
  // (the balancer's own health checks) and v2 PROXY with a family or
  // transport ktlb cannot use for a TCP client (UNSPEC, UNIX, UDP): the
  // connection keeps the socket's own addresses, as the specification asks.
  bool has_addresses = false;
  sockaddr_storage source{};       // the client (AF_INET / AF_INET6)
  sockaddr_storage destination{};  // the address the client connected to
  // kFailed.
  ProxyHeaderFailure failure = ProxyHeaderFailure::kMissing;
  const char* error = "";  // a static string saying what was wrong
};

// v1's longest line, "\r\n" included (proxy-protocol.txt 2.1).
inline constexpr size_t kProxyV1MaxBytes = 107;
// v2: the fixed part; the payload length follows in its last two bytes.
inline constexpr size_t kProxyV2HeaderBytes = 16;

// `bytes` = everything received so far from the peer, from its first byte.
ProxyHeaderResult ParseProxyHeader(std::string_view bytes);

}  // namespace ktlb::passthrough
