// The pure parts of upstream health: rise/fall hysteresis, the board
// workers read, ejection backoff with probation, and slow start.

#include <gtest/gtest.h>

#include "ktlb/ejection.h"
#include "ktlb/health.h"

namespace ktlb::upstream {
namespace {

TEST(HealthCounterTest, FirstProbeDecidesThenRiseAndFall) {
  HealthCounter dead(2, 3);
  EXPECT_TRUE(dead.Record(false));  // unknown -> down at once
  EXPECT_TRUE(dead.down());

  HealthCounter c(2, 3);
  EXPECT_FALSE(c.Record(true));  // unknown -> up: no change to report
  EXPECT_EQ(c.state(), HealthCounter::State::kUp);
  EXPECT_FALSE(c.Record(false));
  EXPECT_FALSE(c.Record(false));
  EXPECT_FALSE(c.down());
  EXPECT_FALSE(c.Record(true));  // a pass breaks the run of failures
  EXPECT_FALSE(c.Record(false));
  EXPECT_FALSE(c.Record(false));
  EXPECT_TRUE(c.Record(false));  // the third in a row
  EXPECT_TRUE(c.down());
  EXPECT_EQ(c.streak(), 3u);
  EXPECT_FALSE(c.Record(false));  // stays down, no second report
  EXPECT_FALSE(c.Record(true));
  EXPECT_FALSE(c.Record(false));  // a failure breaks the run of passes
  EXPECT_FALSE(c.Record(true));
  EXPECT_TRUE(c.Record(true));  // rise = 2
  EXPECT_EQ(c.state(), HealthCounter::State::kUp);
  EXPECT_EQ(c.streak(), 2u);
}

TEST(HealthCounterTest, SeededDownNeedsRisePasses) {
  // A server the prober this one replaces held down (its upstream's server
  // list changed): it does not come back on one pass, as an unknown would.
  HealthCounter c(2, 3);
  c.SeedDown();
  EXPECT_TRUE(c.down());
  EXPECT_FALSE(c.Record(true));
  EXPECT_TRUE(c.down());
  EXPECT_TRUE(c.Record(true));  // rise = 2: a change, reported and published
  EXPECT_FALSE(c.down());
}

TEST(HealthCounterTest, RiseAndFallOfOne) {
  HealthCounter c(1, 1);
  EXPECT_FALSE(c.Record(true));
  EXPECT_TRUE(c.Record(false));
  EXPECT_TRUE(c.Record(true));
}

TEST(HealthBoardTest, VersionMovesOnEveryChange) {
  HealthBoard b(3, 4000);
  EXPECT_EQ(b.healthy(), 3u);
  const uint64_t v0 = b.version();
  b.Set(1, false);
  EXPECT_FALSE(b.up(1));
  EXPECT_TRUE(b.up(0));
  EXPECT_EQ(b.healthy(), 2u);
  EXPECT_GT(b.version(), v0);
  b.Set(1, true);
  EXPECT_EQ(b.healthy(), 3u);
  EXPECT_EQ(b.recheck_ms(), 4000u);
}

TEST(EjectionTest, DurationDoublesAndIsCapped) {
  EjectionConfig c{5, 10'000, 300'000};
  EXPECT_EQ(EjectionDuration(c, 0), 0u);
  EXPECT_EQ(EjectionDuration(c, 1), 10'000u);
  EXPECT_EQ(EjectionDuration(c, 2), 20'000u);
  EXPECT_EQ(EjectionDuration(c, 3), 40'000u);
  EXPECT_EQ(EjectionDuration(c, 5), 160'000u);
  EXPECT_EQ(EjectionDuration(c, 6), 300'000u);
  EXPECT_EQ(EjectionDuration(c, 200), 300'000u);  // no overflow at large counts
}

TEST(EjectionTest, ConsecutiveFailuresThenProbation) {
  EjectionConfig c{3, 1000, 3000};
  EjectionState e;
  EXPECT_FALSE(e.OnFailure(c, 100));
  EXPECT_FALSE(e.OnFailure(c, 110));
  e.OnSuccess();  // the run is broken
  EXPECT_FALSE(e.OnFailure(c, 120));
  EXPECT_FALSE(e.OnFailure(c, 130));
  EXPECT_TRUE(e.OnFailure(c, 140));
  EXPECT_TRUE(e.ejected(140));
  EXPECT_TRUE(e.ejected(1139));
  EXPECT_FALSE(e.ejected(1140));
  EXPECT_FALSE(e.OnFailure(c, 500));  // failures while ejected (in flight) do not extend it
  EXPECT_EQ(e.until_ms(), 1140u);
  // Re-admitted: the first failure ejects again, twice as long.
  EXPECT_TRUE(e.OnFailure(c, 2000));
  EXPECT_EQ(e.until_ms(), 4000u);
  EXPECT_TRUE(e.OnFailure(c, 5000));
  EXPECT_EQ(e.until_ms(), 8000u);  // capped at max_ms
  EXPECT_EQ(e.ejections(), 3u);
  // A success ends probation and the backoff.
  e.OnSuccess();
  EXPECT_FALSE(e.OnFailure(c, 9000));
  EXPECT_FALSE(e.OnFailure(c, 9001));
  EXPECT_TRUE(e.OnFailure(c, 9002));
  EXPECT_EQ(e.until_ms(), 10'002u);
}

TEST(EjectionTest, ReadmitEndsEjectionAndBackoff) {
  EjectionConfig c{1, 1000, 8000};
  EjectionState e;
  EXPECT_TRUE(e.OnFailure(c, 0));
  EXPECT_TRUE(e.OnFailure(c, 1000));
  EXPECT_EQ(e.until_ms(), 3000u);
  e.Readmit();
  EXPECT_FALSE(e.ejected(1500));
  EXPECT_TRUE(e.OnFailure(c, 1600));  // threshold 1: ejected, but from the base again
  EXPECT_EQ(e.until_ms(), 2600u);
}

TEST(EjectionTest, ZeroThresholdNeverEjects) {
  EjectionConfig c{0, 1000, 1000};
  EjectionState e;
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(e.OnFailure(c, static_cast<uint64_t>(i)));
}

TEST(SlowStartTest, RampsFromTenPercentToFull) {
  EXPECT_DOUBLE_EQ(SlowStartFactor(0, 0), 1.0);  // off
  EXPECT_DOUBLE_EQ(SlowStartFactor(0, 10'000), 0.1);
  EXPECT_DOUBLE_EQ(SlowStartFactor(5'000, 10'000), 0.55);
  EXPECT_DOUBLE_EQ(SlowStartFactor(10'000, 10'000), 1.0);
  EXPECT_DOUBLE_EQ(SlowStartFactor(50'000, 10'000), 1.0);
}

}  // namespace
}  // namespace ktlb::upstream
