// RequestParser: every RequestError with its status, head fields, and bodies.
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

struct Outcome {
  ParseStatus status;
  RequestError error;
};

// Parses one complete head from `text` with fresh default limits.
Outcome ParseOnce(std::string_view text, RequestHead* head, Limits limits = Limits{}) {
  RequestParser p(limits);
  ParseStatus st = p.ParseHead(text, head);
  return {st, p.error()};
}

RequestError HeadError(std::string_view text, Limits limits = Limits{}) {
  RequestHead head;
  Outcome o = ParseOnce(text, &head, limits);
  EXPECT_EQ(o.status == ParseStatus::kError, o.error != RequestError::kNone) << text;
  return o.status == ParseStatus::kError ? o.error : RequestError::kNone;
}

std::string Get(std::string_view extra_headers = "") {
  return "GET /index.html?q=1 HTTP/1.1\r\nHost: example.test\r\n" + std::string(extra_headers) +
         "\r\n";
}

// Parses a chunked POST head, then feeds `body` and returns the ParseBody
// status; *consumed receives the body length the parser claimed.
ParseStatus ChunkedBody(std::string_view body, size_t* consumed, RequestError* error) {
  RequestParser p(Limits{});
  RequestHead head;
  const std::string msg =
      "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + std::string(body);
  EXPECT_EQ(p.ParseHead(msg, &head), ParseStatus::kDone);
  EXPECT_EQ(head.body, BodyKind::kChunked);
  ParseStatus st = p.ParseBody(std::string_view(msg).substr(head.head_len), consumed);
  *error = p.error();
  return st;
}

// --------------------------------------------------------------- happy path

TEST(Http1RequestParser, SimpleGetFillsEveryField) {
  const std::string req = Get("User-Agent: t\r\nAccept:   */*  \r\n");
  RequestHead head;
  ASSERT_EQ(ParseOnce(req, &head).status, ParseStatus::kDone);
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.target, "/index.html?q=1");
  EXPECT_EQ(head.version_minor, 1);
  EXPECT_EQ(head.host, "example.test");
  ASSERT_EQ(head.headers.size(), 3u);
  EXPECT_EQ(head.headers[0].name, "Host");
  EXPECT_EQ(head.headers[2].name, "Accept");
  EXPECT_EQ(head.headers[2].value, "*/*");  // OWS trimmed on both sides
  EXPECT_EQ(head.body, BodyKind::kNone);
  EXPECT_TRUE(head.keep_alive);
  EXPECT_TRUE(head.idempotent);
  EXPECT_FALSE(head.is_head);
  EXPECT_FALSE(head.expect_continue);
  EXPECT_FALSE(head.upgrade);
  EXPECT_EQ(head.head_len, req.size());
  // Views point into the caller's buffer, not into copies.
  EXPECT_EQ(head.method.data(), req.data());
  EXPECT_GE(head.headers[1].value.data(), req.data());
  EXPECT_LT(head.headers[1].value.data(), req.data() + req.size());
}

