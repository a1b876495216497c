// HTTP/1.1 response framing from an upstream.
//
// Be strict with clients, tolerant with backends: ktlb accepts from a backend
// what nginx and HAProxy accept, because an operator cannot fix every
// backend, and it is safe as long as ktlb and the client can never disagree
// about where a response ends. ktlb rebuilds every head it forwards (CRLF, a
// reason phrase, HTTP/1.1, one Content-Length), so none of these deviations
// reaches a client: bare-LF line ends (RFC 9112 2.2), no reason phrase,
// HTTP/1.0, codings other than chunked, identical duplicate Content-Lengths,
// also as a list ("5, 5", RFC 9110 8.6). What could desync the client
// connection is refused (502): Content-Length next to Transfer-Encoding,
// differing Content-Lengths, bad chunked framing.
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

enum class Phase : uint8_t { kIdle, kHead, kBody, kError };

// status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 4);
// the second SP may be missing when there is no reason.
const char* ParseStatusLine(std::string_view line, ResponseHead* head) {
  if (line.size() < 12 || !line.starts_with("HTTP/")) return "malformed status line";
  const std::string_view version = line.substr(5, 3);
  if (version == "1.1") {
    head->version_minor = 1;
  } else if (version == "1.0") {
    head->version_minor = 0;
  } else {
    return "unsupported HTTP version";
  }
  if (line[8] != ' ') return "malformed status line";
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return "malformed status code";
    status = status * 10 + (line[i] - '0');
  }
  if (status < 100) return "malformed status code";
  head->status = status;
  head->reason = {};
  if (line.size() > 12) {
    if (line[12] != ' ') return "malformed status line";
    head->reason = line.substr(13);
    if (!internal::IsFieldValue(head->reason)) return "invalid reason phrase";
  }
  return nullptr;
}

}  // namespace

struct ResponseParser::Impl {
  explicit Impl(Limits l) : limits(l) {}

  // Fills *head from the complete head; nullptr or the reason it is refused.
  const char* BuildHead(std::string_view buf, bool request_was_head, ResponseHead* head);

  Limits limits;
  Phase phase = Phase::kIdle;
  BodyKind body = BodyKind::kNone;
  uint64_t remaining = 0;
  internal::HeadScanner scanner;
  internal::ChunkedScanner chunked;
  llhttp_t ll{};
};

