// Header-field grammar shared by parsing and rewriting: tokens, values, names.
#include <cstdint>
#include <string_view>

#include "internal.h"
#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

inline char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }

}  // namespace

bool HeaderNameIs(std::string_view name, std::string_view lower) {
  if (name.size() != lower.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (Lower(name[i]) != lower[i]) return false;
  }
  return true;
}

namespace internal {

bool AllOf(std::string_view s, CharClass cls) {
  for (char c : s) {
    if (!Is(c, cls)) return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && IsOws(s[b])) ++b;
  while (e > b && IsOws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

bool EqualsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

bool HeaderNameIsLoose(std::string_view name, std::string_view lower) {
  if (name.size() != lower.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i] == '_' ? '-' : Lower(name[i]);
    if (c != lower[i]) return false;
  }
  return true;
}

bool ParseContentLength(std::string_view v, uint64_t* out) {
  if (v.empty() || v.size() > 19) return false;  // INT64_MAX has 19 digits
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');  // 19 digits cannot wrap uint64
  }
  if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = n;
  return true;
}

bool ParseContentLengthList(std::string_view v, uint64_t* out, std::string_view* first) {
  bool ok = true;
  size_t elements = 0;
  ForEachListElement(v, [&](std::string_view elem) {
    uint64_t n = 0;
    ok = ParseContentLength(elem, &n) && (elements == 0 || n == *out);
    if (ok && elements++ == 0) {
      *out = n;
      *first = elem;
    }
    return ok;
  });
  return ok && elements > 0;
}

bool SplitHeaderLine(std::string_view line, Header* out) {
  size_t i = 0;
  while (i < line.size() && Is(line[i], kTchar)) ++i;
  // RFC 9112 5.1: no whitespace between name and colon; a server MUST reject.
  if (i == 0 || i == line.size() || line[i] != ':') return false;
  std::string_view value = TrimOws(line.substr(i + 1));
  if (!IsFieldValue(value)) return false;
  out->name = line.substr(0, i);
  out->value = value;
  return true;
}

KnownHeader ClassifyHeader(std::string_view name) {
  // Dispatch on length first: most headers are rejected by one comparison.
  switch (name.size()) {
    case 4:
      if (HeaderNameIs(name, "host")) return KnownHeader::kHost;
      if (HeaderNameIsLoose(name, "host")) return KnownHeader::kSpoofedFraming;
      break;
    case 6:
      if (HeaderNameIs(name, "expect")) return KnownHeader::kExpect;
      break;
    case 7:
      if (HeaderNameIs(name, "upgrade")) return KnownHeader::kUpgrade;
      break;
    case 10:
      if (HeaderNameIs(name, "connection")) return KnownHeader::kConnection;
      break;
    case 14:
      if (HeaderNameIs(name, "content-length")) return KnownHeader::kContentLength;
      if (HeaderNameIsLoose(name, "content-length")) return KnownHeader::kSpoofedFraming;
      break;
    case 17:
      if (HeaderNameIs(name, "transfer-encoding")) return KnownHeader::kTransferEncoding;
      if (HeaderNameIsLoose(name, "transfer-encoding")) return KnownHeader::kSpoofedFraming;
      break;
    default:
      break;
  }
  return KnownHeader::kOther;
}

void ConnectionTokens::Add(std::string_view value) {
  ForEachListElement(value, [this](std::string_view t) {
    if (EqualsNoCase(t, "close")) {
      close = true;
    } else if (EqualsNoCase(t, "keep-alive")) {
      keep_alive = true;
    } else if (EqualsNoCase(t, "upgrade")) {
      upgrade = true;
    } else {
      others = true;
    }
    return true;
  });
}

}  // namespace internal
}  // namespace ktlb::http1
