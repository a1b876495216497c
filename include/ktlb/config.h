// The validated, immutable configuration snapshot.
//
// A Config is produced once by LoadConfigFile() and then shared read-only by
// every worker (std::shared_ptr<const Config>). Nothing in it is mutated after
// loading; reload builds a new snapshot and swaps the pointer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <netinet/in.h>

#include "absl/status/statusor.h"

namespace ktlb {

// An IPv4/IPv6 socket address parsed from "host:port" or "[v6]:port".
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t len = 0;
  std::string text;  // as written in the config, for logs and metrics labels
};

enum class ListenerMode { kTerminate, kPassthrough };
enum class UnknownSniPolicy { kDefault, kReject };
enum class KtlsMode { kAuto, kOff, kRequire };
enum class BalanceAlgorithm { kRoundRobin, kLeastConn, kP2c, kMaglev };

// What maglev hashes to keep a client on one server. kNone for the other
// balancers (they never read a key).
enum class HashKeyKind { kNone, kClientIp, kHeader, kCookie };
struct HashKeyConfig {
  HashKeyKind kind = HashKeyKind::kNone;
  // kHeader: the field name, lowercased (field names are case-insensitive);
  // kCookie: the cookie name as written (cookie names are case-sensitive).
  std::string name;
};

// All durations are in milliseconds.
struct Timeouts {
  uint32_t handshake_ms = 10'000;        // TCP accept -> TLS handshake done
  uint32_t request_header_ms = 30'000;   // first byte of a request -> full head
  uint32_t keepalive_ms = 60'000;        // idle between requests
  uint32_t upstream_connect_ms = 5'000;
  uint32_t upstream_response_ms = 60'000;  // request sent -> response head; also idle during body
  uint32_t drain_ms = 10'000;            // SIGTERM -> forced exit
  uint32_t tunnel_idle_ms = 600'000;     // passthrough: no byte either way for this long
  // A client that takes no response byte for this long (its TCP window or,
  // in HTTP/2, its flow-control window stays shut) loses the stream.
  uint32_t send_ms = 60'000;
};

// HTTP/2 limits (the defaults a proxy wants; see configs/reference.toml),
// used by the HTTP/2 session as they are (http2::Limits).
struct Http2Settings {
  uint32_t max_concurrent_streams = 128;
  // Decoded request header list (name + value + 32 per field, RFC 9113
  // 6.5.2): bounds HPACK bombs.
  uint32_t max_header_list_size = 65536;
  // Request-body windows, refilled only as a stream's backend takes the
  // bytes: what ktlb buffers per stream is bounded by them.
  uint32_t stream_window = 1 << 20;
  uint32_t connection_window = 16 << 20;
  uint32_t glitch_budget = 1000;
  // Response bytes a connection's streams may hold unsent in all (each
  // stream also stops at upstream::kMaxResponseBacklog): beyond it, streams
  // holding any stop reading their backends.
  uint32_t connection_buffer = 4 << 20;
};

// How passthrough relays move bytes once the ClientHello is replayed
// (`[server] passthrough_forwarding`; read at startup only).
//   kSplice:  socket -> pipe -> socket in ktlb's workers.
//   kSockmap: a BPF stream-verdict program redirects them in the kernel;
//             ktlb does not start when it cannot be loaded.
//   kAuto:    sockmap where it loads, splice otherwise (logged once).
enum class PassthroughForwarding { kSplice, kSockmap, kAuto };

