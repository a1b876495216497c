// RFC 9113 request validation (8.2 field validity, 8.3 pseudo-header rules,
// 8.1.1 content-length), one reason per refusal. nghttp2's own checks are
// switched off (NGHTTP2_OPT_NO_HTTP_MESSAGING) so every refusal is ktlb's
// and is counted by what was wrong.
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <charconv>
#include <string_view>

#include "ktlb/http2.h"

namespace ktlb::http2 {
namespace {

const uint8_t* U(std::string_view s) { return reinterpret_cast<const uint8_t*>(s.data()); }

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

// Fields that mean something only on one HTTP/1.1 hop (RFC 9113 8.2.2).
bool IsConnectionSpecific(std::string_view name) {
  return name == "connection" || name == "keep-alive" || name == "proxy-connection" ||
         name == "transfer-encoding" || name == "upgrade";
}

bool ParseLength(std::string_view v, int64_t* out) {
  if (v.empty() || v.size() > 18) return false;
  // Content-Length = 1*DIGIT (RFC 9110 8.6): from_chars alone took "-0" as 0,
  // and the field went on to the backend as it was.
  for (char c : v) {
    if (c < '0' || c > '9') return false;
  }
  int64_t n = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), n);
  if (r.ec != std::errc() || r.ptr != v.data() + v.size() || n < 0) return false;
  *out = n;
  return true;
}

}  // namespace

const char* RefusalLabel(Refusal r) {
  switch (r) {
    case Refusal::kNone: return "none";
    case Refusal::kUppercaseName: return "uppercase_name";
    case Refusal::kBadName: return "bad_name";
    case Refusal::kBadValue: return "bad_value";
    case Refusal::kConnectionHeader: return "connection_header";
    case Refusal::kBadTe: return "bad_te";
    case Refusal::kUnknownPseudo: return "unknown_pseudo";
    case Refusal::kDuplicatePseudo: return "duplicate_pseudo";
    case Refusal::kPseudoAfterRegular: return "pseudo_after_regular";
    case Refusal::kMissingPseudo: return "missing_pseudo";
    case Refusal::kBadPseudoValue: return "bad_pseudo_value";
    case Refusal::kHostMismatch: return "host_mismatch";
    case Refusal::kPseudoInTrailers: return "pseudo_in_trailers";
    case Refusal::kTrailersWithoutEnd: return "trailers_without_end_stream";
    case Refusal::kBadContentLength: return "bad_content_length";
    case Refusal::kContentLengthMismatch: return "content_length_mismatch";
    case Refusal::kHeaderListTooLarge: return "header_list_too_large";
    case Refusal::kCount: break;
  }
  return "unknown";
}

void RequestHeaders::Reset(uint32_t max_list_size) {
  arena_.clear();
  fields_.clear();
  cookies_.clear();
  trailers_.clear();
  trailer_arena_.clear();
  trailer_fields_.clear();
  method_ = scheme_ = authority_ = path_ = protocol_ = host_ = Span{};
  list_size_ = 0;
  max_list_size_ = max_list_size;
  content_length_ = -1;
  data_bytes_ = 0;
  regular_seen_ = in_trailers_ = end_stream_ = body_follows_ = false;
}

RequestHeaders::Span RequestHeaders::Keep(std::string_view s) {
  Span span{static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(s.size()), true};
  arena_.append(s);
  return span;
}

Refusal RequestHeaders::CheckRegular(std::string_view name, std::string_view value) {
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') return Refusal::kUppercaseName;
  }
  if (nghttp2_check_header_name(U(name), name.size()) == 0) return Refusal::kBadName;
  if (nghttp2_check_header_value_rfc9113(U(value), value.size()) == 0) return Refusal::kBadValue;
  if (IsConnectionSpecific(name)) return Refusal::kConnectionHeader;
  if (name == "te" && !EqualsNoCase(value, "trailers")) return Refusal::kBadTe;
  return Refusal::kNone;
}

