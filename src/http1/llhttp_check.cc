// llhttp as the second opinion on every head and chunked body.
#include <llhttp.h>

#include <algorithm>
#include <string_view>

#include "internal.h"

namespace ktlb::http1::internal {
namespace {

int PauseHere(llhttp_t*) { return HPE_PAUSED; }

// Immutable, shared by every parser on every thread.
constexpr llhttp_settings_t kPausingSettings = [] {
  llhttp_settings_t s{};
  s.on_headers_complete = &PauseHere;
  s.on_message_complete = &PauseHere;
  return s;
}();

}  // namespace

const llhttp_settings_t* PausingSettings() { return &kPausingSettings; }

llhttp_errno_t LlhttpCheckHead(llhttp_t* ll, std::string_view buf, size_t head_end,
                               const SkipList& skips) {
  const char* base = buf.data();
  size_t from = 0;
  // Every skipped range is a whole line, so llhttp sees a well-formed head
  // with those lines removed; segment boundaries fall between lines.
  for (size_t k = 0; k <= skips.size; ++k) {
    const size_t to = k < skips.size ? skips.ranges[k].first : head_end;
    const llhttp_errno_t e = llhttp_execute(ll, base + from, to - from);
    if (k < skips.size) {
      if (e != HPE_OK) return e == HPE_PAUSED ? HPE_INTERNAL : e;
      from = skips.ranges[k].second;
      continue;
    }
    if (e == HPE_PAUSED) {
      return llhttp_get_error_pos(ll) == base + head_end ? HPE_OK : HPE_INTERNAL;
    }
    return e == HPE_OK ? HPE_INTERNAL : e;  // HPE_OK: llhttp wants more head
  }
  return HPE_INTERNAL;
}

bool LlhttpCheckChunked(llhttp_t* ll, std::string_view bytes, bool done) {
  const llhttp_errno_t e = llhttp_execute(ll, bytes.data(), bytes.size());
  if (!done) return e == HPE_OK;
  return e == HPE_PAUSED && llhttp_get_error_pos(ll) == bytes.data() + bytes.size();
}

bool LlhttpSkipChunkData(llhttp_t* ll, uint64_t n) {
  static const char kZeros[16 * 1024] = {};
  while (n > 0) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, sizeof(kZeros)));
    // Pausing here would mean llhttp saw the end of the message inside what
    // the scanner counts as chunk data: a disagreement.
    if (llhttp_execute(ll, kZeros, take) != HPE_OK) return false;
    n -= take;
  }
  return true;
}

}  // namespace ktlb::http1::internal
