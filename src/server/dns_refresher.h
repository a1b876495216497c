// Re-resolves the host names in upstreams' `servers` on a thread of its
// own, so that a slow or dead DNS server blocks neither a worker nor the
// control thread (signals, reloads). It only asks and reports: the control
// thread takes the answers (fd() turns readable) and decides what changes
// (ConfigReloader::ApplyDnsAnswers), so every snapshot install stays on
// that one thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ktlb/config.h"
#include "ktlb/server_names.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

// What DNS said about one name of one upstream.
struct DnsAnswer {
  std::string upstream;
  std::string host;
  uint16_t port = 0;
  absl::StatusOr<std::vector<SocketAddress>> addresses;
};

class DnsRefresher {
 public:
  explicit DnsRefresher(HostResolver resolve = ResolveHost) : resolve_(std::move(resolve)) {}
  ~DnsRefresher() { Stop(); }
  DnsRefresher(const DnsRefresher&) = delete;
  DnsRefresher& operator=(const DnsRefresher&) = delete;

  // Makes the eventfd and starts the thread.
  absl::Status Start();
  // From now on resolves the names of `config` (just resolved by whoever
  // loaded it), each first after its upstream's resolve_interval_ms; names
  // of upstreams with 0 never. Replaces what was tracked before.
  void Track(const Config& config);
  // Readable while answers wait (-1 before Start).
  int fd() const { return event_.get(); }
  std::vector<DnsAnswer> TakeAnswers();
  // Joins the thread; a lookup in flight is waited for (getaddrinfo cannot
  // be interrupted; resolv.conf's timeout bounds it).
  void Stop();

 private:
  using Clock = std::chrono::steady_clock;
  struct Job {
    std::string upstream, host;
    uint16_t port = 0;
    uint32_t interval_ms = 0;
    Clock::time_point due;
  };
  void Run();
  Clock::duration Jittered(uint32_t interval_ms);

  HostResolver resolve_;
  UniqueFd event_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_;
  // Guarded by mu_:
  std::vector<Job> jobs_;
  std::vector<DnsAnswer> answers_;
  bool stop_ = false;
  uint64_t rng_ = 0x9e3779b97f4a7c15ull;
};

}  // namespace ktlb