struct ServerConfig {
  uint32_t workers = 0;  // 0 = one per online CPU, resolved at startup
  PassthroughForwarding passthrough_forwarding = PassthroughForwarding::kSplice;
  bool has_admin = false;
  SocketAddress admin_listen;
  Timeouts timeouts;
  // SIGTERM -> listeners close: /healthz says 503 at once while new
  // connections are still served (one request each), so L4 health checks
  // steer clients away first. 0 = close at once.
  uint32_t drain_grace_ms = 0;
  uint32_t max_request_line = 8192;   // bytes; longer -> 414
  uint32_t max_header_bytes = 32768;  // whole head; larger -> 431
  Http2Settings h2;
  // One JSON line per request; "" = no access log. Resolved against the
  // config file's directory; appended to (created if missing).
  std::string access_log;
  // Drop to this user and group once the listeners are bound ("" = stay).
  // Resolved when the config is read, so an unknown name fails --check;
  // without `group`, the user's primary group.
  std::string user, group;
  uint32_t uid = 0, gid = 0;
  // Session-ticket keys shared by a fleet: a file of 80-byte records (as
  // nginx's ssl_session_ticket_key), read when a snapshot is built; "" =
  // keys generated and rotated in-process. Resolved against the config
  // file's directory; the line is for errors found when reading it.
  std::string ticket_keys;
  uint32_t ticket_keys_line = 0;
};

// mTLS: `client_auth = { ca, mode, crl }` on a terminate listener or on a
// [[certificates]] entry (which, when SNI selects it, overrides the
// listener's). Files are read (and their content checked) when the snapshot
// is built (tls::LoadClientAuth).
enum class ClientAuthMode { kRequire, kOptional };
struct ClientAuthConfig {
  bool enabled = false;
  ClientAuthMode mode = ClientAuthMode::kRequire;
  std::string ca_path;   // resolved against the config file's directory
  std::string crl_path;  // "" = no revocation check
  // Where it was written ("listeners[0].client_auth"), so problems found in
  // the files' content are reported as FILE:LINE: key.
  std::string key;
  uint32_t ca_line = 0;
  uint32_t crl_line = 0;
};

struct CertificateConfig {
  std::string name;
  std::string cert_path;  // resolved against the config file's directory
  std::string key_path;
  // Where the entry's values are, so certificate problems found after parsing
  // (unreadable PEM, a key that does not match) are reported as FILE:LINE: key.
  size_t index = 0;      // position in [[certificates]]
  uint32_t cert_line = 0;
  uint32_t key_line = 0;
  ClientAuthConfig client_auth{};
};

// A terminate listener's TLS protocol policy (nginx's ssl_protocols,
// ssl_ecdh_curve, ssl_ciphers). Names are OpenSSL's; whether the linked
// OpenSSL knows them is checked when the snapshot is built
// (tls::CheckTlsPolicies), which is why the lines are kept.
struct TlsPolicy {
  // Wire version numbers: 0x0303 = TLS 1.2, 0x0304 = TLS 1.3.
  uint16_t min_version = 0x0303;
  uint16_t max_version = 0x0304;
  std::string groups = "X25519:P-256:P-384";
  // TLS 1.2: forward secrecy and AEAD only.
  std::string ciphers =
      "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
      "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
  // TLS 1.3: AES-128-GCM first (OpenSSL's default puts AES-256 first). It is
  // as safe for TLS and cheaper per byte, and SHA-256 makes the key schedule
  // cheaper per handshake; server preference applies it.
  std::string ciphersuites =
      "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
  // Where each name list was set (0 = the default), for FILE:LINE errors.
  uint32_t groups_line = 0;
  uint32_t ciphers_line = 0;
  uint32_t ciphersuites_line = 0;
};

struct ListenerConfig {
  std::string name;
  SocketAddress listen;
  ListenerMode mode = ListenerMode::kTerminate;
  std::vector<std::string> certificates;  // names into Config::certificates, in order
  UnknownSniPolicy unknown_sni = UnknownSniPolicy::kDefault;
  std::vector<std::string> alpn = {"http/1.1"};  // in preference order; empty in passthrough
  KtlsMode ktls = KtlsMode::kAuto;
  // Both modes: every connection starts with a PROXY protocol v1 or v2
  // header from an L4 balancer; its client address replaces the socket's.
  bool accept_proxy = false;
  TlsPolicy tls;
  ClientAuthConfig client_auth{};
  // client_auth on the listener or on one of its certificates: its requests
  // carry ktlb's X-Client-Cert-* headers to the backend.
  bool mtls = false;
};

