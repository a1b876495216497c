// Balancers: weights honoured and smooth (round_robin), least loaded first
// (least_conn), faster and idler servers preferred (p2c), unavailable and
// avoided servers skipped by all of them.

#include "ktlb/balancer.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace ktlb::upstream {
namespace {

constexpr BalanceAlgorithm kAll[] = {BalanceAlgorithm::kRoundRobin, BalanceAlgorithm::kLeastConn,
                                     BalanceAlgorithm::kP2c, BalanceAlgorithm::kMaglev};

std::vector<BalancerServer> Servers(std::vector<uint32_t> weights) {
  static const char* kNames[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80",
                                 "10.0.0.5:80", "10.0.0.6:80", "10.0.0.7:80", "10.0.0.8:80"};
  std::vector<BalancerServer> out;
  for (size_t i = 0; i < weights.size(); ++i) out.push_back({kNames[i], weights[i]});
  return out;
}

// Picks `n` times with no load ever building up (each request ends before
// the next), returning the count per server.
std::vector<int> Spread(Balancer& b, size_t servers, int n, const ServerMask* mask = nullptr) {
  std::vector<ServerLoad> load(servers);
  std::vector<int> count(servers, 0);
  for (int i = 0; i < n; ++i) {
    PickArgs args;
    args.available = mask;
    args.load = load.data();
    int s = b.Pick(args);
    EXPECT_GE(s, 0);
    if (s >= 0) ++count[static_cast<size_t>(s)];
  }
  return count;
}

TEST(RoundRobinTest, WeightsOneToThreeExactPerCycle) {
  auto servers = Servers({1, 3});
  auto b = MakeBalancer(BalanceAlgorithm::kRoundRobin, servers, 0);
  std::vector<int> count = Spread(*b, 2, 4000);
  EXPECT_EQ(count[0], 1000);
  EXPECT_EQ(count[1], 3000);
}

TEST(RoundRobinTest, SmoothInterleavingAsNginx) {
  // nginx's example: weights 5, 1, 1 give a a b a c a a, never five a in a row.
  auto servers = Servers({5, 1, 1});
  auto b = MakeBalancer(BalanceAlgorithm::kRoundRobin, servers, 0);
  std::vector<ServerLoad> load(3);
  std::string seq;
  for (int i = 0; i < 14; ++i) {
    PickArgs args;
    args.load = load.data();
    seq += static_cast<char>('a' + b->Pick(args));
  }
  EXPECT_EQ(seq, "aabacaaaabacaa");
}

TEST(RoundRobinTest, EqualWeightsAlternateAndSeedStaggers) {
  auto servers = Servers({1, 1, 1});
  auto b0 = MakeBalancer(BalanceAlgorithm::kRoundRobin, servers, 0);
  auto b1 = MakeBalancer(BalanceAlgorithm::kRoundRobin, servers, 1);
  std::vector<ServerLoad> load(3);
  PickArgs args;
  args.load = load.data();
  EXPECT_EQ(b0->Pick(args), 0);
  EXPECT_EQ(b0->Pick(args), 1);
  EXPECT_EQ(b0->Pick(args), 2);
  EXPECT_EQ(b0->Pick(args), 0);
  EXPECT_EQ(b1->Pick(args), 1);  // the second worker starts one further on
}

TEST(BalancerTest, EveryAlgorithmSkipsUnavailableServers) {
  for (BalanceAlgorithm algo : kAll) {
    auto servers = Servers({1, 3, 2, 1});
    auto b = MakeBalancer(algo, servers, 7);
    ServerMask mask(4);
    mask.set(1, false);
    mask.set(3, false);
    std::vector<ServerLoad> load(4);
    for (int i = 0; i < 400; ++i) {
      PickArgs args;
      args.available = &mask;
      args.load = load.data();
      args.has_hash = algo == BalanceAlgorithm::kMaglev;
      args.hash = static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ULL;
      int s = b->Pick(args);
      ASSERT_TRUE(s == 0 || s == 2) << static_cast<int>(algo) << " picked " << s;
    }
    mask.set(0, false);
    mask.set(2, false);
    PickArgs args;
    args.available = &mask;
    args.load = load.data();
    EXPECT_EQ(b->Pick(args), -1) << "nothing available: " << static_cast<int>(algo);
  }
}

TEST(BalancerTest, EveryAlgorithmHonoursAvoidUnlessItIsTheOnlyOne) {
  for (BalanceAlgorithm algo : kAll) {
    auto servers = Servers({1, 1, 1});
    auto b = MakeBalancer(algo, servers, 3);
    std::vector<ServerLoad> load(3);
    for (int i = 0; i < 100; ++i) {
      PickArgs args;
      args.load = load.data();
      args.avoid = i % 3;
      args.has_hash = true;
      args.hash = static_cast<uint64_t>(i) * 0x2545f4914f6cdd1dULL;
      EXPECT_NE(b->Pick(args), i % 3) << static_cast<int>(algo);
    }
    ServerMask only(3);
    only.set(0, false);
    only.set(2, false);
    PickArgs args;
    args.available = &only;
    args.load = load.data();
    args.avoid = 1;
    EXPECT_EQ(b->Pick(args), 1) << "the only server is used even when avoided";
  }
}

TEST(LeastConnTest, PicksTheLeastLoadedRelativeToWeight) {
  auto servers = Servers({1, 1, 1});
  auto b = MakeBalancer(BalanceAlgorithm::kLeastConn, servers, 0);
  std::vector<ServerLoad> load(3);
  load[0].in_flight = 5;
  load[1].in_flight = 2;
  load[2].in_flight = 9;
  PickArgs args;
  args.load = load.data();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(b->Pick(args), 1);

  // Weight 4 with 6 in flight (1.5 each) beats weight 1 with 2.
  auto weighted = Servers({1, 4});
  auto w = MakeBalancer(BalanceAlgorithm::kLeastConn, weighted, 0);
  std::vector<ServerLoad> wl(2);
  wl[0].in_flight = 2;
  wl[1].in_flight = 6;
  PickArgs wa;
  wa.load = wl.data();
  EXPECT_EQ(w->Pick(wa), 1);
}

TEST(LeastConnTest, ConcurrentLoadFillsServersEvenly) {
  // Requests that stay in flight: least_conn keeps the counts level, ties
  // broken round robin.
  auto servers = Servers({1, 1, 1});
  auto b = MakeBalancer(BalanceAlgorithm::kLeastConn, servers, 0);
  std::vector<ServerLoad> load(3);
  for (int i = 0; i < 30; ++i) {
    PickArgs args;
    args.load = load.data();
    ++load[static_cast<size_t>(b->Pick(args))].in_flight;
  }
  for (const ServerLoad& l : load) EXPECT_EQ(l.in_flight, 10u);
  // One server's requests finish: it takes the next ones.
  load[2].in_flight = 0;
  PickArgs args;
  args.load = load.data();
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(b->Pick(args), 2);
    ++load[2].in_flight;
  }
}

