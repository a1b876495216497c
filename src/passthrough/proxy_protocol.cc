#include "ktlb/proxy_protocol.h"

#include <netinet/in.h>

#include <cstring>

namespace ktlb::passthrough {

namespace {

void Put16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v & 0xff));
}

// The address as 16 IPv6 bytes (IPv4 mapped), and its port in host order.
void As6(const sockaddr_storage& a, unsigned char addr[16], uint16_t* port) {
  if (a.ss_family == AF_INET6) {
    const auto* s6 = reinterpret_cast<const sockaddr_in6*>(&a);
    memcpy(addr, &s6->sin6_addr, 16);
    *port = ntohs(s6->sin6_port);
    return;
  }
  const auto* s4 = reinterpret_cast<const sockaddr_in*>(&a);
  memset(addr, 0, 10);
  addr[10] = addr[11] = 0xff;
  memcpy(addr + 12, &s4->sin_addr, 4);
  *port = ntohs(s4->sin_port);
}

}  // namespace

void AppendProxyV2Header(const sockaddr_storage& client, const sockaddr_storage& local,
                         std::string* out) {
  out->append(kProxyV2Signature, sizeof(kProxyV2Signature));
  const bool inet = [](int f) { return f == AF_INET || f == AF_INET6; }(client.ss_family) &&
                    (local.ss_family == AF_INET || local.ss_family == AF_INET6);
  if (!inet) {
    out->push_back(static_cast<char>(kProxyV2Local));
    out->push_back(0);  // AF_UNSPEC
    Put16(out, 0);
    return;
  }
  out->push_back(static_cast<char>(kProxyV2Proxy));
  if (client.ss_family == AF_INET && local.ss_family == AF_INET) {
    const auto* c = reinterpret_cast<const sockaddr_in*>(&client);
    const auto* l = reinterpret_cast<const sockaddr_in*>(&local);
    out->push_back(static_cast<char>(kProxyV2Tcp4));
    Put16(out, kProxyV2Inet4Bytes);
    out->append(reinterpret_cast<const char*>(&c->sin_addr), 4);
    out->append(reinterpret_cast<const char*>(&l->sin_addr), 4);
    Put16(out, ntohs(c->sin_port));
    Put16(out, ntohs(l->sin_port));
    return;
  }
  unsigned char src[16], dst[16];
  uint16_t src_port = 0, dst_port = 0;
  As6(client, src, &src_port);
  As6(local, dst, &dst_port);
  out->push_back(static_cast<char>(kProxyV2Tcp6));
  Put16(out, kProxyV2Inet6Bytes);
  out->append(reinterpret_cast<const char*>(src), 16);
  out->append(reinterpret_cast<const char*>(dst), 16);
  Put16(out, src_port);
  Put16(out, dst_port);
}

}  // namespace ktlb::passthrough
