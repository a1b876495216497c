#include "ktlb/error_log.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <utility>

#include "ktlb/deadline_queue.h"  // NowMs

namespace ktlb {
namespace {

// Room for "ktlb: 18446744073709551615 log lines suppressed\n".
constexpr size_t kSummaryBytes = 64;
constexpr std::string_view kCutMark = "...";

// Appends to a fixed buffer, never past `limit`, remembering whether
// anything had to be dropped.
class LineBuilder {
 public:
  LineBuilder(char* buf, size_t limit) : buf_(buf), limit_(limit) {}

  void Raw(std::string_view s) {
    const size_t n = std::min(s.size(), limit_ - len_);
    std::memcpy(buf_ + len_, s.data(), n);
    len_ += n;
    if (n < s.size()) cut_ = true;
  }

  // Bytes outside printable ASCII become \xNN: messages carry peer-chosen
  // text, and a raw newline or terminal escape from a peer must not be able
  // to fake a log line or rewrite the operator's screen. An escape is written
  // whole or not at all.
  void Escaped(std::string_view s) {
    static constexpr char kHex[] = "0123456789abcdef";
    for (const char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      if (c >= 0x20 && c < 0x7f) {
        if (len_ == limit_) return Cut();
        buf_[len_++] = ch;
        continue;
      }
      if (limit_ - len_ < 4) return Cut();
      buf_[len_++] = '\\';
      buf_[len_++] = 'x';
      buf_[len_++] = kHex[c >> 4];
      buf_[len_++] = kHex[c & 0xf];
    }
  }

  void Cut() { cut_ = true; }
  bool cut() const { return cut_; }
  size_t size() const { return len_; }

 private:
  char* buf_;
  size_t limit_;
  size_t len_ = 0;
  bool cut_ = false;
};

}  // namespace

ErrorLog::ErrorLog() : ErrorLog(Options{}) {}

ErrorLog::ErrorLog(Options options) : options_(std::move(options)) {
  if (!options_.clock) options_.clock = &NowMs;
  // Start full: the first lines after startup are usually the informative ones.
  tokens_milli_ = uint64_t{options_.burst} * kMilli;
  refilled_at_ms_ = options_.clock();
}

bool ErrorLog::TakeToken(uint64_t now_ms) {
  const uint64_t capacity = uint64_t{options_.burst} * kMilli;
  const uint64_t rate = options_.lines_per_second;  // thousandths per ms
  if (now_ms > refilled_at_ms_ && rate > 0 && tokens_milli_ < capacity) {
    // Compare time against what is missing rather than multiplying first:
    // after a long quiet period elapsed * rate could overflow.
    const uint64_t elapsed = now_ms - refilled_at_ms_;
    const uint64_t deficit = capacity - tokens_milli_;
    if (elapsed >= (deficit + rate - 1) / rate) {
      tokens_milli_ = capacity;
    } else {
      tokens_milli_ += elapsed * rate;
    }
  }
  // Time never runs backwards for the bucket, even if a test clock does.
  refilled_at_ms_ = std::max(refilled_at_ms_, now_ms);
  if (tokens_milli_ < kMilli) return false;
  tokens_milli_ -= kMilli;
  return true;
}

void ErrorLog::Log(Level level, std::string_view stage, const char* fmt, ...) {
  ++total_;
  ++by_level_[static_cast<size_t>(level)];
  if (!TakeToken(options_.clock())) {
    ++suppressed_;
    ++unreported_suppressed_;
    return;
  }

  char message[kMaxLineBytes];
  va_list args;
  va_start(args, fmt);
  const int formatted = std::vsnprintf(message, sizeof(message), fmt, args);
  va_end(args);
  const size_t message_len =
      formatted < 0 ? 0 : std::min(static_cast<size_t>(formatted), sizeof(message) - 1);

  // The summary and the line go out in one write, so nothing from another
  // thread can land between them.
  char out[kSummaryBytes + kMaxLineBytes];
  size_t summary_len = 0;
  if (unreported_suppressed_ > 0) {
    const int n = std::snprintf(out, kSummaryBytes, "ktlb: %llu log lines suppressed\n",
                                static_cast<unsigned long long>(unreported_suppressed_));
    summary_len = n < 0 ? 0 : std::min(static_cast<size_t>(n), kSummaryBytes - 1);
    unreported_suppressed_ = 0;
  }

  // Keep room for the cut mark and the newline, so a truncated line is still
  // one line and visibly truncated.
  LineBuilder line(out + summary_len, kMaxLineBytes - kCutMark.size() - 1);
  line.Raw("ktlb: ");
  line.Escaped(stage);
  line.Raw(": ");
  line.Escaped(std::string_view(message, message_len));
  if (formatted < 0 || static_cast<size_t>(formatted) > message_len) line.Cut();
  size_t len = summary_len + line.size();
  if (line.cut()) {
    std::memcpy(out + len, kCutMark.data(), kCutMark.size());
    len += kCutMark.size();
  }
  out[len++] = '\n';
  Write(out, len);
}

void ErrorLog::Write(const char* data, size_t len) {
  // Callers may log and then still look at errno (or log strerror(errno)
  // twice); the write must not change it under them.
  const int saved_errno = errno;
  ssize_t n;
  do {
    n = ::write(options_.fd, data, len);
  } while (n < 0 && errno == EINTR);
  if (n < 0 || static_cast<size_t>(n) != len) ++write_failures_;
  errno = saved_errno;
}

}  // namespace ktlb
