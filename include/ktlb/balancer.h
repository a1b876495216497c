// Balancers: which of a cluster's servers takes the next request.
//
// Four algorithms behind one interface (Envoy's Upstream::LoadBalancer in
// miniature): smooth weighted round robin (nginx), least in-flight requests,
// power of two random choices on in-flight and latency, and maglev
// consistent hashing (maglev.h). A Balancer belongs to one worker's Cluster:
// it takes no lock and allocates nothing per pick. Everything it reads about
// the servers (availability, load) is passed in, so the cluster owns that
// state and health checks or ejection only have to clear a bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "ktlb/config.h"

namespace ktlb::upstream {

// Which servers may take new requests now. Health checks and passive
// ejection clear bits; a server that is not in the set is never picked.
class ServerMask {
 public:
  explicit ServerMask(size_t n = 0) : n_(n), words_((n + 63) / 64, ~uint64_t{0}) {}
  size_t size() const { return n_; }
  bool test(size_t i) const { return (words_[i / 64] >> (i % 64)) & 1; }
  void set(size_t i, bool on) {
    if (on) {
      words_[i / 64] |= uint64_t{1} << (i % 64);
    } else {
      words_[i / 64] &= ~(uint64_t{1} << (i % 64));
    }
  }

 private:
  size_t n_;
  std::vector<uint64_t> words_;
};

// What one worker knows about one server's load. The view is per worker:
// least_conn and p2c compare the requests *this* worker has in flight, which
// with SO_REUSEPORT spreading clients evenly tracks the global picture
// without any cross-thread traffic.
struct ServerLoad {
  uint32_t in_flight = 0;
  // EWMA of request start -> response head, in microseconds; 0 = no sample.
  double latency_us = 0;
  uint64_t sampled_at_us = 0;  // when latency_us last moved
};

// Folds a latency sample into `load`. The first sample is taken as is, later
// ones weigh 30%: a backend that slows down is noticed within a few requests.
void RecordLatency(ServerLoad* load, uint64_t sample_us, uint64_t now_us);
// The latency p2c compares. It fades with the time since the last sample
// (halving every few seconds): a server that was slow once, and then never
// chosen, would otherwise be shunned forever; fading makes it look cheap
// enough to be tried again, and the new sample tells the truth.
double LatencyEstimate(const ServerLoad& load, uint64_t now_us);

struct PickArgs {
  const ServerMask* available = nullptr;  // nullptr: every server
  const ServerLoad* load = nullptr;       // one per server (least_conn, p2c)
  int avoid = -1;  // a retry: another server than this one when there is one
  uint64_t hash = 0;  // maglev's key; has_hash false: the request has none
  bool has_hash = false;
  uint64_t now_us = 0;  // p2c: for LatencyEstimate
};

struct BalancerServer {
  std::string_view identity;  // maglev hashes it: the address as configured
  uint32_t weight = 1;
};

class Balancer {
 public:
  virtual ~Balancer() = default;

  // A server index, or -1 when no server is available. `avoid` is honoured
  // unless it is the only available server.
  int Pick(const PickArgs& args);

 protected:
  // Whether server i may be picked in this attempt.
  class Eligible {
   public:
    Eligible(const ServerMask* mask, int avoid) : mask_(mask), avoid_(avoid) {}
    bool operator()(size_t i) const {
      return static_cast<int>(i) != avoid_ && (mask_ == nullptr || mask_->test(i));
    }

   private:
    const ServerMask* mask_;
    int avoid_;
  };
  virtual int Choose(const PickArgs& args, const Eligible& ok) = 0;
};

// `seed` differs per worker: round robin starts at a different place and p2c
// draws differently, so N workers do not all hit the same server first.
// `servers` is only read during the call.
std::unique_ptr<Balancer> MakeBalancer(BalanceAlgorithm algorithm,
                                       std::span<const BalancerServer> servers, uint64_t seed);

// nginx's smooth weighted round robin: each turn every eligible server gains
// its weight, the richest is picked and pays the total. Weights 5,1,1 give
// a a b a c a a, not a a a a a b c. Shared by round_robin, least_conn (ties)
// and maglev (requests without a key).
class SmoothWeighted {
 public:
  explicit SmoothWeighted(std::span<const BalancerServer> servers);
  template <typename Eligible>
  int Next(const Eligible& ok) {
    int64_t total = 0;
    int best = -1;
    for (size_t i = 0; i < weight_.size(); ++i) {
      if (!ok(i)) continue;
      current_[i] += weight_[i];
      total += weight_[i];
      if (best < 0 || current_[i] > current_[static_cast<size_t>(best)]) best = static_cast<int>(i);
    }
    if (best >= 0) current_[static_cast<size_t>(best)] -= total;
    return best;
  }
  uint32_t weight(size_t i) const { return weight_[i]; }
  size_t size() const { return weight_.size(); }

 private:
  std::vector<uint32_t> weight_;
  std::vector<int64_t> current_;
};

}  // namespace ktlb::upstream
