// ParseConfig's [[upstreams]] entries: servers and weights, the balancer
// and its hash key, active health checks, passive ejection and slow start.
// Same rules as the rest of the file: every problem is "FILE:LINE: key:
// problem", unknown keys are errors.

#include <algorithm>
#include <string>
#include <string_view>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ktlb/server_names.h"
#include "parse_internal.h"

namespace ktlb::config_internal {
namespace {

constexpr uint32_t kMaxIdlePerServer = 65535;
constexpr uint32_t kMaxConnsPerServer = 1'000'000;
constexpr uint32_t kMaxServerWeight = 256;
constexpr uint32_t kMaxDurationMs = 86'400'000;  // one day
// Probing faster than this is load, not health checking.
constexpr uint32_t kMinProbeMs = 10;
constexpr uint32_t kMaxThreshold = 1000;

// RFC 9110 token characters: what a header field name (and, RFC 6265, a
// cookie name) may be made of.
bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(c) !=
                                         std::string_view::npos;
  });
}

// The address of one `servers` element: an IPv4 or bracketed IPv6 address
// (or "localhost", fixed to 127.0.0.1 as everywhere in the config) taken as
// it is, or a host name, resolved once the config is in hand (never by
// --check: server_names.h).
absl::Status ReadServerAddress(const Section& s, const std::string& key, const StringNode& node,
                               ServerEntry* out) {
  const std::string& text = node.get();
  absl::StatusOr<HostPort> split = SplitHostPort(text);
  if (!split.ok()) return s.ctx().Error(LineOf(node), key, Sv(split.status().message()));
  if (!split->bracketed && IsHostName(split->host) &&
      !absl::EqualsIgnoreCase(split->host, "localhost")) {
    out->host = absl::AsciiStrToLower(split->host);
    out->port = split->port;
  } else {
    absl::StatusOr<SocketAddress> parsed = ParseSocketAddress(text);
    if (!parsed.ok() && !split->bracketed) {
      return s.ctx().Error(LineOf(node), key,
                           absl::StrCat("invalid address ", Quote(text),
                                        ": host must be an IPv4 address, a bracketed IPv6 "
                                        "address or a host name"));
    }
    if (!parsed.ok()) return s.ctx().Error(LineOf(node), key, Sv(parsed.status().message()));
    out->port = PortOf(*parsed);
    out->addresses.push_back(*std::move(parsed));
  }
  if (out->port == 0) return s.ctx().Error(LineOf(node), key, "port 0 cannot be connected to");
  return absl::OkStatus();
}

// One `servers` element: "host:port", or { address = "host:port", weight = N }
// when one backend should take a larger share.
absl::Status ReadServerEntry(const Section& s, size_t i, const toml::node& node, ServerEntry* out) {
  out->key = s.ElementKey("servers", i);
  out->line = LineOf(node);
  if (const toml::table* table = node.as_table(); table != nullptr) {
    Section t(s.ctx(), *table, out->key);
    if (absl::Status st = t.CheckKnownKeys({"address", "weight"}); !st.ok()) return st;
    absl::StatusOr<const StringNode*> a = t.RequiredString("address");
    if (!a.ok()) return a.status();
    if (absl::Status st = t.Uint32("weight", 1, kMaxServerWeight, &out->weight); !st.ok()) {
      return st;
    }
    out->line = LineOf(**a);
    out->key += ".address";
    return ReadServerAddress(s, out->key, **a, out);
  }
  if (const StringNode* address = node.as_string(); address != nullptr) {
    return ReadServerAddress(s, out->key, *address, out);
  }
  return s.ctx().Error(LineOf(node), out->key,
                       absl::StrCat("expected a string or a table { address, weight }, got ",
                                    Av(TypeName(node.type()))));
}

absl::Status ReadServers(const Section& s, UpstreamConfig* upstream) {
  const toml::node* node = s.Find("servers");
  if (node == nullptr) return s.Missing("servers");
  const toml::array* servers = node->as_array();
  if (servers == nullptr) return s.WrongType(*node, "servers", "an array of servers");
  if (servers->empty()) return s.ErrorAt(*servers, "servers", "must list at least one server");
  for (size_t i = 0; i < servers->size(); ++i) {
    ServerEntry entry;
    if (absl::Status st = ReadServerEntry(s, i, (*servers)[i], &entry); !st.ok()) return st;
    upstream->server_entries.push_back(std::move(entry));
  }
  // Names stay unresolved here: their servers join at ResolveServerNames.
  ExpandServers(upstream);
  return s.Uint32("resolve_interval_ms", 0, kMaxDurationMs, &upstream->resolve_interval_ms);
}

