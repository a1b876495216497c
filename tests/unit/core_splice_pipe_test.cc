// Who owns a splice pipe's two descriptors: the loop's pool, then the
// SplicePipe that Start()ed on them, then the pool again (Clear after
// ReturnPipe) or nobody (Discard closes them). A leak or a double close here
// would only show as fd exhaustion or a stray close of a reused number.
#include "ktlb/splice_pipe.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "ktlb/loop.h"
#include "ktlb/unique_fd.h"

namespace ktlb {
namespace {

bool IsOpen(int fd) { return fd >= 0 && ::fcntl(fd, F_GETFD) != -1; }

TEST(SplicePipe, MovesBytesBetweenSockets) {
  int a[2], b[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, a), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, b), 0);
  UniqueFd src_in(a[0]), src(a[1]), sink(b[0]), sink_out(b[1]);
  Loop loop;
  int r = -1, w = -1;
  ASSERT_TRUE(loop.TakePipe(&r, &w));
  SplicePipe pipe;
  pipe.Start(r, w, 5);
  ASSERT_EQ(write(src_in.get(), "hello", 5), 5);
  uint64_t moved = 0;
  EXPECT_EQ(pipe.Run(src.get(), sink.get(), true, &moved), SplicePipe::Status::kDone);
  EXPECT_EQ(moved, 5u);
  char buf[8];
  ASSERT_EQ(read(sink_out.get(), buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  pipe.Discard();
}

TEST(SplicePipe, DiscardClosesBothEnds) {
  Loop loop;
  int r = -1, w = -1;
  ASSERT_TRUE(loop.TakePipe(&r, &w));
  SplicePipe pipe;
  pipe.Start(r, w, 1);
  EXPECT_TRUE(pipe.active());
  pipe.Discard();
  EXPECT_FALSE(pipe.active());
  EXPECT_FALSE(IsOpen(r));
  EXPECT_FALSE(IsOpen(w));
  pipe.Discard();  // no-op when not active
}

TEST(SplicePipe, ClearHandsTheEndsBackWithoutClosing) {
  Loop loop;
  int r = -1, w = -1;
  ASSERT_TRUE(loop.TakePipe(&r, &w));
  {
    SplicePipe pipe;
    pipe.Start(r, w, 1);
    loop.ReturnPipe(pipe.pipe_r(), pipe.pipe_w());
    pipe.Clear();
    EXPECT_FALSE(pipe.active());
  }  // the SplicePipe is gone; the pool still owns the pipe
  EXPECT_TRUE(IsOpen(r));
  EXPECT_TRUE(IsOpen(w));
  int r2 = -1, w2 = -1;
  ASSERT_TRUE(loop.TakePipe(&r2, &w2));
  EXPECT_EQ(r2, r);
  EXPECT_EQ(w2, w);
  loop.ReturnPipe(r2, w2);
}

TEST(SplicePipe, DestroyedWhileActiveClosesItsPipe) {
  Loop loop;
  int r = -1, w = -1;
  ASSERT_TRUE(loop.TakePipe(&r, &w));
  {
    SplicePipe pipe;
    pipe.Start(r, w, 1);
  }
  EXPECT_FALSE(IsOpen(r));
  EXPECT_FALSE(IsOpen(w));
}

TEST(LoopPipePool, KeepsAtMostItsLimitAndClosesTheRest) {
  std::vector<int> fds;
  {
    Loop loop;
    std::vector<std::pair<int, int>> taken(80);
    for (auto& [r, w] : taken) ASSERT_TRUE(loop.TakePipe(&r, &w));
    for (auto [r, w] : taken) {
      loop.ReturnPipe(r, w);
      fds.push_back(r);
      fds.push_back(w);
    }
    size_t open = 0;
    for (int fd : fds) open += IsOpen(fd) ? 1 : 0;
    EXPECT_EQ(open, 2u * 64);  // the pool's 64 pipes; the other 16 closed on return
  }
  for (int fd : fds) EXPECT_FALSE(IsOpen(fd)) << fd;  // the loop closed its pool
}

}  // namespace
}  // namespace ktlb