TEST(Http1RequestParser, KeepAliveFollowsVersionAndConnection) {
  struct Case {
    std::string req;
    bool keep_alive;
  } cases[] = {
      {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", false},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
  };
  for (const Case& c : cases) {
    RequestHead head;
    ASSERT_EQ(ParseOnce(c.req, &head).status, ParseStatus::kDone) << c.req;
    EXPECT_EQ(head.keep_alive, c.keep_alive) << c.req;
  }
}

TEST(Http1RequestParser, FlagsExpectUpgradeIdempotentHead) {
  RequestHead head;
  ASSERT_EQ(ParseOnce("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
                      "Content-Length: 3\r\n\r\n",
                      &head)
                .status,
            ParseStatus::kDone);
  EXPECT_TRUE(head.expect_continue);
  EXPECT_FALSE(head.idempotent);
  EXPECT_EQ(head.body, BodyKind::kContentLength);
  EXPECT_EQ(head.content_length, 3u);

  ASSERT_EQ(ParseOnce("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                      "Upgrade: websocket\r\n\r\n",
                      &head)
                .status,
            ParseStatus::kDone);
  EXPECT_TRUE(head.upgrade);

  // h2c is never an upgrade: a tunnelled HTTP/2 connection would bypass routing.
  ASSERT_EQ(ParseOnce("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      "Upgrade: websocket, H2C\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
                      &head)
                .status,
            ParseStatus::kDone);
  EXPECT_FALSE(head.upgrade);

  // Upgrade without the Connection token is not an upgrade.
  ASSERT_EQ(ParseOnce(Get("Upgrade: websocket\r\n"), &head).status, ParseStatus::kDone);
  EXPECT_FALSE(head.upgrade);

  ASSERT_EQ(ParseOnce("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", &head).status, ParseStatus::kDone);
  EXPECT_TRUE(head.is_head);
  EXPECT_TRUE(head.idempotent);
  for (const char* m : {"PUT", "DELETE", "OPTIONS", "TRACE"}) {
    ASSERT_EQ(ParseOnce(std::string(m) + " / HTTP/1.1\r\nHost: a\r\n\r\n", &head).status,
              ParseStatus::kDone);
    EXPECT_TRUE(head.idempotent) << m;
  }
  ASSERT_EQ(ParseOnce("PATCH / HTTP/1.1\r\nHost: a\r\n\r\n", &head).status, ParseStatus::kDone);
  EXPECT_FALSE(head.idempotent);
}

TEST(Http1RequestParser, ExpectContinueIgnoredForHttp10) {
  RequestHead head;
  ASSERT_EQ(ParseOnce("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                      &head)
                .status,
            ParseStatus::kDone);
  EXPECT_FALSE(head.expect_continue);
}

TEST(Http1RequestParser, ContentLengthZeroHasNoBody) {
  RequestHead head;
  ASSERT_EQ(ParseOnce(Get("Content-Length: 0\r\n"), &head).status, ParseStatus::kDone);
  EXPECT_EQ(head.body, BodyKind::kNone);
  EXPECT_EQ(head.content_length, 0u);
}

TEST(Http1RequestParser, IdenticalDuplicateContentLengthIsFoldedIntoOne) {
  RequestHead head;
  ASSERT_EQ(ParseOnce("POST / HTTP/1.1\r\nContent-Length: 5\r\nHost: a\r\n"
                      "Content-Length: 5\r\n\r\n",
                      &head)
                .status,
            ParseStatus::kDone);
  EXPECT_EQ(head.content_length, 5u);
  int n = 0;
  for (const Header& h : head.headers) n += HeaderNameIs(h.name, "content-length");
  EXPECT_EQ(n, 1);
  EXPECT_EQ(head.headers.size(), 2u);
}

TEST(Http1RequestParser, LeadingEmptyLinesAreSkipped) {
  const std::string req = "\r\n\r\n" + Get();
  RequestHead head;
  ASSERT_EQ(ParseOnce(req, &head).status, ParseStatus::kDone);
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.head_len, req.size());
}

TEST(Http1RequestParser, AbsoluteFormMustMatchHost) {
  RequestHead head;
  ASSERT_EQ(ParseOnce("GET http://Example.test/x HTTP/1.1\r\nHost: example.test\r\n\r\n", &head)
                .status,
            ParseStatus::kDone);
  EXPECT_EQ(head.target, "http://Example.test/x");
  EXPECT_EQ(HeadError("GET http://admin.internal/ HTTP/1.1\r\nHost: example.test\r\n\r\n"),
            RequestError::kBadRequest);
  EXPECT_EQ(HeadError("GET http://u@example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n"),
            RequestError::kBadRequest);
  // HTTP/1.0 without Host: the authority becomes the host.
  ASSERT_EQ(ParseOnce("GET http://example.test/ HTTP/1.0\r\n\r\n", &head).status,
            ParseStatus::kDone);
  EXPECT_EQ(head.host, "example.test");
}

TEST(Http1RequestParser, AsteriskOnlyForOptions) {
  RequestHead head;
  EXPECT_EQ(ParseOnce("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &head).status, ParseStatus::kDone);
  EXPECT_EQ(HeadError("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::kBadRequest);
}

TEST(Http1RequestParser, ObsTextAllowedInValues) {
  RequestHead head;
  const std::string req = Get("X-Name: caf\xc3\xa9\r\n");  // views point into it
  ASSERT_EQ(ParseOnce(req, &head).status, ParseStatus::kDone);
  EXPECT_EQ(head.headers[1].value, "caf\xc3\xa9");
}

TEST(Http1RequestParser, IncompleteHeadContinuesInAMovedBuffer) {
  RequestParser p(Limits{});
  RequestHead head;
  const std::string req = Get("X-A: 1\r\n");
  std::string buf = req.substr(0, 20);
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kIncomplete);
  std::string moved = req.substr(0, req.size() - 1);  // new allocation
  EXPECT_EQ(p.ParseHead(moved, &head), ParseStatus::kIncomplete);
  std::string full = req;
  ASSERT_EQ(p.ParseHead(full, &head), ParseStatus::kDone);
  EXPECT_EQ(head.method.data(), full.data());
  EXPECT_EQ(head.headers[1].value, "1");
}

TEST(Http1RequestParser, HeaderVectorKeepsCapacityAcrossRequests) {
  RequestParser p(Limits{});
  RequestHead head;
  const std::string a = Get("A: 1\r\nB: 2\r\nC: 3\r\n");
  ASSERT_EQ(p.ParseHead(a, &head), ParseStatus::kDone);
  const size_t cap = head.headers.capacity();
  const Header* storage = head.headers.data();
  const std::string b = Get("D: 4\r\n");
  ASSERT_EQ(p.ParseHead(b, &head), ParseStatus::kDone);
  EXPECT_EQ(head.headers.size(), 2u);
  EXPECT_EQ(head.headers.capacity(), cap);
  EXPECT_EQ(head.headers.data(), storage);
}

// ------------------------------------------------------ one test per error

TEST(Http1RequestErrors, BadRequestGarbage) {
  EXPECT_EQ(HeadError("HELLO\r\n\r\n"), RequestError::kBadRequest);
  EXPECT_EQ(HeadError("\x16\x03\x01 x y\r\n\r\n"), RequestError::kBadRequest);  // TLS bytes
  EXPECT_EQ(HeadError("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::kBadRequest);
  EXPECT_EQ(HeadError("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), RequestError::kBadVersion);
  EXPECT_EQ(HeadError("GET / http/1.1\r\nHost: a\r\n\r\n"), RequestError::kBadRequest);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBadRequest), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kBadRequest), "bad_request");
}

TEST(Http1RequestErrors, UnknownMethodRefusedByLlhttp) {
  EXPECT_EQ(HeadError("FROB / HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::kBadRequest);
}

TEST(Http1RequestErrors, ConnectIsRefused) {
  EXPECT_EQ(HeadError("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"),
            RequestError::kBadRequest);
}

TEST(Http1RequestErrors, BareLfIsBadRequest) {
  EXPECT_EQ(HeadError("GET / HTTP/1.1\nHost: a\n\n"), RequestError::kBadRequest);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\n\n"), RequestError::kBadRequest);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\nb\r\n\r\n"), RequestError::kBadRequest);
}

TEST(Http1RequestErrors, RequestLineTooLongAtTheLimit) {
  Limits l;
  l.max_request_line = 32;
  // "GET /" + path + " HTTP/1.1" == exactly 32 bytes is fine...
  const std::string ok_line = "GET /" + std::string(18, 'a') + " HTTP/1.1";
  ASSERT_EQ(ok_line.size(), 32u);
  EXPECT_EQ(HeadError(ok_line + "\r\nHost: a\r\n\r\n", l), RequestError::kNone);
  // ...one more byte is not.
  const std::string long_line = "GET /" + std::string(19, 'a') + " HTTP/1.1";
  EXPECT_EQ(HeadError(long_line + "\r\nHost: a\r\n\r\n", l), RequestError::kRequestLineTooLong);
  EXPECT_EQ(RequestErrorStatus(RequestError::kRequestLineTooLong), 414);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kRequestLineTooLong), "request_line_too_long");
}

TEST(Http1RequestErrors, RequestLineTooLongBeforeCrlfArrives) {
  Limits l;
  l.max_request_line = 64;
  RequestParser p(l);
  RequestHead head;
  std::string buf = "GET /" + std::string(59, 'a');  // 64 bytes, could still end
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kIncomplete);
  buf += "\r";  // CR right at the limit is fine
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kIncomplete);
  RequestParser q(l);
  std::string over = "GET /" + std::string(60, 'a');  // 65 bytes, no CRLF yet
  EXPECT_EQ(q.ParseHead(over, &head), ParseStatus::kError);
  EXPECT_EQ(q.error(), RequestError::kRequestLineTooLong);
}

TEST(Http1RequestErrors, HeadersTooLargeBeforeTheHeadEnds) {
  Limits l;
  l.max_header_bytes = 256;
  RequestParser p(l);
  RequestHead head;
  std::string buf = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(200, 'x');
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kIncomplete);
  buf += std::string(100, 'x');  // never ends, already too big
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kError);
  EXPECT_EQ(p.error(), RequestError::kHeadersTooLarge);
  EXPECT_EQ(RequestErrorStatus(RequestError::kHeadersTooLarge), 431);
}