const char* ResponseParser::Impl::BuildHead(std::string_view buf, bool request_was_head,
                                            ResponseHead* head) {
  const size_t head_end = scanner.head_end();
  const size_t line_end = scanner.first_line_end();
  const size_t fields_end = scanner.fields_end();
  const char* base = buf.data();

  head->status = 0;
  head->version_minor = 1;
  head->reason = {};
  head->headers.clear();
  head->body = BodyKind::kNone;
  head->content_length = 0;
  head->keep_alive = true;
  head->head_len = head_end;

  const std::string_view line(base + scanner.first_line_start(),
                              line_end - scanner.first_line_start());
  if (const char* why = ParseStatusLine(line, head)) return why;
  const int minor = head->version_minor;
  const int status = head->status;

  bool has_cl = false;
  uint64_t cl = 0;
  // llhttp refuses duplicate and list-valued Content-Lengths, so it is shown
  // only the first single-valued one (if any); the other lines are skipped.
  SkipList cl_skips;
  bool ll_sees_cl = false;
  bool has_te = false;
  bool chunked_last = false;
  ConnectionTokens conn;

  size_t pos = scanner.fields_start();
  while (pos < fields_end) {
    // Every line ends in LF (the scanner checked that a CR is always followed
    // by one); the CR before it, if any, is not part of the line.
    const void* lf = std::memchr(base + pos, '\n', fields_end - pos);
    if (lf == nullptr) return "unterminated header line";
    size_t le = static_cast<size_t>(static_cast<const char*>(lf) - base);
    const size_t next = le + 1;
    if (le > pos && base[le - 1] == '\r') --le;
    Header h;
    if (!internal::SplitHeaderLine(std::string_view(base + pos, le - pos), &h)) {
      return "invalid header field";
    }
    switch (ClassifyHeader(h.name)) {
      case KnownHeader::kSpoofedFraming:
        return "'_' in a framing header name";
      case KnownHeader::kContentLength: {
        uint64_t v = 0;
        const bool single = internal::ParseContentLength(h.value, &v);
        if (!single) {
          // "5, 5": a list of identical values means 5 (RFC 9110 8.6).
          if (!internal::ParseContentLengthList(h.value, &v, &h.value)) {
            return "invalid Content-Length";
          }
        }
        if (has_cl) {
          if (v != cl) return "conflicting Content-Length";
          if (!cl_skips.Add(pos, next)) return "too many Content-Length fields";
          pos = next;  // identical duplicate: folded
          continue;
        }
        if (single) {
          ll_sees_cl = true;
        } else if (!cl_skips.Add(pos, next)) {
          return "too many Content-Length fields";
        }
        has_cl = true;
        cl = v;
        break;
      }
      case KnownHeader::kTransferEncoding:
        has_te = true;
        // Only the last coding decides the framing (RFC 9112 6.3 rule 4);
        // a header without elements leaves "chunked" not last.
        chunked_last = false;
        internal::ForEachListElement(h.value, [&](std::string_view coding) {
          chunked_last = EqualsNoCase(coding, "chunked");
          return true;
        });
        break;
      case KnownHeader::kConnection:
        conn.Add(h.value);
        break;
      case KnownHeader::kHost:
      case KnownHeader::kExpect:
      case KnownHeader::kUpgrade:
      case KnownHeader::kOther:
        break;
    }
    if (head->headers.size() >= limits.max_headers) return "too many header fields";
    head->headers.push_back(h);
    pos = next;
  }

  // Both framings present means someone upstream is confused or hostile
  // (RFC 9112 6.3 rule 3: "ought to be handled as an error"): which one
  // frames the body is exactly what a smuggling attack plays on.
  if (has_te && has_cl) return "both Content-Length and Transfer-Encoding";

  head->keep_alive = minor == 1 ? !conn.close : (conn.keep_alive && !conn.close);
  // Transfer-Encoding in HTTP/1.0 is unusual enough that the bytes after this
  // response cannot be trusted to start a new one.
  if (has_te && minor == 0) head->keep_alive = false;
  if (status == 101) head->keep_alive = false;  // the connection is a tunnel now
  const bool no_body = request_was_head || status < 200 || status == 204 || status == 304;
  if (no_body) {
    head->body = BodyKind::kNone;
  } else if (has_te) {
    head->body = chunked_last ? BodyKind::kChunked : BodyKind::kUntilClose;
  } else if (has_cl) {
    head->body = cl > 0 ? BodyKind::kContentLength : BodyKind::kNone;
  } else {
    head->body = BodyKind::kUntilClose;
  }
  if (head->body == BodyKind::kUntilClose) head->keep_alive = false;
  if (has_cl) head->content_length = cl;

  llhttp_init(&ll, HTTP_RESPONSE, internal::PausingSettings());
  // llhttp ends a header value at a bare LF only in its lenient-headers mode,
  // which also stops it checking the name/colon spacing and value characters.
  // Our tokenizer above checked both strictly already; llhttp stays the
  // second opinion on where the head ends and on the framing.
  if (scanner.saw_bare_lf()) llhttp_set_lenient_headers(&ll, 1);
  const llhttp_errno_t e = internal::LlhttpCheckHead(&ll, buf, head_end, cl_skips);
  if (e != HPE_OK) {
    return e == HPE_INTERNAL ? "llhttp disagrees on the end of the head"
                             : llhttp_get_error_reason(&ll);
  }
  const bool ll_cl = (ll.flags & F_CONTENT_LENGTH) != 0;
  if (ll.http_major != 1 || ll.http_minor != minor || ll.status_code != status ||
      (head->body == BodyKind::kChunked && (ll.flags & F_CHUNKED) == 0) ||
      ll_cl != ll_sees_cl || (ll_cl && ll.content_length != cl)) {
    return "llhttp disagrees on the response";
  }

  body = head->body;
  if (body == BodyKind::kContentLength) {
    remaining = cl;
  } else if (body == BodyKind::kChunked) {
    chunked.Reset(limits.max_header_bytes);
    llhttp_resume(&ll);
  }
  return nullptr;
}

ResponseParser::ResponseParser() : ResponseParser(Limits{}) {}
ResponseParser::ResponseParser(Limits limits) : impl_(std::make_unique<Impl>(limits)) {}
ResponseParser::~ResponseParser() = default;

void ResponseParser::Reset() {
  error_reason_ = "";
  impl_->phase = Phase::kIdle;
  impl_->body = BodyKind::kNone;
  impl_->remaining = 0;
}

ParseStatus ResponseParser::Fail(const char* reason) {
  error_reason_ = reason;
  impl_->phase = Phase::kError;
  return ParseStatus::kError;
}

