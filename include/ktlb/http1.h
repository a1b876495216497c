// HTTP/1.1 message framing and header rewriting over llhttp.
//
// Pure functions and parsers over caller-owned buffers: no I/O, no allocation
// beyond the small vectors inside the result structs. Views in RequestHead /
// ResponseHead point into the buffer passed to ParseHead() and are valid only
// while that buffer is unchanged. Fuzz targets and unit tests drive these
// directly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ktlb::http1 {

// Why a request was refused. Each has a stable metric label and a status code.
enum class RequestError {
  kNone = 0,
  kBadRequest,            // generic garbage / llhttp error not listed below
  kRequestLineTooLong,    // 414
  kHeadersTooLarge,       // 431
  kBothContentLengthAndTransferEncoding,
  kDuplicateContentLength,  // differing values (identical duplicates are folded)
  kBadContentLength,
  kBadTransferEncoding,   // TE other than exactly "chunked" (or any TE in HTTP/1.0)
  kObsFold,               // header continuation line
  kBareCr,                // CR not followed by LF
  kBadChunk,              // invalid chunk size / framing in a chunked body
  kBadVersion,            // not HTTP/1.0 or HTTP/1.1
  kMissingHost,           // HTTP/1.1 request without Host
  kBadHeader,             // invalid header name or value characters
};
// Also kBadRequest: bare LF, more than one Host, CONNECT, malformed request
// line, absolute-form target whose authority differs from Host, unknown
// method. kHeadersTooLarge also covers more than Limits::max_headers fields.
const char* RequestErrorLabel(RequestError e);  // "obs_fold", "bare_cr", ...
// 414 (line), 431 (head), 501 (transfer coding), 505 (version), else 400.
int RequestErrorStatus(RequestError e);

struct Header {
  std::string_view name;
  std::string_view value;
};

enum class BodyKind { kNone, kContentLength, kChunked, kUntilClose /* responses only */ };

struct RequestHead {
  std::string_view method;
  std::string_view target;
  int version_minor = 1;  // HTTP/1.x
  std::vector<Header> headers;  // identical duplicate Content-Length folded into one
  // Host header value ("" if absent; the authority of an absolute-form target
  // when an HTTP/1.0 request has no Host). Only host characters: safe to echo.
  std::string_view host;
  // kNone also for "Content-Length: 0": kNone always means no body bytes follow.
  BodyKind body = BodyKind::kNone;
  uint64_t content_length = 0;
  bool keep_alive = true;        // after version + Connection header
  bool expect_continue = false;  // Expect: 100-continue
  bool upgrade = false;          // Connection: upgrade + Upgrade header, 1.1, never h2c
  bool idempotent = false;       // GET HEAD OPTIONS TRACE PUT DELETE
  bool is_head = false;          // method == HEAD
  size_t head_len = 0;           // bytes of the head, including the final CRLF CRLF
};

struct ResponseHead {
  int status = 0;
  int version_minor = 1;
  std::string_view reason;  // may be empty: BuildClientResponseHead supplies one
  // Identical duplicate Content-Lengths are folded into one, and a list of
  // identical values ("5, 5") becomes its first element. A head with both
  // Content-Length and Transfer-Encoding is refused.
  std::vector<Header> headers;
  BodyKind body = BodyKind::kNone;  // kNone for Content-Length: 0
  uint64_t content_length = 0;
  bool keep_alive = true;  // the upstream connection may be reused after this response
  size_t head_len = 0;
};

struct Limits {
  uint32_t max_request_line = 8192;  // request line (status line) without CRLF
  uint32_t max_header_bytes = 32768;  // whole head; also caps chunked trailers
  // Header fields per message. Head structs are reused with their capacity, so
  // this bounds what one connection's RequestHead can hold on to.
  uint32_t max_headers = 256;
};

enum class ParseStatus { kIncomplete, kDone, kError };

// Receives a body without its HTTP/1 framing: the payload, and a chunked
// body's trailer section ("name: value" CRLF lines, in pieces as they
// arrive). For a client protocol that frames bodies its own way (HTTP/2).
class BodyVisitor {
 public:
  virtual void OnBodyData(std::string_view data) = 0;
  virtual void OnTrailerBytes(std::string_view bytes) = 0;