TEST(Http1RequestErrors, HeadersTooLargeExactBoundary) {
  const std::string req = Get("X-Pad: " + std::string(50, 'p') + "\r\n");
  Limits l;
  l.max_header_bytes = static_cast<uint32_t>(req.size());
  EXPECT_EQ(HeadError(req, l), RequestError::kNone);
  l.max_header_bytes = static_cast<uint32_t>(req.size() - 1);
  EXPECT_EQ(HeadError(req, l), RequestError::kHeadersTooLarge);
}

TEST(Http1RequestErrors, TooManyHeaderFields) {
  Limits l;
  l.max_headers = 4;
  EXPECT_EQ(HeadError(Get("A: 1\r\nB: 1\r\nC: 1\r\n"), l), RequestError::kNone);
  EXPECT_EQ(HeadError(Get("A: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n"), l), RequestError::kHeadersTooLarge);
}

TEST(Http1RequestErrors, BothContentLengthAndTransferEncoding) {
  EXPECT_EQ(HeadError("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"),
            RequestError::kBothContentLengthAndTransferEncoding);
  EXPECT_EQ(HeadError("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Length: 0\r\n\r\n"),
            RequestError::kBothContentLengthAndTransferEncoding);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBothContentLengthAndTransferEncoding), 400);
}

