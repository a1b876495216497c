// A worker: one thread, one io_uring, its own listen sockets, connections,
// upstream pools and timers. Nothing here is touched by another thread except
// Wake() (an eventfd write) and the metrics it writes.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/metrics.h"
#include "ktlb/ring.h"
#include "ktlb/router.h"
#include "ktlb/slot_pool.h"
#include "ktlb/snapshot.h"
#include "ktlb/tls.h"
#include "access_log.h"
#include "client_connection.h"
#include "tunnel_connection.h"
#include "upstream_connection.h"

namespace ktlb {

// Completion kinds (UserData::kind).
enum class OpKind : uint8_t {
  kAccept = 1, kClient = 2, kUpstream = 3, kWake = 4, kTunnel = 5, kAccessLog = 6
};
// Per-connection operations (UserData::op).
enum class ConnOp : uint8_t {
  kRecv = 1, kSend = 2, kConnect = 3, kRecvMsg = 4, kRecvExact = 5, kPollIn = 6, kPollOut = 7
};

// Timer kinds beyond the counted TimeoutKind values.
inline constexpr uint8_t kTimerLinger = static_cast<uint8_t>(TimeoutKind::kCount);
// An idle keep-alive connection gives its buffers back after this long.
inline constexpr uint8_t kTimerTrim = kTimerLinger + 1;
inline constexpr uint32_t kTrimAfterMs = 1000;
inline constexpr size_t kTimerKinds = kTimerTrim + 1;

class Worker {
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
  static constexpr size_t kReadScratch = 16 * 1024;
  char* read_scratch() { return read_scratch_.get(); }
  Ring& ring() { return ring_; }
  BufferRing& buffers() { return buffers_; }
  const Snapshot& snapshot() const { return *snapshot_; }
  const Config& config() const { return *snapshot_->config; }
  WorkerMetrics& metrics() { return *metrics_; }
  bool draining() const { return draining_; }
  uint64_t now_ms() const { return now_ms_; }
  size_t id() const { return id_; }
  bool kernel_ktls() const { return kernel_ktls_; }
  AccessLog& access_log() { return access_log_; }
  // Wall-clock time of this loop turn, "2026-11-24T04:40:01.123Z" (for logs).
  std::string_view log_time();

  void ArmTimer(DeadlineNode* node, uint8_t kind, uint32_t duration_ms) {
    timers_[kind].Arm(node, now_ms_ + duration_ms, kind);
  }
  void CountTimeout(TimeoutKind k) { metrics_->timeouts[static_cast<size_t>(k)].Inc(); }

  // Retry the recv for `user_data` on the next loop turn (buffer ring was empty).
  void DeferRecv(uint64_t user_data) { deferred_recvs_.push_back(user_data); }
  // Flush a client's queued output at the end of this loop turn.
  void ScheduleFlush(uint64_t user_data) { pending_flushes_.push_back(user_data); }

  // Connection pools.
  void ReleaseClient(ClientConnection* c);
  void ReleaseTunnel(TunnelConnection* t);
  UpstreamConnection* AcquireUpstream();
  void ReleaseUpstream(UpstreamConnection* u);
  // An idle keep-alive connection to (upstream, server), or nullptr.
  UpstreamConnection* TakeIdleUpstream(size_t upstream, size_t server);
  // Parks a connection whose exchange ended cleanly; false if the pool is full.
  bool ParkIdleUpstream(UpstreamConnection* u);
  void ForgetIdleUpstream(UpstreamConnection* u);
  RoundRobin& balancer(size_t upstream) { return balancers_[upstream]; }
  // One-shot readiness poll for a splice pump: POLLOUT when `out`, else
  // POLLIN. No-op while *armed; sets it and counts one in-flight op.
  void ArmPoll(int fd, bool out, uint64_t user_data, bool* armed, int* inflight);
  // Pipes for splicing bodies, recycled per worker. False if none can be made.
  bool TakePipe(int* read_fd, int* write_fd);
  void ReturnPipe(int read_fd, int write_fd);  // only empty pipes come back

  UpstreamConnection* UpstreamAt(uint32_t index, uint16_t gen) { return upstreams_.Get(index, gen); }
  ClientConnection* ClientAt(uint32_t index, uint16_t gen) { return clients_.Get(index, gen); }

 private:
  struct Listener {
    size_t index = 0;  // into config().listeners
    int fd = -1;
    std::unique_ptr<tls::ServerTlsContext> tls;  // null on a passthrough listener
    bool passthrough = false;
    bool accept_armed = false;
  };

  void ArmAccept(Listener& l);
  void ArmWake();
  void HandleCompletion(io_uring_cqe* cqe);
  void OnAccept(Listener& l, int res, uint32_t flags);
  void ExpireTimers();
  void FlushPending();
  void BeginDrain();
  uint32_t NextWaitMs() const;

  size_t id_;
  bool kernel_ktls_;
  std::shared_ptr<const Snapshot> snapshot_;
  WorkerMetrics* metrics_;
  Ring ring_;
  BufferRing buffers_;
  std::vector<Listener> listeners_;
  SlotPool<ClientConnection> clients_;
  SlotPool<TunnelConnection> tunnels_;
  SlotPool<UpstreamConnection> upstreams_;
  // idle_[upstream][server]: parked keep-alive connections, most recent last.
  std::vector<std::vector<std::vector<UpstreamConnection*>>> idle_;
  std::vector<RoundRobin> balancers_;
  DeadlineQueue timers_[kTimerKinds];
  std::vector<std::pair<int, int>> pipes_;
  std::vector<uint64_t> deferred_recvs_;
  std::vector<uint64_t> pending_flushes_;
  std::vector<uint64_t> flush_scratch_;
  std::unique_ptr<char[]> read_scratch_ = std::make_unique<char[]>(kReadScratch);
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  std::atomic<bool> stop_requested_{false};
  bool draining_ = false;
  uint64_t drain_deadline_ms_ = 0;
  uint64_t now_ms_ = 0;
  // Declared after ring_: destroyed first, but Run() waits for its write.
  AccessLog access_log_;
  uint64_t log_time_at_ = UINT64_MAX;  // now_ms_ when log_time_ was made
  char log_time_[64] = {};
};

}  // namespace ktlb