struct RouteConfig {
  std::string listener;     // listener name
  std::string sni;          // "" = any; exact or "*.suffix"; stored lowercase
  std::string host;         // "" = any; compared case-insensitively, port stripped;
                            // stored lowercase, never with a port
  std::string path_prefix;  // "" = any
  std::string upstream;     // upstream name
  std::string alpn;         // "" = any; passthrough: the ClientHello offers this protocol
  bool require_client_cert = false;  // terminate: 403 without a verified client certificate
};

// What a passthrough listener sends a backend before the client's bytes.
enum class ProxyProtocol { kNone, kV2 };

// `tls = { ca, sni, verify, cert, key, ktls }` on an upstream: ktlb speaks
// TLS to its servers (the transport's client role).
struct UpstreamTlsConfig {
  bool enabled = false;
  std::string ca_path;    // "" = the system's default trust store
  std::string sni;        // "" = no SNI sent; the name checked is then the server's host
  bool verify = true;     // the server's chain and its name (or IP)
  std::string cert_path;  // client certificate (with key_path); "" = none
  std::string key_path;
  KtlsMode ktls = KtlsMode::kAuto;  // "auto" | "off"
  // Where it was written ("upstreams[0].tls") and its files' lines, so
  // problems found in their content are reported as FILE:LINE: key.
  std::string key;
  uint32_t line = 0;
  uint32_t ca_line = 0;
  uint32_t cert_line = 0;
  uint32_t key_line = 0;
};

// One backend of an upstream. `address.text` is also its identity for
// maglev, so the same list hashes the same on every worker and every host.
struct UpstreamServer {
  SocketAddress address;
  uint32_t weight = 1;  // 1..256: its share relative to the others
  // The host name it was resolved from ("" for an address): upstream TLS
  // verifies the server's certificate against it when `sni` is not set.
  std::string host = "";
};

// One element of `servers` as written: an address, or a host name that
// resolves (server_names.h) to any number of addresses, each one server
// with the entry's weight, as nginx does; such a server's `address.text` is
// the resolved address ("10.0.0.7:9001"), its name stays here.
struct ServerEntry {
  std::string host;  // the name to resolve; "" when an address was written
  uint16_t port = 0;
  uint32_t weight = 1;
  // Where it was written ("upstreams[0].servers[1]" and its line), for
  // FILE:LINE: key when the name does not resolve.
  std::string key;
  uint32_t line = 0;
  // An address: that one. A name: the last good answer, sorted by text;
  // empty until resolved (a config only parsed, as by --check).
  std::vector<SocketAddress> addresses;
};

// Active health checks: one prober per upstream per process.
enum class HealthCheckType { kHttp, kTcp };
struct HealthCheckConfig {
  bool enabled = false;  // `health` absent: passive ejection only
  HealthCheckType type = HealthCheckType::kHttp;
  std::string path = "/healthz";  // kHttp: GET path, 2xx/3xx is healthy
  uint32_t interval_ms = 2000;    // between probes of one server (jittered +-10%)
  uint32_t timeout_ms = 1000;     // connect + response, per probe
  uint32_t rise = 2;              // consecutive passes to come back up
  uint32_t fall = 3;              // consecutive failures to go down
  uint32_t line = 0;              // where it was set, for messages
};

// Passive ejection: every worker watches its own requests. After
// `consecutive_failures` connect failures, resets, timeouts or 5xx in a row,
// a server gets no requests from that worker for base_ms, doubled at each
// ejection that follows without a success in between, capped at max_ms.
struct EjectionConfig {
  uint32_t consecutive_failures = 5;  // 0 = never eject
  uint32_t base_ms = 10'000;
  uint32_t max_ms = 300'000;
};

