// Building blocks shared by the HTTP/1 request and response parsers. Not a
// public header: only src/http1/*.cc include it.
//
// Why there is a tokenizer of our own next to llhttp: the llhttp that Debian
// ships is compiled in its loose mode, which accepts "Name : value",
// "Na me: value", bare-LF line ends, obs-fold, and does not check the CRLF that
// ends chunk data. Each of those is a known request-smuggling primitive. So
// every head and every chunked body is read by two parsers: the strict code
// below (which also produces the views) and llhttp (which must agree on every
// boundary and on the framing). A message is accepted only if both accept it.
#pragma once

#include <llhttp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

#include "ktlb/http1.h"

namespace ktlb::http1::internal {

// ---------------------------------------------------------------- characters

enum CharClass : uint8_t {
  kTchar = 1,       // token (RFC 9110 5.6.2): header names, methods, codings
  kFieldChar = 2,   // VCHAR / obs-text: inside header values, reason phrases
  kTargetChar = 4,  // request-target bytes: visible ASCII only
  kHostChar = 8,    // uri-host [ ":" port ]: reg-name, IP literals, port
  kHexDigit = 16,
  kLineEnd = 32,    // CR or LF: the only bytes the head scanner stops at
};

inline constexpr std::array<uint8_t, 256> kCharClasses = [] {
  std::array<uint8_t, 256> t{};
  for (int c = 0x21; c <= 0x7e; ++c) t[c] |= kFieldChar | kTargetChar;
  for (int c = 0x80; c <= 0xff; ++c) t[c] |= kFieldChar;
  for (int c = '0'; c <= '9'; ++c) t[c] |= kTchar | kHostChar | kHexDigit;
  for (int c = 'a'; c <= 'z'; ++c) t[c] |= kTchar | kHostChar;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] |= kTchar | kHostChar;
  for (int c = 'a'; c <= 'f'; ++c) t[c] |= kHexDigit;
  for (int c = 'A'; c <= 'F'; ++c) t[c] |= kHexDigit;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<uint8_t>(c)] |= kTchar;
  // No '"', '\\', '/', '@', '?', '#', space or controls: a host that passes
  // can be echoed into X-Forwarded-Host and a quoted Forwarded host= safely.
  for (char c : std::string_view("-._~!$&'()*+,;=%:[]")) t[static_cast<uint8_t>(c)] |= kHostChar;
  t['\r'] |= kLineEnd;
  t['\n'] |= kLineEnd;
  return t;
}();

inline bool Is(char c, CharClass cls) { return (kCharClasses[static_cast<uint8_t>(c)] & cls) != 0; }
inline bool IsOws(char c) { return c == ' ' || c == '\t'; }

// Eight bytes at a time (SWAR) for the two hot loops: finding line ends and
// validating field values. Each test is exact as a yes/no over the word; on
// "yes" the caller falls back to its byte loop for those bytes.
namespace swar {
inline constexpr uint64_t kOnes = 0x0101010101010101ULL;
inline constexpr uint64_t kHighs = 0x8080808080808080ULL;
inline uint64_t Load(const char* p) {
  uint64_t w;
  __builtin_memcpy(&w, p, sizeof(w));  // unaligned-safe
  return w;
}
// Some byte of w is < n (n <= 128).
inline bool HasLess(uint64_t w, uint8_t n) { return ((w - kOnes * n) & ~w & kHighs) != 0; }
// Some byte of w equals b.
inline bool Has(uint64_t w, uint8_t b) { return HasLess(w ^ (kOnes * b), 1); }
}  // namespace swar

// Index of the first CR or LF in [from, to), or `to`.
inline size_t FindLineEnd(const char* p, size_t from, size_t to) {
  size_t i = from;
  while (i + 8 <= to) {
    const uint64_t w = swar::Load(p + i);
    if (swar::Has(w, '\r') || swar::Has(w, '\n')) break;
    i += 8;
  }
  while (i < to && !Is(p[i], kLineEnd)) ++i;
  return i;
}

// field-value bytes: VCHAR, obs-text, SP, HTAB (RFC 9110 5.5).
inline bool IsFieldValue(std::string_view v) {
  const char* p = v.data();
  const size_t n = v.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      const uint64_t w = swar::Load(p + i);
      if (!swar::HasLess(w, 0x20) && !swar::Has(w, 0x7f)) {
        i += 8;
        continue;
      }
    }
    const char c = p[i++];
    if (!Is(c, kFieldChar) && !IsOws(c)) return false;
  }
  return true;
}
bool AllOf(std::string_view s, CharClass cls);
std::string_view TrimOws(std::string_view s);
// ASCII case-insensitive equality of two arbitrary strings.
bool EqualsNoCase(std::string_view a, std::string_view b);
// Like HeaderNameIs, but '_' in `name` matches '-' in `lower`. Backends behind
// CGI-style gateways (PHP, many frameworks) map both to the same variable, so
// "X_Forwarded_For" or "Content_Length" must be treated as the real thing.
bool HeaderNameIsLoose(std::string_view name, std::string_view lower);

