#include "ktlb/cluster.h"

#include <time.h>

#include <algorithm>
#include <string>

#include "ktlb/exchange.h"
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
                 ErrorLog* log, UpstreamMetrics* metrics, Counter* timeouts,
                 std::shared_ptr<const HealthBoard> health)
    : name_(config.name),
      limits_(limits),
      loop_(loop),
      log_(log),
      metrics_(metrics),
      timeouts_(timeouts),
      hash_key_(config.hash_key),
      available_(config.servers.size()),
      load_(config.servers.size()),
      health_(std::move(health)),
      eject_(config.eject),
      slow_start_ms_(config.slow_start_ms),
      ejection_(config.servers.size()),
      back_since_ms_(config.servers.size(), 0),
      board_up_(config.servers.size(), 1),
      rng_(worker_id * 0x9e3779b97f4a7c15ULL + 1),
      max_conns_(config.max_conns_per_server),
      queue_timeout_ms_(config.queue_timeout_ms),
      retry_budget_(config.retry_budget),
      below_cap_(config.servers.size()),
      try_timeout_ms_(config.try_timeout_ms),
      own_server_metrics_(config.servers.size()) {
  for (ServerMetrics& m : own_server_metrics_) server_metrics_.push_back(&m);
  slot_.Bind(loop_, this);
  // A board for another server list would index the wrong servers.
  if (health_ != nullptr && health_->size() != config.servers.size()) health_.reset();
  std::vector<BalancerServer> identities;
  for (const UpstreamServer& s : config.servers) {
    servers_.push_back(Server{s.address, s.weight, s.host});
    identities.push_back(BalancerServer{s.address.text, s.weight});
  }
  balancer_ = MakeBalancer(config.balance, identities, worker_id);
  idle_.resize(servers_.size());
}

void Cluster::SetServerMetrics(std::vector<ServerMetrics*> metrics) {
  if (metrics.size() != servers_.size()) return;  // for another server list
  server_metrics_ = std::move(metrics);
}

uint64_t Cluster::NowUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

int Cluster::Pick(int avoid, uint64_t hash, bool has_hash) {
  const uint64_t now_ms = loop_->now_ms();
  RefreshAvailability(now_ms);
  PickArgs args;
  args.available = &available_;
  if (max_conns_ > 0) {
    // Servers at their cap are left out, so the balancer's own policy picks
    // among the others (a hashed key moves only while its server is full).
    bool any_available = false;
    bool any_below = false;
    for (size_t i = 0; i < servers_.size(); ++i) {
      const bool up = available_.test(i);
      const bool below = up && load_[i].in_flight < max_conns_;
      any_available = any_available || up;
      any_below = any_below || below;
      below_cap_.set(i, below);
    }
    if (!any_available) return -1;
    if (!any_below) return kAllAtCap;
    args.available = &below_cap_;
  }
  args.load = load_.data();
  args.avoid = avoid;
  args.hash = hash;
  args.has_hash = has_hash;
  args.now_us = NowUs();
  int s = balancer_->Pick(args);
  // Keyed requests stay on their server even while it warms up: stickiness
  // matters more than its load for the few seconds of slow start.
  if (s < 0 || has_hash || Admit(static_cast<size_t>(s), now_ms)) return s;
  args.avoid = s;
  return balancer_->Pick(args);  // the same server when it is the only one
}

void Cluster::RefreshAvailability(uint64_t now_ms) {
  const uint64_t version = health_ != nullptr ? health_->version() : 0;
  if (version == health_seen_ && now_ms < next_readmit_ms_) return;
  health_seen_ = version;
  next_readmit_ms_ = ~uint64_t{0};
  for (size_t i = 0; i < servers_.size(); ++i) {
    const bool board_up = health_ == nullptr || health_->up(i);
    // Up again by its checks: the outage that ejected it is over.
    if (board_up && !board_up_[i]) {
      ejection_[i].Readmit();
      server_metrics_[i]->ejected_until_ms.Set(0);
    }
    board_up_[i] = board_up ? 1 : 0;
    const bool ejected = ejection_[i].ejected(now_ms);
    if (ejected) next_readmit_ms_ = std::min(next_readmit_ms_, ejection_[i].until_ms());
    const bool up = !ejected && board_up;
    // Back from an ejection or from a health failure: it starts slow.
    if (up && !available_.test(i)) back_since_ms_[i] = now_ms;
    available_.set(i, up);
  }
}

