// The key a hashing balancer (maglev) places a request by, reduced to 64 bits.
//
// upstream/ never learns the client protocol: the client connection (HTTP/1.1
// or an HTTP/2 stream) feeds a RequestHasher the client address and every
// request header field it has, in order, and puts the result in
// ExchangeRequest::hash. Which part counts comes from the upstream's
// `hash_key` (HashKeyConfig). Nothing here allocates.
#pragma once

#include <cstdint>
#include <string_view>

#include "ktlb/config.h"

namespace ktlb::upstream {

// A 64-bit hash that is the same in every process, on every host and across
// restarts (unlike absl::Hash, which is seeded per process): a fleet of ktlb
// hosts behind an L4 balancer must send one user to the same backend. Not
// collision-resistant against an attacker; it only spreads keys.
uint64_t StableHash64(std::string_view bytes, uint64_t seed = 0);

class RequestHasher {
 public:
  explicit RequestHasher(const HashKeyConfig& spec) : spec_(spec) {}

  // The client's address as text, without the port ("192.0.2.7", "::1").
  void ClientIp(std::string_view ip);
  // One request header field. Call for every field in order; an HTTP/2
  // client passes each cookie crumb as its own "cookie" field.
  void Header(std::string_view name, std::string_view value);
  // Whether Header() matters for this spec (so callers can skip the loop).
  bool wants_headers() const {
    return spec_.kind == HashKeyKind::kHeader || spec_.kind == HashKeyKind::kCookie;
  }

  // False when the request carries no key (no such header or cookie): the
  // balancer then spreads it like round robin rather than piling every
  // keyless request onto one server.
  bool found() const { return found_; }
  uint64_t hash() const { return hash_; }

 private:
  void Take(std::string_view value);

  const HashKeyConfig& spec_;
  uint64_t hash_ = 0;
  bool found_ = false;
};

}  // namespace ktlb::upstream
