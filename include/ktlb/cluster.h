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
#include <memory>
#include <string>
#include <vector>

#include "ktlb/config.h"
#include "ktlb/error_log.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/router.h"
#include "ktlb/slot_pool.h"

namespace ktlb::upstream {

class UpstreamConnection;

// Opens a non-blocking TCP socket to `address` and submits its connect
// (completion tagged `tag`). -1 when no socket could be made: logged under
// `stage` and counted in metrics.connect_failures.
int StartConnect(Loop& loop, const SocketAddress& address, uint64_t tag, ErrorLog& log,
                 const char* stage, UpstreamMetrics& metrics);

struct Server {
  SocketAddress address;  // .text is how logs and the access log name it
};

class Cluster {
 public:
  struct Limits {
    uint32_t connect_timeout_ms = 5000;
    uint32_t response_timeout_ms = 60000;
    size_t max_idle_per_server = 0;
  };

  // `worker_id` staggers the round robin so workers do not start together.
  // `timeouts`: the worker's timeouts_total counters, by TimeoutKind.
  Cluster(const UpstreamConfig& config, const Limits& limits, size_t worker_id, Loop* loop,
          ErrorLog* log, UpstreamMetrics* metrics, Counter* timeouts);
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
  void CountTimeout(TimeoutKind k) { timeouts_[static_cast<size_t>(k)].Inc(); }

  // The next server, skipping `avoid` (a retry) when there is another.
  size_t Pick(int avoid) { return balancer_.Pick(servers_.size(), avoid); }

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

 private:
  std::string name_;
  std::vector<Server> servers_;
  Limits limits_;
  Loop* loop_;
  ErrorLog* log_;
  UpstreamMetrics* metrics_;
  Counter* timeouts_;
  RoundRobin balancer_;
  bool draining_ = false;
  SlotPool<UpstreamConnection> connections_;
  // idle_[server]: parked keep-alive connections, most recent last.
  std::vector<std::vector<UpstreamConnection*>> idle_;
};

}  // namespace ktlb::upstream
