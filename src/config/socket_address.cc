// ParseSocketAddress: "host:port" text from the config into a sockaddr.
//
// Deliberately no DNS: the config is validated before anything listens, and a
// resolver answer that changes between --check and startup (or between
// reloads) would make validation meaningless. "localhost" is the one name we
// accept, because every test config uses it and its meaning is fixed. Host
// names in an upstream's `servers` are the exception, resolved apart
// (server_names.h) and never by --check.

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "ktlb/config.h"
#include "ktlb/server_names.h"

namespace ktlb {
namespace {

absl::Status Invalid(std::string_view text, std::string_view why) {
  // CHexEscape keeps control bytes from a hostile config out of log lines.
  // (Debian's absl::string_view is not std::string_view, hence the spelling.)
  return absl::InvalidArgumentError(
      absl::StrCat("invalid address \"", absl::CHexEscape(absl::string_view(text.data(), text.size())),
                   "\": ", absl::string_view(why.data(), why.size())));
}

// Strict decimal port: digits only (no sign, no spaces, which SimpleAtoi would
// accept), at most five of them so the arithmetic cannot overflow.
bool ParsePort(std::string_view s, uint16_t* port) {
  if (s.empty() || s.size() > 5) return false;
  uint32_t value = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) return false;
  *port = static_cast<uint16_t>(value);
  return true;
}

}  // namespace

absl::StatusOr<HostPort> SplitHostPort(std::string_view text) {
  HostPort out;
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return Invalid(text, "missing ']' after IPv6 address");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return Invalid(text, "expected \":port\" after ']'");
    }
    port_text = rest.substr(1);
    out.bracketed = true;
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return Invalid(text, "expected \"host:port\" or \"[ipv6]:port\"");
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return Invalid(text, "IPv6 addresses must be in brackets, e.g. \"[::1]:8443\"");
    }
  }
  if (host.empty()) return Invalid(text, "missing host");
  if (!ParsePort(port_text, &out.port)) {
    return Invalid(text, "port must be a number between 0 and 65535");
  }
  out.host = std::string(host);
  return out;
}

absl::StatusOr<SocketAddress> ParseSocketAddress(std::string_view text) {
  absl::StatusOr<HostPort> split = SplitHostPort(text);
  if (!split.ok()) return split.status();
  const bool bracketed = split->bracketed;
  const std::string& host = split->host;
  const uint16_t port = split->port;

  SocketAddress out;
  out.text = std::string(text);
  if (bracketed) {
    sockaddr_in6 sin6{};
    // The host part is copied so inet_pton gets a NUL-terminated string.
    if (inet_pton(AF_INET6, host.c_str(), &sin6.sin6_addr) != 1) {
      return Invalid(text, "not a valid IPv6 address");
    }
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    std::memcpy(&out.storage, &sin6, sizeof(sin6));
    out.len = sizeof(sin6);
    return out;
  }

  sockaddr_in sin{};
  if (absl::EqualsIgnoreCase(host, "localhost")) {
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (inet_pton(AF_INET, host.c_str(), &sin.sin_addr) != 1) {
    return Invalid(text, "host must be an IPv4 address, a bracketed IPv6 address or \"localhost\" "
                         "(names are not resolved)");
  }
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  std::memcpy(&out.storage, &sin, sizeof(sin));
  out.len = sizeof(sin);
  return out;
}

}  // namespace ktlb
