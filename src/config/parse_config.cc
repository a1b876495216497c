// ParseConfig / LoadConfigFile: TOML text -> validated Config snapshot.
//
// The whole file is validated before anything listens, and every problem is
// reported as "FILE:LINE: key: problem" so `ktlb --check` output points the
// operator at the exact line. Validation stops at the first problem: one
// precise message beats a cascade of follow-on errors.
//
// Strictness is deliberate: unknown keys, wrong types and values that could
// never match anything are errors, because a typo that silently falls back to
// a default is how edge proxies end up serving the wrong thing.

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <toml++/toml.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ktlb/config.h"
#include "ktlb/unique_fd.h"
#include "parse_internal.h"

namespace ktlb {
namespace {

using namespace config_internal;  // NOLINT: this file is one of its users

// Limits. Upper bounds exist so a stray digit cannot turn into a
// resource-exhaustion setting; they are far above any sane value.
constexpr uint32_t kMaxWorkers = 1024;
constexpr uint32_t kMaxTimeoutMs = 86'400'000;  // one day
constexpr uint32_t kMaxHeadLimit = 1 << 20;     // 1 MiB for request line / head
constexpr size_t kMaxConfigFileBytes = 16 << 20;

// Like Quote, but for prose (toml++ descriptions): only control bytes are
// escaped so the message stays readable.
std::string Printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// A DNS-style host name: dot-separated labels of letters, digits, '-' and
// '_' (seen in real internal names), no empty labels.
bool IsHostName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(Av(s), '.')) {
    if (label.empty() || label.size() > 63) return false;
    if (!std::all_of(label.begin(), label.end(), [](char c) {
          return absl::ascii_isalnum(c) || c == '-' || c == '_';
        })) {
      return false;
    }
  }
  return true;
}

// SNI matchers: an exact name or a single leftmost wildcard label, the only
// wildcard form certificates (RFC 6125) and our SNI table support.
bool IsValidSniPattern(std::string_view s) {
  if (absl::StartsWith(Av(s), "*.")) s.remove_prefix(2);
  return IsHostName(s);
}

bool HasControlChars(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
}

// The byte identity of a socket address (family, address, port). Parsed
// addresses have zeroed padding, so equal addresses give equal bytes; this
// makes "localhost:80" and "127.0.0.1:80" collide as they do in bind().
std::string AddressIdentity(const SocketAddress& a) {
  return std::string(reinterpret_cast<const char*>(&a.storage), a.len);
}

// Where each listen address is used, so a repeat names the first user.
class AddressSet {
 public:
  // Returns the description of the earlier user, or "" if the address is new.
  std::string Insert(const SocketAddress& address, std::string owner) {
    // Port 0 asks the kernel for a fresh ephemeral port on every bind, so
    // two port-0 listeners never collide.
    if (PortOf(address) == 0) return "";
    auto [it, inserted] = owners_.emplace(AddressIdentity(address), std::move(owner));
    return inserted ? "" : it->second;
  }

 private:
  std::map<std::string, std::string> owners_;
};