// hash_key = "client_ip" | "header:NAME" | "cookie:NAME": what maglev hashes.
// Read after `balance`, which it depends on.
absl::Status ReadHashKey(const Section& s, UpstreamConfig* upstream) {
  absl::StatusOr<const StringNode*> node = s.String("hash_key");
  if (!node.ok()) return node.status();
  HashKeyConfig& key = upstream->hash_key;
  if (*node == nullptr) {
    if (upstream->balance == BalanceAlgorithm::kMaglev) key.kind = HashKeyKind::kClientIp;
    return absl::OkStatus();
  }
  upstream->hash_key_line = LineOf(**node);
  // A key the balancer would ignore is a misunderstanding worth stopping on:
  // the operator expects stickiness they would not get.
  if (upstream->balance != BalanceAlgorithm::kMaglev) {
    return s.ErrorAt(**node, "hash_key", "only used with balance = \"maglev\"");
  }
  const std::string& value = (*node)->get();
  std::string_view v = value;
  if (v == "client_ip") {
    key.kind = HashKeyKind::kClientIp;
    return absl::OkStatus();
  }
  std::string_view what;
  if (v.starts_with("header:")) {
    key.kind = HashKeyKind::kHeader;
    what = "header";
  } else if (v.starts_with("cookie:")) {
    key.kind = HashKeyKind::kCookie;
    what = "cookie";
  } else {
    return s.ErrorAt(**node, "hash_key",
                     "must be \"client_ip\", \"header:NAME\" or \"cookie:NAME\"");
  }
  std::string_view name = v.substr(what.size() + 1);
  if (!IsToken(name)) {
    return s.ErrorAt(**node, "hash_key",
                     absl::StrCat(Av(what), " name ", Quote(name),
                                  " must be a token (letters, digits and !#$%&'*+-.^_`|~)"));
  }
  key.name = key.kind == HashKeyKind::kHeader ? absl::AsciiStrToLower(Av(name)) : std::string(name);
  return absl::OkStatus();
}

// health = { path, interval_ms, timeout_ms, rise, fall } or { type = "tcp", ... }.
absl::Status ReadHealth(const Section& up, HealthCheckConfig* health) {
  absl::StatusOr<const toml::table*> table = up.Table("health");
  if (!table.ok()) return table.status();
  if (*table == nullptr) return absl::OkStatus();
  const Section s(up.ctx(), **table, up.Key("health"));
  if (absl::Status st =
          s.CheckKnownKeys({"type", "path", "interval_ms", "timeout_ms", "rise", "fall"});
      !st.ok()) {
    return st;
  }
  health->enabled = true;
  health->line = s.line();
  if (absl::Status st = s.Enum<HealthCheckType>(
          "type", {{"http", HealthCheckType::kHttp}, {"tcp", HealthCheckType::kTcp}},
          &health->type);
      !st.ok()) {
    return st;
  }
  absl::StatusOr<const StringNode*> path = s.String("path");
  if (!path.ok()) return path.status();
  if (*path != nullptr) {
    // A TCP check sends nothing: a path there is a misunderstanding.
    if (health->type == HealthCheckType::kTcp) {
      return s.ErrorAt(**path, "path", "only used with type = \"http\"");
    }
    const std::string& p = (*path)->get();
    // It goes into a request line verbatim.
    if (p.empty() || p[0] != '/' || p.size() > 1024 ||
        std::any_of(p.begin(), p.end(), [](char c) {
          return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
        })) {
      return s.ErrorAt(**path, "path",
                       "must start with \"/\" and hold no spaces or control characters");
    }
    health->path = p;
  }
  const std::tuple<std::string_view, uint32_t, uint32_t, uint32_t*> keys[] = {
      {"interval_ms", kMinProbeMs, kMaxDurationMs, &health->interval_ms},
      {"timeout_ms", kMinProbeMs, kMaxDurationMs, &health->timeout_ms},
      {"rise", 1, kMaxThreshold, &health->rise},
      {"fall", 1, kMaxThreshold, &health->fall},
  };
  for (const auto& [key, lo, hi, field] : keys) {
    if (absl::Status st = s.Uint32(key, lo, hi, field); !st.ok()) return st;
  }
  // One probe at a time per server: a timeout past the interval would make
  // probes overlap (or silently stretch the interval).
  if (health->timeout_ms > health->interval_ms) {
    const toml::node* at = s.Find("timeout_ms");
    return s.ctx().Error(at != nullptr ? LineOf(*at) : s.line(), s.Key("timeout_ms"),
                         absl::StrCat("must not exceed interval_ms (", health->interval_ms, ")"));
  }
  return absl::OkStatus();
}

