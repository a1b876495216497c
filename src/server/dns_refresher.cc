#include "dns_refresher.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ktlb {

absl::Status DnsRefresher::Start() {
  event_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event_) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  rng_ ^= static_cast<uint64_t>(getpid()) << 17;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

// +-10%, so that upstreams naming hosts, and a fleet of ktlb hosts started
// together, do not query their DNS server in lockstep.
DnsRefresher::Clock::duration DnsRefresher::Jittered(uint32_t interval_ms) {
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  const uint64_t spread = interval_ms / 5;
  const uint64_t ms = interval_ms - interval_ms / 10 + (spread > 0 ? rng_ % (spread + 1) : 0);
  return std::chrono::milliseconds(ms);
}

void DnsRefresher::Track(const Config& config) {
  std::vector<Job> jobs;
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::time_point now = Clock::now();
  for (const UpstreamConfig& u : config.upstreams) {
    if (u.resolve_interval_ms == 0) continue;
    for (const ServerEntry& e : u.server_entries) {
      if (e.host.empty()) continue;
      const bool seen = std::any_of(jobs.begin(), jobs.end(), [&](const Job& j) {
        return j.upstream == u.name && j.host == e.host && j.port == e.port;
      });
      if (!seen) jobs.push_back(Job{u.name, e.host, e.port, u.resolve_interval_ms,
                                    now + Jittered(u.resolve_interval_ms)});
    }
  }
  jobs_.swap(jobs);
  wake_.notify_one();
}

std::vector<DnsAnswer> DnsRefresher::TakeAnswers() {
  uint64_t n;
  ssize_t r = read(event_.get(), &n, sizeof n);  // EAGAIN when nothing is pending
  (void)r;
  std::vector<DnsAnswer> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.swap(answers_);
  return out;
}

void DnsRefresher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void DnsRefresher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    auto next = std::min_element(jobs_.begin(), jobs_.end(),
                                 [](const Job& a, const Job& b) { return a.due < b.due; });
    if (next == jobs_.end()) {
      wake_.wait(lock);
      continue;
    }
    if (next->due > Clock::now()) {
      wake_.wait_until(lock, next->due);
      continue;  // jobs may have been replaced meanwhile
    }
    const Job job = *next;
    next->due = Clock::now() + Jittered(job.interval_ms);
    lock.unlock();
    DnsAnswer answer{job.upstream, job.host, job.port, resolve_(job.host, job.port)};
    lock.lock();
    answers_.push_back(std::move(answer));
    uint64_t one = 1;
    ssize_t w = write(event_.get(), &one, sizeof one);
    (void)w;
  }
}

}  // namespace ktlb
