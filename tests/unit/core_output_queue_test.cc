// OutputQueue: order of bytes and kTLS events, and the byte count that drives
// backpressure.
#include "ktlb/output_queue.h"

#include <gtest/gtest.h>

#include <string>

namespace ktlb {
namespace {

TEST(OutputQueue, EventsKeepTheirPlaceAndCountOnlyPayload) {
  OutputQueue q;
  q.Append("cipher");
  q.AppendInstallTx("KEY1");
  q.AppendRecord(22, std::string_view("\x18\x00\x00\x01\x00", 5));
  q.AppendInstallTx("KEY2");
  q.Append("plain");
  // Keys are not bytes to send: backpressure counts payload only.
  EXPECT_EQ(q.bytes(), 6u + 5u + 5u);

  EXPECT_EQ(q.front().kind, OutputQueue::Kind::kBytes);
  q.Consume(6);
  ASSERT_EQ(q.front().kind, OutputQueue::Kind::kInstallTx);
  EXPECT_EQ(q.front().data, "KEY1");  // each marker carries its own key
  q.PopFront();
  EXPECT_EQ(q.bytes(), 10u);
  ASSERT_EQ(q.front().kind, OutputQueue::Kind::kRecord);
  EXPECT_EQ(q.front().record_type, 22);
  q.Consume(5);
  ASSERT_EQ(q.front().kind, OutputQueue::Kind::kInstallTx);
  EXPECT_EQ(q.front().data, "KEY2");
  q.PopFront();
  EXPECT_EQ(q.front().unsent(), "plain");
  q.Consume(5);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
}

TEST(OutputQueue, ClearWithAPendingMarkerLeavesNothingCounted) {
  OutputQueue q;
  q.Append("abc");
  q.AppendInstallTx("SECRETKEY");
  q.Clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
  // A recycled buffer never shows the key again.
  q.Append("x");
  q.AppendInstallTx("");
  EXPECT_EQ(q.bytes(), 1u);
}

}  // namespace
}  // namespace ktlb
