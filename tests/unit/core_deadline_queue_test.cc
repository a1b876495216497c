#include "ktlb/deadline_queue.h"

#include <gtest/gtest.h>

#include <vector>

namespace ktlb {
namespace {

struct Recorder : DeadlineTarget {
  std::vector<uint8_t> fired;
  void OnDeadline(uint8_t kind) override { fired.push_back(kind); }
};

TEST(DeadlineQueueTest, ExpiresInOrderAndCancels) {
  DeadlineQueue q;
  DeadlineNode a, b, c;
  EXPECT_EQ(q.NextDeadline(), UINT64_MAX);
  q.Arm(&a, 100, 1);
  q.Arm(&b, 200, 1);
  q.Arm(&c, 300, 1);
  EXPECT_EQ(q.NextDeadline(), 100u);
  DeadlineQueue::Cancel(&b);
  EXPECT_FALSE(b.armed());
  EXPECT_EQ(q.PopExpired(99), nullptr);
  EXPECT_EQ(q.PopExpired(250), &a);
  EXPECT_EQ(q.PopExpired(250), nullptr);
  EXPECT_EQ(q.PopExpired(300), &c);
  EXPECT_EQ(q.NextDeadline(), UINT64_MAX);
}

TEST(DeadlineQueueTest, RearmMovesToTail) {
  DeadlineQueue q;
  DeadlineNode a, b;
  q.Arm(&a, 100, 1);
  q.Arm(&b, 150, 1);
  q.Arm(&a, 200, 1);
  EXPECT_EQ(q.NextDeadline(), 150u);
  EXPECT_EQ(q.PopExpired(1000), &b);
  EXPECT_EQ(q.PopExpired(1000), &a);
  DeadlineQueue::Cancel(&a);  // cancelling an unarmed node is a no-op
}

}  // namespace
}  // namespace ktlb
