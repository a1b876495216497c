// A worker: one thread, one io_uring, its own listen sockets, connections,
// upstream pools and timers. Nothing here is touched by another thread except
// Wake() (an eventfd write) and the metrics it writes.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/cluster.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/error_log.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/router.h"
#include "ktlb/slot_pool.h"
#include "ktlb/snapshot.h"
#include "ktlb/tls.h"
#include "access_log.h"
#include "http1_connection.h"
#include "tunnel_connection.h"

namespace ktlb {

// Timer kinds beyond the counted TimeoutKind values.
// An idle keep-alive connection gives its buffers back after this long.
inline constexpr uint8_t kTimerTrim = static_cast<uint8_t>(TimeoutKind::kCount);
inline constexpr uint32_t kTrimAfterMs = 1000;

class Worker : private IoHandler {
 public:
  // `kernel_ktls`: the kernel takes the "tls" ULP and OpenSSL can hand keys over.
  // `access_log_fd`: the shared access log file, or -1.
  Worker(size_t id, std::shared_ptr<const Snapshot> snapshot, WorkerMetrics* metrics,
         bool kernel_ktls, int access_log_fd = -1);
  ~Worker();

  // Runs on the worker's own thread (io_uring SINGLE_ISSUER): creates the
  // ring, buffers, listen sockets and TLS contexts.
  absl::Status Init();
  // The event loop; returns after Stop() once drained (or the drain deadline).
  void Run();
  // Thread-safe: asks the loop to drain and exit.
  void Stop();

  // --- used by the connection objects ---
  Loop& loop() { return loop_; }
  ErrorLog& error_log() { return error_log_; }
  const Snapshot& snapshot() const { return *snapshot_; }
  const Config& config() const { return *snapshot_->config; }
  WorkerMetrics& metrics() { return *metrics_; }
  bool draining() const { return draining_; }
  uint64_t now_ms() const { return loop_.now_ms(); }
  size_t id() const { return id_; }
  bool kernel_ktls() const { return kernel_ktls_; }
  AccessLog& access_log() { return access_log_; }
  // Wall-clock time of this loop turn, "2026-11-24T04:40:01.123Z" (for logs).
  std::string_view log_time();

  void ArmTimer(DeadlineNode* node, uint8_t kind, uint32_t duration_ms) {
    loop_.ArmTimer(node, kind, duration_ms);
  }
  void CountTimeout(TimeoutKind k) { metrics_->timeouts[static_cast<size_t>(k)].Inc(); }

  // Connection pools.
  void ReleaseClient(Http1Connection* c);
  void ReleaseTunnel(TunnelConnection* t);
  // An idle keep-alive connection to (upstream, server), or nullptr.
  // Parks a connection whose exchange ended cleanly; false if the pool is full.
  // This worker's cluster for the snapshot's upstream `index`.
  upstream::Cluster* cluster(size_t index) { return clusters_[index].get(); }

 private:
  // A listening socket: its multishot accept completes here.
  struct Listener final : IoHandler {
    Worker* worker = nullptr;
    size_t index = 0;  // into config().listeners
    int fd = -1;
    uint32_t handle = 0;
    std::unique_ptr<tls::ServerTlsContext> tls;  // null on a passthrough listener
    bool passthrough = false;
    bool accept_armed = false;
    void OnCompletion(uint8_t op, int res, uint32_t flags) override {
      (void)op;
      worker->OnAccept(*this, res, flags);
    }
  };
  enum Op : uint8_t { kWakeRead = 1, kAccessLogWrite };

  // IoHandler: the wake eventfd and the access log's writes.
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  void ArmAccept(Listener& l);
  void ArmWake();
  void OnAccept(Listener& l, int res, uint32_t flags);
  void BeginDrain();

  size_t id_;
  bool kernel_ktls_;
  std::shared_ptr<const Snapshot> snapshot_;
  WorkerMetrics* metrics_;
  Loop loop_;
  uint32_t handle_ = 0;
  ErrorLog error_log_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  // By upstream index in the snapshot. Before the client pools: a client's
  // exchange may still hold one of their connections when it is destroyed.
  std::vector<std::unique_ptr<upstream::Cluster>> clusters_;
  SlotPool<Http1Connection> clients_;
  SlotPool<TunnelConnection> tunnels_;

  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  std::atomic<bool> stop_requested_{false};
  bool draining_ = false;
  uint64_t drain_deadline_ms_ = 0;
  // Declared after loop_: destroyed first, but Run() waits for its write.
  AccessLog access_log_;
  uint64_t log_time_at_ = UINT64_MAX;  // now_ms_ when log_time_ was made
  char log_time_[64] = {};
};

}  // namespace ktlb