// Resolves a certificate/key path against the config directory and checks it
// can be opened now, so a typo fails `--check` instead of the first handshake.
absl::Status ResolveReadableFile(const Section& s, std::string_view key, const StringNode& node,
                                 std::string* out) {
  const std::string& value = node.get();
  if (HasControlChars(value)) {  // includes NUL, which would truncate the C path
    return s.ErrorAt(node, key, "must not contain control characters");
  }
  std::filesystem::path path(value);
  if (path.is_relative()) path = (s.ctx().base_dir / path).lexically_normal();
  std::string resolved = path.string();

  // stat() first: opening a FIFO or device could block or have side effects.
  struct stat st {};
  if (::stat(resolved.c_str(), &st) != 0) {
    return s.ErrorAt(node, key,
                     absl::StrCat("cannot read ", Quote(resolved), ": ",
                                  std::generic_category().message(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return s.ErrorAt(node, key, absl::StrCat(Quote(resolved), " is not a regular file"));
  }
  // stat() does not check permissions; opening does (key files are often
  // mode 0600 owned by another user).
  const UniqueFd probe(::open(resolved.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!probe) {
    return s.ErrorAt(node, key,
                     absl::StrCat("cannot read ", Quote(resolved), ": ",
                                  std::generic_category().message(errno)));
  }
  *out = std::move(resolved);
  return absl::OkStatus();
}

// `user` and `group`: looked up now, so that a name this host does not know
// fails --check rather than the start after binding.
absl::Status ReadRunAs(const Section& s, ServerConfig* server) {
  absl::StatusOr<const StringNode*> user_node = s.String("user");
  if (!user_node.ok()) return user_node.status();
  absl::StatusOr<const StringNode*> group_node = s.String("group");
  if (!group_node.ok()) return group_node.status();
  std::vector<char> buf(16384);
  if (*user_node != nullptr) {
    struct passwd pw;
    struct passwd* found = nullptr;
    getpwnam_r((*user_node)->get().c_str(), &pw, buf.data(), buf.size(), &found);
    if (found == nullptr) {
      return s.ErrorAt(**user_node, "user",
                       absl::StrCat("no such user ", Quote((*user_node)->get())));
    }
    server->user = (*user_node)->get();
    server->uid = pw.pw_uid;
    server->gid = pw.pw_gid;
  }
  if (*group_node != nullptr) {
    if (*user_node == nullptr) return s.ErrorAt(**group_node, "group", "needs user as well");
    struct group gr;
    struct group* found = nullptr;
    getgrnam_r((*group_node)->get().c_str(), &gr, buf.data(), buf.size(), &found);
    if (found == nullptr) {
      return s.ErrorAt(**group_node, "group",
                       absl::StrCat("no such group ", Quote((*group_node)->get())));
    }
    server->group = (*group_node)->get();
    server->gid = gr.gr_gid;
  }
  return absl::OkStatus();
}

absl::Status ReadServer(const Section& s, ServerConfig* server) {
  if (absl::Status st = s.CheckKnownKeys({"workers", "admin_listen", "handshake_timeout_ms",
                                          "request_header_timeout_ms", "keepalive_timeout_ms",
                                          "upstream_connect_timeout_ms",
                                          "upstream_response_timeout_ms", "drain_timeout_ms",
                                          "tunnel_idle_timeout_ms", "send_timeout_ms",
                                          "max_request_line", "max_header_bytes", "access_log", "ticket_keys",
                                          "h2_max_concurrent_streams", "h2_max_header_list_size",
                                          "h2_stream_window", "h2_connection_window",
                                          "h2_glitch_budget", "h2_connection_buffer", "user",
                                          "group", "drain_grace_ms", "passthrough_forwarding"});
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Uint32("workers", 0, kMaxWorkers, &server->workers); !st.ok()) return st;

  absl::StatusOr<const StringNode*> admin = s.String("admin_listen");
  if (!admin.ok()) return admin.status();
  if (*admin != nullptr) {
    if (absl::Status st = ParseAddressAt(s, "admin_listen", **admin, &server->admin_listen);
        !st.ok()) {
      return st;
    }
    server->has_admin = true;
  }

  Timeouts& t = server->timeouts;
  const std::pair<std::string_view, uint32_t*> timeouts[] = {
      {"handshake_timeout_ms", &t.handshake_ms},
      {"request_header_timeout_ms", &t.request_header_ms},
      {"keepalive_timeout_ms", &t.keepalive_ms},
      {"upstream_connect_timeout_ms", &t.upstream_connect_ms},
      {"upstream_response_timeout_ms", &t.upstream_response_ms},
      {"drain_timeout_ms", &t.drain_ms},
      {"tunnel_idle_timeout_ms", &t.tunnel_idle_ms},
      {"send_timeout_ms", &t.send_ms},
  };
  for (const auto& [key, field] : timeouts) {
    if (absl::Status st = s.Uint32(key, 1, kMaxTimeoutMs, field); !st.ok()) return st;
  }
  if (absl::Status st = s.Uint32("drain_grace_ms", 0, kMaxTimeoutMs, &server->drain_grace_ms);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Uint32("max_request_line", 1, kMaxHeadLimit, &server->max_request_line);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Uint32("max_header_bytes", 1, kMaxHeadLimit, &server->max_header_bytes);
      !st.ok()) {
    return st;
  }
  // HTTP/2. Windows: at least the protocol's initial 65535, at most 2^31-1.
  Http2Settings& h2 = server->h2;
  const std::tuple<std::string_view, uint32_t, uint32_t, uint32_t*> h2_keys[] = {
      {"h2_max_concurrent_streams", 1, 10000, &h2.max_concurrent_streams},
      {"h2_max_header_list_size", 1024, 1u << 24, &h2.max_header_list_size},
      {"h2_stream_window", 65535, 0x7fffffff, &h2.stream_window},
      {"h2_connection_window", 65535, 0x7fffffff, &h2.connection_window},
      {"h2_glitch_budget", 1, 1000000, &h2.glitch_budget},
      {"h2_connection_buffer", 65536, 1u << 30, &h2.connection_buffer},
  };
  for (const auto& [key, lo, hi, field] : h2_keys) {
    if (absl::Status st = s.Uint32(key, lo, hi, field); !st.ok()) return st;
  }
  absl::StatusOr<const StringNode*> fwd = s.String("passthrough_forwarding");
  if (!fwd.ok()) return fwd.status();
  if (*fwd != nullptr) {
    const std::string& v = (*fwd)->get();
    if (v == "splice") {
      server->passthrough_forwarding = PassthroughForwarding::kSplice;
    } else if (v == "sockmap") {
      server->passthrough_forwarding = PassthroughForwarding::kSockmap;
    } else if (v == "auto") {
      server->passthrough_forwarding = PassthroughForwarding::kAuto;
    } else {
      return s.ErrorAt(**fwd, "passthrough_forwarding",
                       "must be \"splice\", \"sockmap\" or \"auto\"");
    }
  }
  absl::StatusOr<const StringNode*> log = s.String("access_log");
  if (!log.ok()) return log.status();
  if (*log != nullptr) {
    const std::string& value = (*log)->get();
    if (value.empty() || HasControlChars(value)) {
      return s.ErrorAt(**log, "access_log", "must be a file path");
    }
    std::filesystem::path path(value);
    if (path.is_relative()) path = (s.ctx().base_dir / path).lexically_normal();
    // The file is created at startup; its directory must be there now, so a
    // typo fails --check.
    std::error_code ec;
    if (!std::filesystem::is_directory(path.parent_path(), ec)) {
      return s.ErrorAt(**log, "access_log",
                       absl::StrCat("directory ", Quote(path.parent_path().string()),
                                    " does not exist"));
    }
    server->access_log = path.string();
  }
  absl::StatusOr<const StringNode*> tickets = s.String("ticket_keys");
  if (!tickets.ok()) return tickets.status();
  if (*tickets != nullptr) {
    // Its contents are checked when the snapshot is built (and rebuilt on
    // reload); here only that it is there to read.
    if ((*tickets)->get().empty()) return s.ErrorAt(**tickets, "ticket_keys", "must be a file path");
    if (absl::Status st = ResolveReadableFile(s, "ticket_keys", **tickets, &server->ticket_keys);
        !st.ok()) {
      return st;
    }
    server->ticket_keys_line = LineOf(**tickets);
  }
  return ReadRunAs(s, server);
}

// `client_auth = { ca = "...", mode = "require" | "optional", crl = "..." }`
// (an inline table or a [x.client_auth] sub-table). The CA and CRL files
// must be readable now; their content is checked when they are loaded.
absl::Status ReadClientAuth(const Section& parent, ClientAuthConfig* out) {
  absl::StatusOr<const toml::table*> table = parent.Table("client_auth");
  if (!table.ok()) return table.status();
  if (*table == nullptr) return absl::OkStatus();
  const Section s(parent.ctx(), **table, parent.Key("client_auth"));
  if (absl::Status st = s.CheckKnownKeys({"ca", "mode", "crl"}); !st.ok()) return st;
  out->enabled = true;
  out->key = s.path();
  absl::StatusOr<const StringNode*> ca = s.RequiredString("ca");
  if (!ca.ok()) return ca.status();
  if (absl::Status st = ResolveReadableFile(s, "ca", **ca, &out->ca_path); !st.ok()) return st;
  out->ca_line = LineOf(**ca);
  if (absl::Status st = s.Enum<ClientAuthMode>(
          "mode", {{"require", ClientAuthMode::kRequire}, {"optional", ClientAuthMode::kOptional}},
          &out->mode);
      !st.ok()) {
    return st;
  }
  absl::StatusOr<const StringNode*> crl = s.String("crl");
  if (!crl.ok()) return crl.status();
  if (*crl != nullptr) {
    if (absl::Status st = ResolveReadableFile(s, "crl", **crl, &out->crl_path); !st.ok()) return st;
    out->crl_line = LineOf(**crl);
  }
  return absl::OkStatus();
}

absl::Status ReadCertificate(const Section& s, NameSet* names, CertificateConfig* cert) {
  if (absl::Status st = s.CheckKnownKeys({"name", "cert", "key", "client_auth"}); !st.ok()) {
    return st;
  }
  absl::StatusOr<const StringNode*> name = s.Name("name");
  if (!name.ok()) return name.status();
  if (absl::Status st = CheckUnique(s, "name", **name, names); !st.ok()) return st;
  cert->name = (*name)->get();

  for (const auto& [key, out] : {std::pair<std::string_view, std::string*>{"cert", &cert->cert_path},
                                 {"key", &cert->key_path}}) {
    absl::StatusOr<const StringNode*> node = s.RequiredString(key);
    if (!node.ok()) return node.status();
    if (absl::Status st = ResolveReadableFile(s, key, **node, out); !st.ok()) return st;
    uint32_t line = static_cast<uint32_t>((*node)->source().begin.line);
    (key == "cert" ? cert->cert_line : cert->key_line) = line;
  }
  return ReadClientAuth(s, &cert->client_auth);
}


// Listener keys that only mean something when ktlb terminates TLS.
constexpr std::string_view kTerminateOnlyKeys[] = {"certificates", "alpn", "ktls",
                                                   "client_auth", "tls_versions", "tls_groups",
                                                   "tls_ciphers", "tls_ciphersuites"};

// tls_versions and the OpenSSL name lists. Whether OpenSSL knows the names
// is checked when the snapshot is built (tls::CheckTlsPolicies); here only
// the shape.
absl::Status ReadTlsPolicy(const Section& s, TlsPolicy* tls) {
  absl::StatusOr<const toml::array*> versions = s.StringArray("tls_versions");
  if (!versions.ok()) return versions.status();
  if (*versions != nullptr) {
    if ((*versions)->empty()) {
      return s.ErrorAt(**versions, "tls_versions", "must list \"1.2\", \"1.3\" or both");
    }
    bool tls12 = false, tls13 = false;
    for (size_t i = 0; i < (*versions)->size(); ++i) {
      const toml::node& node = (**versions)[i];
      const std::string& version = node.as_string()->get();
      bool* seen = version == "1.2" ? &tls12 : version == "1.3" ? &tls13 : nullptr;
      if (seen == nullptr) {
        return s.ctx().Error(LineOf(node), s.ElementKey("tls_versions", i),
                             "must be \"1.2\" or \"1.3\" (older versions are not offered)");
      }
      if (*seen) {
        return s.ctx().Error(LineOf(node), s.ElementKey("tls_versions", i),
                             absl::StrCat(Quote(version), " is listed twice"));
      }
      *seen = true;
    }
    tls->min_version = tls12 ? 0x0303 : 0x0304;
    tls->max_version = tls13 ? 0x0304 : 0x0303;
  }
  for (const auto& [key, value, line] :
       {std::tuple<std::string_view, std::string*, uint32_t*>{"tls_groups", &tls->groups,
                                                              &tls->groups_line},
        {"tls_ciphers", &tls->ciphers, &tls->ciphers_line},
        {"tls_ciphersuites", &tls->ciphersuites, &tls->ciphersuites_line}}) {
    absl::StatusOr<const StringNode*> node = s.String(key);
    if (!node.ok()) return node.status();
    if (*node == nullptr) continue;
    const std::string& names = (*node)->get();
    if (names.empty() || HasControlChars(names)) {
      return s.ErrorAt(**node, key, "must be a non-empty list of OpenSSL names, \":\"-separated");
    }
    *value = names;
    *line = LineOf(**node);
  }
  return absl::OkStatus();
}

absl::Status ReadListener(const Section& s, const Config& config, NameSet* names,
                          AddressSet* addresses, ListenerConfig* listener) {
  if (absl::Status st = s.CheckKnownKeys({"name", "listen", "mode", "certificates", "unknown_sni",
                                          "alpn", "ktls", "accept_proxy", "client_auth",
                                          "tls_versions", "tls_groups", "tls_ciphers",
                                          "tls_ciphersuites"});
      !st.ok()) {
    return st;
  }
  absl::StatusOr<const StringNode*> name = s.Name("name");
  if (!name.ok()) return name.status();
  if (absl::Status st = CheckUnique(s, "name", **name, names); !st.ok()) return st;
  listener->name = (*name)->get();

  absl::StatusOr<const StringNode*> listen = s.RequiredString("listen");
  if (!listen.ok()) return listen.status();
  if (absl::Status st = ParseAddressAt(s, "listen", **listen, &listener->listen); !st.ok()) {
    return st;
  }
  if (std::string earlier = addresses->Insert(listener->listen, s.path()); !earlier.empty()) {
    return s.ErrorAt(**listen, "listen",
                     absl::StrCat("address ", Quote(listener->listen.text), " is already used by ",
                                  earlier));
  }

  if (absl::Status st = s.Enum<ListenerMode>("mode",
                                             {{"terminate", ListenerMode::kTerminate},
                                              {"passthrough", ListenerMode::kPassthrough}},
                                             &listener->mode);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = s.Bool("accept_proxy", &listener->accept_proxy); !st.ok()) return st;

  // Terminate: a name no certificate covers. Passthrough: a name no route
  // with an sni matcher covers, even when a catch-all route exists.
  if (absl::Status st = s.Enum<UnknownSniPolicy>("unknown_sni",
                                                 {{"default", UnknownSniPolicy::kDefault},
                                                  {"reject", UnknownSniPolicy::kReject}},
                                                 &listener->unknown_sni);
      !st.ok()) {
    return st;
  }

  if (listener->mode == ListenerMode::kPassthrough) {
    // Passthrough never decrypts: these keys would be silently ignored.
    for (std::string_view key : kTerminateOnlyKeys) {
      if (const toml::node* node = s.Find(key); node != nullptr) {
        return s.ErrorAt(*node, key, "only valid for mode = \"terminate\"");
      }
    }
    listener->alpn.clear();
    return absl::OkStatus();
  }

  absl::StatusOr<const toml::array*> certs = s.StringArray("certificates");
  if (!certs.ok()) return certs.status();
  if (*certs == nullptr) return s.Missing("certificates", "required for mode = \"terminate\"");
  if ((*certs)->empty()) {
    return s.ErrorAt(**certs, "certificates", "must list at least one certificate");
  }
  for (size_t i = 0; i < (*certs)->size(); ++i) {
    const toml::node& node = (**certs)[i];
    const std::string& cert = node.as_string()->get();
    if (config.FindCertificate(cert) == nullptr) {
      return s.ctx().Error(LineOf(node), s.ElementKey("certificates", i),
                           absl::StrCat("no [[certificates]] entry named ", Quote(cert)));
    }
    if (std::find(listener->certificates.begin(), listener->certificates.end(), cert) !=
        listener->certificates.end()) {
      return s.ctx().Error(LineOf(node), s.ElementKey("certificates", i),
                           absl::StrCat(Quote(cert), " is listed twice"));
    }
    listener->certificates.push_back(cert);
    listener->mtls |= config.FindCertificate(cert)->client_auth.enabled;
  }
  if (absl::Status st = ReadClientAuth(s, &listener->client_auth); !st.ok()) return st;
  listener->mtls |= listener->client_auth.enabled;

  absl::StatusOr<const toml::array*> alpn = s.StringArray("alpn");
  if (!alpn.ok()) return alpn.status();
  if (*alpn != nullptr) {
    if ((*alpn)->empty()) return s.ErrorAt(**alpn, "alpn", "must list at least one protocol");
    listener->alpn.clear();
    for (size_t i = 0; i < (*alpn)->size(); ++i) {
      const toml::node& node = (**alpn)[i];
      const std::string& proto = node.as_string()->get();
      if (proto != "h2" && proto != "http/1.1") {
        return s.ctx().Error(LineOf(node), s.ElementKey("alpn", i),
                             "must be \"h2\" or \"http/1.1\"");
      }
      if (std::find(listener->alpn.begin(), listener->alpn.end(), proto) !=
          listener->alpn.end()) {
        return s.ctx().Error(LineOf(node), s.ElementKey("alpn", i),
                             absl::StrCat(Quote(proto), " is listed twice"));
      }
      listener->alpn.push_back(proto);
    }
  }

  if (absl::Status st = s.Enum<KtlsMode>(
          "ktls",
          {{"auto", KtlsMode::kAuto}, {"off", KtlsMode::kOff}, {"require", KtlsMode::kRequire}},
          &listener->ktls);
      !st.ok()) {
    return st;
  }
  return ReadTlsPolicy(s, &listener->tls);
}

absl::Status ReadRoute(const Section& s, const Config& config, RouteConfig* route) {
  if (absl::Status st =
          s.CheckKnownKeys({"listener", "sni", "host", "path_prefix", "alpn", "upstream",
                            "require_client_cert"});
      !st.ok()) {
    return st;
  }

  absl::StatusOr<const StringNode*> listener_node = s.RequiredString("listener");
  if (!listener_node.ok()) return listener_node.status();
  route->listener = (*listener_node)->get();
  const ListenerConfig* listener = config.FindListener(route->listener);
  if (listener == nullptr) {
    return s.ErrorAt(**listener_node, "listener",
                     absl::StrCat("no [[listeners]] entry named ", Quote(route->listener)));
  }

  absl::StatusOr<const StringNode*> sni = s.String("sni");
  if (!sni.ok()) return sni.status();
  if (*sni != nullptr) {
    // SNI is case-insensitive (RFC 6066 host names); store lowercase so the
    // TLS side compares with a plain ==.
    route->sni = absl::AsciiStrToLower((*sni)->get());
    if (!IsValidSniPattern(route->sni)) {
      return s.ErrorAt(**sni, "sni",
                       "must be a host name (\"example.test\") or a wildcard of the leftmost "
                       "label (\"*.example.test\")");
    }
  }

  for (const auto& [key, out] : {std::pair<std::string_view, std::string*>{"host", &route->host},
                                 {"path_prefix", &route->path_prefix}}) {
    absl::StatusOr<const StringNode*> node = s.String(key);
    if (!node.ok()) return node.status();
    if (*node == nullptr) continue;
    // The bytes are never seen in passthrough mode, so these could not match.
    if (listener->mode == ListenerMode::kPassthrough) {
      return s.ErrorAt(**node, key,
                       absl::StrCat("cannot be matched on passthrough listener ",
                                    Quote(listener->name), " (only sni is)"));
    }
    *out = (*node)->get();
  }

  if (const toml::node* host_node = s.Find("host"); host_node != nullptr) {
    const toml::node& node = *host_node;
    std::string_view host = route->host;
    const bool ipv6_literal = host.size() > 2 && host.front() == '[' && host.back() == ']';
    in6_addr unused{};
    if (ipv6_literal) {
      if (inet_pton(AF_INET6, std::string(host.substr(1, host.size() - 2)).c_str(), &unused) != 1) {
        return s.ErrorAt(node, "host", "not a valid bracketed IPv6 address");
      }
    } else if (host.find(':') != std::string_view::npos) {
      return s.ErrorAt(node, "host", "must not include a port (ports are ignored when matching)");
    } else if (!IsHostName(host)) {
      return s.ErrorAt(node, "host", "must be a host name like \"api.example.test\"");
    }
    // Host headers are case-insensitive; store lowercase for a plain compare.
    route->host = absl::AsciiStrToLower(route->host);
  }

  if (const toml::node* node = s.Find("path_prefix"); node != nullptr) {
    if (!absl::StartsWith(route->path_prefix, "/")) {
      return s.ErrorAt(*node, "path_prefix", "must start with \"/\"");
    }
    if (std::any_of(route->path_prefix.begin(), route->path_prefix.end(),
                    [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; })) {
      return s.ErrorAt(*node, "path_prefix", "must not contain spaces or control characters");
    }
  }

  absl::StatusOr<const StringNode*> alpn = s.String("alpn");
  if (!alpn.ok()) return alpn.status();
  if (*alpn != nullptr) {
    // Terminate listeners pick the protocol themselves during the handshake.
    if (listener->mode != ListenerMode::kPassthrough) {
      return s.ErrorAt(**alpn, "alpn",
                       absl::StrCat("only passthrough listeners route on the ALPN a client "
                                    "offers; ", Quote(listener->name), " terminates TLS"));
    }
    route->alpn = (*alpn)->get();
    if (route->alpn.empty() || route->alpn.size() > 255) {
      return s.ErrorAt(**alpn, "alpn", "must be a protocol name of 1..255 bytes, e.g. \"h2\"");
    }
  }

  if (absl::Status st = s.Bool("require_client_cert", &route->require_client_cert); !st.ok()) {
    return st;
  }
  if (route->require_client_cert) {
    const toml::node& node = *s.Find("require_client_cert");
    if (listener->mode == ListenerMode::kPassthrough) {
      return s.ErrorAt(node, "require_client_cert",
                       absl::StrCat("passthrough listener ", Quote(listener->name),
                                    " never sees client certificates"));
    }
    // Without client_auth no connection ever has a verified certificate:
    // the route could only answer 403.
    if (!listener->mtls) {
      return s.ErrorAt(node, "require_client_cert",
                       absl::StrCat("listener ", Quote(listener->name),
                                    " asks for no client certificate; set client_auth on it "
                                    "or on one of its certificates"));
    }
  }

  absl::StatusOr<const StringNode*> upstream = s.RequiredString("upstream");
  if (!upstream.ok()) return upstream.status();
  route->upstream = (*upstream)->get();
  const UpstreamConfig* target = config.FindUpstream(route->upstream);
  if (target == nullptr) {
    return s.ErrorAt(**upstream, "upstream",
                     absl::StrCat("no [[upstreams]] entry named ", Quote(route->upstream)));
  }
  // A PROXY header describes one client; pooled HTTP connections carry many.
  if (target->proxy_protocol != ProxyProtocol::kNone &&
      listener->mode != ListenerMode::kPassthrough) {
    return s.ErrorAt(**upstream, "upstream",
                     absl::StrCat("upstream ", Quote(route->upstream),
                                  " sets proxy_protocol (line ", target->proxy_protocol_line,
                                  "), which only passthrough listeners send; terminate listener ",
                                  Quote(listener->name),
                                  " tells backends the client address in X-Forwarded-For and "
                                  "Forwarded"));
  }
  // A passthrough listener never decrypts: there is no header or cookie to hash.
  if ((target->hash_key.kind == HashKeyKind::kHeader ||
       target->hash_key.kind == HashKeyKind::kCookie) &&
      listener->mode == ListenerMode::kPassthrough) {
    return s.ErrorAt(**upstream, "upstream",
                     absl::StrCat("upstream ", Quote(route->upstream),
                                  " hashes on a header or cookie (line ", target->hash_key_line,
                                  "), which passthrough listener ", Quote(listener->name),
                                  " never sees; use hash_key = \"client_ip\""));
  }
  return absl::OkStatus();
}

// Runs `read` over each table of a [[key]] array, appending to `out`.
template <typename T, typename ReadFn>
absl::Status ReadEach(const Section& root, std::string_view key, std::vector<T>* out,
                      ReadFn read) {
  absl::StatusOr<const toml::array*> array = root.TableArray(key);
  if (!array.ok()) return array.status();
  if (*array == nullptr) return absl::OkStatus();
  for (size_t i = 0; i < (*array)->size(); ++i) {
    Section s(root.ctx(), *(**array)[i].as_table(), root.ElementKey(key, i));
    T item;
    if (absl::Status st = read(s, &item); !st.ok()) return st;
    out->push_back(std::move(item));
  }
  return absl::OkStatus();
}

absl::Status Build(const Context& ctx, const toml::table& root_table, Config* config) {
  const Section root(ctx, root_table, "");
  if (absl::Status st =
          root.CheckKnownKeys({"server", "listeners", "certificates", "routes", "upstreams"});
      !st.ok()) {
    return st;
  }

  absl::StatusOr<const toml::table*> server = root.Table("server");
  if (!server.ok()) return server.status();
  if (*server != nullptr) {
    if (absl::Status st = ReadServer(Section(ctx, **server, "server"), &config->server); !st.ok()) {
      return st;
    }
  }

  // Order matters: each section may only refer to sections read before it
  // (listeners -> certificates, routes -> listeners and upstreams).
  NameSet cert_names;
  if (absl::Status st = ReadEach(root, "certificates", &config->certificates,
                                 [&](const Section& s, CertificateConfig* c) {
                                   c->index = config->certificates.size();  // appended after reading
                                   return ReadCertificate(s, &cert_names, c);
                                 });
      !st.ok()) {
    return st;
  }

  NameSet upstream_names;
  if (absl::Status st = ReadEach(root, "upstreams", &config->upstreams,
                                 [&](const Section& s, UpstreamConfig* u) {
                                   return ReadUpstream(s, &upstream_names, u);
                                 });
      !st.ok()) {
    return st;
  }

  NameSet listener_names;
  AddressSet addresses;
  if (config->server.has_admin) addresses.Insert(config->server.admin_listen, "server.admin_listen");
  if (absl::Status st = ReadEach(root, "listeners", &config->listeners,
                                 [&](const Section& s, ListenerConfig* l) {
                                   return ReadListener(s, *config, &listener_names, &addresses, l);
                                 });
      !st.ok()) {
    return st;
  }
  if (config->listeners.empty()) {
    return ctx.Error(1, "listeners", "at least one [[listeners]] entry is required");
  }

  if (absl::Status st = ReadEach(
          root, "routes", &config->routes,
          [&](const Section& s, RouteConfig* r) { return ReadRoute(s, *config, r); });
      !st.ok()) {
    return st;
  }

  // A listener no route points at would accept connections only to fail them.
  const toml::array& listener_tables = *root_table.get("listeners")->as_array();
  for (size_t i = 0; i < config->listeners.size(); ++i) {
    const std::string& name = config->listeners[i].name;
    const bool routed = std::any_of(config->routes.begin(), config->routes.end(),
                                    [&](const RouteConfig& r) { return r.listener == name; });
    if (!routed) {
      return ctx.Error(LineOf(listener_tables[i]), root.ElementKey("listeners", i),
                       absl::StrCat("no [[routes]] entry has listener = ", Quote(name)));
    }
  }
  return absl::OkStatus();
}

std::filesystem::path BaseDir(const std::string& config_path) {
  std::filesystem::path dir = std::filesystem::path(config_path).parent_path();
  if (dir.empty()) dir = ".";
  // Absolute, so the snapshot's paths stay valid whatever the process's
  // working directory is when the TLS module later opens them.
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(dir, ec);
  return ec ? dir : absolute.lexically_normal();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Config>> ParseConfig(std::string_view toml_text,
                                                          const std::string& path) {
  const Context ctx{path.empty() ? std::string("<config>") : path, BaseDir(path)};

  // Debian builds toml++ with exceptions enabled (the shared library exports
  // toml::v3::ex::parse), so syntax errors arrive as toml::parse_error; they
  // must not cross the module boundary.
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(path));
  } catch (const toml::parse_error& e) {
    return ctx.Error(e.source().begin.line, "(toml)", Printable(e.description()));
  }

  auto config = std::make_shared<Config>();
  config->path = path;
  if (absl::Status st = Build(ctx, root, config.get()); !st.ok()) return st;
  return std::shared_ptr<const Config>(std::move(config));
}

absl::StatusOr<std::shared_ptr<const Config>> LoadConfigFile(const std::string& path) {
  const UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!file) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  const int fd = file.get();

  struct stat st {};
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot stat"));
  if (S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory"));

  // Read to EOF rather than trusting st_size, so pipes (--config <(...)) work;
  // the cap keeps a mistaken /dev/zero from eating memory.
  std::string text;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot read"));
    }
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > kMaxConfigFileBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", kMaxConfigFileBytes, " bytes"));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  return ParseConfig(text, path);
}

namespace config_internal {
absl::Status ResolveConfigFile(const Section& s, std::string_view key, const StringNode& node,
                               std::string* out) {
  return ResolveReadableFile(s, key, node, out);
}
}  // namespace config_internal

}  // namespace ktlb
