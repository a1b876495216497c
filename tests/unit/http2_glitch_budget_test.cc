// GlitchBudget: `budget` glitches at once, refilled at budget/60 a second.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "ktlb/http2.h"

namespace ktlb::http2 {
namespace {

// Charges at one instant until refused; how many passed.
uint32_t Drain(GlitchBudget* b, uint64_t now_ms) {
  uint32_t n = 0;
  while (b->Charge(now_ms)) {
    if (++n > 10'000'000) break;
  }
  return n;
}

TEST(Http2GlitchBudget, RunsOutAfterBudgetChargesAtOnce) {
  for (uint32_t budget : {1u, 50u, 59u, 60u, 1000u}) {
    SCOPED_TRACE(budget);
    GlitchBudget b;
    b.Reset(budget, 5000);
    EXPECT_EQ(b.left(), budget);
    EXPECT_EQ(Drain(&b, 5000), budget);
    EXPECT_EQ(b.left(), 0u);
    EXPECT_FALSE(b.Charge(5000));
  }
}

TEST(Http2GlitchBudget, ZeroBudgetRefusesAtOnce) {
  GlitchBudget b;
  b.Reset(0, 0);
  EXPECT_FALSE(b.Charge(0));
  EXPECT_FALSE(b.Charge(120'000));
}

TEST(Http2GlitchBudget, RefillsAtBudgetOverSixtyPerSecond) {
  for (uint32_t budget : {50u, 60u, 600u, 1000u, 7u}) {
    SCOPED_TRACE(budget);
    GlitchBudget b;
    b.Reset(budget, 1000);
    ASSERT_EQ(Drain(&b, 1000), budget);
    // After t seconds, budget*t/60 more (within one for rounding).
    for (uint64_t secs : {6u, 12u, 30u}) {
      SCOPED_TRACE(secs);
      GlitchBudget c = b;
      const double want = budget * static_cast<double>(secs) / 60.0;
      const uint32_t got = Drain(&c, 1000 + secs * 1000);
      EXPECT_GE(got + 1.0, want);
      EXPECT_LE(got, want + 1.0);
    }
    // A minute refills all of it, and never more than all of it.
    GlitchBudget full = b;
    EXPECT_EQ(Drain(&full, 61'000), budget);
    GlitchBudget later = b;
    EXPECT_EQ(Drain(&later, 1000 + 3'600'000), budget);
  }
}

TEST(Http2GlitchBudget, RefillIsSmoothNotTruncated) {
  // 1000 a minute is 16.67 a second: over 60 seconds of one charge per
  // second-ish, the bucket must refill everything, not 960 of it.
  GlitchBudget b;
  b.Reset(1000, 0);
  ASSERT_EQ(Drain(&b, 0), 1000u);
  EXPECT_EQ(Drain(&b, 60'000), 1000u);
  // Small steps add up the same as one big one.
  GlitchBudget s;
  s.Reset(50, 0);
  ASSERT_EQ(Drain(&s, 0), 50u);
  uint32_t got = 0;
  for (uint64_t t = 1; t <= 60'000; ++t) got += s.Charge(t) ? 1 : 0;
  EXPECT_GE(got, 49u);
  EXPECT_LE(got, 51u);
}

TEST(Http2GlitchBudget, TimeGoingBackwardsDoesNotRefill) {
  GlitchBudget b;
  b.Reset(10, 100'000);
  ASSERT_EQ(Drain(&b, 100'000), 10u);
  EXPECT_FALSE(b.Charge(50'000));
  EXPECT_FALSE(b.Charge(100'000));
}

TEST(Http2GlitchBudget, Labels) {
  for (int i = 0; i < static_cast<int>(Glitch::kCount); ++i) {
    EXPECT_STRNE(GlitchLabel(static_cast<Glitch>(i)), "unknown");
  }
  EXPECT_STREQ(GlitchLabel(Glitch::kClientReset), "client_reset");
  EXPECT_STREQ(ErrorCodeLabel(0), "no_error");
  EXPECT_STREQ(ErrorCodeLabel(NGHTTP2_PROTOCOL_ERROR), "protocol_error");
  EXPECT_STREQ(ErrorCodeLabel(NGHTTP2_ENHANCE_YOUR_CALM), "enhance_your_calm");
  EXPECT_STREQ(ErrorCodeLabel(NGHTTP2_HTTP_1_1_REQUIRED), "http_1_1_required");
  EXPECT_STREQ(ErrorCodeLabel(kErrorCodes), "unknown");
}

}  // namespace
}  // namespace ktlb::http2
