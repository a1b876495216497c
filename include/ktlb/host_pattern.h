// Host-name patterns: the one definition of "does this name match this
// pattern" shared by certificate selection (tls::SniTable) and routing
// (Router, SniPatternMatches).
//
// A pattern is one of:
//   ""                  any name at all (a route with no `sni` key);
//   "api.example.test"  exactly that name;
//   "*.example.test"    exactly one leftmost, non-empty label before
//                       ".example.test" ("a.example.test", not "example.test"
//                       nor "a.b.example.test"), the only wildcard form
//                       certificates use (RFC 6125 6.4.3) and browsers accept.
// Anything else containing '*' ("*", "*.", "*.*.test", "w*.example.test",
// "a.*.example.test") is invalid and matches nothing: a literal '*' never
// appears in a real host name, and matching such patterns "somehow" is how
// certificates end up covering names nobody meant.
//
// Comparison is ASCII case-insensitive (DNS names, RFC 4343) and one trailing
// root dot is ignored on both sides ("a.example.test." is "a.example.test").
// Pure functions over the strings given: no allocation, no locale, nothing
// kept.
#pragma once

#include <cstdint>
#include <string_view>

namespace ktlb {

enum class HostPatternKind : uint8_t {
  kAny,       // the empty pattern
  kExact,     // a name without '*'
  kWildcard,  // "*.suffix", suffix non-empty and without '*'
  kInvalid,   // matches nothing
};

HostPatternKind ClassifyHostPattern(std::string_view pattern);

// True when `name` matches `pattern` as described above. An empty name
// matches only the empty pattern.
bool HostPatternMatches(std::string_view pattern, std::string_view name);

}  // namespace ktlb
