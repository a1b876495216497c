// HTTP/1.1 request framing: head validation and body boundaries.
//
// A request is read twice: by the strict tokenizer here (which fills the
// RequestHead views) and by llhttp. Only a request both accept, with the same
// head length, version, method and framing, goes upstream. See internal.h for
// why one parser alone is not enough.
#include <llhttp.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include "internal.h"
#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

using internal::ClassifyHeader;
using internal::ConnectionTokens;
using internal::EqualsNoCase;
using internal::KnownHeader;
using internal::SkipList;

enum class Phase : uint8_t {
  kIdle,  // between messages: the next ParseHead starts a new request
  kHead,  // head incomplete: the next ParseHead continues it
  kBody,
  kError,  // final
};

struct Verdict {
  RequestError error = RequestError::kNone;
  const char* reason = "";
};

constexpr Verdict Reject(RequestError e, const char* reason) { return {e, reason}; }

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && EqualsNoCase(s.substr(0, prefix.size()), prefix);
}

bool IsIdempotent(std::string_view m) {
  return m == "GET" || m == "HEAD" || m == "OPTIONS" || m == "TRACE" || m == "PUT" ||
         m == "DELETE";
}

// request-line = method SP request-target SP HTTP-version (RFC 9112 3).
// On success also returns the authority of an absolute-form target.
Verdict ParseRequestLine(std::string_view line, RequestHead* head, std::string_view* authority) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) {
    return Reject(RequestError::kBadRequest, "malformed request line");
  }
  const std::string_view method = line.substr(0, sp1);
  if (!internal::AllOf(method, internal::kTchar)) {
    return Reject(RequestError::kBadRequest, "invalid method");
  }
  const std::string_view rest = line.substr(sp1 + 1);
  const size_t sp2 = rest.find(' ');
  const std::string_view target = rest.substr(0, sp2);
  if (target.empty() || !internal::AllOf(target, internal::kTargetChar)) {
    return Reject(RequestError::kBadRequest, "invalid request target");
  }
  if (sp2 == std::string_view::npos) {
    return Reject(RequestError::kBadVersion, "HTTP/0.9 request");
  }
  const std::string_view version = rest.substr(sp2 + 1);
  if (version == "HTTP/1.1") {
    head->version_minor = 1;
  } else if (version == "HTTP/1.0") {
    head->version_minor = 0;
  } else if (version.starts_with("HTTP/")) {
    return Reject(RequestError::kBadVersion, "unsupported HTTP version");
  } else {
    return Reject(RequestError::kBadRequest, "malformed HTTP version");
  }

  // A TLS-terminating reverse proxy does not open tunnels.
  if (method == "CONNECT") return Reject(RequestError::kBadRequest, "CONNECT not supported");
  if (target[0] == '/') {
    // origin-form
  } else if (target == "*") {
    if (method != "OPTIONS") return Reject(RequestError::kBadRequest, "'*' target without OPTIONS");
  } else {
    size_t scheme_len = 0;
    if (StartsWithNoCase(target, "http://")) scheme_len = 7;
    if (StartsWithNoCase(target, "https://")) scheme_len = 8;
    if (scheme_len == 0) return Reject(RequestError::kBadRequest, "invalid request target form");
    const std::string_view after = target.substr(scheme_len);
    *authority = after.substr(0, after.find_first_of("/?#"));
    // userinfo is deprecated (RFC 9110 4.2.4) and a classic way to make two
    // parsers see different hosts.
    if (authority->empty() || authority->find('@') != std::string_view::npos ||
        !internal::IsValidHost(*authority)) {
      return Reject(RequestError::kBadRequest, "invalid absolute-form authority");
    }
  }
  head->method = method;
  head->target = target;
  return {};
}

}  // namespace

struct RequestParser::Impl {
  explicit Impl(Limits l) : limits(l) {}

  // Fills *head from the complete head buf[0, scanner.head_end()).
  Verdict BuildHead(std::string_view buf, RequestHead* head);

  Limits limits;
  Phase phase = Phase::kIdle;
  BodyKind body = BodyKind::kNone;
  uint64_t remaining = 0;  // Content-Length body bytes still due
  internal::HeadScanner scanner;
  internal::ChunkedScanner chunked;
  llhttp_t ll{};
};

