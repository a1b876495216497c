// Strict chunked transfer-coding framing (RFC 9112 7.1), byte-exact.
#include <algorithm>
#include <string_view>

#include "internal.h"

namespace ktlb::http1::internal {

void ChunkedScanner::Reset(uint32_t max_trailer_bytes) {
  *this = ChunkedScanner();
  max_trailer_bytes_ = max_trailer_bytes;
}

ParseStatus ChunkedScanner::Scan(std::string_view buf, size_t* consumed) {
  *consumed = 0;
  if (state_ == State::kError) return ParseStatus::kError;
  if (state_ == State::kDone) return ParseStatus::kDone;

  const char* p = buf.data();
  const size_t n = buf.size();
  size_t i = 0;
  auto fail = [this] {
    state_ = State::kError;
    return ParseStatus::kError;
  };

  while (i < n) {
    // Chunk data is the bulk of the bytes: skip it without looking.
    if (state_ == State::kData) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(size_, n - i));
      i += take;
      size_ -= take;
      if (size_ == 0) state_ = State::kDataCr;
      continue;
    }

    const char c = p[i++];
    switch (state_) {
      case State::kSizeFirst:
        if (!Is(c, kHexDigit)) return fail();
        size_ = 0;
        line_bytes_ = 0;
        state_ = State::kSize;
        [[fallthrough]];
      case State::kSize:
        if (++line_bytes_ > kMaxSizeLine) return fail();
        if (Is(c, kHexDigit)) {
          if (size_ >> 60) return fail();  // a 17th significant digit overflows
          const uint64_t d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
          size_ = (size_ << 4) | d;
        } else if (c == ';') {
          state_ = State::kExt;
        } else if (c == '\r') {
          state_ = State::kSizeLf;
        } else {
          return fail();  // no BWS before ';': llhttp refuses it too
        }
        break;
      case State::kExt:
        // Syntax of the extension itself is llhttp's to judge; here only
        // bytes that could end or fold the line are refused.
        if (++line_bytes_ > kMaxSizeLine) return fail();
        if (c == '\r') {
          state_ = State::kSizeLf;
        } else if (!Is(c, kFieldChar) && !IsOws(c)) {
          return fail();
        }
        break;
      case State::kSizeLf:
        if (c != '\n') return fail();
        chunk_size_ = size_;
        state_ = size_ == 0 ? State::kTrailerStart : State::kData;
        break;
      case State::kDataCr:
        if (c != '\r') return fail();  // loose llhttp skips these two bytes
        state_ = State::kDataLf;
        break;
      case State::kDataLf:
        if (c != '\n') return fail();
        state_ = State::kSizeFirst;
        break;
      case State::kTrailerStart:
        if (++trailer_bytes_ > max_trailer_bytes_) return fail();
        if (c == '\r') {
          state_ = State::kFinalLf;
        } else if (Is(c, kTchar)) {
          state_ = State::kTrailerName;
        } else {
          return fail();  // obs-fold or garbage
        }
        break;
      case State::kTrailerName:
        if (++trailer_bytes_ > max_trailer_bytes_) return fail();
        if (c == ':') {
          state_ = State::kTrailerValue;
        } else if (!Is(c, kTchar)) {
          return fail();
        }
        break;
      case State::kTrailerValue:
        if (++trailer_bytes_ > max_trailer_bytes_) return fail();
        if (c == '\r') {
          state_ = State::kTrailerLf;
        } else if (!Is(c, kFieldChar) && !IsOws(c)) {
          return fail();
        }
        break;
      case State::kTrailerLf:
        if (c != '\n') return fail();
        state_ = State::kTrailerStart;
        break;
      case State::kFinalLf:
        if (c != '\n') return fail();
        state_ = State::kDone;
        *consumed = i;
        return ParseStatus::kDone;
      case State::kData:
      case State::kDone:
      case State::kError:
        return fail();  // unreachable: handled above
    }
  }
  *consumed = n;
  return ParseStatus::kIncomplete;
}

}  // namespace ktlb::http1::internal