struct UpstreamConfig {
  std::string name;
  // The servers to balance over: `server_entries` expanded
  // (ExpandServers), in the order written.
  std::vector<UpstreamServer> servers;
  std::vector<ServerEntry> server_entries;
  // Host names in `servers` are resolved again this often, off the workers;
  // a changed answer puts a new server list in service. 0 = only when the
  // config is loaded (startup, reload).
  uint32_t resolve_interval_ms = 30'000;
  BalanceAlgorithm balance = BalanceAlgorithm::kRoundRobin;
  HashKeyConfig hash_key;     // kClientIp by default under maglev
  uint32_t hash_key_line = 0;  // where it was set, for route errors
  // Pooled keep-alive connections per worker and server. HTTP/2 multiplexes
  // many streams over one client connection, each needing its own upstream
  // connection: a pool smaller than the streams in flight churns connects.
  uint32_t max_idle_per_server = 256;
  ProxyProtocol proxy_protocol = ProxyProtocol::kNone;  // passthrough routes only
  uint32_t proxy_protocol_line = 0;  // where it was set, for route errors
  HealthCheckConfig health;
  EjectionConfig eject;
  // A server coming back (re-admitted or healthy again) takes a share that
  // grows linearly from 10% to its full weight over this long; 0 = at once.
  uint32_t slow_start_ms = 0;
  // Connections (in use or connecting) one worker may hold to one server;
  // 0 = unlimited. The cap is per worker: with N workers a server sees up
  // to N x this many. Requests over it wait (a bounded FIFO per cluster and
  // worker) up to queue_timeout_ms, then get 503 with Retry-After.
  uint32_t max_conns_per_server = 0;
  uint32_t queue_timeout_ms = 1000;
  // Retries in flight stay below max(3, retry_budget x requests in flight),
  // per cluster and worker; 0 allows only the floor of 3.
  double retry_budget = 0.2;
  // How long one attempt may wait for its response head (from its start,
  // connect included; for a request with a body, from the body's end)
  // before it is given up: a safe request is retried on another server
  // within retry_budget, any other gets 504. 0 = no per-try limit (only
  // [server] upstream_response_timeout_ms, which is never retried).
  uint32_t try_timeout_ms = 0;
  UpstreamTlsConfig tls;
};

struct Config {
  std::string path;  // the file it came from
  ServerConfig server;
  std::vector<ListenerConfig> listeners;
  std::vector<CertificateConfig> certificates;
  std::vector<RouteConfig> routes;
  std::vector<UpstreamConfig> upstreams;

  const CertificateConfig* FindCertificate(std::string_view name) const;
  const UpstreamConfig* FindUpstream(std::string_view name) const;
  // Every file this config reads (itself, certificates, keys, ...): what a
  // reload must notice changing on disk. Keep it in step with the parser.
  std::vector<std::string> FilesRead() const;
  const ListenerConfig* FindListener(std::string_view name) const;
};

// Parses and validates a config. Every error is "FILE:LINE: key: problem"
// (InvalidArgument), e.g. "/etc/ktlb.toml:12: listeners[0].mode: must be
// \"terminate\" or \"passthrough\""; TOML syntax errors use the key "(toml)".
// LoadConfigFile reports an unreadable file as "FILE: cannot open: <errno text>"
// with the errno's status code.
// Relative paths are resolved against the directory of `path` and made
// absolute; certificate and key files must exist and be readable.
absl::StatusOr<std::shared_ptr<const Config>> LoadConfigFile(const std::string& path);
absl::StatusOr<std::shared_ptr<const Config>> ParseConfig(std::string_view toml_text,
                                                          const std::string& path);

// "127.0.0.1:8443", "[::1]:8443", "localhost:80" (localhost only; no DNS).
absl::StatusOr<SocketAddress> ParseSocketAddress(std::string_view text);

}  // namespace ktlb