TEST(Http1RequestErrors, DuplicateContentLengthDiffering) {
  EXPECT_EQ(HeadError("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"),
            RequestError::kDuplicateContentLength);
  EXPECT_EQ(RequestErrorStatus(RequestError::kDuplicateContentLength), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kDuplicateContentLength),
               "duplicate_content_length");
}

TEST(Http1RequestErrors, BadContentLength) {
  for (const char* v : {"abc", "+5", "-1", "5,5", "5, 5", "0x10", "", "5 5",
                        "9223372036854775808", "99999999999999999999"}) {
    EXPECT_EQ(HeadError(Get("Content-Length: " + std::string(v) + "\r\n")),
              RequestError::kBadContentLength)
        << v;
  }
  EXPECT_EQ(HeadError(Get("Content-Length: 9223372036854775807\r\n")), RequestError::kNone);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBadContentLength), 400);
}

TEST(Http1RequestErrors, BadTransferEncoding) {
  for (const char* v : {"gzip", "identity", "chunked, gzip", "gzip, chunked", "chunked, chunked",
                        "chunked;q=1", "", "chunked,"}) {
    EXPECT_EQ(HeadError("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + std::string(v) +
                        "\r\n\r\n"),
              RequestError::kBadTransferEncoding)
        << v;
  }
  // Split across two fields counts the same as a list.
  EXPECT_EQ(HeadError("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"),
            RequestError::kBadTransferEncoding);
  EXPECT_EQ(HeadError("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            RequestError::kBadTransferEncoding);
  // Case-insensitive "chunked" is fine.
  EXPECT_EQ(HeadError("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            RequestError::kNone);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBadTransferEncoding), 501);
}

TEST(Http1RequestErrors, ObsFold) {
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"), RequestError::kObsFold);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n"), RequestError::kObsFold);
  // Whitespace before the first field is the same trick.
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), RequestError::kObsFold);
  EXPECT_EQ(RequestErrorStatus(RequestError::kObsFold), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kObsFold), "obs_fold");
}

TEST(Http1RequestErrors, BareCrAnywhereInTheHead) {
  EXPECT_EQ(HeadError("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::kBareCr);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"), RequestError::kBareCr);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nX\r: b\r\nHost: a\r\n\r\n"), RequestError::kBareCr);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n"), RequestError::kBareCr);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBareCr), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kBareCr), "bare_cr");
}

TEST(Http1RequestErrors, BareCrDetectedWhenTheNextByteArrives) {
  RequestParser p(Limits{});
  RequestHead head;
  std::string buf = "GET / HTTP/1.1\r\nHost: a\r";
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kIncomplete);
  buf += "X";
  EXPECT_EQ(p.ParseHead(buf, &head), ParseStatus::kError);
  EXPECT_EQ(p.error(), RequestError::kBareCr);
}

