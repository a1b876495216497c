// Fuzzes ClientHelloParser (passthrough routing on SNI and ALPN).
//
// Input: byte 0 seeds the read sizes, the rest is the client's byte stream. The
// stream is parsed in one call, then fed through one parser in reads of 1..16
// bytes into a buffer that moves as it grows, then one byte per call. The first
// answer other than need_more must be the same every time, down to the SNI and
// ALPN bytes, the consumed length and the reason: if TCP segmentation could
// change the answer, a client could steer routing with it. The byte-by-byte run
// finds the shortest prefix that decides; a fresh parser must agree on it and
// still need more one byte earlier, so the parser keeps no state that a fresh
// one would not rebuild from the same bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ktlb/client_hello.h"

namespace {

using ktlb::passthrough::ClientHello;
using ktlb::passthrough::ClientHelloParser;
using ktlb::passthrough::HelloStatus;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

struct Result {
  HelloStatus status = HelloStatus::kNeedMore;
  std::string sni;
  std::string alpn_list;
  uint16_t legacy_version = 0;
  bool offers_tls13 = false;
  size_t consumed = 0;
  std::string error;
  size_t decided_at = 0;  // length of the prefix that gave status (not compared)
  bool operator==(const Result& o) const {
    return status == o.status && sni == o.sni && alpn_list == o.alpn_list &&
           legacy_version == o.legacy_version && offers_tls13 == o.offers_tls13 &&
           consumed == o.consumed && error == o.error;
  }
};

bool IsHostNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

Result Record(ClientHelloParser& parser, std::string_view bytes) {
  ClientHello hello;
  Result r;
  r.status = parser.Parse(bytes, &hello, &r.consumed);
  r.decided_at = bytes.size();
  if (r.status == HelloStatus::kNeedMore) {
    Check(*parser.error() == '\0' && r.consumed == 0);
    return r;
  }
  r.error = parser.error();
  if (r.status != HelloStatus::kDone) {
    Check(!r.error.empty() && r.consumed == 0);
    return r;
  }
  Check(r.error.empty());
  // The smallest hello: one record, 4-byte header, 41-byte body.
  Check(r.consumed >= 5 + 4 + 41 && r.consumed <= bytes.size());
  Check(r.consumed <= ClientHelloParser::kMaxHelloBytes);
  Check(hello.sni.size() <= 255);
  for (const char c : hello.sni) Check(IsHostNameChar(c));
  size_t alpn_bytes = 0;
  hello.ForEachAlpn([&](std::string_view name) {
    Check(!name.empty());
    alpn_bytes += 1 + name.size();
  });
  Check(alpn_bytes == hello.alpn_list.size());
  Check(hello.alpn_list.empty() || hello.alpn_list.size() >= 2);
  r.sni = std::string(hello.sni);
  r.alpn_list = std::string(hello.alpn_list);
  r.legacy_version = hello.legacy_version;
  r.offers_tls13 = hello.offers_tls13;
  return r;
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);

  ClientHelloParser whole_parser;
  const Result whole = Record(whole_parser, stream);

  // Reads of 1..16 bytes appended to a buffer that is moved as it grows.
  Splitter split(data[0]);
  ClientHelloParser split_parser;
  std::string buffer;
  Result pieces = Record(split_parser, buffer);
  while (pieces.status == HelloStatus::kNeedMore && buffer.size() < stream.size()) {
    buffer.append(stream.substr(buffer.size(), split.Next()));
    pieces = Record(split_parser, buffer);
  }
  Check(whole == pieces);

  // One byte per call: the shortest deciding prefix.
  ClientHelloParser byte_parser;
  Result bytes = Record(byte_parser, stream.substr(0, 0));
  for (size_t n = 1; bytes.status == HelloStatus::kNeedMore && n <= stream.size(); ++n) {
    bytes = Record(byte_parser, stream.substr(0, n));
  }
  Check(whole == bytes);
  if (bytes.status != HelloStatus::kNeedMore) {
    ClientHelloParser fresh;
    Check(Record(fresh, stream.substr(0, bytes.decided_at)) == whole);
    if (bytes.decided_at > 0) {
      ClientHelloParser before;
      Check(Record(before, stream.substr(0, bytes.decided_at - 1)).status == HelloStatus::kNeedMore);
    }
    // A finished parser keeps its answer.
    Check(Record(whole_parser, stream) == whole);
  }
  return 0;
}
