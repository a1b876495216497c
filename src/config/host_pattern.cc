#include "ktlb/host_pattern.h"

#include "absl/strings/ascii.h"

namespace ktlb {
namespace {

std::string_view StripRootDot(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  return name;
}

// Local rather than absl::EqualsIgnoreCase: Debian's abseil has its own
// absl::string_view, which std::string_view does not convert to. ASCII only,
// never the C locale's idea of case.
bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(a[i])) !=
        absl::ascii_tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

HostPatternKind ClassifyHostPattern(std::string_view pattern) {
  if (pattern.empty()) return HostPatternKind::kAny;
  pattern = StripRootDot(pattern);
  if (pattern.empty()) return HostPatternKind::kInvalid;  // "." is not "any"
  if (pattern.starts_with("*.")) {
    const std::string_view suffix = pattern.substr(1);  // ".example.test"
    if (suffix.size() < 2 || suffix.find('*') != std::string_view::npos) {
      return HostPatternKind::kInvalid;
    }
    return HostPatternKind::kWildcard;
  }
  return pattern.find('*') == std::string_view::npos ? HostPatternKind::kExact
                                                     : HostPatternKind::kInvalid;
}

bool HostPatternMatches(std::string_view pattern, std::string_view name) {
  const HostPatternKind kind = ClassifyHostPattern(pattern);
  if (kind == HostPatternKind::kAny) return true;
  if (kind == HostPatternKind::kInvalid) return false;
  pattern = StripRootDot(pattern);
  name = StripRootDot(name);
  if (kind == HostPatternKind::kExact) return EqualsIgnoreCase(pattern, name);

  // The suffix keeps its leading dot, so "aexample.test" cannot match
  // "*.example.test", and whatever precedes it must be one non-empty label.
  const std::string_view suffix = pattern.substr(1);
  if (name.size() <= suffix.size()) return false;
  const size_t label_len = name.size() - suffix.size();
  if (!EqualsIgnoreCase(name.substr(label_len), suffix)) return false;
  return name.substr(0, label_len).find('.') == std::string_view::npos;
}

}  // namespace ktlb
