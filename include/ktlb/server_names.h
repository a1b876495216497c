// Host names in an upstream's `servers` ("app.internal:9001"): telling a
// name from an address, resolving names into servers, and merging a new
// answer into a config.
//
// Everything here is pure except ResolveHost, which calls getaddrinfo and
// blocks for as long as DNS takes: it runs at startup, on the control
// thread for a reload, and on the DNS refresher's own thread, never on a
// worker. --check never resolves: a config's syntax does not depend on
// what DNS says today.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ktlb/config.h"

namespace ktlb {

// "host:port" or "[v6]:port", split; the host is not looked at.
struct HostPort {
  std::string host;  // without the brackets
  uint16_t port = 0;
  bool bracketed = false;
};
absl::StatusOr<HostPort> SplitHostPort(std::string_view text);

// Whether `host` is a DNS name (RFC 1123: dot-separated labels of letters,
// digits and inner hyphens, 1..63 bytes each, 253 in all, one final dot
// allowed) whose last label is not all digits: "10.1.2" is a malformed
// address, not a name (getaddrinfo would read it as 10.1.0.2).
bool IsHostName(std::string_view host);

// A resolved address, its text in the form the config would write it:
// "10.0.0.7:9001", "[fd00::7]:9001".
SocketAddress SocketAddressOf(const sockaddr* sa, socklen_t len);

// Sorted by text, duplicates removed: DNS servers rotate the order of their
// answers, and a new order is no change.
void NormalizeAddresses(std::vector<SocketAddress>* addresses);
bool SameAddresses(const std::vector<SocketAddress>& a, const std::vector<SocketAddress>& b);

// Resolves a name for TCP to `port`; an empty answer is an error.
using HostResolver =
    std::function<absl::StatusOr<std::vector<SocketAddress>>(const std::string& host, uint16_t port)>;
// getaddrinfo, IPv4 and IPv6 (A and AAAA, or whatever /etc/hosts says),
// normalised. Blocks.
absl::StatusOr<std::vector<SocketAddress>> ResolveHost(const std::string& host, uint16_t port);

// Rebuilds upstream->servers from upstream->server_entries: each address of
// each entry one server, with the entry's weight, in the order written.
void ExpandServers(UpstreamConfig* upstream);

// Puts `addresses` (normalised) as the answer for every entry of `upstream`
// naming host:port and expands the servers again. True if that changed them.
bool MergeAnswer(UpstreamConfig* upstream, std::string_view host, uint16_t port,
                 std::vector<SocketAddress> addresses);

// Whether any upstream of `config` names a host.
bool HasServerNames(const Config& config);

// `config` with every name resolved (the same config when it has none).
// A name that does not resolve fails with "FILE:LINE: upstreams[i].servers[j]:
// cannot resolve \"NAME\": why" -- unless `previous` (the running config, or
// null at startup) has an answer for it in the upstream of the same name:
// then that last good answer is kept and a line saying so is added to
// `notes`, so a DNS outage does not make every reload fail.
absl::StatusOr<std::shared_ptr<const Config>> ResolveServerNames(
    std::shared_ptr<const Config> config, const Config* previous, const HostResolver& resolve,
    std::vector<std::string>* notes);

}  // namespace ktlb
