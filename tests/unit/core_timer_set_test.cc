#include <gtest/gtest.h>

#include <cstdint>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "ktlb/deadline_queue.h"

namespace ktlb {
namespace {

// Pops everything expired at `now_ms`, in the order the set hands it out.
std::vector<DeadlineNode*> DrainExpired(TimerSet& set, uint64_t now_ms) {
  std::vector<DeadlineNode*> out;
  while (DeadlineNode* n = set.PopExpired(now_ms)) {
    EXPECT_FALSE(n->armed()) << "popped nodes are unlinked";
    out.push_back(n);
  }
  return out;
}

TEST(TimerSetTest, EmptySet) {
  TimerSet set;
  EXPECT_EQ(set.NextDeadline(), UINT64_MAX);
  EXPECT_EQ(set.PopExpired(UINT64_MAX), nullptr);
  EXPECT_EQ(set.queue_count(), 0u);
}

// The keep-alive bug: one timeout kind armed with two durations. In a single
// FIFO, C (armed last, but short) sits behind B (long) and fires ~30 s late.
TEST(TimerSetTest, ShortTimerIsNotStuckBehindLongOne) {
  constexpr uint8_t kKeepAlive = 3;
  TimerSet set;
  DeadlineNode a, b, c;
  set.Arm(&a, /*now_ms=*/1000, 30000, kKeepAlive);  // due 31000
  set.Arm(&b, /*now_ms=*/2000, 60000, kKeepAlive);  // due 62000
  set.Arm(&c, /*now_ms=*/3000, 30000, kKeepAlive);  // due 33000
  EXPECT_EQ(a.kind, kKeepAlive);
  EXPECT_EQ(set.NextDeadline(), 31000u);

  EXPECT_EQ(set.PopExpired(30999), nullptr);
  EXPECT_EQ(set.PopExpired(31000), &a);
  EXPECT_EQ(set.NextDeadline(), 33000u);
  EXPECT_EQ(set.PopExpired(32999), nullptr);
  EXPECT_EQ(set.PopExpired(33000), &c);  // on time, though B is still armed
  EXPECT_TRUE(b.armed());
  EXPECT_EQ(set.NextDeadline(), 62000u);
  EXPECT_EQ(set.PopExpired(61999), nullptr);
  EXPECT_EQ(set.PopExpired(62000), &b);
  EXPECT_EQ(set.NextDeadline(), UINT64_MAX);

  // The same scenario in one DeadlineQueue shows what TimerSet fixes.
  DeadlineQueue fifo;
  fifo.Arm(&a, 31000, kKeepAlive);
  fifo.Arm(&b, 62000, kKeepAlive);
  fifo.Arm(&c, 33000, kKeepAlive);
  EXPECT_EQ(fifo.PopExpired(33000), &a);
  EXPECT_EQ(fifo.PopExpired(33000), nullptr);  // C stuck behind B
  DeadlineQueue::Cancel(&b);
  DeadlineQueue::Cancel(&c);
}

TEST(TimerSetTest, ExpiresInDeadlineOrderAcrossDurations) {
  TimerSet set;
  DeadlineNode n[6];
  // (now, duration) chosen so arming order, duration order and deadline
  // order all differ.
  set.Arm(&n[0], 0, 500, 0);    // 500
  set.Arm(&n[1], 10, 100, 1);   // 110
  set.Arm(&n[2], 20, 1000, 2);  // 1020
  set.Arm(&n[3], 30, 100, 3);   // 130
  set.Arm(&n[4], 40, 500, 4);   // 540
  set.Arm(&n[5], 50, 20, 5);    // 70
  EXPECT_EQ(set.queue_count(), 4u);
  std::vector<DeadlineNode*> got = DrainExpired(set, 10000);
  std::vector<DeadlineNode*> want = {&n[5], &n[1], &n[3], &n[0], &n[4], &n[2]};
  EXPECT_EQ(got, want);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(n[i].kind, i);
}

TEST(TimerSetTest, PopExpiredStopsAtNow) {
  TimerSet set;
  DeadlineNode a, b;
  set.Arm(&a, 0, 100, 0);
  set.Arm(&b, 0, 200, 0);
  EXPECT_EQ(DrainExpired(set, 150), std::vector<DeadlineNode*>{&a});
  EXPECT_TRUE(b.armed());
  EXPECT_EQ(set.NextDeadline(), 200u);
}

TEST(TimerSetTest, RearmWithDifferentDurationMovesTheNode) {
  TimerSet set;
  DeadlineNode a, b;
  set.Arm(&a, 0, 1000, 1);
  set.Arm(&b, 0, 500, 1);
  EXPECT_EQ(set.NextDeadline(), 500u);
  set.Arm(&a, 100, 50, 2);  // now due at 150, and a different kind
  EXPECT_EQ(a.kind, 2);
  EXPECT_EQ(a.deadline_ms, 150u);
  EXPECT_EQ(set.NextDeadline(), 150u);
  EXPECT_EQ(DrainExpired(set, 1000), (std::vector<DeadlineNode*>{&a, &b}));
  // Re-armed, not duplicated: nothing is left behind in the 1000 ms queue.
  EXPECT_EQ(set.NextDeadline(), UINT64_MAX);

  // Re-arming with the same duration pushes the deadline out.
  set.Arm(&a, 0, 100, 1);
  set.Arm(&a, 90, 100, 1);
  EXPECT_EQ(set.PopExpired(150), nullptr);
  EXPECT_EQ(set.PopExpired(190), &a);
}

TEST(TimerSetTest, Cancel) {
  TimerSet set;
  DeadlineNode a, b, c;
  set.Arm(&a, 0, 100, 0);
  set.Arm(&b, 0, 200, 0);
  set.Arm(&c, 0, 300, 0);
  TimerSet::Cancel(&a);
  TimerSet::Cancel(&c);
  EXPECT_FALSE(a.armed());
  EXPECT_FALSE(c.armed());
  EXPECT_EQ(set.NextDeadline(), 200u);
  TimerSet::Cancel(&a);  // cancelling an unarmed node is a no-op
  EXPECT_EQ(DrainExpired(set, 1000), std::vector<DeadlineNode*>{&b});
  EXPECT_EQ(set.NextDeadline(), UINT64_MAX);
}

TEST(TimerSetTest, EmptiedQueuesAreReusedForNewDurations) {
  TimerSet set;
  DeadlineNode a, b, c;
  set.Arm(&a, 0, 100, 0);
  set.Arm(&b, 0, 200, 0);
  set.Arm(&c, 0, 300, 0);
  EXPECT_EQ(set.queue_count(), 3u);
  // A known duration never creates a queue.
  set.Arm(&a, 0, 200, 0);
  EXPECT_EQ(set.queue_count(), 3u);

  // After a config change only new durations are armed: the old queues drain
  // and are relabelled instead of accumulating.
  DrainExpired(set, 1000);
  for (uint32_t round = 0; round < 50; ++round) {
    const uint32_t d = 1000 + round;
    set.Arm(&a, 1000, d, 0);
    set.Arm(&b, 1000, d + 100, 0);
    EXPECT_LE(set.queue_count(), 3u);
    EXPECT_EQ(DrainExpired(set, 1000 + d + 100), (std::vector<DeadlineNode*>{&a, &b}));
  }
  EXPECT_EQ(set.queue_count(), 3u);

  // A queue still holding a timer is never relabelled.
  set.Arm(&a, 0, 100, 0);
  set.Arm(&b, 0, 200, 0);
  set.Arm(&c, 0, 300, 0);
  DeadlineNode d;
  set.Arm(&d, 0, 400, 0);
  EXPECT_EQ(set.queue_count(), 4u);
  EXPECT_EQ(DrainExpired(set, 1000), (std::vector<DeadlineNode*>{&a, &b, &c, &d}));
}

// Re-arming the only node of a queue with a new duration reuses that queue.
TEST(TimerSetTest, RearmIntoTheQueueItJustLeft) {
  TimerSet set;
  DeadlineNode a;
  set.Arm(&a, 0, 100, 0);
  set.Arm(&a, 0, 200, 0);
  set.Arm(&a, 0, 300, 0);
  EXPECT_EQ(set.queue_count(), 1u);
  EXPECT_EQ(set.NextDeadline(), 300u);
}

TEST(TimerSetTest, HandlersMayArmDuringExpiry) {
  TimerSet set;
  DeadlineNode a, b;
  set.Arm(&a, 0, 10, 0);
  set.Arm(&b, 0, 20, 0);
  DeadlineNode* first = set.PopExpired(100);
  ASSERT_EQ(first, &a);
  set.Arm(&a, 100, 5, 0);  // re-armed by its handler, due at 105
  EXPECT_EQ(set.PopExpired(100), &b);
  EXPECT_EQ(set.PopExpired(100), nullptr);
  EXPECT_EQ(set.PopExpired(105), &a);
}

// Random arms, re-arms, cancels and expiries against an ordered model.
TEST(TimerSetTest, MatchesMultimapModel) {
  constexpr size_t kNodes = 64;
  const uint32_t kDurations[] = {5, 17, 100, 250, 1000, 30000, 60000};
  std::mt19937 rng(12345);
  auto uniform = [&rng](uint32_t lo, uint32_t hi) {
    return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
  };

  TimerSet set;
  std::vector<DeadlineNode> nodes(kNodes);
  std::multimap<uint64_t, size_t> model;  // deadline -> node index
  std::vector<std::multimap<uint64_t, size_t>::iterator> where(kNodes, model.end());
  auto index_of = [&](DeadlineNode* n) { return static_cast<size_t>(n - nodes.data()); };
  size_t popped_total = 0;

  uint64_t now = 0;
  for (int step = 0; step < 20000; ++step) {
    const uint32_t op = uniform(0, 9);
    const size_t i = uniform(0, kNodes - 1);
    if (op < 5) {  // arm or re-arm
      // Mostly the standard durations; sometimes a fresh one, as after a reload.
      const uint32_t d = uniform(0, 9) == 0 ? uniform(1, 5000)
                                            : kDurations[uniform(0, std::size(kDurations) - 1)];
      const uint8_t kind = static_cast<uint8_t>(uniform(0, 255));
      set.Arm(&nodes[i], now, d, kind);
      ASSERT_EQ(nodes[i].kind, kind);
      if (where[i] != model.end()) model.erase(where[i]);
      where[i] = model.emplace(now + d, i);
    } else if (op < 7) {  // cancel
      TimerSet::Cancel(&nodes[i]);
      if (where[i] != model.end()) model.erase(where[i]);
      where[i] = model.end();
    } else {  // time passes, everything due expires
      now += uniform(0, 400);
      std::set<size_t> expected;
      for (auto it = model.begin(); it != model.end() && it->first <= now; ++it) {
        expected.insert(it->second);
      }
      std::set<size_t> got;
      uint64_t last_deadline = 0;
      while (DeadlineNode* n = set.PopExpired(now)) {
        const size_t k = index_of(n);
        ASSERT_LT(k, kNodes);
        ASSERT_LE(n->deadline_ms, now);
        ASSERT_GE(n->deadline_ms, last_deadline) << "expiry out of deadline order";
        last_deadline = n->deadline_ms;
        ASSERT_TRUE(got.insert(k).second) << "node popped twice";
        ASSERT_FALSE(n->armed());
        model.erase(where[k]);
        where[k] = model.end();
      }
      ASSERT_EQ(got, expected) << "at step " << step;
      popped_total += got.size();
    }
    ASSERT_EQ(set.NextDeadline(), model.empty() ? UINT64_MAX : model.begin()->first)
        << "at step " << step;
    ASSERT_LE(set.queue_count(), std::size(kDurations) + kNodes);
  }
  EXPECT_GT(popped_total, 1000u);  // the model really exercised expiry
  for (DeadlineNode& n : nodes) TimerSet::Cancel(&n);
}

}  // namespace
}  // namespace ktlb
