#include "ktlb/request_hash.h"

#include <strings.h>

namespace ktlb::upstream {

namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string_view TrimSpace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// MurmurHash3's 64-bit finalizer: FNV-1a alone leaves the low bits of short,
// similar keys ("user1", "user2") correlated, and maglev takes the key modulo
// its table size.
uint64_t Mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace

uint64_t StableHash64(std::string_view bytes, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ULL ^ Mix(seed + 0x9e3779b97f4a7c15ULL);  // FNV-1a
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return Mix(h ^ bytes.size());
}

void RequestHasher::Take(std::string_view value) {
  if (found_) return;  // the first occurrence decides, as for a repeated header
  hash_ = StableHash64(value);
  found_ = true;
}

void RequestHasher::ClientIp(std::string_view ip) {
  if (spec_.kind == HashKeyKind::kClientIp) Take(ip);
}

void RequestHasher::Header(std::string_view name, std::string_view value) {
  if (found_) return;
  if (spec_.kind == HashKeyKind::kHeader) {
    if (EqualsIgnoreCase(name, spec_.name)) Take(TrimSpace(value));
    return;
  }
  if (spec_.kind != HashKeyKind::kCookie || !EqualsIgnoreCase(name, "cookie")) return;
  // RFC 6265 §4.2.1: cookie-pair *( ";" SP cookie-pair ). Be lenient about
  // the spaces: clients and intermediaries vary.
  while (!value.empty()) {
    size_t semi = value.find(';');
    std::string_view pair = TrimSpace(value.substr(0, semi));
    size_t eq = pair.find('=');
    if (eq != std::string_view::npos && TrimSpace(pair.substr(0, eq)) == spec_.name) {
      std::string_view v = TrimSpace(pair.substr(eq + 1));
      // A quoted cookie-value hashes like the bare one.
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      return Take(v);
    }
    if (semi == std::string_view::npos) break;
    value.remove_prefix(semi + 1);
  }
}

}  // namespace ktlb::upstream
