// SNI -> certificate index. Tables are small (a listener's SAN names), built
// once per context and read on every handshake, so plain vectors scanned in
// insertion order are both the fastest option and what gives "first Add()
// wins" for free.
#include <string>
#include <string_view>

#include "absl/strings/ascii.h"
#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

// DNS names are compared without their root dot: "a.example.test." and
// "a.example.test" are the same host.
std::string_view StripTrailingDot(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  return name;
}

// Local helpers rather than absl::AsciiStrToLower / EqualsIgnoreCase:
// Debian's abseil has its own absl::string_view, which std::string_view does
// not convert to.
std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = absl::ascii_tolower(static_cast<unsigned char>(ch));
  return out;
}

// `lower` is already lowercase (stored patterns are).
bool EqualsLowered(std::string_view lower, std::string_view name) {
  if (lower.size() != name.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (lower[i] != absl::ascii_tolower(static_cast<unsigned char>(name[i]))) return false;
  }
  return true;
}

}  // namespace

void SniTable::Add(std::string_view pattern, int index) {
  pattern = StripTrailingDot(pattern);
  if (pattern.empty()) return;
  if (pattern.starts_with("*.")) {
    std::string_view suffix = pattern.substr(1);  // keeps the dot: ".example.test"
    // "*." alone, or a second '*' ("*.*.test"), is not a pattern any client
    // could legitimately be matched by; ignoring it beats matching oddly.
    if (suffix.size() < 2 || suffix.find('*') != std::string_view::npos) return;
    wildcard_.emplace_back(ToLower(suffix), index);
    return;
  }
  // Partial-label wildcards ("w*.example.test") are not supported: browsers
  // reject them, and a literal '*' never appears in a real host name.
  if (pattern.find('*') != std::string_view::npos) return;
  exact_.emplace_back(ToLower(pattern), index);
}

int SniTable::Match(std::string_view server_name) const {
  server_name = StripTrailingDot(server_name);
  if (server_name.empty()) return -1;
  // Stored patterns are lowercase; comparing against them spares lowering
  // (and allocating) the client's name on every handshake.
  for (const auto& [name, index] : exact_) {
    if (EqualsLowered(name, server_name)) return index;
  }
  // A wildcard covers exactly one leftmost, non-empty label.
  size_t dot = server_name.find('.');
  if (dot == std::string_view::npos || dot == 0) return -1;
  std::string_view suffix = server_name.substr(dot);
  for (const auto& [name, index] : wildcard_) {
    if (EqualsLowered(name, suffix)) return index;
  }
  return -1;
}

}  // namespace ktlb::tls