Verdict RequestParser::Impl::BuildHead(std::string_view buf, RequestHead* head) {
  const size_t head_end = scanner.head_end();
  const size_t line_end = scanner.first_line_end();
  const char* base = buf.data();

  // Reset everything but the headers' capacity.
  head->method = {};
  head->target = {};
  head->version_minor = 1;
  head->headers.clear();
  head->host = {};
  head->body = BodyKind::kNone;
  head->content_length = 0;
  head->keep_alive = true;
  head->expect_continue = false;
  head->upgrade = false;
  head->idempotent = false;
  head->is_head = false;
  head->head_len = head_end;

  std::string_view authority;
  const std::string_view line(base + scanner.first_line_start(),
                              line_end - scanner.first_line_start());
  if (Verdict v = ParseRequestLine(line, head, &authority); v.error != RequestError::kNone) {
    return v;
  }
  const int minor = head->version_minor;

  bool has_cl = false;
  uint64_t cl = 0;
  bool has_te = false;
  uint32_t te_codings = 0;
  bool te_only_chunked = true;
  uint32_t host_count = 0;
  bool has_upgrade_header = false;
  bool upgrade_to_h2c = false;
  bool expect_continue = false;
  ConnectionTokens conn;
  SkipList skips;

  // The scanner guarantees every line ends in CRLF and holds no other CR/LF;
  // head_end - 2 is the CR of the empty line that ends the head.
  const size_t fields_end = head_end - 2;
  size_t pos = line_end + 2;
  while (pos < fields_end) {
    const void* cr = std::memchr(base + pos, '\r', fields_end - pos);
    if (cr == nullptr) return Reject(RequestError::kBadRequest, "unterminated header line");
    const size_t le = static_cast<size_t>(static_cast<const char*>(cr) - base);
    const size_t next = le + 2;
    Header h;
    if (!internal::SplitHeaderLine(std::string_view(base + pos, le - pos), &h)) {
      return Reject(RequestError::kBadHeader, "invalid header field");
    }
    switch (ClassifyHeader(h.name)) {
      case KnownHeader::kSpoofedFraming:
        return Reject(RequestError::kBadHeader, "'_' in a framing header name");
      case KnownHeader::kHost:
        ++host_count;
        head->host = h.value;
        break;
      case KnownHeader::kContentLength: {
        uint64_t v = 0;
        if (!internal::ParseContentLength(h.value, &v)) {
          return Reject(RequestError::kBadContentLength, "invalid Content-Length");
        }
        if (has_cl) {
          if (v != cl) {
            return Reject(RequestError::kDuplicateContentLength, "conflicting Content-Length");
          }
          // Identical duplicate: fold it (neither forwarded nor shown to llhttp).
          if (!skips.Add(pos, next)) {
            return Reject(RequestError::kDuplicateContentLength, "too many Content-Length fields");
          }
          pos = next;
          continue;
        }
        has_cl = true;
        cl = v;
        break;
      }
      case KnownHeader::kTransferEncoding:
        has_te = true;
        internal::ForEachListElement(h.value, [&](std::string_view coding) {
          ++te_codings;
          if (!EqualsNoCase(coding, "chunked")) te_only_chunked = false;
          return true;
        });
        break;
      case KnownHeader::kConnection:
        conn.Add(h.value);
        break;
      case KnownHeader::kExpect:
        if (EqualsNoCase(h.value, "100-continue")) expect_continue = true;
        break;
      case KnownHeader::kUpgrade:
        has_upgrade_header = true;
        internal::ForEachListElement(h.value, [&](std::string_view protocol) {
          if (EqualsNoCase(protocol.substr(0, protocol.find('/')), "h2c")) upgrade_to_h2c = true;
          return true;
        });
        break;
      case KnownHeader::kOther:
        break;
    }
    if (head->headers.size() >= limits.max_headers) {
      return Reject(RequestError::kHeadersTooLarge, "too many header fields");
    }
    head->headers.push_back(h);
    pos = next;
  }

  // Framing (RFC 9112 6.1-6.3): exactly one unambiguous way to find the end.
  if (has_cl && has_te) {
    return Reject(RequestError::kBothContentLengthAndTransferEncoding,
                  "both Content-Length and Transfer-Encoding");
  }
  if (has_te) {
    // An HTTP/1.0 recipient may not know chunked at all; RFC 9112 6.1 says
    // such framing is faulty.
    if (minor == 0) {
      return Reject(RequestError::kBadTransferEncoding, "Transfer-Encoding in HTTP/1.0");
    }
    // Only "chunked", once: any other coding is one we would have to trust the
    // backend to decode exactly as we frame it.
    if (te_codings != 1 || !te_only_chunked) {
      return Reject(RequestError::kBadTransferEncoding, "Transfer-Encoding other than chunked");
    }
  }
  if (host_count > 1) return Reject(RequestError::kBadRequest, "more than one Host");
  if (!internal::IsValidHost(head->host)) return Reject(RequestError::kBadHeader, "invalid Host");
  if (!authority.empty()) {
    // RFC 9112 3.2.2 lets the target's authority override Host; requiring them
    // to agree keeps routing (on Host) and the backend's view identical.
    if (host_count == 0) {
      head->host = authority;
    } else if (!EqualsNoCase(authority, head->host)) {
      return Reject(RequestError::kBadRequest, "absolute-form authority differs from Host");
    }
  }
  if (host_count == 0 && minor == 1 && authority.empty()) {
    return Reject(RequestError::kMissingHost, "HTTP/1.1 request without Host");
  }

  head->keep_alive = minor == 1 ? !conn.close : (conn.keep_alive && !conn.close);
  // 1.0 clients cannot take a 100 (RFC 9110 10.1.1) or an upgrade (RFC 9110 7.8).
  head->expect_continue = minor == 1 && expect_continue;
  // Never h2c: after a 101 ktlb would tunnel a whole HTTP/2 connection whose
  // requests bypass routing ("h2c smuggling"). The Upgrade field is then
  // dropped as hop-by-hop and the request is served as plain HTTP/1.1.
  head->upgrade = minor == 1 && conn.upgrade && has_upgrade_header && !upgrade_to_h2c;
  head->idempotent = IsIdempotent(head->method);
  head->is_head = head->method == "HEAD";
  head->content_length = cl;
  if (has_te) {
    head->body = BodyKind::kChunked;
  } else if (cl > 0) {
    head->body = BodyKind::kContentLength;
  }

  // Second opinion. llhttp must accept the same bytes and agree on where the
  // head ends and how the body is framed.
  llhttp_init(&ll, HTTP_REQUEST, internal::PausingSettings());
  const llhttp_errno_t e = internal::LlhttpCheckHead(&ll, buf, head_end, skips);
  if (e != HPE_OK) {
    const char* why = e == HPE_INTERNAL ? "llhttp disagrees on the end of the head"
                                        : llhttp_get_error_reason(&ll);
    switch (e) {
      case HPE_INVALID_VERSION:
        return Reject(RequestError::kBadVersion, why);
      case HPE_INVALID_HEADER_TOKEN:
        return Reject(RequestError::kBadHeader, why);
      case HPE_INVALID_CONTENT_LENGTH:
      case HPE_UNEXPECTED_CONTENT_LENGTH:
        return Reject(RequestError::kBadContentLength, why);
      case HPE_INVALID_TRANSFER_ENCODING:
        return Reject(RequestError::kBadTransferEncoding, why);
      default:
        return Reject(RequestError::kBadRequest, why);
    }
  }
  const bool ll_chunked = (ll.flags & F_CHUNKED) != 0;
  const bool ll_te = (ll.flags & F_TRANSFER_ENCODING) != 0;
  const bool ll_cl = (ll.flags & F_CONTENT_LENGTH) != 0;
  if (ll.http_major != 1 || ll.http_minor != minor ||
      head->method != llhttp_method_name(static_cast<llhttp_method_t>(ll.method)) ||
      ll_chunked != has_te || ll_te != has_te || ll_cl != has_cl ||
      (has_cl && ll.content_length != cl)) {
    return Reject(RequestError::kBadRequest, "llhttp disagrees on the request");
  }

  body = head->body;
  if (body == BodyKind::kContentLength) {
    remaining = cl;
  } else if (body == BodyKind::kChunked) {
    chunked.Reset(limits.max_header_bytes);
    llhttp_resume(&ll);  // it continues from the first body byte
  }
  return {};
}