bool Cluster::Admit(size_t server, uint64_t now_ms) {
  if (slow_start_ms_ == 0 || back_since_ms_[server] == 0) return true;
  const uint64_t elapsed = now_ms - back_since_ms_[server];
  if (elapsed >= slow_start_ms_) {
    back_since_ms_[server] = 0;
    return true;
  }
  // Admitting this fraction of its picks makes its effective weight
  // factor x weight, for every balancer alike.
  rng_ = rng_ * 6364136223846793005ULL + 1442695040888963407ULL;
  const double draw = static_cast<double>(rng_ >> 11) / static_cast<double>(1ULL << 53);
  return draw < SlowStartFactor(elapsed, slow_start_ms_);
}

void Cluster::InheritFrom(const Cluster& previous) {
  for (size_t i = 0; i < servers_.size(); ++i) {
    for (size_t j = 0; j < previous.servers_.size(); ++j) {
      if (previous.servers_[j].address.text != servers_[i].address.text) continue;
      ejection_[i] = previous.ejection_[j];
      back_since_ms_[i] = previous.back_since_ms_[j];
      available_.set(i, previous.available_.test(j));
      break;
    }
  }
  next_readmit_ms_ = 0;  // the next Pick recomputes availability
}

void Cluster::ReportFailure(size_t server) {
  const uint64_t now_ms = loop_->now_ms();
  if (!ejection_[server].OnFailure(eject_, now_ms)) return;
  metrics_->ejections.Inc();
  server_metrics_[server]->ejections.Inc();
  server_metrics_[server]->ejected_until_ms.Set(ejection_[server].until_ms());
  available_.set(server, false);
  next_readmit_ms_ = std::min(next_readmit_ms_, ejection_[server].until_ms());
  log_->Log(ErrorLog::Level::kWarn, "upstream", "upstream \"%s\" server %s ejected for %llu ms",
            name_.c_str(), servers_[server].address.text.c_str(),
            static_cast<unsigned long long>(ejection_[server].until_ms() - now_ms));
}

uint32_t Cluster::RetryAfterSeconds() {
  const uint64_t now_ms = loop_->now_ms();
  uint64_t soonest = ~uint64_t{0};
  for (size_t i = 0; i < servers_.size(); ++i) {
    uint64_t wait = 0;
    if (ejection_[i].ejected(now_ms)) wait = ejection_[i].until_ms() - now_ms;
    if (health_ != nullptr && !health_->up(i)) wait = std::max<uint64_t>(wait, health_->recheck_ms());
    soonest = std::min(soonest, wait);
  }
  if (soonest == ~uint64_t{0}) soonest = 0;
  return static_cast<uint32_t>(std::clamp<uint64_t>((soonest + 999) / 1000, 1, 3600));
}

// A failure counts as at least this slow: a server that refuses at once must
// not look like the fastest one to p2c.
constexpr uint64_t kFailedAttemptUs = 1'000'000;

void Cluster::RecordLatency(size_t server, uint64_t us, bool failed) {
  upstream::RecordLatency(&load_[server], failed ? std::max(us, kFailedAttemptUs) : us, NowUs());
  if (!failed) server_metrics_[server]->latency.Observe(us);
}

Cluster::~Cluster() = default;

bool Cluster::Enqueue(Exchange* e) {
  if (!queue_.Push(e->wait_node())) return false;
  metrics_->queued.Inc();
  return true;
}

void Cluster::Dequeue(Exchange* e) { queue_.Remove(e->wait_node()); }

void Cluster::ScheduleDispatch() {
  if (dispatch_pending_) return;
  dispatch_pending_ = true;
  loop_->AtTurnEnd(slot_.Tag(0));
}

void Cluster::OnCompletion(uint8_t op, int res, uint32_t flags) {
  (void)op;
  (void)res;
  (void)flags;
}

void Cluster::OnDeferred(uint8_t op) {
  (void)op;
  dispatch_pending_ = false;
  // FIFO: the front goes first; when it still finds every server at its
  // cap, so would the rest (the same servers, the same caps).
  while (!queue_.empty()) {
    Exchange* e = Exchange::FromWaitNode(queue_.front());
    if (!e->ResumeQueued()) break;
  }
}

bool Cluster::TryStartRetry() {
  if (!RetryBudgetAllows(retries_in_flight_, requests_in_flight_, retry_budget_)) {
    metrics_->retries_budget_exhausted.Inc();
    return false;
  }
  ++retries_in_flight_;
  return true;
}

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