 protected:
  ~BodyVisitor() = default;
};

// Splits a trailer section the chunked parser accepted (the bytes given to
// BodyVisitor::OnTrailerBytes, joined) into fields; values are trimmed.
// Views point into `section`.
void ParseTrailerSection(std::string_view section, std::vector<Header>* out);

// Request side. One parser per client connection, reused across keep-alive
// requests (Reset() between messages is done by ParseHead itself).
class RequestParser {
 public:
  explicit RequestParser(Limits limits);
  ~RequestParser();
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // `buf` starts at the first byte of a request. kIncomplete: need more bytes
  // (limits are enforced on what is already there, so an oversized head fails
  // without waiting for its end). kDone: *head filled, head->head_len bytes
  // belong to the head. kError: error() says why.
  // After kIncomplete, call again with the same bytes plus more (the buffer
  // may move; work already done is kept as offsets, so a head that trickles in
  // costs O(size) overall). *head is only written on kDone. After kDone (or
  // after the body ended), the next call starts a new request. kError is
  // final: the connection must be closed.
  // Forgets everything, including a sticky error: for a new connection.
  void Reset();

  ParseStatus ParseHead(std::string_view buf, RequestHead* head);

  // After a head with a body: feeds body bytes. *consumed is how many bytes of
  // `buf` belong to this message's body (framing included, for chunked: the
  // bytes are forwarded as-is). kDone when the body ended (the rest of buf is
  // the next request), kIncomplete when all of buf was body and more is due.
  ParseStatus ParseBody(std::string_view buf, size_t* consumed);

  // Body bytes that are pure payload from here on: the rest of a
  // Content-Length body, or the rest of the current chunk's data. 0 when the
  // next bytes are chunk framing (which must go through ParseBody) or no body
  // is due. The caller may move that many bytes without showing them to the
  // parser (splice) and then report them with SkipOpaqueBody.
  uint64_t OpaqueBodyBytes() const;
  // Accounts for n <= OpaqueBodyBytes() bytes moved elsewhere. kDone when they
  // ended the body (Content-Length), kIncomplete when more body is due.
  ParseStatus SkipOpaqueBody(uint64_t n);
  // In a chunked body: the size of the chunk being read (or just read), so a
  // caller can tell a body of large chunks worth splicing. 0 otherwise.
  uint64_t ChunkSize() const;

  RequestError error() const { return error_; }
  // Human-readable detail of the last kError, for logs (static string).
  const char* error_reason() const { return error_reason_; }

 private:
  struct Impl;
  ParseStatus Fail(RequestError e, const char* reason);

  std::unique_ptr<Impl> impl_;
  RequestError error_ = RequestError::kNone;
  const char* error_reason_ = "";
};

// Response side. One parser per upstream exchange. Tolerant where that cannot
// desync the client (see response_parser.cc): line ends may be bare LF.
class ResponseParser {
 public:
  ResponseParser();  // Limits{} defaults
  explicit ResponseParser(Limits limits);
  ~ResponseParser();
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  // Forgets everything, including a sticky error: for a new upstream
  // connection (connection objects, and their parser, are recycled).
  void Reset();

  // `request_was_head`: a response to HEAD has no body whatever its headers say.
  // 1xx, 204 and 304 have no body. A 1xx head is kDone too; the caller forwards
  // it and calls ParseHead again for the final response.
  ParseStatus ParseHead(std::string_view buf, bool request_was_head, ResponseHead* head);
  // Like RequestParser::ParseBody. For kUntilClose, every byte is body and the
  // caller ends the body at EOF. With a visitor, the payload of what was
  // consumed (and a chunked body's trailers) is also reported to it.
  ParseStatus ParseBody(std::string_view buf, size_t* consumed, BodyVisitor* visitor = nullptr);
  // As RequestParser's (a close-delimited body has none: its end is EOF).
  uint64_t OpaqueBodyBytes() const;
  ParseStatus SkipOpaqueBody(uint64_t n);
  uint64_t ChunkSize() const;
  // Human-readable reason of the last kError.
  const char* error_reason() const { return error_reason_; }