// eject = { consecutive_failures, base_ms, max_ms }: passive ejection.
absl::Status ReadEject(const Section& up, EjectionConfig* eject) {
  absl::StatusOr<const toml::table*> table = up.Table("eject");
  if (!table.ok()) return table.status();
  if (*table == nullptr) return absl::OkStatus();
  const Section s(up.ctx(), **table, up.Key("eject"));
  if (absl::Status st = s.CheckKnownKeys({"consecutive_failures", "base_ms", "max_ms"}); !st.ok()) {
    return st;
  }
  const std::tuple<std::string_view, uint32_t, uint32_t, uint32_t*> keys[] = {
      {"consecutive_failures", 0, kMaxThreshold, &eject->consecutive_failures},
      {"base_ms", 1, kMaxDurationMs, &eject->base_ms},
      {"max_ms", 1, kMaxDurationMs, &eject->max_ms},
  };
  for (const auto& [key, lo, hi, field] : keys) {
    if (absl::Status st = s.Uint32(key, lo, hi, field); !st.ok()) return st;
  }
  if (eject->max_ms < eject->base_ms) {
    const toml::node* at = s.Find("max_ms");
    if (at == nullptr) at = s.Find("base_ms");
    return s.ctx().Error(at != nullptr ? LineOf(*at) : s.line(),
                         s.Key(s.Find("max_ms") != nullptr ? "max_ms" : "base_ms"),
                         absl::StrCat("max_ms (", eject->max_ms, ") must be at least base_ms (",
                                      eject->base_ms, ")"));
  }
  return absl::OkStatus();
}

// A fraction of requests in flight: 0..1, an integer 0 or 1 too.
absl::Status ReadRetryBudget(const Section& s, double* out) {
  const toml::node* node = s.Find("retry_budget");
  if (node == nullptr) return absl::OkStatus();
  double value = 0;
  if (node->is_floating_point()) {
    value = node->as_floating_point()->get();
  } else if (node->is_integer()) {
    value = static_cast<double>(node->as_integer()->get());
  } else {
    return s.ctx().Error(LineOf(*node), s.Key("retry_budget"),
                         absl::StrCat("expected a number, got ", Av(TypeName(node->type()))));
  }
  if (!(value >= 0.0 && value <= 1.0)) {
    return s.ctx().Error(LineOf(*node), s.Key("retry_budget"),
                         "must be a fraction between 0 and 1");
  }
  *out = value;
  return absl::OkStatus();
}

