#include "ktlb/cluster.h"

#include <time.h>

#include <algorithm>
#include <string>

#include "ktlb/sockets.h"
#include "upstream_connection.h"

namespace ktlb::upstream {

int StartConnect(Loop& loop, const SocketAddress& address, uint64_t tag, ErrorLog& log,
                 const char* stage, UpstreamMetrics& metrics) {
  auto fd = OpenClientSocket(address.storage.ss_family);
  if (!fd.ok()) {
    log.Log(ErrorLog::Level::kError, stage, "%s: %s", address.text.c_str(),
            std::string(fd.status().message()).c_str());
    metrics.connect_failures.Inc();
    return -1;
  }
  io_uring_sqe* sqe = loop.Sqe();
  io_uring_prep_connect(sqe, *fd, reinterpret_cast<const sockaddr*>(&address.storage), address.len);
  io_uring_sqe_set_data64(sqe, tag);
  return *fd;
}

Cluster::Cluster(const UpstreamConfig& config, const Limits& limits, size_t worker_id, Loop* loop,
                 ErrorLog* log, UpstreamMetrics* metrics, Counter* timeouts)
    : name_(config.name),
      limits_(limits),
      loop_(loop),
      log_(log),
      metrics_(metrics),
      timeouts_(timeouts),
      hash_key_(config.hash_key),
      available_(config.servers.size()),
      load_(config.servers.size()) {
  std::vector<BalancerServer> identities;
  for (const UpstreamServer& s : config.servers) {
    servers_.push_back(Server{s.address, s.weight});
    identities.push_back(BalancerServer{s.address.text, s.weight});
  }
  balancer_ = MakeBalancer(config.balance, identities, worker_id);
  idle_.resize(servers_.size());
}

uint64_t Cluster::NowUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

int Cluster::Pick(int avoid, uint64_t hash, bool has_hash) {
  PickArgs args;
  args.available = &available_;
  args.load = load_.data();
  args.avoid = avoid;
  args.hash = hash;
  args.has_hash = has_hash;
  args.now_us = NowUs();
  return balancer_->Pick(args);
}

// A failure counts as at least this slow: a server that refuses at once must
// not look like the fastest one to p2c.
constexpr uint64_t kFailedAttemptUs = 1'000'000;

void Cluster::RecordLatency(size_t server, uint64_t us, bool failed) {
  upstream::RecordLatency(&load_[server], failed ? std::max(us, kFailedAttemptUs) : us, NowUs());
}

Cluster::~Cluster() = default;

UpstreamConnection* Cluster::Connection(size_t server, bool reuse) {
  if (reuse && !idle_[server].empty()) {
    UpstreamConnection* c = idle_[server].back();
    idle_[server].pop_back();
    return c;
  }
  UpstreamConnection* c = connections_.Acquire();
  if (!c->Connect(this, server)) {
    connections_.Release(c);
    return nullptr;
  }
  return c;
}

bool Cluster::Park(UpstreamConnection* c) {
  auto& list = idle_[c->server()];
  if (draining_ || list.size() >= limits_.max_idle_per_server) return false;
  list.push_back(c);
  return true;
}

void Cluster::Forget(UpstreamConnection* c) {
  auto& list = idle_[c->server()];
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] == c) {
      list.erase(list.begin() + static_cast<long>(i));
      return;
    }
  }
}

void Cluster::Release(UpstreamConnection* c) { connections_.Release(c); }

void Cluster::Drain() {
  draining_ = true;
  for (auto& per_server : idle_) {
    std::vector<UpstreamConnection*> conns;
    conns.swap(per_server);
    for (UpstreamConnection* c : conns) c->CloseIdle();
  }
}

}  // namespace ktlb::upstream