// Calls f(token) for each non-empty element of a comma-separated list
// (RFC 9110 5.6.1), elements trimmed of OWS. Stops early when f returns false.
template <typename F>
void ForEachListElement(std::string_view value, F&& f) {
  size_t start = 0;
  while (start <= value.size()) {
    size_t comma = value.find(',', start);
    if (comma == std::string_view::npos) comma = value.size();
    std::string_view elem = TrimOws(value.substr(start, comma - start));
    if (!elem.empty() && !f(elem)) return;
    start = comma + 1;
  }
}

// Content-Length: 1*DIGIT, at most INT64_MAX. Larger values are refused
// because intermediaries disagree on how they overflow (signed vs unsigned).
bool ParseContentLength(std::string_view v, uint64_t* out);
// A Content-Length that is a list of identical values ("5, 5"), which a
// recipient may take as the single value (RFC 9110 8.6). *first is the first
// element (a view into v). False for differing or invalid elements.
bool ParseContentLengthList(std::string_view v, uint64_t* out, std::string_view* first);

// Splits a header line (no CRLF) into name and OWS-trimmed value. False when
// the name is not a token, is empty, or is followed by anything but ':', or
// when the value holds a control character.
bool SplitHeaderLine(std::string_view line, Header* out);

// Host header value: empty, or host chars only (see kHostChar).
inline bool IsValidHost(std::string_view host) { return AllOf(host, kHostChar); }

// Header names the parsers and rewriters care about, classified once.
enum class KnownHeader : uint8_t {
  kOther,
  kHost,
  kContentLength,
  kTransferEncoding,
  kConnection,
  kExpect,
  kUpgrade,
  kSpoofedFraming,  // host/content-length/transfer-encoding spelled with '_'
};
KnownHeader ClassifyHeader(std::string_view name);

// Tokens of Connection headers that matter to framing and keep-alive.
struct ConnectionTokens {
  bool close = false;
  bool keep_alive = false;
  bool upgrade = false;
  bool others = false;  // names other hop-by-hop headers
  void Add(std::string_view value);
};

// ------------------------------------------------------------- head scanner

enum class ScanError : uint8_t { kNone, kFirstLineTooLong, kHeadTooLarge, kBareCr, kBareLf, kObsFold };

// Which line ends a head may use. Clients must send CRLF (a bare LF is a
// smuggling primitive between intermediaries that disagree on it); backends
// may also end lines with a bare LF (RFC 9112 2.2 lets a recipient accept it,
// and CGI scripts behind busybox httpd and others do it), because ktlb never
// forwards their line ends: it rebuilds every head it sends with CRLF.
enum class LineEnds : uint8_t { kCrlf, kCrlfOrLf };

// Finds the end of a message head incrementally, enforcing line structure
// (every line ends in CRLF, or CRLF or LF with LineEnds::kCrlfOrLf; never a
// bare CR; no obs-fold) and the size limits on whatever has arrived. State is
// offsets only, so the caller may move its buffer between calls as long as
// the bytes already seen stay the same.
// Errors are reported at the first offending byte in stream order, so the
// outcome does not depend on how the bytes were split into calls.
class HeadScanner {
 public:
  void Reset() { *this = HeadScanner(); }
  ParseStatus Scan(std::string_view buf, uint32_t max_first_line, uint32_t max_head,
                   LineEnds ends = LineEnds::kCrlf);

  ScanError error() const { return error_; }
  // Valid after kDone. Leading empty lines (RFC 9112 2.2) precede the first.
  size_t first_line_start() const { return first_line_start_; }
  size_t first_line_end() const { return first_line_end_; }  // index of its CR (or LF)
  // The header lines: from after the first line's end to the start of the
  // empty line (equal when there are none).
  size_t fields_start() const { return fields_start_; }
  size_t fields_end() const { return fields_end_; }
  size_t head_end() const { return head_end_; }  // after the empty line's CRLF (or LF)
  // Some line of the head ended in a bare LF (LineEnds::kCrlfOrLf only).
  bool saw_bare_lf() const { return saw_bare_lf_; }

 private:
  size_t pos_ = 0;
  size_t line_start_ = 0;
  size_t first_line_start_ = 0;
  size_t first_line_end_ = 0;
  size_t fields_start_ = 0;
  size_t fields_end_ = 0;
  size_t head_end_ = 0;
  bool seen_first_line_ = false;
  bool saw_bare_lf_ = false;
  ScanError error_ = ScanError::kNone;
};

