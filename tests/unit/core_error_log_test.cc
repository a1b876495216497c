#include "ktlb/error_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

namespace ktlb {
namespace {

using Level = ErrorLog::Level;

// A pipe standing in for stderr, and a clock the test moves by hand.
class ErrorLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::pipe2(fds_, O_CLOEXEC | O_NONBLOCK), 0);
  }
  void TearDown() override {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }

  ErrorLog::Options Opts(uint32_t burst, uint32_t per_second) {
    ErrorLog::Options o;
    o.burst = burst;
    o.lines_per_second = per_second;
    o.fd = fds_[1];
    o.clock = [this] { return now_ms_; };
    return o;
  }

  // Everything written since the last call.
  std::string Drain() {
    std::string out;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fds_[0], buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }

  static std::vector<std::string> Lines(const std::string& text) {
    std::vector<std::string> lines;
    size_t start = 0;
    for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
      lines.push_back(text.substr(start, nl - start));
    }
    EXPECT_EQ(start, text.size()) << "output must end with a newline";
    return lines;
  }

  int fds_[2] = {-1, -1};
  uint64_t now_ms_ = 1'000'000;
};

TEST_F(ErrorLogTest, LineShape) {
  ErrorLog log(Opts(20, 5));
  log.Log(Level::kError, "tls", "handshake with %s:%d failed: %s", "192.0.2.1", 443, "bad");
  log.Log(Level::kWarn, "upstream", "connect to %s failed", "10.0.0.1:80");
  EXPECT_EQ(Drain(),
            "ktlb: tls: handshake with 192.0.2.1:443 failed: bad\n"
            "ktlb: upstream: connect to 10.0.0.1:80 failed\n");
}

TEST_F(ErrorLogTest, BurstThenSuppression) {
  ErrorLog log(Opts(3, 1));
  for (int i = 0; i < 10; ++i) log.Log(Level::kError, "tcp", "line %d", i);
  EXPECT_EQ(Lines(Drain()),
            (std::vector<std::string>{"ktlb: tcp: line 0", "ktlb: tcp: line 1",
                                      "ktlb: tcp: line 2"}));
  EXPECT_EQ(log.lines_total(), 10u);
  EXPECT_EQ(log.lines_suppressed(), 7u);
  EXPECT_EQ(log.write_failures(), 0u);
}

TEST_F(ErrorLogTest, RefillAndSuppressedSummary) {
  ErrorLog log(Opts(2, 4));  // one token every 250 ms
  for (int i = 0; i < 5; ++i) log.Log(Level::kError, "tls", "burst %d", i);
  EXPECT_EQ(Lines(Drain()).size(), 2u);

  now_ms_ += 249;  // not quite a whole token yet
  log.Log(Level::kError, "tls", "too early");
  EXPECT_EQ(Drain(), "");
  EXPECT_EQ(log.lines_suppressed(), 4u);

  now_ms_ += 1;
  log.Log(Level::kError, "tls", "after refill");
  EXPECT_EQ(Drain(),
            "ktlb: 4 log lines suppressed\n"
            "ktlb: tls: after refill\n");

  // The summary is said once; the next printed line stands alone.
  now_ms_ += 250;
  log.Log(Level::kError, "tls", "next");
  EXPECT_EQ(Drain(), "ktlb: tls: next\n");
  EXPECT_EQ(log.lines_total(), 8u);
  EXPECT_EQ(log.lines_suppressed(), 4u);  // cumulative, for the metric
}

TEST_F(ErrorLogTest, LongQuietPeriodRefillsOnlyToBurst) {
  ErrorLog log(Opts(3, 5));
  for (int i = 0; i < 3; ++i) log.Log(Level::kError, "x", "spend");
  Drain();
  now_ms_ += uint64_t{1} << 50;  // absurdly long: must not overflow the bucket
  for (int i = 0; i < 10; ++i) log.Log(Level::kError, "x", "after %d", i);
  const std::vector<std::string> lines = Lines(Drain());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "ktlb: x: after 0");
  EXPECT_EQ(log.lines_suppressed(), 7u);
}

TEST_F(ErrorLogTest, ClockGoingBackwardsGrantsNothing) {
  ErrorLog log(Opts(1, 1000));
  log.Log(Level::kError, "x", "first");
  now_ms_ -= 10'000;
  log.Log(Level::kError, "x", "second");
  now_ms_ += 10'000;  // back where the bucket last refilled: still empty
  log.Log(Level::kError, "x", "third");
  EXPECT_EQ(Drain(), "ktlb: x: first\n");
  now_ms_ += 1;
  log.Log(Level::kError, "x", "fourth");
  EXPECT_EQ(Drain(), "ktlb: 2 log lines suppressed\nktlb: x: fourth\n");
}