RequestParser::RequestParser(Limits limits) : impl_(std::make_unique<Impl>(limits)) {}
RequestParser::~RequestParser() = default;

ParseStatus RequestParser::Fail(RequestError e, const char* reason) {
  error_ = e;
  error_reason_ = reason;
  impl_->phase = Phase::kError;
  return ParseStatus::kError;
}

void RequestParser::Reset() {
  error_ = RequestError::kNone;
  error_reason_ = "";
  impl_->phase = Phase::kIdle;
  impl_->body = BodyKind::kNone;
  impl_->remaining = 0;
}

ParseStatus RequestParser::ParseHead(std::string_view buf, RequestHead* head) {
  Impl& s = *impl_;
  if (s.phase == Phase::kError) return ParseStatus::kError;
  if (s.phase != Phase::kHead) {
    s.scanner.Reset();
    s.phase = Phase::kHead;
  }
  switch (s.scanner.Scan(buf, s.limits.max_request_line, s.limits.max_header_bytes)) {
    case ParseStatus::kIncomplete:
      return ParseStatus::kIncomplete;
    case ParseStatus::kError:
      switch (s.scanner.error()) {
        case internal::ScanError::kFirstLineTooLong:
          return Fail(RequestError::kRequestLineTooLong, "request line too long");
        case internal::ScanError::kHeadTooLarge:
          return Fail(RequestError::kHeadersTooLarge, "request head too large");
        case internal::ScanError::kBareCr:
          return Fail(RequestError::kBareCr, "CR not followed by LF");
        case internal::ScanError::kObsFold:
          return Fail(RequestError::kObsFold, "obsolete line folding");
        case internal::ScanError::kBareLf:
        case internal::ScanError::kNone:
          return Fail(RequestError::kBadRequest, "LF not preceded by CR");
      }
      return Fail(RequestError::kBadRequest, "malformed head");
    case ParseStatus::kDone:
      break;
  }
  const Verdict v = s.BuildHead(buf, head);
  if (v.error != RequestError::kNone) return Fail(v.error, v.reason);
  s.phase = s.body == BodyKind::kNone ? Phase::kIdle : Phase::kBody;
  return ParseStatus::kDone;
}