 private:
  struct Impl;
  ParseStatus Fail(const char* reason);

  std::unique_ptr<Impl> impl_;
  const char* error_reason_ = "";
};

// What ktlb tells the backend about the client connection.
struct ForwardingInfo {
  std::string_view client_ip;    // "203.0.113.7" or "2001:db8::1"
  uint16_t client_port = 0;
  std::string_view proto = "https";
  std::string_view sni;          // may be empty
  // mTLS listeners: X-Client-Cert-Verified (SUCCESS / NONE), and with a
  // verified certificate X-Client-Cert-Subject, -SAN (when it has SANs) and
  // -Fingerprint. Values must already be safe in a field (tls::CopyPeerIdentity).
  bool client_cert_headers = false;
  bool client_cert_verified = false;
  std::string_view client_cert_subject;
  std::string_view client_cert_san;
  std::string_view client_cert_fingerprint;
};

// Writes the request head to send upstream into *out (appending): request line
// as HTTP/1.1, the client's headers minus hop-by-hop ones (Connection and the
// names it lists, Keep-Alive, TE, Trailer, Transfer-Encoding is KEPT for
// framing, Upgrade unless head.upgrade, Proxy-*), minus any X-Forwarded-For,
// X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port, X-Real-IP,
// Forwarded and X-Client-Cert-* the client sent; then ktlb's own
// X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host (from Host), Forwarded
// (RFC 7239, IPv6 quoted and bracketed), the X-Client-Cert-* fields
// (ForwardingInfo), and "Connection: upgrade" + Upgrade when upgrading.
// Details: Connection cannot nominate Host, Content-Length or
// Transfer-Encoding (they stay); client forwarding headers are also matched
// with '_' for '-' (X_Forwarded_For); "Proxy" and HTTP2-Settings are dropped
// too; Expect is dropped for HTTP/1.0 clients (RFC 9110 10.1.1). A request
// without a Host field (HTTP/1.0) gets "Host: " + head.host, else fwd.sni.
// Forwarded's host= is quoted unless it is a token ("example.test:8443").
// Allocation-free when *out already has the capacity.
void BuildUpstreamRequestHead(const RequestHead& head, const ForwardingInfo& fwd,
                              std::string* out);

// The fields of `head` a client of another protocol (HTTP/2) gets, in
// order: hop-by-hop ones, Transfer-Encoding and the names Connection lists
// dropped. Appends pointers into head.headers to *out.
void EndToEndResponseFields(const ResponseHead& head, std::vector<const Header*>* out);

// Writes the response head to send to the client into *out (appending):
// status line as HTTP/1.1 (or 1.0 for a 1.0 client), upstream headers minus
// hop-by-hop ones, then "Connection: close" when `close_client` or
// "Connection: keep-alive" for a keep-alive HTTP/1.0 client.
// A 101 keeps its Upgrade field and gets "Connection: upgrade" (unless
// close_client). Framing fields are forwarded as parsed: the body bytes
// follow as-is, so a chunked body stays chunked even for a 1.0 client; the
// caller closes such a client connection (and any kUntilClose one).
void BuildClientResponseHead(const ResponseHead& head, int client_version_minor,
                             bool close_client, std::string* out);

// A complete short response generated by ktlb itself (400, 414, 431, 502, 504,
// ...): status line, Content-Type text/plain, Content-Length, Connection: close
// when `close`, and a one-line body.
// "Bad Gateway" for 502: the reason phrase ktlb uses in its own responses.
std::string_view ReasonPhrase(int status);

// `retry_after_s` > 0 adds "Retry-After: N" (a 503 while every backend is down).
void BuildErrorResponse(int status, bool close, std::string* out, uint32_t retry_after_s = 0);

// True when `name` equals `lower` case-insensitively (`lower` is lowercase).
bool HeaderNameIs(std::string_view name, std::string_view lower);

}  // namespace ktlb::http1
