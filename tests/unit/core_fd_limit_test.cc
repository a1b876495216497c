#include "ktlb/fd_limit.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

namespace ktlb {
namespace {

TEST(FdLimit, SoftLimitEndsAtTheHardLimit) {
  rlimit before{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &before), 0);
  // Start below the hard limit, as a login shell's 1024 would.
  if (before.rlim_max > 256) {
    rlimit low = before;
    low.rlim_cur = 256;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  }
  FdLimit got = RaiseFdLimit();
  rlimit after{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &after), 0);
  EXPECT_EQ(after.rlim_cur, after.rlim_max);
  EXPECT_EQ(got.soft, got.hard);
  EXPECT_EQ(got.raised, before.rlim_max > 256);
  // Already at the limit: nothing to do, nothing lowered.
  FdLimit again = RaiseFdLimit();
  EXPECT_FALSE(again.raised);
  EXPECT_EQ(again.soft, got.soft);
}

}  // namespace
}  // namespace ktlb