TEST_F(ErrorLogTest, LongLinesAreTruncatedAndStillOneLine) {
  ErrorLog log(Opts(20, 5));
  const std::string huge(5000, 'a');
  log.Log(Level::kError, "upstream", "%s", huge.c_str());
  const std::string out = Drain();
  EXPECT_EQ(out.size(), ErrorLog::kMaxLineBytes);
  EXPECT_EQ(out.rfind("ktlb: upstream: aaaa", 0), 0u);
  EXPECT_EQ(out.substr(out.size() - 5), "a...\n");
  EXPECT_EQ(Lines(out).size(), 1u);

  // The longest message that fits is printed whole, without the cut mark.
  const std::string prefix = "ktlb: upstream: ";
  const std::string fits(ErrorLog::kMaxLineBytes - 4 - prefix.size(), 'b');
  log.Log(Level::kError, "upstream", "%s", fits.c_str());
  EXPECT_EQ(Drain(), prefix + fits + "\n");
  const std::string one_more = fits + "c";
  log.Log(Level::kError, "upstream", "%s", one_more.c_str());
  const std::string cut = Drain();
  EXPECT_EQ(cut.size(), ErrorLog::kMaxLineBytes);
  EXPECT_EQ(cut.substr(cut.size() - 4), "...\n");
}

TEST_F(ErrorLogTest, TruncatedLineAfterSummaryIsStillWritten) {
  ErrorLog log(Opts(1, 1));
  log.Log(Level::kError, "x", "one");
  log.Log(Level::kError, "x", "dropped");
  now_ms_ += 1000;
  const std::string huge(3000, 'z');
  log.Log(Level::kError, "x", "%s", huge.c_str());
  const std::vector<std::string> lines = Lines(Drain());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1], "ktlb: 1 log lines suppressed");
  EXPECT_EQ(lines[2].size() + 1, ErrorLog::kMaxLineBytes);
}

TEST_F(ErrorLogTest, ControlBytesCannotForgeLines) {
  ErrorLog log(Opts(20, 5));
  log.Log(Level::kWarn, "passthrough", "no route for SNI \"%s\"",
          "evil\nktlb: tls: forged\x1b[2J\xff");
  EXPECT_EQ(Drain(),
            "ktlb: passthrough: no route for SNI "
            "\"evil\\x0aktlb: tls: forged\\x1b[2J\\xff\"\n");
}

TEST_F(ErrorLogTest, CountsPerLevelIncludingSuppressed) {
  ErrorLog log(Opts(1, 1));
  log.Log(Level::kError, "x", "e");
  log.Log(Level::kWarn, "x", "w");
  log.Log(Level::kWarn, "x", "w");
  log.Log(Level::kInfo, "x", "i");
  EXPECT_EQ(log.lines_total(Level::kError), 1u);
  EXPECT_EQ(log.lines_total(Level::kWarn), 2u);
  EXPECT_EQ(log.lines_total(Level::kInfo), 1u);
  EXPECT_EQ(log.lines_total(), 4u);
  EXPECT_EQ(log.lines_suppressed(), 3u);
}

TEST_F(ErrorLogTest, ZeroRateNeverRefills) {
  ErrorLog log(Opts(1, 0));
  log.Log(Level::kError, "x", "only");
  now_ms_ += 3'600'000;
  log.Log(Level::kError, "x", "never");
  EXPECT_EQ(Drain(), "ktlb: x: only\n");
}

TEST_F(ErrorLogTest, WriteFailuresAreCountedAndErrnoKept) {
  const int full = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(full, 0);
  ErrorLog::Options o = Opts(20, 5);
  o.fd = full;
  ErrorLog log(o);
  errno = EAGAIN;
  log.Log(Level::kError, "x", "lost");
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(log.write_failures(), 1u);
  EXPECT_EQ(log.lines_total(), 1u);
  EXPECT_EQ(log.lines_suppressed(), 0u);
  ::close(full);
}

TEST(ErrorLogDefaults, DefaultsAreBurst20Refill5PerSecond) {
  ErrorLog::Options o;
  EXPECT_EQ(o.burst, 20u);
  EXPECT_EQ(o.lines_per_second, 5u);
  EXPECT_EQ(o.fd, 2);
}

}  // namespace
}  // namespace ktlb
