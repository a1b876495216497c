// TLS ClientHello parser for passthrough (non-decrypting) routing on SNI and ALPN.
//
// Pure: no I/O, and nothing is allocated unless the ClientHello spans several
// records. Parse() is called with everything the client has sent so far and
// resumes where the previous call stopped, so feeding a hello one byte per call
// costs the same as feeding it whole, and an error is reported as soon as the
// bytes that prove it have arrived. The result depends only on the bytes, never
// on how they were split across calls. Strict RFC 8446 / RFC 5246 framing: no
// length is ever read past, and anything a conforming client would not send is
// kMalformed rather than guessed at, because the backend that terminates TLS
// must not see a different hello from the one ktlb routed on.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace ktlb::passthrough {

enum class HelloStatus { kNeedMore, kDone, kNotTls, kMalformed, kTooLarge };
// "need_more", "done", "not_tls", "malformed", "too_large" (metric labels).
const char* HelloStatusLabel(HelloStatus s);

struct ClientHello {
  // host_name of the server_name extension as sent (the caller lowercases it),
  // "" if absent. Only [A-Za-z0-9.-_], 1..255 bytes: safe to log and match.
  std::string_view sni;
  // Raw ALPN protocol_name_list body (len8 + name, repeated; every name 1..255
  // bytes), "" if absent.
  std::string_view alpn_list;
  uint16_t legacy_version = 0;  // ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3)
  bool offers_tls13 = false;    // supported_versions lists 0x0304

  // Calls f(std::string_view) for each protocol in alpn_list, in order. Stops at
  // a length running past the end, so a hand-made alpn_list is safe too.
  template <class F>
  void ForEachAlpn(F&& f) const {
    std::string_view rest = alpn_list;
    while (!rest.empty()) {
      const size_t n = static_cast<unsigned char>(rest.front());
      if (n + 1 > rest.size()) return;
      f(rest.substr(1, n));
      rest.remove_prefix(n + 1);
    }
  }
  bool OffersAlpn(std::string_view proto) const;  // exact, case-sensitive (RFC 7301)
};

// One per connection. Once it has returned anything but kNeedMore, it keeps
// returning that result for the same stream.
class ClientHelloParser {
 public:
  static constexpr size_t kMaxHelloBytes = 64 * 1024;  // total bytes of records holding the hello

  // `bytes` = everything received so far from the client, from its first byte
  // (the caller appends and calls again with the longer buffer; only the length
  // is remembered between calls, never the address). A `bytes` shorter than in
  // the previous call starts a new stream. On kDone, *out's views point into
  // `bytes` or into this parser's own reassembly buffer (when the handshake
  // message spans several records), valid until the next Parse or destruction;
  // on other results *out is left as it is. *consumed_hint (optional) = bytes of
  // `bytes` that form the records holding the ClientHello on kDone, else 0;
  // what follows them (e.g. a TLS 1.3 ChangeCipherSpec or early data) is never
  // looked at.
  HelloStatus Parse(std::string_view bytes, ClientHello* out, size_t* consumed_hint = nullptr);

  // Human-readable reason for kNotTls / kMalformed / kTooLarge (a static
  // string), "" otherwise.
  const char* error() const { return error_; }

 private:
  // The ClientHello is read in units, in message order. A unit's size is known
  // from the bytes before it and is checked against the message length at once;
  // the unit itself is read when all of its bytes are there.
  enum class Stage : uint8_t {
    kHandshakeHeader,
    kVersionAndRandom,
    kSessionIdLength,
    kCipherSuitesLength,
    kCompressionMethodsLength,
    kExtensionsLength,
    kExtensionHeader,
    kExtensionBody,
    kComplete,
  };
  // Real clients send about twenty extension types; past this many, a bitmap of
  // all 65536 types is allocated so duplicate checks stay linear.
  static constexpr size_t kInlineExtensionTypes = 32;

  HelloStatus Advance(std::string_view bytes);
  HelloStatus ReadRecordHeader(std::string_view bytes);
  HelloStatus ReadMessage(std::string_view message);
  HelloStatus ReadExtension(std::string_view body);
  bool IsDuplicateExtension(uint16_t type);
  HelloStatus Fail(HelloStatus status, const char* why);
  bool UnitFits(size_t n) const { return n <= message_length_ - pos_; }
  std::string_view MessageView(std::string_view bytes) const;

  HelloStatus status_ = HelloStatus::kNeedMore;
  const char* error_ = "";
  size_t previous_size_ = 0;

  // Record layer, as offsets into `bytes`.
  size_t record_start_ = 0;     // header of the record being read
  size_t record_length_ = 0;    // its payload length; 0 until its header is complete
  size_t records_payload_ = 0;  // sum of the payload lengths of all record headers read
  size_t records_end_ = 0;      // end of the records holding the hello, on kDone
  bool reassembling_ = false;   // the message spans records: its bytes are in reassembly_
  size_t copied_to_ = 0;        // bytes before this offset are in reassembly_
  std::string reassembly_;

  // Handshake message, as offsets into the message (handshake header included).
  Stage stage_ = Stage::kHandshakeHeader;
  size_t message_length_ = 0;  // 4 + the 24-bit length, once known
  size_t pos_ = 0;             // start of the next unit
  uint16_t extension_type_ = 0;
  size_t extension_length_ = 0;
  size_t sni_offset_ = 0;
  size_t sni_length_ = 0;
  size_t alpn_offset_ = 0;
  size_t alpn_length_ = 0;
  uint16_t legacy_version_ = 0;
  bool offers_tls13_ = false;

  std::array<uint16_t, kInlineExtensionTypes> inline_types_{};
  size_t inline_type_count_ = 0;
  std::unique_ptr<uint64_t[]> type_bitmap_;  // 65536 bits, only past kInlineExtensionTypes
};

}  // namespace ktlb::passthrough