TEST(Http1RequestErrors, BadVersion) {
  EXPECT_EQ(HeadError("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), RequestError::kBadVersion);
  EXPECT_EQ(HeadError("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), RequestError::kBadVersion);
  EXPECT_EQ(HeadError("GET / HTTP/0.9\r\n\r\n"), RequestError::kBadVersion);
  EXPECT_EQ(HeadError("GET /\r\n\r\n"), RequestError::kBadVersion);
  EXPECT_EQ(HeadError("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), RequestError::kBadVersion);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBadVersion), 505);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kBadVersion), "bad_version");
}

TEST(Http1RequestErrors, MissingHost) {
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"), RequestError::kMissingHost);
  EXPECT_EQ(HeadError("GET / HTTP/1.0\r\n\r\n"), RequestError::kNone);  // 1.0 may omit it
  EXPECT_EQ(RequestErrorStatus(RequestError::kMissingHost), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kMissingHost), "missing_host");
}

TEST(Http1RequestErrors, MoreThanOneHost) {
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), RequestError::kBadRequest);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), RequestError::kBadRequest);
}

TEST(Http1RequestErrors, BadHeader) {
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
            RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHo st: a\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nNoColon\r\nHost: a\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError(Get(std::string("X: a\0b\r\n", 8))), RequestError::kBadHeader);
  EXPECT_EQ(HeadError(Get("X: a\x7f" "b\r\n")), RequestError::kBadHeader);
  EXPECT_EQ(HeadError(Get("X: a\x01" "b\r\n")), RequestError::kBadHeader);
  EXPECT_EQ(RequestErrorStatus(RequestError::kBadHeader), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kBadHeader), "bad_header");
}

TEST(Http1RequestErrors, HostMustBeAHost) {
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n"), RequestError::kNone);
}

TEST(Http1RequestErrors, UnderscoreSpellingsOfFramingHeaders) {
  EXPECT_EQ(HeadError(Get("Content_Length: 5\r\n")), RequestError::kBadHeader);
  EXPECT_EQ(HeadError(Get("Transfer_Encoding: chunked\r\n")), RequestError::kBadHeader);
  EXPECT_EQ(HeadError("GET / HTTP/1.1\r\nHost: a\r\nHo_st: b\r\n\r\n"), RequestError::kNone);
}

TEST(Http1RequestErrors, ErrorsAreFinal) {
  RequestParser p(Limits{});
  RequestHead head;
  EXPECT_EQ(p.ParseHead("GET / HTTP/1.1\r\n\r\n", &head), ParseStatus::kError);
  EXPECT_EQ(p.error(), RequestError::kMissingHost);
  EXPECT_NE(std::string_view(p.error_reason()), "");
  EXPECT_EQ(p.ParseHead(Get(), &head), ParseStatus::kError);
  size_t consumed = 7;
  EXPECT_EQ(p.ParseBody("x", &consumed), ParseStatus::kError);
  EXPECT_EQ(consumed, 0u);
}

TEST(Http1RequestErrors, LabelsAreStableAndDistinct) {
  const RequestError all[] = {
      RequestError::kNone, RequestError::kBadRequest, RequestError::kRequestLineTooLong,
      RequestError::kHeadersTooLarge, RequestError::kBothContentLengthAndTransferEncoding,
      RequestError::kDuplicateContentLength, RequestError::kBadContentLength,
      RequestError::kBadTransferEncoding, RequestError::kObsFold, RequestError::kBareCr,
      RequestError::kBadChunk, RequestError::kBadVersion, RequestError::kMissingHost,
      RequestError::kBadHeader,
  };
  for (size_t i = 0; i < std::size(all); ++i) {
    for (size_t j = i + 1; j < std::size(all); ++j) {
      EXPECT_STRNE(RequestErrorLabel(all[i]), RequestErrorLabel(all[j]));
    }
  }
}

// ------------------------------------------------------------------- bodies

TEST(Http1RequestBody, ContentLengthCountsDown) {
  RequestParser p(Limits{});
  RequestHead head;
  const std::string msg = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789GET";
  ASSERT_EQ(p.ParseHead(msg, &head), ParseStatus::kDone);
  std::string_view rest = std::string_view(msg).substr(head.head_len);
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(rest.substr(0, 4), &consumed), ParseStatus::kIncomplete);
  EXPECT_EQ(consumed, 4u);
  EXPECT_EQ(p.ParseBody(rest.substr(4), &consumed), ParseStatus::kDone);
  EXPECT_EQ(consumed, 6u);  // "GET" belongs to the next request
}

TEST(Http1RequestBody, NoBodyMeansDoneImmediately) {
  RequestParser p(Limits{});
  RequestHead head;
  ASSERT_EQ(p.ParseHead(Get(), &head), ParseStatus::kDone);
  size_t consumed = 9;
  EXPECT_EQ(p.ParseBody("GET / HT", &consumed), ParseStatus::kDone);
  EXPECT_EQ(consumed, 0u);
}

