// libFuzzer target: ParseConfig over arbitrary bytes.
//
// Beyond "no crash, no leak, no UB", it checks the contract --check relies on:
// every error is a single line starting "FILE:LINE: ", and every accepted
// config has its cross-references resolved.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "ktlb/config.h"

namespace {

// The config "lives" in /etc so seeds can name files that exist and are
// readable on any Linux host (passwd, group) as placeholder certificate and
// key paths; that lets inputs get past [[certificates]] into listeners and
// routes. Nothing is written, and only files are stat()ed and opened read-only.
constexpr std::string_view kPath = "/etc/ktlb-fuzz.toml";

bool IsWellFormedError(std::string_view message) {
  if (message.substr(0, kPath.size() + 1) != std::string(kPath) + ":") return false;
  message.remove_prefix(kPath.size() + 1);
  size_t digits = 0;
  while (digits < message.size() && message[digits] >= '0' && message[digits] <= '9') ++digits;
  if (digits == 0 || message.substr(digits, 2) != ": ") return false;
  return message.find('\n') == std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::shared_ptr<const ktlb::Config>> config =
      ktlb::ParseConfig(text, std::string(kPath));
  if (!config.ok()) {
    const absl::string_view m = config.status().message();
    if (!IsWellFormedError(std::string_view(m.data(), m.size()))) std::abort();
    return 0;
  }
  const ktlb::Config& c = **config;
  for (const ktlb::RouteConfig& r : c.routes) {
    if (c.FindListener(r.listener) == nullptr || c.FindUpstream(r.upstream) == nullptr) std::abort();
  }
  for (const ktlb::ListenerConfig& l : c.listeners) {
    for (const std::string& name : l.certificates) {
      if (c.FindCertificate(name) == nullptr) std::abort();
    }
  }
  return 0;
}
