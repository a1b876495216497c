#include "ktlb/server_names.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ktlb {
namespace {

bool IsLabel(std::string_view label) {
  if (label.empty() || label.size() > 63) return false;
  if (label.front() == '-' || label.back() == '-') return false;
  return std::all_of(label.begin(), label.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '-'; });
}

}  // namespace

bool IsHostName(std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty() || host.size() > 253) return false;
  std::string_view last;
  for (std::string_view rest = host;;) {
    const size_t dot = rest.find('.');
    last = rest.substr(0, dot);
    if (!IsLabel(last)) return false;
    if (dot == std::string_view::npos) break;
    rest = rest.substr(dot + 1);
  }
  return !std::all_of(last.begin(), last.end(), [](char c) { return absl::ascii_isdigit(c); });
}

SocketAddress SocketAddressOf(const sockaddr* sa, socklen_t len) {
  SocketAddress out;
  char host[INET6_ADDRSTRLEN] = "";
  if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
    out.text = absl::StrCat("[", host, "]:", ntohs(sin6->sin6_port));
    out.len = sizeof(sockaddr_in6);
  } else if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
    out.text = absl::StrCat(host, ":", ntohs(sin->sin_port));
    out.len = sizeof(sockaddr_in);
  } else {
    return out;  // len 0: not an address ktlb connects to
  }
  std::memcpy(&out.storage, sa, out.len);
  return out;
}

void NormalizeAddresses(std::vector<SocketAddress>* addresses) {
  std::sort(addresses->begin(), addresses->end(),
            [](const SocketAddress& a, const SocketAddress& b) { return a.text < b.text; });
  addresses->erase(std::unique(addresses->begin(), addresses->end(),
                               [](const SocketAddress& a, const SocketAddress& b) {
                                 return a.text == b.text;
                               }),
                   addresses->end());
}

bool SameAddresses(const std::vector<SocketAddress>& a, const std::vector<SocketAddress>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](const SocketAddress& x, const SocketAddress& y) { return x.text == y.text; });
}

absl::StatusOr<std::vector<SocketAddress>> ResolveHost(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::UnavailableError(rc == EAI_SYSTEM ? std::string(strerror(errno)) : gai_strerror(rc));
  }
  std::vector<SocketAddress> out;
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    SocketAddress a = SocketAddressOf(ai->ai_addr, ai->ai_addrlen);
    if (a.len != 0) out.push_back(std::move(a));
  }
  freeaddrinfo(res);
  if (out.empty()) return absl::UnavailableError("no IPv4 or IPv6 address");
  NormalizeAddresses(&out);
  return out;
}

void ExpandServers(UpstreamConfig* upstream) {
  upstream->servers.clear();
  for (const ServerEntry& e : upstream->server_entries) {
    for (const SocketAddress& a : e.addresses) {
      upstream->servers.push_back(UpstreamServer{a, e.weight, e.host});
    }
  }
}

bool MergeAnswer(UpstreamConfig* upstream, std::string_view host, uint16_t port,
                 std::vector<SocketAddress> addresses) {
  NormalizeAddresses(&addresses);
  bool changed = false;
  for (ServerEntry& e : upstream->server_entries) {
    if (e.host.empty() || e.host != host || e.port != port) continue;
    if (SameAddresses(e.addresses, addresses)) continue;
    e.addresses = addresses;
    changed = true;
  }
  if (changed) ExpandServers(upstream);
  return changed;
}

bool HasServerNames(const Config& config) {
  for (const UpstreamConfig& u : config.upstreams) {
    for (const ServerEntry& e : u.server_entries) {
      if (!e.host.empty()) return true;
    }
  }
  return false;
}

absl::StatusOr<std::shared_ptr<const Config>> ResolveServerNames(
    std::shared_ptr<const Config> config, const Config* previous, const HostResolver& resolve,
    std::vector<std::string>* notes) {
  if (!HasServerNames(*config)) return config;
  auto out = std::make_shared<Config>(*config);
  for (UpstreamConfig& u : out->upstreams) {
    const UpstreamConfig* before = previous != nullptr ? previous->FindUpstream(u.name) : nullptr;
    bool any = false;
    for (ServerEntry& e : u.server_entries) {
      if (e.host.empty()) continue;
      any = true;
      absl::StatusOr<std::vector<SocketAddress>> answer = resolve(e.host, e.port);
      if (answer.ok()) {
        e.addresses = *std::move(answer);
        NormalizeAddresses(&e.addresses);
        continue;
      }
      const ServerEntry* last = nullptr;
      if (before != nullptr) {
        for (const ServerEntry& b : before->server_entries) {
          if (b.host == e.host && b.port == e.port && !b.addresses.empty()) last = &b;
        }
      }
      if (last == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(out->path, ":", std::max<uint32_t>(e.line, 1), ": ", e.key,
                         ": cannot resolve \"", e.host, "\": ", answer.status().message()));
      }
      e.addresses = last->addresses;
      if (notes != nullptr) {
        notes->push_back(absl::StrCat(out->path, ":", e.line, ": ", e.key, ": cannot resolve \"",
                                      e.host, "\" (", answer.status().message(), "): keeping its ",
                                      e.addresses.size(), " last good address(es)"));
      }
    }
    if (any) ExpandServers(&u);
  }
  return std::shared_ptr<const Config>(std::move(out));
}

}  // namespace ktlb
