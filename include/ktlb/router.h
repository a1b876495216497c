// Route selection: pure functions over the config (balancing is in
// balancer.h).
//
// Routes are compiled once per config snapshot into per-listener lists; a
// request is matched in file order (first match wins) on SNI, Host and path
// prefix, giving an upstream index.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/config.h"

namespace ktlb {

// True when `name` matches `pattern`: exact (case-insensitive) or a
// single-label wildcard "*.example.test". An empty pattern matches anything.
// The same rules as certificate selection: see HostPatternMatches().
bool SniPatternMatches(std::string_view pattern, std::string_view name);

// True when the wire-format ALPN list (length byte + name, repeated) names
// `proto` exactly (RFC 7301: byte strings, case-sensitive).
bool AlpnListOffers(std::string_view list, std::string_view proto);

// Host header value without the port and a trailing dot, for comparison.
std::string_view HostWithoutPort(std::string_view host);

// The route a request matched.
struct RouteMatch {
  int upstream = -1;  // -1: no route matches
  // 403 unless the connection has a verified client certificate.
  bool require_client_cert = false;
};

class Router {
 public:
  explicit Router(const Config& config);
  // The route for a request on a terminate listener (see Match).
  RouteMatch MatchRoute(size_t listener_index, std::string_view sni, std::string_view host,
                        std::string_view path) const;
  // The upstream index for a request, or -1 when no route matches.
  // `alpn_offered`: the ClientHello's ALPN protocol_name_list as sent (a
  // length byte before each name; "" when the client offered none), for
  // routes with an `alpn` matcher (passthrough listeners).
  int Match(size_t listener_index, std::string_view sni, std::string_view host,
            std::string_view path, std::string_view alpn_offered = {}) const;
  // True when a route of the listener with an sni matcher matches `sni`
  // (catch-all routes do not count): what unknown_sni = "reject" asks of a
  // passthrough ClientHello.
  bool RoutesSni(size_t listener_index, std::string_view sni) const;

 private:
  struct Route {
    std::string sni, host, path_prefix, alpn;
    int upstream = -1;
    bool require_client_cert = false;
  };
  const Route* Find(size_t listener_index, std::string_view sni, std::string_view host,
                    std::string_view path, std::string_view alpn_offered) const;
  std::vector<std::vector<Route>> by_listener_;
};

}  // namespace ktlb