// tls = { ca, sni, verify, cert, key, ktls }: TLS to the servers. The files
// must be readable now; their content is checked when the snapshot loads
// them (a CA that holds no certificate, a key that does not match).
absl::Status ReadUpstreamTls(const Section& up, UpstreamTlsConfig* tls) {
  absl::StatusOr<const toml::table*> table = up.Table("tls");
  if (!table.ok()) return table.status();
  if (*table == nullptr) return absl::OkStatus();
  const Section s(up.ctx(), **table, up.Key("tls"));
  if (absl::Status st = s.CheckKnownKeys({"ca", "sni", "verify", "cert", "key", "ktls"}); !st.ok()) {
    return st;
  }
  tls->enabled = true;
  tls->key = s.path();
  tls->line = s.line();
  const std::tuple<std::string_view, std::string*, uint32_t*> files[] = {
      {"ca", &tls->ca_path, &tls->ca_line},
      {"cert", &tls->cert_path, &tls->cert_line},
      {"key", &tls->key_path, &tls->key_line},
  };
  for (const auto& [key, path, line] : files) {
    absl::StatusOr<const StringNode*> node = s.String(key);
    if (!node.ok()) return node.status();
    if (*node == nullptr) continue;
    if ((*node)->get().empty()) return s.ErrorAt(**node, key, "must not be empty");
    if (absl::Status st = ResolveConfigFile(s, key, **node, path); !st.ok()) return st;
    *line = LineOf(**node);
  }
  // A certificate without its key (or the reverse) cannot be presented.
  if (tls->cert_path.empty() != tls->key_path.empty()) {
    const std::string_view given = tls->cert_path.empty() ? "key" : "cert";
    const std::string_view lacking = tls->cert_path.empty() ? "cert" : "key";
    return s.ErrorAt(*s.Find(given), given,
                     absl::StrCat("needs ", Av(lacking), " too (a client certificate and its key)"));
  }
  absl::StatusOr<const StringNode*> sni = s.String("sni");
  if (!sni.ok()) return sni.status();
  if (*sni != nullptr) {
    std::string name = absl::AsciiStrToLower(Av((*sni)->get()));
    if (!name.empty() && name.back() == '.') name.pop_back();
    // A host name, not a pattern nor an address: it goes into the
    // ClientHello's server_name and is what the certificate must match.
    const bool ok = !name.empty() && name.size() <= 253 &&
                    std::all_of(name.begin(), name.end(), [](char c) {
                      return absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_';
                    }) &&
                    name.front() != '.' && name.find("..") == std::string::npos;
    if (!ok) {
      return s.ErrorAt(**sni, "sni", "must be a host name (letters, digits, '-', '_' and '.')");
    }
    tls->sni = std::move(name);
  }
  if (absl::Status st = s.Bool("verify", &tls->verify); !st.ok()) return st;
  // "require" would have to refuse requests when the kernel cannot take a
  // backend's keys; upstream connections always have the userspace path.
  return s.Enum<KtlsMode>("ktls", {{"auto", KtlsMode::kAuto}, {"off", KtlsMode::kOff}},
                          &tls->ktls);
}

}  // namespace

absl::Status ReadUpstream(const Section& s, NameSet* names, UpstreamConfig* upstream) {
  if (absl::Status st = s.CheckKnownKeys(
          {"name", "servers", "balance", "hash_key", "max_idle_per_server", "proxy_protocol", "health",
           "try_timeout_ms",
           "eject", "slow_start_ms", "max_conns_per_server", "queue_timeout_ms",
           "retry_budget", "tls", "resolve_interval_ms"});
      !st.ok()) {
    return st;
  }
  absl::StatusOr<const StringNode*> name = s.Name("name");
  if (!name.ok()) return name.status();
  if (absl::Status st = CheckUnique(s, "name", **name, names); !st.ok()) return st;
  upstream->name = (*name)->get();

  if (absl::Status st = ReadServers(s, upstream); !st.ok()) return st;
  if (absl::Status st = s.Enum<BalanceAlgorithm>("balance",
                                                 {{"round_robin", BalanceAlgorithm::kRoundRobin},
                                                  {"least_conn", BalanceAlgorithm::kLeastConn},
                                                  {"p2c", BalanceAlgorithm::kP2c},
                                                  {"maglev", BalanceAlgorithm::kMaglev}},
                                                 &upstream->balance);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = ReadHashKey(s, upstream); !st.ok()) return st;
  if (absl::Status st = s.Enum<ProxyProtocol>(
          "proxy_protocol", {{"none", ProxyProtocol::kNone}, {"v2", ProxyProtocol::kV2}},
          &upstream->proxy_protocol);
      !st.ok()) {
    return st;
  }
  if (const toml::node* node = s.Find("proxy_protocol"); node != nullptr) {
    upstream->proxy_protocol_line = static_cast<uint32_t>(LineOf(*node));
  }
  if (absl::Status st =
          s.Uint32("max_idle_per_server", 0, kMaxIdlePerServer, &upstream->max_idle_per_server);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = ReadHealth(s, &upstream->health); !st.ok()) return st;
  if (absl::Status st = ReadEject(s, &upstream->eject); !st.ok()) return st;
  if (absl::Status st = s.Uint32("slow_start_ms", 0, kMaxDurationMs, &upstream->slow_start_ms);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Uint32("try_timeout_ms", 0, kMaxDurationMs, &upstream->try_timeout_ms);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Uint32("max_conns_per_server", 0, kMaxConnsPerServer,
                                 &upstream->max_conns_per_server);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Uint32("queue_timeout_ms", 1, kMaxDurationMs, &upstream->queue_timeout_ms);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = ReadUpstreamTls(s, &upstream->tls); !st.ok()) return st;
  return ReadRetryBudget(s, &upstream->retry_budget);
}

}  // namespace ktlb::config_internal
