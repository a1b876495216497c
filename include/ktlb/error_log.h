// ErrorLog: a worker thread's rate-limited diagnostic log.
//
// A worker must never let its peers decide how much it writes to stderr: a
// flood of failing handshakes would otherwise turn into a flood of blocking
// writes on the thread that should be serving everyone else. ErrorLog puts a
// token bucket in front of the sink (by default 20 lines at once, then 5 per
// second), counts every line whether printed or not so the worker can export
// the counts as metrics, and when printing resumes after a gap says how many
// lines it dropped: "ktlb: N log lines suppressed".
//
// Every printed line has the shape "ktlb: <stage>: <message>\n", the shape
// operators and tests already grep for ("ktlb: tls: ...", "ktlb: upstream:
// ..."). The level is not printed, so that shape does not depend on it; it is
// counted per level instead. Control bytes in the message (which may carry
// peer-chosen text such as an SNI) are written as \xNN so a peer cannot forge
// extra lines. A line longer than kMaxLineBytes is cut and ends in "...\n".
//
// Each line (with its suppression summary, if any) leaves in one write(2)
// from a stack buffer: no allocation, and lines from several workers sharing
// stderr do not interleave (a write of at most PIPE_BUF bytes to a pipe is
// atomic, and so is in practice one write to a terminal or O_APPEND file).
// Log() blocks at most as long as one write(2) to the sink blocks: ErrorLog
// never sets O_NONBLOCK on the sink, because stderr's file status flags are
// shared with every other process holding the same open file description.
// A failed or short write is not retried (except on EINTR); it is counted.
//
// Ownership: one ErrorLog per worker thread, owned by the worker, never
// shared and not thread-safe. It does not own the sink fd and never closes it.
// The main thread logs startup with plain fprintf and needs none of this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace ktlb {

class ErrorLog {
 public:
  enum class Level : uint8_t { kError, kWarn, kInfo };

  struct Options {
    // Lines that may be printed back to back after a quiet period.
    uint32_t burst = 20;
    // Sustained lines per second once the burst is spent.
    uint32_t lines_per_second = 5;
    // Where lines go; not owned.
    int fd = 2;
    // Monotonic milliseconds; NowMs() unless a test drives time by hand.
    std::function<uint64_t()> clock;
  };

  // Longest line written, newline included; longer messages are truncated.
  static constexpr size_t kMaxLineBytes = 1024;

  ErrorLog();
  explicit ErrorLog(Options options);
  ErrorLog(const ErrorLog&) = delete;
  ErrorLog& operator=(const ErrorLog&) = delete;

  // Formats and, if the rate allows, prints "ktlb: <stage>: <message>\n".
  // `stage` names where the failure happened ("tls", "upstream", "tcp", ...).
  void Log(Level level, std::string_view stage, const char* fmt, ...)
      __attribute__((format(printf, 4, 5)));

  // Every Log() call, printed or not.
  uint64_t lines_total() const { return total_; }
  uint64_t lines_total(Level level) const { return by_level_[static_cast<size_t>(level)]; }
  // Log() calls the rate limit kept from the sink.
  uint64_t lines_suppressed() const { return suppressed_; }
  // Writes that failed or were cut short by the sink (lines lost there).
  uint64_t write_failures() const { return write_failures_; }

 private:
  // Tokens are kept in thousandths of a line, so a refill of R lines per
  // second is exactly R thousandths per millisecond with no rounding drift.
  static constexpr uint64_t kMilli = 1000;

  bool TakeToken(uint64_t now_ms);
  void Write(const char* data, size_t len);

  Options options_;
  uint64_t tokens_milli_;
  uint64_t refilled_at_ms_;
  uint64_t total_ = 0;
  uint64_t by_level_[3] = {};
  uint64_t suppressed_ = 0;
  uint64_t unreported_suppressed_ = 0;  // since the last line printed
  uint64_t write_failures_ = 0;
};

}  // namespace ktlb
