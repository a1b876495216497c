// Maglev: the table is deterministic, shares follow weights, and removing
// one of N servers moves at most about 1/N of the keys (the property the
// issue asks for: 1/N + 2%).

#include "ktlb/maglev.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ktlb/balancer.h"
#include "ktlb/request_hash.h"

namespace ktlb::upstream {
namespace {

constexpr int kKeys = 100'000;

std::vector<std::string> Names(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back("10.1." + std::to_string(i / 200) + "." +
                                               std::to_string(i % 200 + 1) + ":8080");
  return out;
}

std::vector<BalancerServer> Servers(const std::vector<std::string>& names,
                                    std::vector<uint32_t> weights = {}) {
  std::vector<BalancerServer> out;
  for (size_t i = 0; i < names.size(); ++i) {
    out.push_back({names[i], weights.empty() ? 1 : weights[i]});
  }
  return out;
}

uint64_t Key(int i) { return StableHash64("user-" + std::to_string(i)); }

TEST(MaglevTableTest, DeterministicAndEveryServerGetsItsShare) {
  auto names = Names(7);
  MaglevTable a(Servers(names)), b(Servers(names));
  ASSERT_EQ(a.size(), 65537u);
  std::vector<int> slots(7, 0);
  for (uint32_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a.Slot(i), b.Slot(i));
    ASSERT_LT(a.Slot(i), 7u);
    ++slots[a.Slot(i)];
  }
  // Round-robin turns give each server floor or ceil of size/N slots.
  for (int s : slots) EXPECT_NEAR(s, 65537 / 7, 1);
}

TEST(MaglevTableTest, WeightsHold) {
  auto names = Names(3);
  MaglevTable t(Servers(names, {1, 3, 6}));
  std::vector<int> keys(3, 0);
  for (int i = 0; i < kKeys; ++i) ++keys[t.Lookup(Key(i))];
  EXPECT_NEAR(keys[0], kKeys * 0.1, kKeys * 0.01);
  EXPECT_NEAR(keys[1], kKeys * 0.3, kKeys * 0.01);
  EXPECT_NEAR(keys[2], kKeys * 0.6, kKeys * 0.01);
}

// A server leaves the list (a reload without it): the table is rebuilt, and
// keys of the servers that stay mostly stay where they were.
TEST(MaglevTableTest, RemovingOneOfNMovesAboutOneNth) {
  for (size_t n : {3, 5, 10, 20, 50}) {
    auto names = Names(n);
    MaglevTable before(Servers(names));
    for (size_t removed : {size_t{0}, n / 2, n - 1}) {
      std::vector<std::string> rest = names;
      rest.erase(rest.begin() + static_cast<long>(removed));
      MaglevTable after(Servers(rest));
      int moved = 0;
      for (int i = 0; i < kKeys; ++i) {
        const std::string& was = names[before.Lookup(Key(i))];
        const std::string& now = rest[after.Lookup(Key(i))];
        if (was != now) ++moved;
      }
      const double fraction = static_cast<double>(moved) / kKeys;
      EXPECT_LE(fraction, 1.0 / static_cast<double>(n) + 0.02)
          << n << " servers, removed #" << removed << ": " << fraction << " of keys moved";
      // The removed server's own keys must move: at least ~1/N.
      EXPECT_GE(fraction, 1.0 / static_cast<double>(n) - 0.02) << n;
    }
  }
}

// A server becomes unavailable (health, ejection): only its keys move, and
// they spread over the others instead of landing on one neighbour.
TEST(MaglevBalancerTest, UnavailableServerMovesOnlyItsKeysAndSpreadsThem) {
  const size_t n = 5;
  auto names = Names(n);
  auto servers = Servers(names);
  auto b = MakeBalancer(BalanceAlgorithm::kMaglev, servers, 0);
  std::vector<ServerLoad> load(n);
  ServerMask mask(n);
  auto pick = [&](int i) {
    PickArgs args;
    args.available = &mask;
    args.load = load.data();
    args.has_hash = true;
    args.hash = Key(i);
    return b->Pick(args);
  };
  std::vector<int> before(kKeys);
  for (int i = 0; i < kKeys; ++i) before[static_cast<size_t>(i)] = pick(i);
  mask.set(2, false);
  int moved = 0;
  std::vector<int> moved_to(n, 0);
  for (int i = 0; i < kKeys; ++i) {
    int now = pick(i);
    ASSERT_NE(now, 2);
    if (now != before[static_cast<size_t>(i)]) {
      ASSERT_EQ(before[static_cast<size_t>(i)], 2) << "a key of a healthy server moved";
      ++moved;
      ++moved_to[static_cast<size_t>(now)];
    }
  }
  EXPECT_NEAR(moved, kKeys / 5, kKeys / 100);
  for (size_t s : {0, 1, 3, 4}) EXPECT_NEAR(moved_to[s], moved / 4, moved / 20) << s;
  // Back again: every key returns home.
  mask.set(2, true);
  for (int i = 0; i < kKeys; i += 97) EXPECT_EQ(pick(i), before[static_cast<size_t>(i)]);
}

}  // namespace
}  // namespace ktlb::upstream
