// The PROXY protocol v2 header (haproxy's proxy-protocol.txt, section 2.2): a
// binary preamble a passthrough listener sends to a backend before the
// client's bytes, so the backend learns the client's address although ktlb,
// not the client, connected to it.
#pragma once

#include <sys/socket.h>

#include <string>

namespace ktlb::passthrough {

// Appends the v2 header for a proxied TCP connection from `client` to
// `local` (the address the client connected to): command PROXY, family
// TCP over IPv4 or IPv6, no TLVs. An IPv4 and an IPv6 address together are
// sent as IPv6 (the IPv4 one mapped), as the format has one family per
// header. Families other than AF_INET/AF_INET6 give the LOCAL command
// (the backend then uses the connection's own addresses).
void AppendProxyV2Header(const sockaddr_storage& client, const sockaddr_storage& local,
                         std::string* out);

}  // namespace ktlb::passthrough
