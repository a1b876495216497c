// Counters every worker writes and the admin listener reads.
//
// Each worker owns a WorkerMetrics and is its only writer, so an increment is a
// relaxed load + store (no locked instruction on the request path); the admin
// thread sums all workers with relaxed loads when /metrics is scraped.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>
#include <utility>

namespace ktlb {

class Counter {
 public:
  void Inc(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void Dec(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  uint64_t Get() const { return v_.load(std::memory_order_relaxed); }
  // For a count kept elsewhere by the same thread, published once in a while.
  void Set(uint64_t v) { v_.store(v, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

inline constexpr size_t kMaxReasons = 32;

enum class TimeoutKind : uint8_t {
  kHandshake, kRequestHeader, kKeepalive, kUpstreamConnect, kUpstreamResponse, kDrain,
  kTunnelIdle, kSend, kUpstreamTry, kCount
};
const char* TimeoutKindLabel(TimeoutKind k);

// What a TLS transport counts (one per listener today; upstream TLS will
// have its own).
struct TlsMetrics {
  Counter handshakes_full;
  Counter handshakes_resumed;
  // Resumed handshakes by whose keys opened the ticket (tls::TicketKeySource).
  std::array<Counter, kMaxReasons> resumptions;
  std::array<Counter, kMaxReasons> handshake_failures;  // by tls::HandshakeFailure
  // Fatal TLS errors after the handshake, an alert sent (bad_record_mac, ...).
  Counter protocol_errors;
  // kTLS
  Counter ktls_tx;
  Counter ktls_rx;
  Counter ktls_keyupdates;  // KeyUpdates read from kTLS RX sockets
  Counter ktls_rekeys;      // ... after which the kernel took the new keys
  // ... after which the connection was closed, by KeyUpdateClose
  std::array<Counter, kMaxReasons> ktls_keyupdate_closes;
  Counter ktls_ssl_released;  // connections whose OpenSSL object was freed after full offload
  std::array<Counter, kMaxReasons> ktls_fallbacks;
};

// HTTP/2 on a terminate listener (labels: http2::RefusalLabel, GlitchLabel,
// ErrorCodeLabel through MetricsLabels).
struct H2Metrics {
  Counter connections;
  Counter streams;
  std::array<Counter, kMaxReasons> refused;          // by http2::Refusal
  std::array<Counter, kMaxReasons> resets_by_client;  // by error code
  std::array<Counter, kMaxReasons> resets_by_ktlb;    // by error code
  std::array<Counter, kMaxReasons> goaways;           // sent, by error code
  std::array<Counter, kMaxReasons> glitches;          // by http2::Glitch
  std::array<Counter, kMaxReasons> budget_exhausted;  // by the glitch that ended it
  // RFC 8441 extended CONNECT streams the backend accepted with 101 (also
  // counted in ListenerMetrics::websocket_tunnels and its gauge).
  Counter websocket_tunnels;
  // Gauge: response bytes HTTP/2 streams hold unsent (h2_connection_buffer
  // bounds each connection's share).
  Counter response_buffered;
};

struct ListenerMetrics {
  Counter accepted;
  Counter active;  // gauge: incremented on accept, decremented on close
  TlsMetrics tls;
  std::array<Counter, 6> requests_by_class;             // [1..5] = 1xx..5xx
  std::array<Counter, kMaxReasons> parse_errors;        // by http1::RequestError
  Counter client_resets;
  Counter bytes_spliced;  // body bytes moved socket -> pipe -> socket, both directions
  // HTTP/1.1 upgrades (WebSocket) answered 101: the connection became a tunnel.
  Counter websocket_tunnels;
  Counter websocket_tunnels_active;  // gauge
  // Passthrough listeners.
  std::array<Counter, kMaxReasons> passthrough_hello_failures;  // by passthrough::HelloStatus
  Counter passthrough_no_route;
  Counter passthrough_bytes_up;    // client -> backend
  Counter passthrough_bytes_down;  // backend -> client
  // accept_proxy listeners (both modes): connections closed for their PROXY
  // header, by passthrough::ProxyHeaderFailure.
  std::array<Counter, kMaxReasons> proxy_header_failures;
  H2Metrics h2;
};

// Why an attempt on one server failed: the reason label of
// ktlb_upstream_server_failures_total.
enum class ServerFailure : uint8_t {
  kConnect,         // refused, unreachable, no socket
  kConnectTimeout,  // upstream_connect_timeout_ms
  kTls,             // the TLS handshake with the server failed (upstream TLS)
  kTimeout,         // upstream_response_timeout_ms (no byte for that long)
  kTryTimeout,      // the upstream's try_timeout_ms: no response head in time
  kReset,           // closed or reset before a response head
  kBadResponse,     // bytes that were not a usable response head
  kAborted,         // the response broke after its head went to the client
  k5xx,             // a response head with status 500..599
  kCount
};
const char* ServerFailureLabel(ServerFailure f);

// Upper bounds of the latency buckets in microseconds (rendered as
// Prometheus `le` in seconds); one more bucket catches the rest (+Inf).
// Sub-millisecond first: backends next door answer in tens of microseconds.
inline constexpr std::array<uint64_t, 15> kLatencyBucketsUs = {
    250,     500,     1'000,   2'500,     5'000,     10'000,    25'000,    50'000,
    100'000, 250'000, 500'000, 1'000'000, 2'500'000, 5'000'000, 10'000'000};

// A Prometheus histogram with one writer (the worker): each observation
// lands in one bucket (not cumulative here; the scrape adds them up), so
// an observation is two relaxed stores and a short scan.
struct LatencyHistogram {
  void Observe(uint64_t us) {
    size_t i = 0;
    while (i < kLatencyBucketsUs.size() && us > kLatencyBucketsUs[i]) ++i;
    buckets[i].Inc();
    sum_us.Inc(us);
  }
  std::array<Counter, kLatencyBucketsUs.size() + 1> buckets;  // the last: +Inf
  Counter sum_us;
};

// One worker's counters for one server of one upstream, labelled
// {upstream, server="ADDR"} (the address as configured or resolved).
struct ServerMetrics {
  Counter requests;   // attempts started on the server (passthrough: tunnels)
  Counter in_flight;  // gauge
  std::array<Counter, static_cast<size_t>(ServerFailure::kCount)> failures;
  Counter ejections;  // times this worker ejected it (passive health)
  // CLOCK_MONOTONIC ms until which this worker's ejection holds (0: none),
  // so a scrape can tell "ejected now" without the worker doing anything.
  Counter ejected_until_ms;
  Counter retries;      // requests that failed here and were retried elsewhere
  Counter queue_waits;  // attempts that waited for a connection first
  // From the attempt's start (connect included, for a new connection) to
  // its response head.
  LatencyHistogram latency;
};

// Active health of one server, written by its upstream's prober.
struct ServerHealthMetrics {
  Counter went_up;
  Counter went_down;
  Counter down;  // gauge: 1 while the checks hold it down
  bool checked = false;  // a prober counts it (guarded by the registry's lock)
};

struct UpstreamMetrics {
  Counter requests;
  Counter connect_failures;
  Counter timeouts;
  Counter retries;
  Counter resets;
  Counter in_flight;  // gauge: attempts (passthrough: tunnels) on a server now
  Counter ejections;  // servers this worker ejected (passive health)
  Counter no_server;  // requests refused because every server was down (503)
  Counter queued;     // requests that waited for a connection (max_conns_per_server)
  Counter queue_timeouts;  // ... and got 503: queue_timeout_ms passed or the queue was full
  Counter retries_budget_exhausted;  // retries refused by retry_budget
  // By the registry's server slot of this upstream (MetricsRegistry::Server);
  // grown under the registry's lock, never shrunk or moved.
  std::deque<ServerMetrics> servers;
  // Upstream TLS (an upstream with `tls`): the client transports' counters,
  // and the attempts failed at the TLS stage, by whether the server's
  // certificate was refused (upstream_tls_verify) or the handshake failed
  // otherwise (upstream_tls_handshake).
  TlsMetrics tls;
  Counter tls_verify_failures;
  Counter tls_handshake_failures;
};

// Active health of one upstream, written by its one prober thread (never
// by two at once: a prober stops before its successor starts).
struct UpstreamHealthMetrics {
  Counter went_up;
  Counter went_down;
  Counter healthy;  // gauge: servers the checks hold up
  bool checked = false;  // has a prober (guarded by the registry's lock)
  std::deque<ServerHealthMetrics> servers;  // by server slot, as UpstreamMetrics::servers
};

// Host names in an upstream's `servers`, re-resolved by the DNS refresher
// (one writer: the control thread), by what the answer did.
struct UpstreamDnsMetrics {
  Counter changed;    // a new address set, put in service
  Counter unchanged;
  Counter failed;     // no answer: the last good addresses stay
  bool used = false;  // the upstream names a host (guarded by the registry's lock)
};

struct WorkerMetrics {
  // By the registry's slot for a listener or upstream name (see
  // MetricsRegistry::Listener); grown under the registry's lock, never
  // shrunk or moved, so a connection may keep a reference.
  std::deque<ListenerMetrics> listeners;
  std::deque<UpstreamMetrics> upstreams;
  std::array<Counter, static_cast<size_t>(TimeoutKind::kCount)> timeouts;
  Counter loop_turns;
  // The worker's error log: lines logged, and of them kept from stderr by
  // the rate limit.
  Counter log_lines;
  Counter log_lines_suppressed;
};

// The process's configuration: written by the thread that loads and
// reloads it, read by scrapes (under the registry's lock).
struct ConfigMetrics {
  uint64_t reloads_ok = 0;
  uint64_t reloads_failed = 0;
  int64_t last_success_s = 0;  // unix time of the last config put in service (startup too)
  // The running snapshot's certificates: name, notAfter (unix seconds).
  std::vector<std::pair<std::string, int64_t>> certificate_not_after;
};

// Names needed to render label values; filled once at startup.
struct MetricsLabels {
  std::vector<std::string> listeners;  // registered up front, in this order
  std::vector<std::string> upstreams;
  std::vector<const char*> handshake_failures;  // index -> label
  std::vector<const char*> parse_errors;        // index -> label
  std::vector<const char*> ktls_fallbacks;      // index -> label
  std::vector<const char*> keyupdate_closes;    // index -> label
  std::vector<const char*> hello_failures;      // index -> label (nullptr: not a failure)
  std::vector<const char*> proxy_header_failures;  // index -> label
  std::vector<const char*> ticket_sources;      // index -> label
  std::vector<const char*> h2_refusals;         // index -> label (nullptr: not a refusal)
  std::vector<const char*> h2_glitches;         // index -> label
  std::vector<const char*> h2_error_codes;      // index -> label
};

// Listeners and upstreams are counted by name: two config generations with
// different listeners and upstreams count side by side, and a name that
// stays counts on across them. Workers register names when they build a
// generation (off the request path); counting itself takes no lock.
class MetricsRegistry {
 public:
  MetricsRegistry(MetricsLabels labels, size_t workers);
  WorkerMetrics& worker(size_t i) { return *workers_[i]; }
  // Worker `worker`'s counters for the listener / upstream `name`.
  ListenerMetrics& Listener(size_t worker, std::string_view name);
  UpstreamMetrics& Upstream(size_t worker, std::string_view name);
  // Worker `worker`'s counters for server `server` (its address text) of
  // upstream `upstream`. A server keeps its series across reloads while its
  // address stays.
  ServerMetrics& Server(size_t worker, std::string_view upstream, std::string_view server);
  // The prober's per-server health counters (process-wide).
  ServerHealthMetrics& ServerHealth(std::string_view upstream, std::string_view server);
  // The process-wide health counters of upstream `name` (for its prober).
  UpstreamHealthMetrics& UpstreamHealth(std::string_view name);
  // The DNS re-resolution counters of upstream `name` (control thread).
  UpstreamDnsMetrics& UpstreamDns(std::string_view name);
  // A config was put in service (`ok`, at startup or on reload) or a reload
  // was refused; `certificates` are the running snapshot's (unchanged when
  // refused). `now_s` is unix time.
  void RecordConfig(bool ok, int64_t now_s,
                    std::vector<std::pair<std::string, int64_t>> certificates = {});
  // Prometheus text exposition format, summed over workers.
  std::string Render() const;

 private:
  static size_t Slot(std::vector<std::string>* names, std::string_view name);
  // Listener() and Upstream(): `names` is the label list, `list` the
  // WorkerMetrics deque of the same kind.
  template <typename M>
  M& Register(std::vector<std::string>* names, std::deque<M> WorkerMetrics::*list, size_t worker,
              std::string_view name);
  // The process-wide health families (mu_ held).
  void RenderHealth(std::string* out) const;
  // The per-server families (mu_ held).
  void RenderServers(std::string* out) const;
  size_t ServerSlot(size_t upstream_slot, std::string_view server);  // mu_ held
  void RenderDns(std::string* out) const;
  void RenderConfig(std::string* out) const;

  mutable std::mutex mu_;  // guards the name lists and the workers' deques' sizes
  MetricsLabels labels_;
  std::vector<std::unique_ptr<WorkerMetrics>> workers_;
  std::deque<UpstreamHealthMetrics> health_;  // by upstream slot
  // Server addresses by upstream slot, then server slot.
  std::vector<std::vector<std::string>> server_names_;
  std::deque<UpstreamDnsMetrics> dns_;        // by upstream slot
  ConfigMetrics config_;  // guarded by mu_
};

}  // namespace ktlb
