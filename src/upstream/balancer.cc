#include "ktlb/balancer.h"

#include <cmath>

#include "ktlb/maglev.h"

namespace ktlb::upstream {

namespace {

constexpr double kLatencyWeight = 0.3;
// LatencyEstimate halves every ~3.5 s without a sample (e^(-t/5s)).
constexpr double kLatencyFadeUs = 5e6;
// A maglev key whose server cannot take it probes this many other slots
// before falling back to a scan.
constexpr int kMaglevProbes = 16;

// splitmix64: a tiny, good-enough generator for p2c's two draws. Per
// balancer (so per worker): no shared state, no lock.
uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

class RoundRobinBalancer final : public Balancer {
 public:
  RoundRobinBalancer(std::span<const BalancerServer> servers, uint64_t seed) : rr_(servers) {
    // Workers start at different points of the cycle.
    uint64_t total = 0;
    for (const BalancerServer& s : servers) total += s.weight;
    const Eligible all(nullptr, -1);
    for (uint64_t i = 0; total > 0 && i < seed % total; ++i) rr_.Next(all);
  }

 private:
  int Choose(const PickArgs&, const Eligible& ok) override { return rr_.Next(ok); }
  SmoothWeighted rr_;
};

// Fewest in-flight requests relative to weight (nginx's least_conn): a
// server of weight 2 is as loaded with 2 requests as one of weight 1 with 1.
// Ties go round robin so that an idle cluster still spreads.
class LeastConnBalancer final : public Balancer {
 public:
  explicit LeastConnBalancer(std::span<const BalancerServer> servers) : rr_(servers) {}

 private:
  int Choose(const PickArgs& args, const Eligible& ok) override {
    // a/wa < b/wb, compared as a*wb < b*wa in integers.
    auto load = [&](size_t i) -> uint64_t { return args.load[i].in_flight; };
    int best = -1;
    for (size_t i = 0; i < rr_.size(); ++i) {
      if (!ok(i)) continue;
      if (best < 0) {
        best = static_cast<int>(i);
        continue;
      }
      const size_t b = static_cast<size_t>(best);
      if (load(i) * rr_.weight(b) < load(b) * rr_.weight(i)) best = static_cast<int>(i);
    }
    if (best < 0) return -1;
    const size_t b = static_cast<size_t>(best);
    return rr_.Next([&](size_t i) {
      return ok(i) && load(i) * rr_.weight(b) == load(b) * rr_.weight(i);
    });
  }
  SmoothWeighted rr_;
};

// Power of two random choices (Mitzenmacher): draw two servers, send to the
// cheaper. Cost = (in flight + 1) x latency estimate / weight, so a slow or
// busy server loses most draws but keeps getting a trickle of requests that
// would show its recovery. A server never measured costs least: it is tried.
class P2cBalancer final : public Balancer {
 public:
  P2cBalancer(std::span<const BalancerServer> servers, uint64_t seed) : state_(seed) {
    for (const BalancerServer& s : servers) weight_.push_back(s.weight);
  }

 private:
  int Choose(const PickArgs& args, const Eligible& ok) override {
    const size_t n = weight_.size();
    // The first eligible server at or after a random start; ineligible
    // servers pass their draws to the next one, a bias that only exists
    // while some are down.
    auto draw = [&](size_t start, size_t skip) -> int {
      for (size_t k = 0; k < n; ++k) {
        size_t i = (start + k) % n;
        if (i != skip && ok(i)) return static_cast<int>(i);
      }
      return -1;
    };
    int a = draw(SplitMix(&state_) % n, n);
    if (a < 0 || n == 1) return a;
    const size_t first = static_cast<size_t>(a);
    // Uniform among the others: an offset of 1..n-1 from the first.
    int b = draw((first + 1 + SplitMix(&state_) % (n - 1)) % n, first);
    if (b < 0) return a;
    return Cost(args, first) <= Cost(args, static_cast<size_t>(b)) ? a : b;
  }
  double Cost(const PickArgs& args, size_t i) const {
    const ServerLoad& l = args.load[i];
    return (l.in_flight + 1.0) * (LatencyEstimate(l, args.now_us) + 1.0) / weight_[i];
  }
  uint64_t state_;
  std::vector<uint32_t> weight_;
};

class MaglevBalancer final : public Balancer {
 public:
  explicit MaglevBalancer(std::span<const BalancerServer> servers)
      : table_(servers), rr_(servers) {}

 private:
  int Choose(const PickArgs& args, const Eligible& ok) override {
    // Keyless requests (no such header or cookie) spread by weight instead
    // of all landing on the slot of one fixed hash.
    if (!args.has_hash) return rr_.Next(ok);
    uint32_t s = table_.Lookup(args.hash);
    if (ok(s)) return static_cast<int>(s);
    // The key's server is down (or refused this request): probe other slots
    // in an order fixed by the key. Only the keys of unavailable servers
    // move, and each moves to the same place every time.
    uint64_t h = args.hash;
    for (int k = 0; k < kMaglevProbes; ++k) {
      h = h * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
      s = table_.Lookup(h ^ (h >> 29));
      if (ok(s)) return static_cast<int>(s);
    }
    // Most of the table is unavailable: the key-th eligible server.
    size_t eligible = 0;
    for (size_t i = 0; i < rr_.size(); ++i) eligible += ok(i) ? 1 : 0;
    if (eligible == 0) return -1;
    size_t want = args.hash % eligible;
    for (size_t i = 0; i < rr_.size(); ++i) {
      if (ok(i) && want-- == 0) return static_cast<int>(i);
    }
    return -1;
  }
  MaglevTable table_;
  SmoothWeighted rr_;
};

}  // namespace

void RecordLatency(ServerLoad* load, uint64_t sample_us, uint64_t now_us) {
  const double sample = static_cast<double>(sample_us);
  load->latency_us = load->latency_us == 0 ? sample
                                           : load->latency_us + kLatencyWeight * (sample - load->latency_us);
  load->sampled_at_us = now_us;
}

double LatencyEstimate(const ServerLoad& load, uint64_t now_us) {
  if (load.latency_us == 0 || now_us <= load.sampled_at_us) return load.latency_us;
  return load.latency_us * std::exp(-static_cast<double>(now_us - load.sampled_at_us) / kLatencyFadeUs);
}

int Balancer::Pick(const PickArgs& args) {
  int s = Choose(args, Eligible(args.available, args.avoid));
  if (s < 0 && args.avoid >= 0) s = Choose(args, Eligible(args.available, -1));
  return s;
}

SmoothWeighted::SmoothWeighted(std::span<const BalancerServer> servers)
    : current_(servers.size(), 0) {
  for (const BalancerServer& s : servers) weight_.push_back(s.weight);
}

std::unique_ptr<Balancer> MakeBalancer(BalanceAlgorithm algorithm,
                                       std::span<const BalancerServer> servers, uint64_t seed) {
  switch (algorithm) {
    case BalanceAlgorithm::kLeastConn: return std::make_unique<LeastConnBalancer>(servers);
    case BalanceAlgorithm::kP2c: return std::make_unique<P2cBalancer>(servers, seed);
    case BalanceAlgorithm::kMaglev: return std::make_unique<MaglevBalancer>(servers);
    case BalanceAlgorithm::kRoundRobin: break;
  }
  return std::make_unique<RoundRobinBalancer>(servers, seed);
}

}  // namespace ktlb::upstream