ParseStatus RequestParser::ParseBody(std::string_view buf, size_t* consumed) {
  Impl& s = *impl_;
  *consumed = 0;
  if (s.phase == Phase::kError) return ParseStatus::kError;
  if (s.phase != Phase::kBody) return ParseStatus::kDone;  // no body is due

  if (s.body == BodyKind::kContentLength) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(s.remaining, buf.size()));
    s.remaining -= take;
    *consumed = take;
    if (s.remaining != 0) return ParseStatus::kIncomplete;
    s.phase = Phase::kIdle;
    return ParseStatus::kDone;
  }

  size_t n = 0;
  const ParseStatus st = s.chunked.Scan(buf, &n);
  if (st == ParseStatus::kError) return Fail(RequestError::kBadChunk, "invalid chunked framing");
  if (!internal::LlhttpCheckChunked(&s.ll, buf.substr(0, n), st == ParseStatus::kDone)) {
    const llhttp_errno_t e = llhttp_get_errno(&s.ll);
    return Fail(RequestError::kBadChunk, e != HPE_OK && e != HPE_PAUSED
                                             ? llhttp_get_error_reason(&s.ll)
                                             : "llhttp disagrees on the end of the body");
  }
  *consumed = n;
  if (st == ParseStatus::kIncomplete) return ParseStatus::kIncomplete;
  s.phase = Phase::kIdle;
  return ParseStatus::kDone;
}

uint64_t RequestParser::OpaqueBodyBytes() const {
  const Impl& s = *impl_;
  if (s.phase != Phase::kBody) return 0;
  return s.body == BodyKind::kContentLength ? s.remaining : s.chunked.DataLeft();
}

ParseStatus RequestParser::SkipOpaqueBody(uint64_t n) {
  Impl& s = *impl_;
  if (s.phase == Phase::kError) return ParseStatus::kError;
  if (n == 0) return s.phase == Phase::kBody ? ParseStatus::kIncomplete : ParseStatus::kDone;
  if (n > OpaqueBodyBytes()) return Fail(RequestError::kBadRequest, "skipped past the payload");
  switch (internal::SkipOpaqueBytes(s, n)) {
    case internal::SkipResult::kIncomplete: return ParseStatus::kIncomplete;
    case internal::SkipResult::kDone: return ParseStatus::kDone;
    case internal::SkipResult::kLlhttpDisagrees: break;
  }
  return Fail(RequestError::kBadChunk, "llhttp disagrees on the chunk size");
}

uint64_t RequestParser::ChunkSize() const {
  const Impl& s = *impl_;
  return s.phase == Phase::kBody && s.body == BodyKind::kChunked ? s.chunked.ChunkSize() : 0;
}

}  // namespace ktlb::http1
