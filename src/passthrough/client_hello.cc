// ClientHello parsing for passthrough routing: see include/ktlb/client_hello.h.
//
// Two layers, both resumable. The record layer walks TLSPlaintext headers in
// `bytes` and hands the handshake bytes seen so far to the message layer, which
// reads the ClientHello unit by unit. Checks run in stream order (a record
// header before the payload after it, a length before what it covers), so the
// first problem in the stream is the one reported, however the stream was split
// across calls.
#include "ktlb/client_hello.h"

#include <algorithm>

namespace ktlb::passthrough {
namespace {

constexpr size_t kRecordHeaderBytes = 5;
constexpr size_t kHandshakeHeaderBytes = 4;
constexpr size_t kMaxRecordPayload = 16384;  // 2^14, RFC 8446 5.1 / RFC 5246 6.2.1
constexpr uint8_t kContentTypeHandshake = 22;
constexpr uint8_t kHandshakeTypeClientHello = 1;
constexpr size_t kVersionAndRandomBytes = 2 + 32;
constexpr size_t kMaxSessionIdBytes = 32;
constexpr size_t kExtensionHeaderBytes = 4;
constexpr size_t kMaxHostNameBytes = 255;

constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint16_t kExtPreSharedKey = 41;
constexpr uint16_t kExtSupportedVersions = 43;
constexpr uint8_t kNameTypeHostName = 0;
constexpr uint16_t kTls13 = 0x0304;

size_t U8(std::string_view s, size_t at) { return static_cast<unsigned char>(s[at]); }
size_t U16(std::string_view s, size_t at) { return U8(s, at) << 8 | U8(s, at + 1); }
size_t U24(std::string_view s, size_t at) { return U8(s, at) << 16 | U16(s, at + 1); }

// RFC 6066 host names are DNS names; '_' is not in a hostname but appears in
// real internal names, and no other byte can be routed on or logged safely.
bool IsHostNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

// server_name (RFC 6066 3): a ServerNameList that fills the extension, of at
// least one entry. At most one host_name: were there two, the backend could
// pick a different one from the one ktlb routed on. On success *host_offset and
// *host_length locate the host name in `ext` (left alone if only other name
// types were sent).
const char* CheckServerName(std::string_view ext, size_t* host_offset, size_t* host_length) {
  if (ext.size() < 2) return "server_name extension shorter than its list length";
  if (U16(ext, 0) != ext.size() - 2) return "server_name list length does not fill the extension";
  if (ext.size() == 2) return "empty server_name list";
  bool have_host = false;
  size_t p = 2;
  while (p < ext.size()) {
    if (ext.size() - p < 3) return "truncated server_name entry";
    const size_t type = U8(ext, p);
    const size_t n = U16(ext, p + 1);
    p += 3;
    if (n > ext.size() - p) return "server_name entry longer than its list";
    if (type == kNameTypeHostName) {
      if (have_host) return "more than one host_name in server_name";
      if (n == 0) return "empty host_name";
      if (n > kMaxHostNameBytes) return "host_name longer than 255 bytes";
      const std::string_view name = ext.substr(p, n);
      if (!std::all_of(name.begin(), name.end(), IsHostNameChar)) {
        return "host_name has a byte other than [A-Za-z0-9.-_]";
      }
      have_host = true;
      *host_offset = p;
      *host_length = n;
    }
    p += n;
  }
  return nullptr;
}

// application_layer_protocol_negotiation (RFC 7301 3.1): a protocol_name_list
// of at least 2 bytes that fills the extension, of non-empty names.
const char* CheckAlpn(std::string_view ext) {
  if (ext.size() < 2) return "ALPN extension shorter than its list length";
  if (U16(ext, 0) != ext.size() - 2) return "ALPN list length does not fill the extension";
  if (ext.size() < 4) return "ALPN list shorter than 2 bytes";
  size_t p = 2;
  while (p < ext.size()) {
    const size_t n = U8(ext, p);
    ++p;
    if (n == 0) return "empty ALPN protocol name";
    if (n > ext.size() - p) return "ALPN protocol name longer than its list";
    p += n;
  }
  return nullptr;
}

// supported_versions in a ClientHello (RFC 8446 4.2.1): versions<2..254>.
const char* CheckSupportedVersions(std::string_view ext, bool* offers_tls13) {
  if (ext.empty()) return "empty supported_versions extension";
  const size_t n = U8(ext, 0);
  if (n != ext.size() - 1) return "supported_versions length does not fill the extension";
  if (n < 2 || n % 2 != 0) return "supported_versions list not a non-empty list of uint16";
  for (size_t p = 1; p < ext.size(); p += 2) {
    if (U16(ext, p) == kTls13) *offers_tls13 = true;
  }
  return nullptr;
}

}  // namespace

const char* HelloStatusLabel(HelloStatus s) {
  switch (s) {
    case HelloStatus::kNeedMore: return "need_more";
    case HelloStatus::kDone: return "done";
    case HelloStatus::kNotTls: return "not_tls";
    case HelloStatus::kMalformed: return "malformed";
    case HelloStatus::kTooLarge: return "too_large";
  }
  return "unknown";
}

bool ClientHello::OffersAlpn(std::string_view proto) const {
  bool found = false;
  ForEachAlpn([&](std::string_view name) { found = found || name == proto; });
  return found;
}

HelloStatus ClientHelloParser::Parse(std::string_view bytes, ClientHello* out,
                                     size_t* consumed_hint) {
  if (bytes.size() < previous_size_) *this = ClientHelloParser();
  previous_size_ = bytes.size();
  if (status_ == HelloStatus::kNeedMore) status_ = Advance(bytes);
  if (consumed_hint != nullptr) *consumed_hint = status_ == HelloStatus::kDone ? records_end_ : 0;
  if (status_ == HelloStatus::kDone && out != nullptr) {
    const std::string_view message = MessageView(bytes);
    out->sni = message.substr(sni_offset_, sni_length_);
    out->alpn_list = message.substr(alpn_offset_, alpn_length_);
    out->legacy_version = legacy_version_;
    out->offers_tls13 = offers_tls13_;
  }
  return status_;
}

std::string_view ClientHelloParser::MessageView(std::string_view bytes) const {
  if (reassembling_) return reassembly_;
  return bytes.substr(kRecordHeaderBytes, message_length_);
}

HelloStatus ClientHelloParser::Fail(HelloStatus status, const char* why) {
  error_ = why;
  return status;
}

HelloStatus ClientHelloParser::Advance(std::string_view bytes) {
  for (;;) {
    if (record_length_ == 0) {
      const HelloStatus st = ReadRecordHeader(bytes);
      if (record_length_ == 0) return st;
    }
    const size_t payload_start = record_start_ + kRecordHeaderBytes;
    const size_t record_end = payload_start + record_length_;
    const size_t available_end = std::min(bytes.size(), record_end);
    std::string_view message;
    if (reassembling_) {
      // Grown here only, before the view below is taken: a message_length_
      // learnt since the last record makes this the one reallocation.
      if (message_length_ != 0) reassembly_.reserve(message_length_);
      const size_t copy_from = std::max(copied_to_, payload_start);  // skips the header
      if (available_end > copy_from) {
        reassembly_.append(bytes.substr(copy_from, available_end - copy_from));
        copied_to_ = available_end;
      }
      message = reassembly_;
    } else {
      message = bytes.substr(payload_start, available_end - payload_start);
    }
    const HelloStatus st = ReadMessage(message);
    if (st == HelloStatus::kDone) records_end_ = record_end;
    if (st != HelloStatus::kNeedMore || bytes.size() < record_end) return st;
    // The record is over and the message is not: it continues in the next
    // record, so from now on it is gathered in reassembly_.
    if (!reassembling_) {
      reassembling_ = true;
      // One allocation: message_length_ is at most kMaxHelloBytes. Unknown
      // only when the first record is shorter than the handshake header.
      if (message_length_ != 0) reassembly_.reserve(message_length_);
      reassembly_.assign(message);
      copied_to_ = record_end;
    }
    record_start_ = record_end;
    record_length_ = 0;
  }
}

// Checks each header byte as soon as it is there, so that e.g. an HTTP request
// is refused on its first byte. Sets record_length_ once the header is complete
// and acceptable.
HelloStatus ClientHelloParser::ReadRecordHeader(std::string_view bytes) {
  const std::string_view header =
      bytes.substr(record_start_, std::min(bytes.size() - record_start_, kRecordHeaderBytes));
  const bool first = record_start_ == 0;
  if (!header.empty() && U8(header, 0) != kContentTypeHandshake) {
    // Another record type (alert, change_cipher_spec, ...) cannot come before
    // the ClientHello is complete; on the first byte it is another protocol
    // (an SSLv2 hello starts with 0x80, HTTP with a letter).
    return first ? Fail(HelloStatus::kNotTls, "first byte is not a TLS handshake record")
                 : Fail(HelloStatus::kMalformed,
                        "record other than handshake before the ClientHello is complete");
  }
  if (header.size() >= 2 && U8(header, 1) != 3) {
    return Fail(HelloStatus::kMalformed, "record version major is not 3");
  }
  // RFC 8446 5.1: legacy_record_version is 0x0301 or 0x0303 in practice; some
  // clients send 0x0300 in their very first record for old servers' sake.
  if (header.size() >= 3 && (U8(header, 2) > 3 || (U8(header, 2) == 0 && !first))) {
    return Fail(HelloStatus::kMalformed, "record version not in 0x0301..0x0303");
  }
  if (header.size() < kRecordHeaderBytes) return HelloStatus::kNeedMore;
  const size_t length = U16(header, 3);
  // RFC 8446 5.1: zero-length handshake fragments are forbidden.
  if (length == 0) return Fail(HelloStatus::kMalformed, "empty handshake record");
  if (length > kMaxRecordPayload) {
    return Fail(HelloStatus::kMalformed, "record longer than 2^14 bytes");
  }
  if (record_start_ + kRecordHeaderBytes + length > kMaxHelloBytes) {
    return Fail(HelloStatus::kTooLarge, "ClientHello records exceed 64 KiB");
  }
  records_payload_ += length;
  // The hello must end on a record boundary: a client sends nothing after it
  // before the server answers, and RFC 8446 5.1 forbids a record straddling the
  // key change that can follow it.
  if (message_length_ != 0 && records_payload_ > message_length_) {
    return Fail(HelloStatus::kMalformed, "handshake record carries data after the ClientHello");
  }
  record_length_ = length;
  return HelloStatus::kNeedMore;
}

// `message` = the handshake bytes received so far, from the handshake header on.
HelloStatus ClientHelloParser::ReadMessage(std::string_view message) {
  const auto have = [&](size_t n) { return message.size() >= pos_ + n; };
  for (;;) {
    switch (stage_) {
      case Stage::kHandshakeHeader: {
        if (!message.empty() && U8(message, 0) != kHandshakeTypeClientHello) {
          return Fail(HelloStatus::kMalformed, "first handshake message is not a ClientHello");
        }
        if (message.size() < kHandshakeHeaderBytes) return HelloStatus::kNeedMore;
        const size_t length = kHandshakeHeaderBytes + U24(message, 1);
        // Judged on the declared length: at least one record header around it.
        if (kRecordHeaderBytes + length > kMaxHelloBytes) {
          return Fail(HelloStatus::kTooLarge, "ClientHello longer than 64 KiB");
        }
        message_length_ = length;
        if (records_payload_ > message_length_) {
          return Fail(HelloStatus::kMalformed,
                      "handshake record carries data after the ClientHello");
        }
        pos_ = kHandshakeHeaderBytes;
        stage_ = Stage::kVersionAndRandom;
        break;
      }
      case Stage::kVersionAndRandom: {
        if (!UnitFits(kVersionAndRandomBytes)) {
          return Fail(HelloStatus::kMalformed, "ClientHello shorter than version and random");
        }
        if (!have(kVersionAndRandomBytes)) return HelloStatus::kNeedMore;
        legacy_version_ = static_cast<uint16_t>(U16(message, pos_));
        if (legacy_version_ >> 8 != 3) {
          return Fail(HelloStatus::kMalformed, "ClientHello version major is not 3");
        }
        pos_ += kVersionAndRandomBytes;
        stage_ = Stage::kSessionIdLength;
        break;
      }
      case Stage::kSessionIdLength: {
        if (!UnitFits(1)) return Fail(HelloStatus::kMalformed, "ClientHello ends before session_id");
        if (!have(1)) return HelloStatus::kNeedMore;
        const size_t n = U8(message, pos_);
        if (n > kMaxSessionIdBytes) {
          return Fail(HelloStatus::kMalformed, "session_id longer than 32 bytes");
        }
        ++pos_;
        if (!UnitFits(n)) return Fail(HelloStatus::kMalformed, "session_id past the ClientHello");
        pos_ += n;
        stage_ = Stage::kCipherSuitesLength;
        break;
      }
      case Stage::kCipherSuitesLength: {
        if (!UnitFits(2)) {
          return Fail(HelloStatus::kMalformed, "ClientHello ends before cipher_suites");
        }
        if (!have(2)) return HelloStatus::kNeedMore;
        const size_t n = U16(message, pos_);
        if (n < 2 || n % 2 != 0) {
          return Fail(HelloStatus::kMalformed, "cipher_suites not a non-empty list of uint16");
        }
        pos_ += 2;
        if (!UnitFits(n)) {
          return Fail(HelloStatus::kMalformed, "cipher_suites past the ClientHello");
        }
        pos_ += n;
        stage_ = Stage::kCompressionMethodsLength;
        break;
      }
      case Stage::kCompressionMethodsLength: {
        if (!UnitFits(1)) {
          return Fail(HelloStatus::kMalformed, "ClientHello ends before compression_methods");
        }
        if (!have(1)) return HelloStatus::kNeedMore;
        const size_t n = U8(message, pos_);
        if (n == 0) return Fail(HelloStatus::kMalformed, "empty compression_methods");
        ++pos_;
        if (!UnitFits(n)) {
          return Fail(HelloStatus::kMalformed, "compression_methods past the ClientHello");
        }
        pos_ += n;
        stage_ = Stage::kExtensionsLength;
        break;
      }
      case Stage::kExtensionsLength: {
        // Extensions are optional (a bare TLS 1.0-style hello): the message may
        // end right here.
        if (pos_ == message_length_) {
          stage_ = Stage::kComplete;
          break;
        }
        if (!UnitFits(2)) {
          return Fail(HelloStatus::kMalformed, "one byte after compression_methods");
        }
        if (!have(2)) return HelloStatus::kNeedMore;
        if (U16(message, pos_) != message_length_ - pos_ - 2) {
          return Fail(HelloStatus::kMalformed, "extensions length does not fill the ClientHello");
        }
        pos_ += 2;
        stage_ = Stage::kExtensionHeader;
        break;
      }
      case Stage::kExtensionHeader: {
        // The extensions block ends exactly where the message does.
        if (pos_ == message_length_) {
          stage_ = Stage::kComplete;
          break;
        }
        if (!UnitFits(kExtensionHeaderBytes)) {
          return Fail(HelloStatus::kMalformed, "truncated extension header");
        }
        if (!have(kExtensionHeaderBytes)) return HelloStatus::kNeedMore;
        const uint16_t type = static_cast<uint16_t>(U16(message, pos_));
        const size_t length = U16(message, pos_ + 2);
        pos_ += kExtensionHeaderBytes;
        if (!UnitFits(length)) {
          return Fail(HelloStatus::kMalformed, "extension longer than the extensions block");
        }
        // RFC 8446 4.2: at most one extension of each type.
        if (IsDuplicateExtension(type)) {
          return Fail(HelloStatus::kMalformed, "duplicate extension type");
        }
        // RFC 8446 4.2.11: servers MUST reject a pre_shared_key that is not last.
        if (type == kExtPreSharedKey && pos_ + length != message_length_) {
          return Fail(HelloStatus::kMalformed, "pre_shared_key is not the last extension");
        }
        extension_type_ = type;
        extension_length_ = length;
        stage_ = Stage::kExtensionBody;
        break;
      }
      case Stage::kExtensionBody: {
        if (!have(extension_length_)) return HelloStatus::kNeedMore;
        const HelloStatus st = ReadExtension(message.substr(pos_, extension_length_));
        if (st != HelloStatus::kNeedMore) return st;
        pos_ += extension_length_;
        stage_ = Stage::kExtensionHeader;
        break;
      }
      case Stage::kComplete:
        // Units that were only skipped (session_id, cipher_suites, ...) may
        // still be on their way.
        return message.size() >= message_length_ ? HelloStatus::kDone : HelloStatus::kNeedMore;
    }
  }
}

// Returns kNeedMore when the extension is acceptable (the message goes on).
HelloStatus ClientHelloParser::ReadExtension(std::string_view body) {
  const char* why = nullptr;
  switch (extension_type_) {
    case kExtServerName: {
      size_t offset = 0;
      size_t length = 0;
      why = CheckServerName(body, &offset, &length);
      if (why == nullptr) {
        sni_offset_ = pos_ + offset;
        sni_length_ = length;
      }
      break;
    }
    case kExtAlpn:
      why = CheckAlpn(body);
      if (why == nullptr) {
        alpn_offset_ = pos_ + 2;  // past the list length
        alpn_length_ = body.size() - 2;
      }
      break;
    case kExtSupportedVersions:
      why = CheckSupportedVersions(body, &offers_tls13_);
      break;
    default:
      break;
  }
  return why != nullptr ? Fail(HelloStatus::kMalformed, why) : HelloStatus::kNeedMore;
}

bool ClientHelloParser::IsDuplicateExtension(uint16_t type) {
  if (type_bitmap_ != nullptr) {
    uint64_t& word = type_bitmap_[type / 64];
    const uint64_t bit = uint64_t{1} << (type % 64);
    const bool seen = (word & bit) != 0;
    word |= bit;
    return seen;
  }
  const auto seen_end = inline_types_.begin() + inline_type_count_;
  if (std::find(inline_types_.begin(), seen_end, type) != seen_end) return true;
  if (inline_type_count_ < inline_types_.size()) {
    inline_types_[inline_type_count_++] = type;
    return false;
  }
  // More extensions than any real client sends: switch to the bitmap so a
  // hello of thousands of empty extensions is not checked in quadratic time.
  type_bitmap_ = std::make_unique<uint64_t[]>(65536 / 64);
  for (const uint16_t t : inline_types_) type_bitmap_[t / 64] |= uint64_t{1} << (t % 64);
  type_bitmap_[type / 64] |= uint64_t{1} << (type % 64);
  return false;
}

}  // namespace ktlb::passthrough
