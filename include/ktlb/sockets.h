// Socket setup done once per worker or per upstream connection attempt.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

#include "absl/status/statusor.h"

namespace ktlb {

// A non-blocking TCP listen socket with SO_REUSEPORT (each worker binds its
// own; the kernel spreads connections across them).
absl::StatusOr<int> OpenListenSocket(const sockaddr_storage& addr, socklen_t len, int backlog);

// A non-blocking TCP socket for an upstream connect of `family`, TCP_NODELAY set.
absl::StatusOr<int> OpenClientSocket(int family);

// "127.0.0.1" / "2001:db8::1" and the port, from an accepted peer address.
std::string AddressIp(const sockaddr_storage& addr);
uint16_t AddressPort(const sockaddr_storage& addr);

}  // namespace ktlb
