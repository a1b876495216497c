// A worker: one thread, one io_uring, its own listen sockets, connections,
// upstream pools and timers. Nothing here is touched by another thread except
// Wake() (an eventfd write) and the metrics it writes.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/cluster.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/error_log.h"
#include "ktlb/listen_sockets.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/relay.h"
#include "ktlb/router.h"
#include "ktlb/slot_pool.h"
#include "ktlb/snapshot.h"
#include "ktlb/tls.h"
#include "ktlb/unique_fd.h"
#include "ktlb/access_log.h"
#include "generation.h"
#include "health_monitor.h"
#include "http1_connection.h"

namespace ktlb {

// Timer kinds beyond the counted TimeoutKind values.
// An idle keep-alive connection gives its buffers back after this long.
inline constexpr uint8_t kTimerTrim = static_cast<uint8_t>(TimeoutKind::kCount);
inline constexpr uint32_t kTrimAfterMs = 1000;

class Worker final : private IoHandler, private passthrough::RelayHost {
 public:
  // `kernel_ktls`: the kernel takes the "tls" ULP and OpenSSL can hand keys over.
  // `access_log_fd`: the shared access log file, or -1.
  // `health`: the process's probers, whose boards the clusters read (null:
  // passive health only).
  // `sockets`: the process's listening sockets (registered here; inherited
  // ones taken instead of binding), or null.
  Worker(size_t id, std::shared_ptr<const Snapshot> snapshot, MetricsRegistry* registry,
         bool kernel_ktls, int access_log_fd = -1, const HealthMonitor* health = nullptr,
         ListenSockets* sockets = nullptr);
  ~Worker();

  // Runs on the worker's own thread (io_uring SINGLE_ISSUER): creates the
  // ring, buffers, listen sockets and TLS contexts.
  absl::Status Init();
  // The event loop; returns after Stop() once drained (or the drain deadline).
  void Run();
  // Thread-safe: asks the loop to drain and exit. `handed_off`: a successor
  // process accepts on the same sockets now, so they are closed here
  // without shutdown() (which would stop them for the successor too), and
  // a connection accepted while the accept is being cancelled is served.
  void Stop(bool handed_off = false);
  // Thread-safe: new connections use `snapshot` from the next loop turn on
  // (listeners added, kept or closed to match it); connections already open
  // finish on the generation they started with. If the worker cannot build
  // it (a listener cannot bind, a TLS context fails) it keeps the current
  // one and says why in the log.
  void Swap(std::shared_ptr<const Snapshot> snapshot);
  // Swaps applied, and refused (counted on the worker's thread).
  uint64_t swaps_applied() const { return swaps_applied_.load(std::memory_order_relaxed); }
  uint64_t swaps_failed() const { return swaps_failed_.load(std::memory_order_relaxed); }

  // --- used by the connection objects ---
  Loop& loop() override { return loop_; }
  ErrorLog& error_log() override { return error_log_; }
  // The generation new connections start on (connections keep their own).
  const Config& config() const { return current_->config(); }
  WorkerMetrics& metrics() { return *metrics_; }
  bool draining() const { return draining_; }
  uint64_t now_ms() const { return loop_.now_ms(); }
  size_t id() const { return id_; }
  bool kernel_ktls() const { return kernel_ktls_; }
  AccessLog& access_log() override { return access_log_; }
  // Wall-clock time of this loop turn, "2026-11-24T04:40:01.123Z" (for logs).
  std::string_view log_time() override;

  void ArmTimer(DeadlineNode* node, uint8_t kind, uint32_t duration_ms) {
    loop_.ArmTimer(node, kind, duration_ms);
  }
  void CountTimeout(TimeoutKind k) override { metrics_->timeouts[static_cast<size_t>(k)].Inc(); }

  // Connection pools.
  // `gen` is the generation the connection started on.
  void ReleaseClient(Http1Connection* c, Generation* gen);

 private:
  // A listening socket: its multishot accept completes here.
  struct Listener final : IoHandler {
    Worker* worker = nullptr;
    size_t index = 0;  // into the current generation's config().listeners
    UniqueFd fd;  // empty once closed (accept completions may still come)
    std::string address;  // for log lines
    uint32_t handle = 0;
    bool passthrough = false;
    bool accept_armed = false;
    void OnCompletion(uint8_t op, int res, uint32_t flags) override {
      (void)op;
      worker->OnAccept(*this, res, flags);
    }
  };
  // A passthrough relay in the pool, and the generation it started on.
  struct Tunnel final : passthrough::Relay {
    uint32_t slot_index = 0;
    uint16_t generation = 0;
    Generation* gen = nullptr;
  };
  enum Op : uint8_t { kWakeRead = 1, kAccessLogWrite };

  // IoHandler: the wake eventfd and the access log's writes.
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  // RelayHost: a relay (always one of tunnels_) is done.
  void OnRelayReleased(passthrough::Relay* relay) override;
  void ArmAccept(Listener& l);
  void ArmWake();
  void OnAccept(Listener& l, int res, uint32_t flags);
  void BeginDrain();
  void CloseListeners();
  // A generation for `snapshot`: TLS contexts, clusters, metrics.
  absl::StatusOr<std::unique_ptr<Generation>> BuildGeneration(
      std::shared_ptr<const Snapshot> snapshot);
  // Opens, keeps or closes listeners to match `gen`; nothing changes on error.
  absl::Status MatchListeners(const Generation& gen);
  // Stops accepting on `l`; it stays registered until its multishot
  // accept has ended, so sockets it still hands over get closed.
  void CloseListener(std::unique_ptr<Listener> l);
  // Between loop turns (never under a callback whose object it may free):
  // old generations nobody uses, closed listeners whose accept ended.
  void Housekeeping();
  void ApplyPendingSwap();
  // Frees old generations no connection uses any more.
  void PruneGenerations();

  size_t id_;
  bool kernel_ktls_;
  std::shared_ptr<const Snapshot> initial_;
  MetricsRegistry* registry_;
  const HealthMonitor* health_;
  WorkerMetrics* metrics_;
  Loop loop_;
  uint32_t handle_ = 0;
  ErrorLog error_log_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Listener>> closing_listeners_;
  bool housekeeping_due_ = false;
  // The current generation is the last. Before the client pools: a client's
  // exchange may still hold a connection of their clusters when destroyed.
  std::vector<std::unique_ptr<Generation>> generations_;
  Generation* current_ = nullptr;
  std::mutex swap_mu_;
  std::shared_ptr<const Snapshot> pending_;  // guarded by swap_mu_
  std::atomic<bool> swap_pending_{false};
  std::atomic<uint64_t> swaps_applied_{0};
  std::atomic<uint64_t> swaps_failed_{0};
  SlotPool<Http1Connection> clients_;
  SlotPool<Tunnel> tunnels_;

  UniqueFd wake_fd_;
  uint64_t wake_buf_ = 0;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> handed_off_{false};
  ListenSockets* sockets_;
  bool draining_ = false;
  uint64_t drain_deadline_ms_ = 0;
  uint64_t close_listeners_at_ms_ = 0;  // draining: end of drain_grace_ms
  // Declared after loop_: destroyed first, but Run() waits for its write.
  AccessLog access_log_;
  uint64_t log_time_at_ = UINT64_MAX;  // now_ms_ when log_time_ was made
  char log_time_[64] = {};
};

}  // namespace ktlb
