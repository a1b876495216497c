// One worker's view of an [[upstreams]] entry: its servers, the balancer
// that picks among them, the keep-alive pool of connections to each, and the
// limits and counters they share.
//
// Servers are identified by their place in this cluster (the Server
// objects), never by config indices, so clusters of two config generations
// can live side by side. Every worker has its own Cluster per upstream (no
// locks on the request path); connections to a server are pooled per worker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "ktlb/balancer.h"
#include "ktlb/client_tls.h"
#include "ktlb/config.h"
#include "ktlb/ejection.h"
#include "ktlb/error_log.h"
#include "ktlb/health.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/slot_pool.h"
#include "ktlb/upstream_limits.h"

namespace ktlb::upstream {

class UpstreamConnection;
class Exchange;

// Opens a non-blocking TCP socket to `address` and submits its connect
// (completion tagged `tag`). -1 when no socket could be made: logged under
// `stage` and counted in metrics.connect_failures.
int StartConnect(Loop& loop, const SocketAddress& address, uint64_t tag, ErrorLog& log,
                 const char* stage, UpstreamMetrics& metrics);

struct Server {
  SocketAddress address;  // .text is how logs and the access log name it
  uint32_t weight = 1;
  std::string host = "";  // the name it was resolved from, "" for an address
};

class Cluster final : private IoHandler {
 public:
  // Pick's answer when servers are available but every one of them holds
  // max_conns_per_server connections on this worker: the request queues.
  static constexpr int kAllAtCap = -2;
  // Requests waiting for a connection, per cluster and worker.
  static constexpr size_t kMaxQueued = 1024;

  struct Limits {
    uint32_t connect_timeout_ms = 5000;
    uint32_t response_timeout_ms = 60000;
    size_t max_idle_per_server = 0;
  };

  // `worker_id` seeds the balancer so workers do not start on one server.
  // `timeouts`: the worker's timeouts_total counters, by TimeoutKind.
  // `health`: the upstream's active-check board, or null (passive only).
  Cluster(const UpstreamConfig& config, const Limits& limits, size_t worker_id, Loop* loop,
          ErrorLog* log, UpstreamMetrics* metrics, Counter* timeouts,
          std::shared_ptr<const HealthBoard> health = nullptr);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const std::string& name() const { return name_; }
  size_t size() const { return servers_.size(); }
  const Server& server(size_t i) const { return servers_[i]; }
  const Limits& limits() const { return limits_; }
  Loop& loop() { return *loop_; }
  ErrorLog& log() { return *log_; }
  UpstreamMetrics& metrics() { return *metrics_; }
  // Per-server counters: the registry's (SetServerMetrics) or, until then,
  // the cluster's own (unit tests, clusters built without a registry).
  ServerMetrics& server_metrics(size_t server) { return *server_metrics_[server]; }
  // `metrics[i]` for servers_[i]; they outlive the cluster (the registry's).
  void SetServerMetrics(std::vector<ServerMetrics*> metrics);
  // An attempt on `server` failed for `why` (ktlb_upstream_server_failures_total).
  void CountFailure(size_t server, ServerFailure why) {
    server_metrics_[server]->failures[static_cast<size_t>(why)].Inc();
  }
  // The upstream's try_timeout_ms: how long one attempt may wait for its
  // response head before a safe request moves to another server; 0 = none.
  uint32_t try_timeout_ms() const { return try_timeout_ms_; }
  void CountTimeout(TimeoutKind k) { timeouts_[static_cast<size_t>(k)].Inc(); }

  // The server for a new attempt, skipping `avoid` (a retry) when there is
  // another; -1 when no server is available (all down or ejected). `hash`
  // is the request's key (RequestHasher) for a hashing balancer, has_hash
  // false when it has none. With max_conns_per_server, servers at their cap
  // are skipped (the balancer picks among the others); kAllAtCap when every
  // available server is at its cap.
  int Pick(int avoid, uint64_t hash = 0, bool has_hash = false);

  // --- max_conns_per_server: the wait queue (per worker) ---
  uint32_t max_conns_per_server() const { return max_conns_; }
  uint32_t queue_timeout_ms() const { return queue_timeout_ms_; }
  // False when the queue is full.
  bool Enqueue(Exchange* e);
  void Dequeue(Exchange* e);
  size_t queued() const { return queue_.size(); }

  // --- retry_budget: requests and retries in flight (per worker) ---
  void RequestStarted() { ++requests_in_flight_; }
  void RequestEnded() { --requests_in_flight_; }
  // Whether a retry may start now (then it holds a place until RetryEnded);
  // a refusal is counted in metrics.retries_budget_exhausted.
  bool TryStartRetry();
  void RetryEnded() { --retries_in_flight_; }
  // Passive health: how an attempt on `server` went. A failure is a connect
  // failure, a reset, a timeout or a 5xx; enough in a row eject the server
  // from this worker's picks (ejection.h).
  void ReportSuccess(size_t server) { ejection_[server].OnSuccess(); }
  void ReportFailure(size_t server);
  // Seconds until a server may be back, for the Retry-After of a 503 when
  // Pick found none (at least 1).
  uint32_t RetryAfterSeconds();
  // What the balancer hashes, or nullptr when it hashes nothing (so the
  // client side need not compute a key).
  const HashKeyConfig* hash_key() const {
    return hash_key_.kind == HashKeyKind::kNone ? nullptr : &hash_key_;
  }

