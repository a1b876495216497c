// The process-level server: loads the snapshot, starts one pinned worker
// thread per configured worker and the admin listener, drains on request.
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/admin_server.h"
#include "ktlb/listen_sockets.h"
#include "ktlb/metrics.h"
#include "ktlb/unique_fd.h"
#include "ktlb/snapshot.h"

namespace ktlb {

class HealthMonitor;
class Worker;

class Server {
 public:
  explicit Server(std::shared_ptr<const Snapshot> snapshot);
  ~Server();

  // Starts every worker; fails (and stops those started) if any cannot bind or
  // build its TLS contexts.
  absl::Status Start();
  // Asks every worker to drain, waits for them (bounded by drain_timeout_ms).
  // `handed_off`: a successor process took the listening sockets (Worker::Stop).
  void StopAndWait(bool handed_off = false);
  // The listening sockets: to hand to a successor, or (before Start) the
  // ones inherited from a predecessor. Start() closes inherited ones no
  // worker took.
  ListenSockets& listen_sockets() { return sockets_; }
  // Hands every worker `snapshot` for its next accepts (Worker::Swap);
  // returns at once. Live connections finish on the snapshot they began on.
  void Swap(std::shared_ptr<const Snapshot> snapshot);
  // Swap, then waits (up to 10 s) until every worker has applied it or
  // refused it (a listener it cannot bind; it keeps its config). A worker
  // still busy after that takes it at its next turn.
  struct InstallResult {
    size_t applied = 0, refused = 0, late = 0;
  };
  InstallResult Install(std::shared_ptr<const Snapshot> snapshot);
  // SIGUSR1: opens the access log file again (after logrotate moved it) and
  // puts it in place of the old descriptor, which the workers keep using.
  absl::Status ReopenAccessLog();
  // For a watchdog: true if every worker finished a loop turn since the last
  // call (an idle worker still turns once a second). Control thread only.
  bool WorkersTurned();
  // Worker swaps applied / refused so far, summed over workers.
  uint64_t swaps_applied() const;
  uint64_t swaps_failed() const;
  const MetricsRegistry& metrics() const { return *metrics_; }
  MetricsRegistry& mutable_metrics() { return *metrics_; }
  size_t worker_count() const { return workers_.size(); }

 private:
  std::shared_ptr<const Snapshot> snapshot_;
  std::unique_ptr<MetricsRegistry> metrics_;
  std::unique_ptr<AdminServer> admin_;
  // Declared before the workers: they hold boards of its probers.
  std::unique_ptr<HealthMonitor> health_;
  ListenSockets sockets_;  // before the workers, which register in it
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  UniqueFd access_log_fd_;  // shared by the workers (O_APPEND)
  std::vector<uint64_t> turns_seen_;  // WorkersTurned()
};

// Labels for the metrics registry from the config and the module enums.
MetricsLabels BuildMetricsLabels(const Config& config);

}  // namespace ktlb
