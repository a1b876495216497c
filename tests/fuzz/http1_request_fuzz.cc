// Fuzzes RequestParser (heads and bodies of pipelined requests).
//
// Input: byte 0 picks the limits and the read-size sequence, the rest is the
// client's byte stream. The stream is parsed twice, once as a single read and
// once split into small reads, the way a server loop would (append, parse from
// the front, erase what was claimed). Both runs must see exactly the same
// messages, body bytes and error: if the split changed any boundary, a client
// could steer framing through TCP segmentation.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/http1.h"

namespace {

using ktlb::http1::BodyKind;
using ktlb::http1::Limits;
using ktlb::http1::ParseStatus;
using ktlb::http1::RequestError;
using ktlb::http1::RequestHead;
using ktlb::http1::RequestParser;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

bool Inside(std::string_view v, std::string_view buf) {
  return v.empty() || (v.data() >= buf.data() && v.data() + v.size() <= buf.data() + buf.size());
}

struct Message {
  std::string head;  // the fields that matter, serialised
  std::string body;
  bool operator==(const Message&) const = default;
};

struct Result {
  std::vector<Message> messages;
  RequestError error = RequestError::kNone;
  size_t leftover = 0;
  bool operator==(const Result&) const = default;
};

std::string Describe(const RequestHead& h) {
  std::string s;
  s.append(h.method).append(" ").append(h.target).append(" ").append(h.host);
  s += static_cast<char>('0' + h.version_minor);
  s += static_cast<char>('0' + static_cast<int>(h.body));
  s += std::to_string(h.content_length);
  s += h.keep_alive ? 'K' : 'k';
  s += h.expect_continue ? 'E' : 'e';
  s += h.upgrade ? 'U' : 'u';
  s += h.idempotent ? 'I' : 'i';
  s += h.is_head ? 'H' : 'h';
  for (const auto& f : h.headers) s.append("|").append(f.name).append(":").append(f.value);
  return s;
}

class Splitter {
 public:
  explicit Splitter(uint32_t seed) : state_(seed * 2654435761u + 1) {}
  size_t Next() {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 17;
    state_ ^= state_ << 5;
    return 1 + state_ % 16;
  }

 private:
  uint32_t state_;
};

// `skip_opaque`: body bytes the parser calls opaque are not shown to it but
// reported with SkipOpaqueBody, as when they are spliced; the framing seen
// must be the same.
template <typename NextSize>
Result Drive(std::string_view stream, Limits limits, NextSize next_size, bool skip_opaque = false) {
  RequestParser parser(limits);
  RequestHead head;
  std::string pending;
  size_t fed = 0;
  bool in_body = false;
  Result r;
  for (;;) {
    for (;;) {
      if (!in_body) {
        if (pending.empty()) break;
        const ParseStatus st = parser.ParseHead(pending, &head);
        if (st == ParseStatus::kError) {
          Check(parser.error() != RequestError::kNone);
          r.error = parser.error();
          return r;
        }
        if (st == ParseStatus::kIncomplete) break;
        Check(head.head_len > 0 && head.head_len <= pending.size());
        const std::string_view got(pending.data(), head.head_len);
        Check(Inside(head.method, got) && Inside(head.target, got) && Inside(head.host, got));
        for (const auto& f : head.headers) Check(Inside(f.name, got) && Inside(f.value, got));
        Check(head.headers.size() <= limits.max_headers);
        Check(head.head_len <= limits.max_header_bytes);
        Check(head.body != BodyKind::kUntilClose);
        Check(head.body != BodyKind::kContentLength || head.content_length > 0);
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
          r.error = parser.error();
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
        Check(parser.error() == RequestError::kBadChunk);
        // Body bytes claimed before the bad one were already forwarded; how
        // many depends on the reads, and the connection dies either way.
        r.messages.back().body = "<bad body>";
        r.error = parser.error();
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
  Limits limits;
  if (config & 1) {
    // Small limits so the fuzzer reaches 414/431 and the field cap cheaply.
    limits.max_request_line = 48;
    limits.max_header_bytes = 200;
    limits.max_headers = 6;
  }
  const Result whole = Drive(stream, limits, [&] { return stream.size(); });
  Splitter split(config);
  const Result pieces = Drive(stream, limits, [&] { return split.Next(); });
  Check(whole == pieces);
  Splitter split2(config);
  const Result skipped = Drive(stream, limits, [&] { return split2.Next(); }, true);
  Check(whole == skipped);
  return 0;
}
