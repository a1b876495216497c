// The admin listener: plain HTTP, GET /metrics (Prometheus text) and /healthz.
//
// It runs on its own thread with blocking sockets: scrapes are rare and must
// never cost a worker a loop turn.
#pragma once

#include <atomic>
#include <thread>

#include "absl/status/status.h"
#include "ktlb/config.h"
#include "ktlb/listen_sockets.h"
#include "ktlb/metrics.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

class AdminServer {
 public:
  // `sockets`: where a predecessor's admin socket is taken from and this
  // one is registered for a successor (binary upgrade), or null.
  AdminServer(const SocketAddress& addr, MetricsRegistry* metrics,
              ListenSockets* sockets = nullptr);
  ~AdminServer();  // stops the thread
  absl::Status Start();
  void Stop();
  // From now on /healthz answers 503 "draining" (thread-safe).
  void SetDraining() { draining_.store(true, std::memory_order_relaxed); }

 private:
  void Serve();
  void HandleClient(int fd);

  SocketAddress addr_;
  MetricsRegistry* metrics_;
  ListenSockets* sockets_;
  std::string key_;  // in sockets_: "admin " + address
  UniqueFd listen_fd_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> draining_{false};
  std::thread thread_;
};

}  // namespace ktlb
