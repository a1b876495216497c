// SNI -> certificate index. Tables are small (a listener's SAN names), built
// once per context and read on every handshake, so plain vectors scanned in
// insertion order are both the fastest option and what gives "first Add()
// wins" for free. What a pattern means is HostPatternMatches()'s business;
// this table only adds precedence: any exact name beats any wildcard.
#include <string>
#include <string_view>

#include "ktlb/host_pattern.h"
#include "ktlb/tls.h"

namespace ktlb::tls {

void SniTable::Add(std::string_view pattern, int index) {
  switch (ClassifyHostPattern(pattern)) {
    case HostPatternKind::kExact:
      exact_.emplace_back(pattern, index);
      return;
    case HostPatternKind::kWildcard:
      wildcard_.emplace_back(pattern, index);
      return;
    // A certificate never covers "any name" (that is the listener's default
    // certificate's job), and a malformed pattern is ignored rather than
    // matched oddly.
    case HostPatternKind::kAny:
    case HostPatternKind::kInvalid:
      return;
  }
}

int SniTable::Match(std::string_view server_name) const {
  for (const auto& [pattern, index] : exact_) {
    if (HostPatternMatches(pattern, server_name)) return index;
  }
  for (const auto& [pattern, index] : wildcard_) {
    if (HostPatternMatches(pattern, server_name)) return index;
  }
  return -1;
}

}  // namespace ktlb::tls