ParseStatus ResponseParser::ParseHead(std::string_view buf, bool request_was_head,
                                      ResponseHead* head) {
  Impl& s = *impl_;
  if (s.phase == Phase::kError) return ParseStatus::kError;
  if (s.phase != Phase::kHead) {
    s.scanner.Reset();
    s.phase = Phase::kHead;
  }
  switch (s.scanner.Scan(buf, s.limits.max_request_line, s.limits.max_header_bytes,
                         internal::LineEnds::kCrlfOrLf)) {
    case ParseStatus::kIncomplete:
      return ParseStatus::kIncomplete;
    case ParseStatus::kError:
      switch (s.scanner.error()) {
        case internal::ScanError::kFirstLineTooLong: return Fail("status line too long");
        case internal::ScanError::kHeadTooLarge: return Fail("response head too large");
        case internal::ScanError::kBareCr: return Fail("CR not followed by LF");
        case internal::ScanError::kObsFold: return Fail("obsolete line folding");
        case internal::ScanError::kBareLf:  // not with LineEnds::kCrlfOrLf
        case internal::ScanError::kNone: return Fail("malformed head");
      }
      return Fail("malformed head");
    case ParseStatus::kDone:
      break;
  }
  if (const char* why = s.BuildHead(buf, request_was_head, head)) return Fail(why);
  s.phase = s.body == BodyKind::kNone ? Phase::kIdle : Phase::kBody;
  return ParseStatus::kDone;
}

ParseStatus ResponseParser::ParseBody(std::string_view buf, size_t* consumed,
                                      BodyVisitor* visitor) {
  Impl& s = *impl_;
  *consumed = 0;
  if (s.phase == Phase::kError) return ParseStatus::kError;
  if (s.phase != Phase::kBody) return ParseStatus::kDone;

  switch (s.body) {
    case BodyKind::kUntilClose:
      *consumed = buf.size();
      if (visitor != nullptr && !buf.empty()) visitor->OnBodyData(buf);
      return ParseStatus::kIncomplete;  // the caller ends the body at EOF
    case BodyKind::kContentLength: {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(s.remaining, buf.size()));
      s.remaining -= take;
      *consumed = take;
      if (visitor != nullptr && take > 0) visitor->OnBodyData(buf.substr(0, take));
      if (s.remaining != 0) return ParseStatus::kIncomplete;
      s.phase = Phase::kIdle;
      return ParseStatus::kDone;
    }
    case BodyKind::kChunked:
      break;
    case BodyKind::kNone:
      s.phase = Phase::kIdle;
      return ParseStatus::kDone;
  }

  size_t n = 0;
  const ParseStatus st = s.chunked.Scan(buf, &n, visitor);
  if (st == ParseStatus::kError) return Fail("invalid chunked framing");
  if (!internal::LlhttpCheckChunked(&s.ll, buf.substr(0, n), st == ParseStatus::kDone)) {
    const llhttp_errno_t e = llhttp_get_errno(&s.ll);
    return Fail(e != HPE_OK && e != HPE_PAUSED ? llhttp_get_error_reason(&s.ll)
                                               : "llhttp disagrees on the end of the body");
  }
  *consumed = n;
  if (st == ParseStatus::kIncomplete) return ParseStatus::kIncomplete;
  s.phase = Phase::kIdle;
  return ParseStatus::kDone;
}

uint64_t ResponseParser::OpaqueBodyBytes() const {
  const Impl& s = *impl_;
  if (s.phase != Phase::kBody) return 0;
  switch (s.body) {
    case BodyKind::kContentLength:
      return s.remaining;
    case BodyKind::kChunked:
      return s.chunked.DataLeft();
    case BodyKind::kUntilClose:
    case BodyKind::kNone:
      break;
  }
  return 0;
}

ParseStatus ResponseParser::SkipOpaqueBody(uint64_t n) {
  Impl& s = *impl_;
  if (s.phase == Phase::kError) return ParseStatus::kError;
  if (n == 0) return s.phase == Phase::kBody ? ParseStatus::kIncomplete : ParseStatus::kDone;
  if (n > OpaqueBodyBytes()) return Fail("skipped past the payload");
  switch (internal::SkipOpaqueBytes(s, n)) {
    case internal::SkipResult::kIncomplete: return ParseStatus::kIncomplete;
    case internal::SkipResult::kDone: return ParseStatus::kDone;
    case internal::SkipResult::kLlhttpDisagrees: break;
  }
  return Fail("llhttp disagrees on the chunk size");
}

uint64_t ResponseParser::ChunkSize() const {
  const Impl& s = *impl_;
  return s.phase == Phase::kBody && s.body == BodyKind::kChunked ? s.chunked.ChunkSize() : 0;
}

}  // namespace ktlb::http1
