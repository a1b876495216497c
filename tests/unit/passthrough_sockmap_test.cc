// The accounting that decides when a kernel relay may pass a FIN on
// (ktlb/sockmap.h), and the loader against this machine's kernel.
#include "ktlb/sockmap.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace ktlb::passthrough {
namespace {

TEST(RedirectedBytes, SubtractsWhatKtlbReadItself) {
  EXPECT_EQ(RedirectedBytes(1517, 517, false), 1000u);
  EXPECT_EQ(RedirectedBytes(517, 517, false), 0u);
}

TEST(RedirectedBytes, AReceivedFinIsNotAByte) {
  // tcpi_bytes_received is rcv_nxt's advance: the FIN takes one sequence number.
  EXPECT_EQ(RedirectedBytes(1518, 517, true), 1000u);
  EXPECT_EQ(RedirectedBytes(518, 517, true), 0u);
}

TEST(RedirectedBytes, ACounterThatCouldNotBeReadIsZero) {
  EXPECT_EQ(RedirectedBytes(0, 517, false), 0u);
  EXPECT_EQ(RedirectedBytes(0, 0, true), 0u);
}

TEST(RedirectDrained, OnlyWhenEveryRedirectedByteWasWritten) {
  EXPECT_FALSE(RedirectDrained(30'000'000, 2'228'171));  // the FIN would cut the rest off
  EXPECT_FALSE(RedirectDrained(1, 0));
  EXPECT_TRUE(RedirectDrained(30'000'000, 30'000'000));
  EXPECT_TRUE(RedirectDrained(0, 0));
}

// Loads the program where the kernel and privileges allow (root here and in
// CI); elsewhere the error must say what failed, for the fallback's log line.
TEST(Sockmap, LoadsOrSaysWhy) {
  auto m = Sockmap::Load();
  if (!m.ok()) {
    EXPECT_FALSE(m.status().message().empty());
    GTEST_SKIP() << "BPF sockmap unavailable: " << m.status().message();
  }
  // A listening socket is no relay socket: the kernel refuses it in the map,
  // and Pair says so without changing anything.
  int a = socket(AF_INET, SOCK_STREAM, 0);
  int b = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  SockmapPair p;
  std::string error;
  EXPECT_FALSE((*m)->Pair(a, b, &p, &error));
  EXPECT_FALSE(p.paired);
  EXPECT_FALSE(error.empty());
  close(a);
  close(b);
}

}  // namespace
}  // namespace ktlb::passthrough
