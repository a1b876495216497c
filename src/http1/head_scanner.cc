// Incremental end-of-head detection with line-structure and size checks.
#include <algorithm>
#include <string_view>

#include "internal.h"

namespace ktlb::http1::internal {

ParseStatus HeadScanner::Scan(std::string_view buf, uint32_t max_first_line, uint32_t max_head,
                              LineEnds ends) {
  if (error_ != ScanError::kNone) return ParseStatus::kError;
  if (head_end_ != 0) return ParseStatus::kDone;
  // Fewer bytes than last time: the caller is not continuing the same head.
  if (buf.size() < pos_) Reset();

  const char* p = buf.data();
  const size_t n = buf.size();
  // Bytes at or past max_head can never belong to an acceptable head, so they
  // are never examined; this keeps the verdict independent of read sizes.
  const size_t avail = std::min<size_t>(n, max_head);
  auto fail = [this](ScanError e) {
    error_ = e;
    return ParseStatus::kError;
  };

  for (;;) {
    if (seen_first_line_ && pos_ == line_start_ && pos_ < avail && IsOws(p[pos_])) {
      return fail(ScanError::kObsFold);  // RFC 9112 5.2: a server MUST reject
    }
    // The first line may hold at most max_first_line bytes before its CR, so
    // the byte at line_start_ + max_first_line must be that CR.
    const size_t first_limit =
        seen_first_line_ ? avail : line_start_ + static_cast<size_t>(max_first_line) + 1;
    const size_t bound = std::min(avail, first_limit);
    const size_t i = FindLineEnd(p, pos_, bound);
    pos_ = i;
    if (i == bound) {
      if (!seen_first_line_ && bound == first_limit) return fail(ScanError::kFirstLineTooLong);
      if (n >= max_head) return fail(ScanError::kHeadTooLarge);
      return ParseStatus::kIncomplete;
    }
    size_t line_end_len = 1;  // a bare LF
    if (p[i] == '\n') {
      if (ends != LineEnds::kCrlfOrLf) return fail(ScanError::kBareLf);
      saw_bare_lf_ = true;
    } else {
      // A CR whose LF would land at max_head or later ends a head that is too
      // large whatever follows.
      if (i + 1 >= max_head) return fail(ScanError::kHeadTooLarge);
      if (i + 1 >= n) return ParseStatus::kIncomplete;  // wait for the LF
      if (p[i + 1] != '\n') return fail(ScanError::kBareCr);
      line_end_len = 2;
    }

    const bool empty_line = (i == line_start_);
    if (!seen_first_line_) {
      if (!empty_line) {
        seen_first_line_ = true;
        first_line_start_ = line_start_;
        first_line_end_ = i;
        fields_start_ = i + line_end_len;
      }
      // else: an empty line before the request line, which RFC 9112 2.2
      // tells servers to ignore (clients send one after a POST body).
    } else if (empty_line) {
      fields_end_ = i;
      head_end_ = i + line_end_len;
      pos_ = head_end_;
      return ParseStatus::kDone;
    }
    pos_ = i + line_end_len;
    line_start_ = pos_;
  }
}

}  // namespace ktlb::http1::internal
