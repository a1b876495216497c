// Socket addresses for unit tests that build or parse addresses by hand.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>

namespace ktlb::testing {

inline sockaddr_storage V4(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  auto* s = reinterpret_cast<sockaddr_in*>(&ss);
  s->sin_family = AF_INET;
  s->sin_port = htons(port);
  inet_pton(AF_INET, ip, &s->sin_addr);
  return ss;
}

inline sockaddr_storage V6(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
  s->sin6_family = AF_INET6;
  s->sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &s->sin6_addr);
  return ss;
}

}  // namespace ktlb::testing