TEST(LeastConnTest, IdleTiesFollowWeights) {
  auto servers = Servers({1, 3});
  auto b = MakeBalancer(BalanceAlgorithm::kLeastConn, servers, 0);
  std::vector<int> count = Spread(*b, 2, 4000);
  EXPECT_EQ(count[0], 1000);
  EXPECT_EQ(count[1], 3000);
}

TEST(P2cTest, PrefersTheFasterServer) {
  auto servers = Servers({1, 1, 1, 1});
  auto b = MakeBalancer(BalanceAlgorithm::kP2c, servers, 42);
  std::vector<ServerLoad> load(4);
  const uint64_t now = 1'000'000'000;
  for (size_t i = 0; i < 4; ++i) RecordLatency(&load[i], 10'000, now);  // 10 ms
  RecordLatency(&load[2], 1'000, now);  // server 2 now averages faster
  RecordLatency(&load[2], 1'000, now);
  std::vector<int> count(4, 0);
  for (int i = 0; i < 4000; ++i) {
    PickArgs args;
    args.load = load.data();
    args.now_us = now;
    ++count[static_cast<size_t>(b->Pick(args))];
  }
  // Server 2 wins every draw it is in: 1 - (3/4 * 2/3) = half of them.
  EXPECT_NEAR(count[2], 2000, 150);
  for (size_t i : {0, 1, 3}) EXPECT_NEAR(count[i], 667, 120) << i;
}

TEST(P2cTest, PrefersTheIdlerServerAtEqualLatency) {
  auto servers = Servers({1, 1});
  auto b = MakeBalancer(BalanceAlgorithm::kP2c, servers, 1);
  std::vector<ServerLoad> load(2);
  RecordLatency(&load[0], 5'000, 0);
  RecordLatency(&load[1], 5'000, 0);
  load[0].in_flight = 4;
  PickArgs args;
  args.load = load.data();
  for (int i = 0; i < 50; ++i) EXPECT_EQ(b->Pick(args), 1);
}

TEST(P2cTest, LatencyEwmaFollowsSamplesAndFadesWhenIdle) {
  ServerLoad l;
  RecordLatency(&l, 1000, 0);
  EXPECT_DOUBLE_EQ(l.latency_us, 1000);
  RecordLatency(&l, 2000, 0);
  EXPECT_DOUBLE_EQ(l.latency_us, 1300);
  EXPECT_DOUBLE_EQ(LatencyEstimate(l, 0), 1300);
  // Unsampled for a while, a once-slow server looks cheaper and is retried.
  EXPECT_LT(LatencyEstimate(l, 10'000'000), 200);
}

TEST(P2cTest, SpreadsOverAllServersWhenIdle) {
  auto servers = Servers({1, 1, 1, 1});
  auto b = MakeBalancer(BalanceAlgorithm::kP2c, servers, 9);
  std::vector<int> count = Spread(*b, 4, 4000);
  for (int c : count) EXPECT_NEAR(c, 1000, 150);
}

TEST(MaglevBalancerTest, SameKeySameServerAndKeylessSpreadByWeight) {
  auto servers = Servers({1, 3});
  auto b = MakeBalancer(BalanceAlgorithm::kMaglev, servers, 0);
  auto other_worker = MakeBalancer(BalanceAlgorithm::kMaglev, servers, 5);
  std::vector<ServerLoad> load(2);
  for (uint64_t k = 0; k < 200; ++k) {
    PickArgs args;
    args.load = load.data();
    args.has_hash = true;
    args.hash = k * 0x9e3779b97f4a7c15ULL;
    int first = b->Pick(args);
    EXPECT_EQ(b->Pick(args), first);
    EXPECT_EQ(other_worker->Pick(args), first) << "workers agree";
  }
  std::vector<int> count = Spread(*b, 2, 4000);  // no key
  EXPECT_EQ(count[0], 1000);
  EXPECT_EQ(count[1], 3000);
}

}  // namespace
}  // namespace ktlb::upstream