TEST(Http1RequestBody, ChunkedWithExtensionsAndTrailers) {
  const std::string body =
      "5;name=value\r\nhello\r\n"
      "6;flag;other\r\n world\r\n"
      "a;q=\"quoted ; value\"\r\n0123456789\r\n"
      "0\r\nX-Checksum: abc\r\nX-Other:\tv \r\n\r\n";
  size_t consumed = 0;
  RequestError err;
  EXPECT_EQ(ChunkedBody(body + "GET / HTTP/1.1\r\n", &consumed, &err), ParseStatus::kDone);
  EXPECT_EQ(consumed, body.size());
}

TEST(Http1RequestBody, ChunkedUppercaseHexAndLeadingZeros) {
  const std::string body = "000A\r\n0123456789\r\n00\r\n\r\n";
  size_t consumed = 0;
  RequestError err;
  EXPECT_EQ(ChunkedBody(body, &consumed, &err), ParseStatus::kDone);
  EXPECT_EQ(consumed, body.size());
}

TEST(Http1RequestBody, ChunkedIncompleteConsumesEverything) {
  size_t consumed = 0;
  RequestError err;
  EXPECT_EQ(ChunkedBody("5\r\nhel", &consumed, &err), ParseStatus::kIncomplete);
  EXPECT_EQ(consumed, 6u);
}

TEST(Http1RequestBody, BadChunk) {
  const char* bad[] = {
      "zz\r\nhello\r\n0\r\n\r\n",             // not hex
      "5\r\nhelloXX0\r\n\r\n",                // data not followed by CRLF
      "5\nhello\r\n0\r\n\r\n",                // bare LF after size
      "5 ;a=b\r\nhello\r\n0\r\n\r\n",         // BWS
      "5\r\nhello\r\n0\r\n\n",                // bare LF at the end
      "5\r\nhello\r\n0\r\nX : y\r\n\r\n",     // space before colon in trailer
      "5\r\nhello\r\n0\r\nX: y\r\n z\r\n\r\n",  // obs-fold in trailer
      "5\r\nhello\r\n0\r\nX: y\rz\r\n\r\n",   // bare CR in trailer
      "10000000000000000\r\n",                 // 2^64: overflow
      "-1\r\n",
      "\r\n",                                  // empty size
      "5;a\x01\r\nhello\r\n0\r\n\r\n",         // control char in extension
  };
  for (const char* b : bad) {
    size_t consumed = 99;
    RequestError err = RequestError::kNone;
    EXPECT_EQ(ChunkedBody(b, &consumed, &err), ParseStatus::kError) << b;
    EXPECT_EQ(err, RequestError::kBadChunk) << b;
    EXPECT_EQ(consumed, 0u);
  }
  EXPECT_EQ(RequestErrorStatus(RequestError::kBadChunk), 400);
  EXPECT_STREQ(RequestErrorLabel(RequestError::kBadChunk), "bad_chunk");
}

TEST(Http1RequestBody, ChunkedTrailersCappedByHeaderLimit) {
  Limits l;
  l.max_header_bytes = 64;
  RequestParser p(l);
  RequestHead head;
  const std::string msg = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  ASSERT_EQ(p.ParseHead(msg, &head), ParseStatus::kDone);
  const std::string body = "0\r\nX-T: " + std::string(100, 't') + "\r\n\r\n";
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(body, &consumed), ParseStatus::kError);
  EXPECT_EQ(p.error(), RequestError::kBadChunk);
}

TEST(Http1RequestBody, ChunkedSplitAtEveryByte) {
  const std::string body = "4;e=1\r\nwiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n";
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    RequestParser p(Limits{});
    RequestHead head;
    ASSERT_EQ(p.ParseHead("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &head),
              ParseStatus::kDone);
    size_t c1 = 0;
    size_t c2 = 0;
    const ParseStatus s1 = p.ParseBody(std::string_view(body).substr(0, cut), &c1);
    if (cut < body.size()) {
      ASSERT_EQ(s1, ParseStatus::kIncomplete) << cut;
      ASSERT_EQ(c1, cut);
      ASSERT_EQ(p.ParseBody(std::string_view(body).substr(cut) , &c2), ParseStatus::kDone) << cut;
    } else {
      ASSERT_EQ(s1, ParseStatus::kDone);
    }
    EXPECT_EQ(c1 + c2, body.size()) << cut;
  }
}

}  // namespace
}  // namespace ktlb::http1
