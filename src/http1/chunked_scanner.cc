// Strict chunked transfer-coding framing (RFC 9112 7.1), byte-exact.
#include <algorithm>
#include <string_view>

#include "internal.h"

namespace ktlb::http1::internal {

void ChunkedScanner::Reset(uint32_t max_trailer_bytes) {
  *this = ChunkedScanner();
  max_trailer_bytes_ = max_trailer_bytes;
}

ParseStatus ChunkedScanner::Scan(std::string_view buf, size_t* consumed, BodyVisitor* visitor) {
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
  // Trailer bytes are reported in runs: [trailer_run, i) once the run ends.
  size_t trailer_run = std::string_view::npos;
  auto end_trailer_run = [&](size_t end) {
    if (trailer_run == std::string_view::npos) return;
    if (end > trailer_run) visitor->OnTrailerBytes(buf.substr(trailer_run, end - trailer_run));
    trailer_run = std::string_view::npos;
  };

  while (i < n) {
    // Chunk data is the bulk of the bytes: skip it without looking.
    if (state_ == State::kData) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(size_, n - i));
      if (visitor != nullptr && take > 0) visitor->OnBodyData(buf.substr(i, take));
      i += take;
      size_ -= take;
      if (size_ == 0) state_ = State::kDataCr;
      continue;
    }

    const char c = p[i++];
    if (visitor != nullptr) {
      // A trailer line: its name, value and line end, not the final CRLF.
      const bool trailer_byte =
          (state_ == State::kTrailerStart && c != '\r') || state_ == State::kTrailerName ||
          state_ == State::kTrailerValue || state_ == State::kTrailerLf;
      if (trailer_byte && trailer_run == std::string_view::npos) trailer_run = i - 1;
      if (!trailer_byte) end_trailer_run(i - 1);
    }
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
        end_trailer_run(i);
        state_ = State::kDone;
        *consumed = i;
        return ParseStatus::kDone;
      case State::kData:
      case State::kDone:
      case State::kError:
        return fail();  // unreachable: handled above
    }
  }
  if (visitor != nullptr) end_trailer_run(n);
  *consumed = n;
  return ParseStatus::kIncomplete;
}

}  // namespace ktlb::http1::internal

namespace ktlb::http1 {

void ParseTrailerSection(std::string_view section, std::vector<Header>* out) {
  // The scanner already checked the syntax: "name:value CRLF" lines with
  // token names; only the optional whitespace around values is trimmed.
  while (!section.empty()) {
    size_t eol = section.find('\n');
    std::string_view line = section.substr(0, eol);
    section.remove_prefix(eol == std::string_view::npos ? section.size() : eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && internal::IsOws(value.front())) value.remove_prefix(1);
    while (!value.empty() && internal::IsOws(value.back())) value.remove_suffix(1);
    out->push_back(Header{line.substr(0, colon), value});
  }
}

}  // namespace ktlb::http1
