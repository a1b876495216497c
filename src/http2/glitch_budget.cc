// The per-connection abuse budget and the labels its metrics use.
#include <algorithm>
#include <cstdint>

#include "ktlb/http2.h"

namespace ktlb::http2 {

const char* GlitchLabel(Glitch g) {
  switch (g) {
    case Glitch::kClientReset: return "client_reset";
    case Glitch::kServerReset: return "server_reset";
    case Glitch::kEmptyData: return "empty_data";
    case Glitch::kSettings: return "settings";
    case Glitch::kPing: return "ping";
    case Glitch::kPriority: return "priority";
    case Glitch::kWindowUpdate: return "window_update";
    case Glitch::kContinuation: return "continuation";
    case Glitch::kCount: break;
  }
  return "unknown";
}

const char* ErrorCodeLabel(uint32_t code) {
  static constexpr const char* kLabels[kErrorCodes] = {
      "no_error",        "protocol_error",   "internal_error",     "flow_control_error",
      "settings_timeout", "stream_closed",   "frame_size_error",   "refused_stream",
      "cancel",          "compression_error", "connect_error",     "enhance_your_calm",
      "inadequate_security", "http_1_1_required"};
  return code < kErrorCodes ? kLabels[code] : "unknown";
}

void GlitchBudget::Reset(uint32_t budget, uint64_t now_ms) {
  max_ = static_cast<uint64_t>(budget) * kScale;
  tokens_ = max_;
  at_ms_ = now_ms;
}

bool GlitchBudget::Charge(uint64_t now_ms) {
  if (now_ms > at_ms_) {
    // budget/60 per second = budget * kScale / 60000 per ms, in kScale units:
    // with kScale = 60000 exactly max_ / 60000 = budget, no remainder lost.
    // A minute refills everything, so longer gaps count as one (no overflow).
    const uint64_t elapsed = std::min<uint64_t>(now_ms - at_ms_, 60000);
    tokens_ = std::min(max_, tokens_ + elapsed * (max_ / 60000));
    at_ms_ = now_ms;
  }
  if (tokens_ < kScale) return false;
  tokens_ -= kScale;
  return true;
}

}  // namespace ktlb::http2
