// Fuzzes ParseProxyHeader (accept_proxy listeners, both modes).
//
// Input: the peer's byte stream. It is parsed whole, then one more byte at a
// time from nothing. The first answer other than need_more must equal the
// answer for the whole stream, down to the addresses, the consumed length and
// the reason: if segmentation could change it, a peer could pick its own
// client address by how it splits its writes. Beyond that: need_more never
// outlasts the longest header the format allows; a header is never longer
// than what was given nor than the format allows; the bytes it consumed,
// alone, give the same answer (nothing after the header is ever looked at).
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "ktlb/proxy_header_parser.h"

namespace {

using ktlb::passthrough::ParseProxyHeader;
using ktlb::passthrough::ProxyHeaderResult;
using ktlb::passthrough::ProxyHeaderStatus;
using ktlb::passthrough::kProxyV1MaxBytes;
using ktlb::passthrough::kProxyV2HeaderBytes;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

bool Same(const ProxyHeaderResult& a, const ProxyHeaderResult& b) {
  if (a.status != b.status) return false;
  if (a.status == ProxyHeaderStatus::kFailed) {
    return a.failure == b.failure && strcmp(a.error, b.error) == 0;
  }
  if (a.status == ProxyHeaderStatus::kNeedMore) return true;
  return a.consumed == b.consumed && a.version == b.version &&
         a.has_addresses == b.has_addresses &&
         memcmp(&a.source, &b.source, sizeof a.source) == 0 &&
         memcmp(&a.destination, &b.destination, sizeof a.destination) == 0;
}

void CheckResult(const ProxyHeaderResult& r, std::string_view bytes) {
  switch (r.status) {
    case ProxyHeaderStatus::kNeedMore:
      Check(bytes.size() < kProxyV2HeaderBytes + 65535);
      if (!bytes.empty() && bytes[0] == 'P') Check(bytes.size() < kProxyV1MaxBytes);
      break;
    case ProxyHeaderStatus::kFailed:
      Check(r.error != nullptr && r.error[0] != '\0');
      break;
    case ProxyHeaderStatus::kDone:
      Check(r.consumed > 0 && r.consumed <= bytes.size());
      Check(r.version == 1 || r.version == 2);
      if (r.version == 1) Check(r.consumed <= kProxyV1MaxBytes);
      if (r.version == 2) Check(r.consumed <= kProxyV2HeaderBytes + 65535);
      if (r.has_addresses) {
        Check(r.source.ss_family == AF_INET || r.source.ss_family == AF_INET6);
        Check(r.destination.ss_family == r.source.ss_family);
      }
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view stream(reinterpret_cast<const char*>(data), size);
  const ProxyHeaderResult whole = ParseProxyHeader(stream);
  CheckResult(whole, stream);

  size_t n = 0;
  ProxyHeaderResult r = ParseProxyHeader(stream.substr(0, 0));
  Check(r.status == ProxyHeaderStatus::kNeedMore);
  while (r.status == ProxyHeaderStatus::kNeedMore && n < stream.size()) {
    ++n;
    r = ParseProxyHeader(stream.substr(0, n));
    CheckResult(r, stream.substr(0, n));
  }
  Check(Same(r, whole));
  if (whole.status == ProxyHeaderStatus::kDone) {
    // The header alone decides, and decides the same.
    Check(whole.consumed == n);
    Check(Same(ParseProxyHeader(stream.substr(0, whole.consumed)), whole));
  }
  return 0;
}
