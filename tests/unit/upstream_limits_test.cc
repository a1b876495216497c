// The pure parts of upstream limits: the wait queue's bookkeeping
// (max_conns_per_server) and the retry budget's arithmetic (retry_budget).

#include "ktlb/upstream_limits.h"

#include <vector>

#include "gtest/gtest.h"

namespace ktlb::upstream {
namespace {

std::vector<int> Order(const WaitQueue& q) {
  std::vector<int> out;
  for (WaitNode* n = q.front(); n != nullptr; n = n->next) out.push_back(*static_cast<int*>(n->owner));
  return out;
}

TEST(WaitQueueTest, FifoAndBound) {
  int ids[4] = {0, 1, 2, 3};
  WaitNode nodes[4];
  for (int i = 0; i < 4; ++i) nodes[i].owner = &ids[i];
  WaitQueue q(3);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.PopFront(), nullptr);
  EXPECT_TRUE(q.Push(&nodes[0]));
  EXPECT_TRUE(q.Push(&nodes[1]));
  EXPECT_FALSE(q.Push(&nodes[1]));  // already queued
  EXPECT_TRUE(q.Push(&nodes[2]));
  EXPECT_FALSE(q.Push(&nodes[3]));  // full
  EXPECT_FALSE(nodes[3].queued);
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(Order(q), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(q.PopFront(), &nodes[0]);
  EXPECT_FALSE(nodes[0].queued);
  EXPECT_TRUE(q.Push(&nodes[3]));
  EXPECT_EQ(Order(q), (std::vector<int>{1, 2, 3}));
}

TEST(WaitQueueTest, RemoveFromAnywhere) {
  int ids[4] = {0, 1, 2, 3};
  WaitNode nodes[4];
  for (int i = 0; i < 4; ++i) nodes[i].owner = &ids[i];
  WaitQueue q(8);
  for (WaitNode& n : nodes) ASSERT_TRUE(q.Push(&n));
  EXPECT_TRUE(q.Remove(&nodes[1]));  // middle
  EXPECT_FALSE(q.Remove(&nodes[1]));  // twice: nothing
  EXPECT_EQ(Order(q), (std::vector<int>{0, 2, 3}));
  EXPECT_TRUE(q.Remove(&nodes[3]));  // tail
  EXPECT_EQ(Order(q), (std::vector<int>{0, 2}));
  EXPECT_TRUE(q.Remove(&nodes[0]));  // head
  EXPECT_EQ(Order(q), (std::vector<int>{2}));
  EXPECT_TRUE(q.Push(&nodes[1]));  // a removed node may come back, at the end
  EXPECT_EQ(Order(q), (std::vector<int>{2, 1}));
  EXPECT_TRUE(q.Remove(&nodes[2]));
  EXPECT_TRUE(q.Remove(&nodes[1]));
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.front(), nullptr);
  EXPECT_TRUE(q.Push(&nodes[0]));
  EXPECT_EQ(q.PopFront(), &nodes[0]);
  EXPECT_TRUE(q.empty());
}

TEST(RetryBudgetTest, FloorAllowsAFewOnAQuietCluster) {
  EXPECT_EQ(RetryBudgetLimit(0, 0.2), 3u);
  EXPECT_EQ(RetryBudgetLimit(10, 0.2), 3u);  // 2 < floor
  EXPECT_TRUE(RetryBudgetAllows(0, 1, 0.2));
  EXPECT_TRUE(RetryBudgetAllows(2, 1, 0.2));
  EXPECT_FALSE(RetryBudgetAllows(3, 1, 0.2));
  EXPECT_FALSE(RetryBudgetAllows(3, 0, 0.0));
  EXPECT_TRUE(RetryBudgetAllows(2, 1000, 0.0));  // budget 0: the floor only
}

TEST(RetryBudgetTest, ScalesWithRequestsInFlight) {
  EXPECT_EQ(RetryBudgetLimit(100, 0.2), 20u);
  EXPECT_TRUE(RetryBudgetAllows(19, 100, 0.2));
  EXPECT_FALSE(RetryBudgetAllows(20, 100, 0.2));
  EXPECT_EQ(RetryBudgetLimit(100, 1.0), 100u);
  EXPECT_EQ(RetryBudgetLimit(19, 0.2), 3u);  // 3.8 rounds down, then the floor
  EXPECT_EQ(RetryBudgetLimit(24, 0.2), 4u);
  EXPECT_EQ(RetryBudgetLimit(10, 0.5, 0), 5u);  // no floor
  EXPECT_FALSE(RetryBudgetAllows(0, 1, 0.5, 0));
}

}  // namespace
}  // namespace ktlb::upstream
