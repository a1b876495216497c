// Fuzzes ResponseParser over a keep-alive upstream's byte stream.
//
// Input: byte 0 picks "request was HEAD", the limits and the read sizes; the
// rest is what the upstream sent. Parsed as one read and as many small reads;
// both must agree on every head, body boundary and failure.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/http1.h"

namespace {

using ktlb::http1::BodyKind;
using ktlb::http1::Limits;
using ktlb::http1::ParseStatus;
using ktlb::http1::ResponseHead;
using ktlb::http1::ResponseParser;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

bool Inside(std::string_view v, std::string_view buf) {
  return v.empty() || (v.data() >= buf.data() && v.data() + v.size() <= buf.data() + buf.size());
}

struct Message {
  std::string head;
  std::string body;
  bool operator==(const Message&) const = default;
};

struct Result {
  std::vector<Message> messages;
  bool failed = false;
  size_t leftover = 0;
  bool operator==(const Result&) const = default;
};

std::string Describe(const ResponseHead& h) {
  std::string s = std::to_string(h.status);
  s.append(" ").append(h.reason).append(" ");
  s += static_cast<char>('0' + h.version_minor);
  s += static_cast<char>('0' + static_cast<int>(h.body));
  s += std::to_string(h.content_length);
  s += h.keep_alive ? 'K' : 'k';
  for (const auto& f : h.headers) s.append("|").append(f.name).append(":").append(f.value);
  return s;
}

template <typename NextSize>
// `skip_opaque`: body bytes the parser calls opaque are reported with
// SkipOpaqueBody instead of shown, as when they are spliced.
Result Drive(std::string_view stream, bool request_was_head, Limits limits, NextSize next_size,
             bool skip_opaque = false) {
  ResponseParser parser(limits);
  ResponseHead head;
  std::string pending;
  size_t fed = 0;
  bool in_body = false;
  Result r;
  for (;;) {
    for (;;) {
      if (!in_body) {
        if (pending.empty()) break;
        const ParseStatus st = parser.ParseHead(pending, request_was_head, &head);
        if (st == ParseStatus::kError) {
          Check(parser.error_reason()[0] != '\0');
          r.failed = true;
          return r;
        }
        if (st == ParseStatus::kIncomplete) break;
        Check(head.head_len > 0 && head.head_len <= pending.size());
        const std::string_view got(pending.data(), head.head_len);
        Check(Inside(head.reason, got));
        for (const auto& f : head.headers) Check(Inside(f.name, got) && Inside(f.value, got));
        Check(head.status >= 100 && head.status <= 999);
        // Framing rules that keep the client and the pool safe.
        if (request_was_head || head.status < 200 || head.status == 204 || head.status == 304) {
          Check(head.body == BodyKind::kNone);
        }
        if (head.body == BodyKind::kUntilClose) Check(!head.keep_alive);
        bool has_te = false;
        bool has_cl = false;
        for (const auto& f : head.headers) {
          has_te |= ktlb::http1::HeaderNameIs(f.name, "transfer-encoding");
          has_cl |= ktlb::http1::HeaderNameIs(f.name, "content-length");
        }
        Check(!(has_te && has_cl));  // never both towards the client
        r.messages.push_back({Describe(head), {}});
        pending.erase(0, head.head_len);
        in_body = head.body != BodyKind::kNone;
        continue;
      }
      if (skip_opaque && parser.OpaqueBodyBytes() > 0 && !pending.empty()) {
        const uint64_t opaque = parser.OpaqueBodyBytes();
        const size_t k = opaque < pending.size() ? static_cast<size_t>(opaque) : pending.size();
        const ParseStatus st = parser.SkipOpaqueBody(k);
        if (st == ParseStatus::kError) {
          r.messages.back().body = "<bad body>";
          r.failed = true;
          return r;
        }
        r.messages.back().body.append(pending, 0, k);
        pending.erase(0, k);
        if (st == ParseStatus::kDone) in_body = false;
        continue;
      }
      size_t consumed = 0;
      const ParseStatus st = parser.ParseBody(pending, &consumed);
      if (st == ParseStatus::kError) {
        r.messages.back().body = "<bad body>";  // partial forwarding depends on reads
        r.failed = true;
        return r;
      }
      Check(consumed <= pending.size());
      Check(st == ParseStatus::kDone || consumed == pending.size());
      r.messages.back().body.append(pending, 0, consumed);
      pending.erase(0, consumed);
      if (st == ParseStatus::kIncomplete) break;
      in_body = false;
    }
    if (fed == stream.size()) break;
    size_t n = next_size();
    if (n > stream.size() - fed) n = stream.size() - fed;
    pending.append(stream.substr(fed, n));
    fed += n;
  }
  r.leftover = pending.size();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t config = data[0];
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool request_was_head = config & 1;
  Limits limits;
  if (config & 2) {
    limits.max_request_line = 40;
    limits.max_header_bytes = 160;
    limits.max_headers = 5;
  }
  const Result whole = Drive(stream, request_was_head, limits, [&] { return stream.size(); });
  uint32_t s = config * 2654435761u + 1;
  const Result pieces = Drive(stream, request_was_head, limits, [&] {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return size_t{1} + s % 16;
  });
  Check(whole == pieces);
  uint32_t s2 = config * 2654435761u + 1;
  const Result skipped = Drive(
      stream, request_was_head, limits,
      [&] {
        s2 ^= s2 << 13;
        s2 ^= s2 >> 17;
        s2 ^= s2 << 5;
        return size_t{1} + s2 % 16;
      },
      true);
  Check(whole == skipped);
  return 0;
}
