// The shared helpers of parse_internal.h.

#include "parse_internal.h"

#include <arpa/inet.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"

namespace ktlb::config_internal {

std::string Quote(std::string_view s) { return absl::StrCat("\"", absl::CHexEscape(Av(s)), "\""); }

namespace {
bool IsBareKeyChar(char c) { return absl::ascii_isalnum(c) || c == '_' || c == '-'; }
}  // namespace

std::string KeyText(std::string_view key) {
  if (!key.empty() && std::all_of(key.begin(), key.end(), IsBareKeyChar)) return std::string(key);
  return Quote(key);
}

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

uint32_t LineOf(const toml::node& node) { return std::max<uint32_t>(node.source().begin.line, 1); }

std::string ChoiceList(const std::vector<std::string_view>& choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out += (i + 1 == choices.size()) ? " or " : ", ";
    absl::StrAppend(&out, "\"", Av(choices[i]), "\"");
  }
  return out;
}

bool IsValidName(std::string_view name) {
  return !name.empty() && name.size() <= 64 &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
         });
}

uint16_t PortOf(const SocketAddress& a) {
  if (a.storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_port);
}

absl::Status CheckUnique(const Section& s, std::string_view key, const StringNode& node,
                         NameSet* names) {
  const uint32_t earlier = names->Insert(node.get(), LineOf(node));
  if (earlier == 0) return absl::OkStatus();
  return s.ErrorAt(node, key,
                   absl::StrCat("duplicate name ", Quote(node.get()), " (first defined at line ",
                                earlier, ")"));
}

absl::Status ParseAddressAt(const Section& s, std::string_view key, const StringNode& node,
                            SocketAddress* out) {
  absl::StatusOr<SocketAddress> address = ParseSocketAddress(node.get());
  if (!address.ok()) return s.ErrorAt(node, key, Sv(address.status().message()));
  *out = *std::move(address);
  return absl::OkStatus();
}

}  // namespace ktlb::config_internal