Refusal RequestHeaders::Add(std::string_view name, std::string_view value) {
  list_size_ += static_cast<uint32_t>(std::min<size_t>(name.size() + value.size() + 32, 1u << 30));
  if (list_size_ > max_list_size_) return Refusal::kHeaderListTooLarge;
  if (name.empty()) return Refusal::kBadName;

  if (in_trailers_) {
    if (name[0] == ':') return Refusal::kPseudoInTrailers;
    if (Refusal r = CheckRegular(name, value); r != Refusal::kNone) return r;
    // Into trailer_arena_, not arena_: ToRequestHead's views into arena_
    // are still in use (growing arena_ here left them dangling).
    const auto keep = [this](std::string_view s) {
      Span span{static_cast<uint32_t>(trailer_arena_.size()), static_cast<uint32_t>(s.size()), true};
      trailer_arena_.append(s);
      return span;
    };
    Span n = keep(name);
    trailer_fields_.push_back(Field{n, keep(value)});
    return Refusal::kNone;
  }

  if (name[0] == ':') {
    if (regular_seen_) return Refusal::kPseudoAfterRegular;
    Span* slot = nullptr;
    if (name == ":method") {
      slot = &method_;
      if (nghttp2_check_method(U(value), value.size()) == 0) return Refusal::kBadPseudoValue;
    } else if (name == ":scheme") {
      slot = &scheme_;
      if (value.empty()) return Refusal::kBadPseudoValue;
    } else if (name == ":authority") {
      slot = &authority_;
      // No userinfo (RFC 9113 8.3.1): nghttp2_check_authority allows '@'.
      if (nghttp2_check_authority(U(value), value.size()) == 0 ||
          value.find('@') != std::string_view::npos) {
        return Refusal::kBadPseudoValue;
      }
    } else if (name == ":path") {
      slot = &path_;
      if (nghttp2_check_path(U(value), value.size()) == 0) return Refusal::kBadPseudoValue;
    } else if (name == ":protocol") {
      slot = &protocol_;
      // An upgrade token (RFC 8441 4, RFC 9110 7.8): it becomes the
      // backend's Upgrade field.
      if (nghttp2_check_method(U(value), value.size()) == 0) return Refusal::kBadPseudoValue;
    } else {
      return Refusal::kUnknownPseudo;
    }
    if (slot->set) return Refusal::kDuplicatePseudo;
    *slot = Keep(value);
    return Refusal::kNone;
  }

  regular_seen_ = true;
  if (Refusal r = CheckRegular(name, value); r != Refusal::kNone) return r;
  if (name == "content-length") {
    int64_t n = 0;
    if (!ParseLength(value, &n) || (content_length_ >= 0 && n != content_length_)) {
      return Refusal::kBadContentLength;
    }
    if (content_length_ >= 0) return Refusal::kNone;  // an identical duplicate: folded
    content_length_ = n;
  } else if (name == "host") {
    if (host_.set) return Refusal::kBadValue;  // two Host fields
    if (nghttp2_check_authority(U(value), value.size()) == 0 ||
        value.find('@') != std::string_view::npos) {
      return Refusal::kBadValue;
    }
    host_ = Keep(value);
    return Refusal::kNone;
  } else if (name == "cookie") {
    cookies_.push_back(Keep(value));
    return Refusal::kNone;
  }
  fields_.push_back(Field{Keep(name), Keep(value)});
  return Refusal::kNone;
}

Refusal RequestHeaders::FinishHead(bool end_stream) {
  end_stream_ = end_stream;
  body_follows_ = !end_stream;
  if (!method_.set) return Refusal::kMissingPseudo;
  if (View(method_) == "CONNECT") {
    // RFC 9113 8.5: only :authority (RFC 8441 adds :protocol, :scheme, :path).
    if (!protocol_.set && (scheme_.set || path_.set || !authority_.set)) return Refusal::kMissingPseudo;
  } else {
    if (protocol_.set) return Refusal::kBadPseudoValue;
    if (!scheme_.set || !path_.set) return Refusal::kMissingPseudo;
  }
  if (path_.set) {
    // RFC 9113 8.3.1: not empty; origin-form, or "*" for OPTIONS. :path goes
    // to the backend as the request-target, where an absolute-form one
    // ("http://other/x") would override the Host ktlb routed on (RFC 9112
    // 3.2.2), a desync the HTTP/1 parser refuses; nghttp2_check_path checks
    // characters only.
    const std::string_view p = View(path_);
    const bool asterisk = p == "*" && View(method_) == "OPTIONS";
    if (p.empty() || (p[0] != '/' && !asterisk)) return Refusal::kBadPseudoValue;
  }
  if (protocol_.set) {
    // RFC 8441 4: :scheme, :path and :authority are all required; the
    // stream's DATA is the tunnel, so a content-length means nothing
    // (RFC 9110 9.3.6: CONNECT has no content).
    if (!scheme_.set || !path_.set || !authority_.set) return Refusal::kMissingPseudo;
    const std::string_view scheme = View(scheme_);
    if (scheme != "https" && scheme != "http") return Refusal::kBadPseudoValue;
    if (content_length_ >= 0) return Refusal::kBadContentLength;
  }
  if (host_.set && authority_.set && !EqualsNoCase(View(host_), View(authority_))) {
    return Refusal::kHostMismatch;
  }
  if (end_stream && content_length_ > 0) return Refusal::kContentLengthMismatch;
  return Refusal::kNone;
}