  // Load bookkeeping for least_conn and p2c: an attempt on `server` started;
  // it ended; its first response head came `us` after its start. A failed
  // attempt reports its time with failed = true.
  void AttemptStarted(size_t server) {
    ++load_[server].in_flight;
    metrics_->in_flight.Inc();
    server_metrics_[server]->requests.Inc();
    server_metrics_[server]->in_flight.Inc();
  }
  // The in-flight count doubles as the connections in use (or connecting)
  // to the server: an attempt holds exactly one. One ending may let a
  // queued request go (at the end of the loop turn).
  void AttemptEnded(size_t server) {
    --load_[server].in_flight;
    metrics_->in_flight.Dec();
    server_metrics_[server]->in_flight.Dec();
    if (!queue_.empty()) ScheduleDispatch();
  }
  void RecordLatency(size_t server, uint64_t us, bool failed);
  const ServerLoad& load(size_t server) const { return load_[server]; }
  // Which servers may be picked: up on the health board and not ejected.
  // Recomputed by Pick when either changed.
  ServerMask& available() { return available_; }
  // CLOCK_MONOTONIC in microseconds: latency is sub-millisecond on a LAN,
  // finer than the loop's millisecond clock.
  static uint64_t NowUs();

  // A connection to `server`: a parked keep-alive one when `reuse` and one
  // is there, else a new one (connecting). nullptr when no socket could be
  // made (counted).
  UpstreamConnection* Connection(size_t server, bool reuse);
  // Parks a connection whose exchange ended cleanly; false if the pool is
  // full or the worker drains.
  bool Park(UpstreamConnection* c);
  void Forget(UpstreamConnection* c);  // a parked one closed
  void Release(UpstreamConnection* c);  // its slot may be reused
  // Connections open or still closing.
  size_t live() const { return connections_.live(); }
  // Drain: closes parked connections and parks no more.
  void Drain();
  // Takes over what `previous` (the same upstream in the generation this
  // one replaces: a reload, or new addresses for a host name) learnt about
  // servers both have, matched by address: ejections and their backoff,
  // and slow start. A server new to the list starts fresh.
  void InheritFrom(const Cluster& previous);

  // --- upstream TLS (the upstream's `tls`) ---
  // The snapshot's client context (null: plain TCP); `kernel_ktls`: the
  // kernel can take TLS keys (the config's ktls then decides).
  void SetTls(tls::ClientTlsContextPtr ctx, bool kernel_ktls) {
    tls_ = std::move(ctx);
    kernel_ktls_ = kernel_ktls;
  }
  const tls::ClientTlsContext* tls() const { return tls_.get(); }
  bool kernel_ktls() const { return kernel_ktls_; }
  // The session this worker resumes with on `server` (nginx's
  // proxy_ssl_session_reuse, per worker). Stable addresses: a deque that
  // only grows, since an SSL in flight points at its slot.
  tls::SessionSlot* tls_session(size_t server) {
    while (tls_sessions_.size() <= server) tls_sessions_.emplace_back();
    return &tls_sessions_[server];
  }

 private:
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  // Hands freed connection slots to queued requests, in FIFO order.
  void OnDeferred(uint8_t op) override;
  void ScheduleDispatch();

  std::string name_;
  std::vector<Server> servers_;
  Limits limits_;
  Loop* loop_;
  ErrorLog* log_;
  UpstreamMetrics* metrics_;
  Counter* timeouts_;
  HashKeyConfig hash_key_;
  std::unique_ptr<Balancer> balancer_;
  ServerMask available_;
  std::vector<ServerLoad> load_;  // by server
  // Health: the shared board (may be null), this worker's ejections, and
  // when each server last came back (slow start).
  void RefreshAvailability(uint64_t now_ms);
  // Slow start: whether a server that came back recently takes this pick.
  bool Admit(size_t server, uint64_t now_ms);
  std::shared_ptr<const HealthBoard> health_;
  uint64_t health_seen_ = ~uint64_t{0};  // board version available_ reflects
  uint64_t next_readmit_ms_ = ~uint64_t{0};
  EjectionConfig eject_;
  uint32_t slow_start_ms_ = 0;
  std::vector<EjectionState> ejection_;  // by server
  std::vector<uint64_t> back_since_ms_;  // by server; 0 = never away
  std::vector<uint8_t> board_up_;  // by server: the board as last read
  uint64_t rng_;
  bool draining_ = false;
  SlotPool<UpstreamConnection> connections_;
  // idle_[server]: parked keep-alive connections, most recent last.
  std::vector<std::vector<UpstreamConnection*>> idle_;
  uint32_t max_conns_ = 0;
  uint32_t queue_timeout_ms_ = 1000;
  double retry_budget_ = 0.2;
  ServerMask below_cap_;  // scratch for Pick: available and under the cap
  WaitQueue queue_{kMaxQueued};
  HandlerSlot slot_;
  bool dispatch_pending_ = false;
  size_t requests_in_flight_ = 0;
  size_t retries_in_flight_ = 0;
  uint32_t try_timeout_ms_ = 0;
  std::deque<ServerMetrics> own_server_metrics_;  // by server, until SetServerMetrics
  std::vector<ServerMetrics*> server_metrics_;    // by server
  tls::ClientTlsContextPtr tls_;
  bool kernel_ktls_ = false;
  std::deque<tls::SessionSlot> tls_sessions_;
};

}  // namespace ktlb::upstream
