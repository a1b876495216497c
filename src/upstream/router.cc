#include "ktlb/router.h"

#include <strings.h>

#include "ktlb/host_pattern.h"

namespace ktlb {

namespace {
// Debian's abseil is built with its own string_view type, so this stays std-only.
bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}
}  // namespace

bool SniPatternMatches(std::string_view pattern, std::string_view name) {
  return HostPatternMatches(pattern, name);
}

std::string_view HostWithoutPort(std::string_view host) {
  if (!host.empty() && host.front() == '[') {  // [v6]:port
    size_t end = host.find(']');
    return end == std::string_view::npos ? host : host.substr(0, end + 1);
  }
  size_t colon = host.rfind(':');
  if (colon != std::string_view::npos) host = host.substr(0, colon);
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  return host;
}

Router::Router(const Config& config) : by_listener_(config.listeners.size()) {
  for (const RouteConfig& rc : config.routes) {
    for (size_t l = 0; l < config.listeners.size(); ++l) {
      if (config.listeners[l].name != rc.listener) continue;
      Route r{rc.sni, rc.host, rc.path_prefix, rc.alpn, -1, rc.require_client_cert};
      for (size_t u = 0; u < config.upstreams.size(); ++u) {
        if (config.upstreams[u].name == rc.upstream) r.upstream = static_cast<int>(u);
      }
      by_listener_[l].push_back(std::move(r));
    }
  }
}

bool AlpnListOffers(std::string_view list, std::string_view proto) {
  while (!list.empty()) {
    size_t n = static_cast<unsigned char>(list.front());
    if (n + 1 > list.size()) return false;
    if (list.substr(1, n) == proto) return true;
    list.remove_prefix(n + 1);
  }
  return false;
}

int Router::Match(size_t listener_index, std::string_view sni, std::string_view host,
                  std::string_view path, std::string_view alpn_offered) const {
  const Route* r = Find(listener_index, sni, host, path, alpn_offered);
  return r != nullptr ? r->upstream : -1;
}

RouteMatch Router::MatchRoute(size_t listener_index, std::string_view sni, std::string_view host,
                              std::string_view path) const {
  const Route* r = Find(listener_index, sni, host, path, {});
  if (r == nullptr) return RouteMatch{};
  return RouteMatch{r->upstream, r->require_client_cert};
}

const Router::Route* Router::Find(size_t listener_index, std::string_view sni,
                                  std::string_view host, std::string_view path,
                                  std::string_view alpn_offered) const {
  if (listener_index >= by_listener_.size()) return nullptr;
  std::string_view bare_host = HostWithoutPort(host);
  for (const Route& r : by_listener_[listener_index]) {
    if (!r.sni.empty() && !SniPatternMatches(r.sni, sni)) continue;
    if (!r.host.empty() && !EqualsIgnoreCase(r.host, bare_host)) continue;
    if (!r.path_prefix.empty() && !path.starts_with(r.path_prefix)) continue;
    if (!r.alpn.empty() && !AlpnListOffers(alpn_offered, r.alpn)) continue;
    return &r;
  }
  return nullptr;
}

bool Router::RoutesSni(size_t listener_index, std::string_view sni) const {
  if (listener_index >= by_listener_.size()) return false;
  for (const Route& r : by_listener_[listener_index]) {
    if (!r.sni.empty() && SniPatternMatches(r.sni, sni)) return true;
  }
  return false;
}

}  // namespace ktlb
