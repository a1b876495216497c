#include "ktlb/unique_fd.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <type_traits>
#include <utility>

namespace ktlb {
namespace {

bool IsOpen(int fd) { return fd >= 0 && ::fcntl(fd, F_GETFD) != -1; }

// A fresh descriptor the test owns until it hands it to a UniqueFd.
int OpenDevNull() {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  return fd;
}

static_assert(!std::is_copy_constructible_v<UniqueFd>);
static_assert(!std::is_copy_assignable_v<UniqueFd>);
static_assert(std::is_nothrow_move_constructible_v<UniqueFd>);
static_assert(std::is_nothrow_move_assignable_v<UniqueFd>);
// No implicit int -> UniqueFd (which would silently take ownership) and no
// implicit UniqueFd -> bool -> int arithmetic.
static_assert(!std::is_convertible_v<int, UniqueFd>);
static_assert(!std::is_convertible_v<UniqueFd, bool>);

TEST(UniqueFdTest, DefaultIsEmpty) {
  UniqueFd fd;
  EXPECT_EQ(fd.get(), -1);
  EXPECT_FALSE(fd.valid());
  EXPECT_FALSE(static_cast<bool>(fd));
  EXPECT_FALSE(UniqueFd(-5).valid());
  EXPECT_EQ(UniqueFd(-5).get(), -1);
}

TEST(UniqueFdTest, ClosesOnDestruction) {
  const int raw = OpenDevNull();
  {
    UniqueFd fd(raw);
    EXPECT_TRUE(fd.valid());
    EXPECT_TRUE(static_cast<bool>(fd));
    EXPECT_EQ(fd.get(), raw);
    EXPECT_TRUE(IsOpen(raw));
  }
  EXPECT_FALSE(IsOpen(raw));
}

TEST(UniqueFdTest, ReleaseGivesUpOwnership) {
  const int raw = OpenDevNull();
  int released = -1;
  {
    UniqueFd fd(raw);
    released = fd.release();
    EXPECT_FALSE(fd.valid());
    EXPECT_EQ(fd.get(), -1);
  }
  EXPECT_EQ(released, raw);
  EXPECT_TRUE(IsOpen(raw));
  ::close(raw);
  UniqueFd empty;
  EXPECT_EQ(empty.release(), -1);
}

TEST(UniqueFdTest, ResetClosesTheOldDescriptor) {
  const int a = OpenDevNull();
  const int b = OpenDevNull();
  UniqueFd fd(a);
  fd.reset(b);
  EXPECT_FALSE(IsOpen(a));
  EXPECT_TRUE(IsOpen(b));
  EXPECT_EQ(fd.get(), b);
  fd.reset();
  EXPECT_FALSE(IsOpen(b));
  EXPECT_FALSE(fd.valid());
  fd.reset();  // resetting an empty owner is harmless
  EXPECT_FALSE(fd.valid());
}

TEST(UniqueFdTest, ResetToTheSameDescriptorKeepsItOpen) {
  const int raw = OpenDevNull();
  UniqueFd fd(raw);
  fd.reset(raw);
  EXPECT_TRUE(IsOpen(raw));
  EXPECT_EQ(fd.get(), raw);
}

TEST(UniqueFdTest, MoveTransfersOwnership) {
  const int a = OpenDevNull();
  const int b = OpenDevNull();
  UniqueFd first(a);
  UniqueFd second(std::move(first));
  EXPECT_FALSE(first.valid());  // NOLINT(bugprone-use-after-move): defined state
  EXPECT_EQ(second.get(), a);

  UniqueFd third(b);
  third = std::move(second);  // closes b, takes a
  EXPECT_FALSE(IsOpen(b));
  EXPECT_TRUE(IsOpen(a));
  EXPECT_EQ(third.get(), a);
  EXPECT_FALSE(second.valid());  // NOLINT(bugprone-use-after-move)

  UniqueFd& alias = third;
  third = std::move(alias);  // self-move keeps the descriptor
  EXPECT_EQ(third.get(), a);
  EXPECT_TRUE(IsOpen(a));

  third = UniqueFd();
  EXPECT_FALSE(IsOpen(a));
}

TEST(UniqueFdTest, Swap) {
  const int a = OpenDevNull();
  UniqueFd x(a), y;
  swap(x, y);
  EXPECT_FALSE(x.valid());
  EXPECT_EQ(y.get(), a);
  EXPECT_TRUE(IsOpen(a));
}

}  // namespace
}  // namespace ktlb