void RequestHeaders::BeginTrailers() { in_trailers_ = true; }

Refusal RequestHeaders::OnData(size_t n) {
  data_bytes_ += n;
  if (content_length_ >= 0 && data_bytes_ > static_cast<uint64_t>(content_length_)) {
    return Refusal::kContentLengthMismatch;
  }
  return Refusal::kNone;
}

Refusal RequestHeaders::OnEnd() {
  end_stream_ = true;
  if (content_length_ >= 0 && data_bytes_ != static_cast<uint64_t>(content_length_)) {
    return Refusal::kContentLengthMismatch;
  }
  // Views of the trailer fields, now that their arena is final.
  const std::string_view ta(trailer_arena_);
  trailers_.clear();
  for (const Field& f : trailer_fields_) {
    trailers_.push_back(
        http1::Header{ta.substr(f.name.off, f.name.len), ta.substr(f.value.off, f.value.len)});
  }
  return Refusal::kNone;
}

void RequestHeaders::ToRequestHead(http1::RequestHead* head) {
  // Cookies join into one field first: the arena must not grow once views
  // into it are handed out.
  Span cookie;
  if (!cookies_.empty()) {
    size_t total = 0;
    for (const Span& c : cookies_) total += c.len + 2;
    arena_.reserve(arena_.size() + total);
    cookie.off = static_cast<uint32_t>(arena_.size());
    for (size_t i = 0; i < cookies_.size(); ++i) {
      if (i > 0) arena_.append("; ", 2);
      arena_.append(View(cookies_[i]));
    }
    cookie.len = static_cast<uint32_t>(arena_.size() - cookie.off);
    cookie.set = true;
  }
  // Extended CONNECT goes to the backend as an HTTP/1.1 upgrade (RFC 8441 5).
  head->method = is_extended_connect() ? std::string_view("GET") : View(method_);
  head->target = View(path_);
  head->version_minor = 1;
  head->headers.clear();
  head->host = authority_.set ? View(authority_) : View(host_);
  if (!head->host.empty()) head->headers.push_back(http1::Header{"Host", head->host});
  const bool tunnel = is_extended_connect();
  for (const Field& f : fields_) {
    // The h2 side of RFC 8441 has no key/accept handshake: the owner adds
    // the key it generates for the backend's HTTP/1.1 upgrade.
    if (tunnel && (View(f.name) == "sec-websocket-key" || View(f.name) == "sec-websocket-accept")) {
      continue;
    }
    head->headers.push_back(http1::Header{View(f.name), View(f.value)});
  }
  if (tunnel) head->headers.push_back(http1::Header{"Upgrade", View(protocol_)});
  if (cookie.set) head->headers.push_back(http1::Header{"cookie", View(cookie)});
  if (tunnel) {
    // What follows the head is the tunnel's, not a request body.
    head->body = http1::BodyKind::kNone;
    head->content_length = 0;
  } else if (content_length_ > 0) {
    head->body = http1::BodyKind::kContentLength;
    head->content_length = static_cast<uint64_t>(content_length_);
  } else if (content_length_ < 0 && body_follows_) {
    // Length unknown: chunked to the backend, which also carries trailers.
    head->body = http1::BodyKind::kChunked;
    head->content_length = 0;
    head->headers.push_back(http1::Header{"Transfer-Encoding", "chunked"});
  } else {
    head->body = http1::BodyKind::kNone;
    head->content_length = 0;
  }
  const std::string_view m = head->method;
  head->is_head = m == "HEAD";
  head->idempotent = m == "GET" || m == "HEAD" || m == "OPTIONS" || m == "TRACE" || m == "PUT" ||
                     m == "DELETE";
  head->keep_alive = true;
  head->expect_continue = false;
  head->upgrade = tunnel;
  if (tunnel) head->idempotent = false;
  head->head_len = arena_.size() + 32 * head->headers.size();
}

}  // namespace ktlb::http2
