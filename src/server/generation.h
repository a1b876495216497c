// What one worker built from one config snapshot: its listeners' TLS
// contexts, its upstream clusters, and the counters they count in.
//
// A connection holds the generation it was accepted on for its whole life,
// so a new snapshot serves new connections while older ones finish on
// theirs: routes, upstream servers, timeouts and certificates of a
// connection never change under it. The count is a plain integer: a
// generation belongs to one worker thread.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "ktlb/cluster.h"
#include "ktlb/metrics.h"
#include "ktlb/snapshot.h"
#include "ktlb/tls.h"

namespace ktlb {

class Generation {
 public:
  explicit Generation(std::shared_ptr<const Snapshot> snapshot) : snapshot_(std::move(snapshot)) {}

  const Snapshot& snapshot() const { return *snapshot_; }
  const Config& config() const { return *snapshot_->config; }
  const Router& router() const { return snapshot_->router; }

  // By listener index in config(): null for a passthrough listener.
  const tls::ServerTlsContext* tls(size_t listener) const { return tls_[listener].get(); }
  ListenerMetrics& listener_metrics(size_t listener) { return *listener_metrics_[listener]; }
  // By upstream index in config().
  upstream::Cluster* cluster(size_t upstream) { return clusters_[upstream].get(); }
  std::span<const std::unique_ptr<upstream::Cluster>> clusters() const { return clusters_; }

  void Ref() { ++refs_; }
  void Unref() { --refs_; }
  int refs() const { return refs_; }

 private:
  friend class Worker;  // builds it

  std::shared_ptr<const Snapshot> snapshot_;
  std::vector<std::unique_ptr<tls::ServerTlsContext>> tls_;
  std::vector<ListenerMetrics*> listener_metrics_;
  std::vector<std::unique_ptr<upstream::Cluster>> clusters_;
  int refs_ = 0;
};

}  // namespace ktlb