// ----------------------------------------------------------- chunked bodies

// Strict validator of chunked framing (RFC 9112 7.1): hex size without BWS,
// extensions of visible characters, CRLF after every size line and every chunk
// of data, trailer fields with token names and no obs-fold. Finds the exact
// end of the message. It never copies: data is skipped in bulk.
class ChunkedScanner {
 public:
  // Longest accepted chunk-size line (size plus extensions).
  static constexpr uint32_t kMaxSizeLine = 4096;

  void Reset(uint32_t max_trailer_bytes);
  // kDone: *consumed bytes complete the body. kIncomplete: all of buf is body.
  // With a visitor, the chunk data and the trailer section's bytes are
  // reported as they are scanned (the framing around them is not).
  ParseStatus Scan(std::string_view buf, size_t* consumed, BodyVisitor* visitor = nullptr);
  // Bytes of data left in the current chunk; 0 unless the next byte is chunk
  // data (the framing around the data must always be scanned).
  uint64_t DataLeft() const { return state_ == State::kData ? size_ : 0; }
  // Size of the chunk being read, or of the last one (0 before the first).
  uint64_t ChunkSize() const { return chunk_size_; }
  // Accounts for n <= DataLeft() data bytes the caller moved without
  // scanning them (spliced): data is opaque, only its length matters.
  void SkipData(uint64_t n) {
    size_ -= n;
    if (size_ == 0) state_ = State::kDataCr;
  }

 private:
  enum class State : uint8_t {
    kSizeFirst, kSize, kExt, kSizeLf, kData, kDataCr, kDataLf,
    kTrailerStart, kTrailerName, kTrailerValue, kTrailerLf, kFinalLf, kDone, kError,
  };
  State state_ = State::kSizeFirst;
  uint64_t size_ = 0;  // of the chunk being read, then what is left of it
  uint64_t chunk_size_ = 0;
  uint32_t line_bytes_ = 0;
  uint32_t trailer_bytes_ = 0;
  uint32_t max_trailer_bytes_ = 0;
};

// ------------------------------------------------------------------- llhttp

// llhttp settings that pause at the end of the head and at the end of the
// message, so llhttp_get_error_pos() tells exactly where llhttp thinks those
// are. No data callbacks: llhttp is used as a validator, the views come from
// our tokenizer.
const llhttp_settings_t* PausingSettings();

// Lines of the head that llhttp must not see: identical duplicate
// Content-Length lines (llhttp rejects any duplicate, we fold identical ones)
// and, in responses, Content-Length lists of identical values ("5, 5").
struct SkipList {
  static constexpr size_t kMax = 4;
  std::array<std::pair<size_t, size_t>, kMax> ranges{};  // [begin, end)
  size_t size = 0;
  bool Add(size_t begin, size_t end) {
    if (size == kMax) return false;
    ranges[size++] = {begin, end};
    return true;
  }
};

// Runs `ll` (freshly initialised) over buf[0, head_end) minus `skips`. Returns
// HPE_OK when llhttp accepted the head and paused in on_headers_complete
// exactly at head_end; llhttp's error otherwise (HPE_INTERNAL when llhttp
// simply disagrees about where the head ends).
llhttp_errno_t LlhttpCheckHead(llhttp_t* ll, std::string_view buf, size_t head_end,
                               const SkipList& skips);

// Runs a resumed `ll` over the body bytes the ChunkedScanner attributed to the
// message. `done`: the scanner saw the end, so llhttp must pause in
// on_message_complete exactly at the end of `bytes`; otherwise llhttp must
// take all of `bytes` without finishing. True when llhttp agrees.
bool LlhttpCheckChunked(llhttp_t* ll, std::string_view bytes, bool done);
// Moves llhttp over n bytes of chunk data it will never see (they were
// spliced), by feeding it zeros: inside chunk data llhttp only counts. False
// if llhttp was not in chunk data for all n bytes.
bool LlhttpSkipChunkData(llhttp_t* ll, uint64_t n);

// SkipOpaqueBody for either parser's state (`remaining`, `chunked`, `ll`,
// `phase` with a kIdle): n <= the opaque bytes, checked by the caller.
enum class SkipResult { kIncomplete, kDone, kLlhttpDisagrees };
template <class ParserState>
SkipResult SkipOpaqueBytes(ParserState& s, uint64_t n) {
  if (s.body == BodyKind::kContentLength) {
    s.remaining -= n;
    if (s.remaining != 0) return SkipResult::kIncomplete;
    s.phase = decltype(s.phase)::kIdle;
    return SkipResult::kDone;
  }
  s.chunked.SkipData(n);
  return LlhttpSkipChunkData(&s.ll, n) ? SkipResult::kIncomplete : SkipResult::kLlhttpDisagrees;
}

}  // namespace ktlb::http1::internal
