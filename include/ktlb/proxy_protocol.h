// The PROXY protocol v2 header (haproxy's proxy-protocol.txt, section 2.2): a
// binary preamble a passthrough listener sends to a backend before the
// client's bytes, so the backend learns the client's address although ktlb,
// not the client, connected to it.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>

namespace ktlb::passthrough {

// The v2 format (section 2.2), shared by this writer and the parser
// (proxy_header_parser.h).
inline constexpr char kProxyV2Signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                               '\n', 'Q',  'U',  'I',  'T',  '\n'};
inline constexpr uint8_t kProxyV2Local = 0x20;  // version 2, command LOCAL
inline constexpr uint8_t kProxyV2Proxy = 0x21;  // version 2, command PROXY
inline constexpr uint8_t kProxyV2Tcp4 = 0x11;   // AF_INET, STREAM
inline constexpr uint8_t kProxyV2Tcp6 = 0x21;   // AF_INET6, STREAM
inline constexpr uint16_t kProxyV2Inet4Bytes = 12;   // two addresses, two ports
inline constexpr uint16_t kProxyV2Inet6Bytes = 36;
inline constexpr uint16_t kProxyV2UnixBytes = 216;

// Appends the v2 header for a proxied TCP connection from `client` to
// `local` (the address the client connected to): command PROXY, family
// TCP over IPv4 or IPv6, no TLVs. An IPv4 and an IPv6 address together are
// sent as IPv6 (the IPv4 one mapped), as the format has one family per
// header. Families other than AF_INET/AF_INET6 give the LOCAL command
// (the backend then uses the connection's own addresses).
void AppendProxyV2Header(const sockaddr_storage& client, const sockaddr_storage& local,
                         std::string* out);

}  // namespace ktlb::passthrough
