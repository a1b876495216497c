// The process's active health checkers: one HealthProber per upstream that
// has `health`, started with the server and kept across reloads while the
// upstream's servers and check settings stay the same (so a reload neither
// forgets that a server is down nor probes it twice).
//
// Workers ask for an upstream's board when they build a generation (off the
// request path, under a lock); their Clusters then read it lock-free.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ktlb/config.h"
#include "ktlb/health.h"
#include "ktlb/health_prober.h"
#include "ktlb/metrics.h"

namespace ktlb {

class HealthMonitor {
 public:
  explicit HealthMonitor(MetricsRegistry* metrics) : metrics_(metrics) {}
  ~HealthMonitor() { StopAll(); }
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // Probes `config`'s upstreams from now on: unchanged ones keep their
  // prober and board, others get new ones (all servers up until probed,
  // except those the old board of the same upstream held down),
  // probers of upstreams gone or changed stop. Generations built before
  // keep the boards they hold, frozen.
  void Update(const Config& config);
  // The board for `upstream` if it is what Update last saw, else null
  // (a generation of an older or newer config: passive health only).
  std::shared_ptr<const upstream::HealthBoard> Board(const UpstreamConfig& upstream) const;
  void StopAll();

 private:
  struct Entry {
    std::string key;  // servers and check settings: a change makes a new board
    std::vector<std::string> servers;  // addresses, by board index
    std::shared_ptr<upstream::HealthBoard> board;
    std::unique_ptr<upstream::HealthProber> prober;
  };
  static std::string KeyOf(const UpstreamConfig& upstream);

  MetricsRegistry* metrics_;
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> by_name_;  // guarded by mu_
};

}  // namespace ktlb
