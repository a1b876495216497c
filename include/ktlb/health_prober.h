// The active health checker of one upstream: one thread per upstream per
// process (never one per worker), probing every server in turn and
// publishing the verdicts on the upstream's HealthBoard.
//
// Off the request path, so it is plain and robust rather than fast:
// non-blocking sockets and poll(2), at most one probe in flight per server,
// every probe bounded by timeout_ms. A probe is a TCP connect, or an HTTP/1.1
// GET of `path` (Host: the server's address) answered 2xx or 3xx. The time
// between two probes of one server is interval_ms +-10%, drawn afresh each
// time, so servers, upstreams and ktlb hosts do not probe in lockstep.
// An upstream with `tls` is probed over TLS with the same settings as its
// requests (CA, name check, SNI, client certificate), through the prober's
// own context and one cached session per server.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ktlb/client_tls.h"
#include "ktlb/config.h"
#include "ktlb/health.h"
#include "ktlb/metrics.h"
#include "ktlb/unique_fd.h"

namespace ktlb::upstream {

class HealthProber {
 public:
  // `metrics` (may be null) and `board` outlive the prober, and so do
  // `server_metrics` (by server; empty, or null entries: not counted).
  HealthProber(const UpstreamConfig& upstream, std::shared_ptr<HealthBoard> board,
               UpstreamHealthMetrics* metrics,
               std::vector<ServerHealthMetrics*> server_metrics = {});
  ~HealthProber();  // Stop()
  HealthProber(const HealthProber&) = delete;
  HealthProber& operator=(const HealthProber&) = delete;

  // Before Start: server `i` is known down (from the prober this one
  // replaces); it comes back after `rise` passed probes, as it would have.
  void SeedDown(size_t i);
  // Starts the thread; false if its wake-up eventfd could not be made.
  bool Start();
  // Wakes the thread and joins it; probes in flight are dropped.
  void Stop();

 private:
  struct Probe;
  void Run();
  void Begin(Probe& p, uint64_t now_ms);
  void OnReady(Probe& p, short revents, uint64_t now_ms);
  void Finish(Probe& p, bool passed, const std::string& why, uint64_t now_ms);
  // The TLS steps of a probe: handshake, then the same send and read.
  void StartTlsProbe(Probe& p, uint64_t now_ms);
  void OnTlsReady(Probe& p, uint64_t now_ms);
  uint64_t Jittered(uint64_t ms);

  std::string name_;
  HealthCheckConfig config_;
  tls::ClientTlsContextPtr tls_;  // null: plain TCP
  std::string tls_error_;         // why tls_ could not be built (every probe fails)
  std::vector<std::unique_ptr<Probe>> probes_;  // by server
  std::shared_ptr<HealthBoard> board_;
  UpstreamHealthMetrics* metrics_;
  UniqueFd wake_;
  uint64_t rng_;
  std::thread thread_;
};

}  // namespace ktlb::upstream
