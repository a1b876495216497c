// ResponseParser: status, framing and reuse decisions.
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

struct Parsed {
  ParseStatus status;
  ResponseHead head;
  std::string reason;  // error_reason() on kError
};

Parsed Parse(std::string_view text, bool request_was_head = false) {
  ResponseParser p;
  Parsed out;
  out.status = p.ParseHead(text, request_was_head, &out.head);
  out.reason = p.error_reason();
  return out;
}

TEST(Http1ResponseParser, ContentLengthResponse) {
  const std::string text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: o\r\n\r\nhello";
  ResponseParser p;
  ResponseHead head;
  ASSERT_EQ(p.ParseHead(text, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.reason, "OK");
  EXPECT_EQ(head.version_minor, 1);
  EXPECT_EQ(head.body, BodyKind::kContentLength);
  EXPECT_EQ(head.content_length, 5u);
  EXPECT_TRUE(head.keep_alive);
  EXPECT_EQ(head.head_len, text.size() - 5);
  ASSERT_EQ(head.headers.size(), 2u);
  EXPECT_EQ(head.headers[1].value, "o");
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(std::string_view(text).substr(head.head_len), &consumed),
            ParseStatus::kDone);
  EXPECT_EQ(consumed, 5u);
}

TEST(Http1ResponseParser, ResponseToHeadHasNoBody) {
  Parsed r = Parse("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", /*request_was_head=*/true);
  ASSERT_EQ(r.status, ParseStatus::kDone);
  EXPECT_EQ(r.head.body, BodyKind::kNone);
  EXPECT_TRUE(r.head.keep_alive);
  r = Parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true);
  EXPECT_EQ(r.head.body, BodyKind::kNone);
}

TEST(Http1ResponseParser, NoContentAndNotModifiedHaveNoBody) {
  for (const char* text : {"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                           "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                           "HTTP/1.1 304 Not Modified\r\n\r\n"}) {
    Parsed r = Parse(text);
    ASSERT_EQ(r.status, ParseStatus::kDone) << text;
    EXPECT_EQ(r.head.body, BodyKind::kNone) << text;
    EXPECT_TRUE(r.head.keep_alive) << text;
  }
}

TEST(Http1ResponseParser, InformationalThenFinal) {
  const std::string text =
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
      "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
  ResponseParser p;
  ResponseHead head;
  std::string_view rest = text;
  ASSERT_EQ(p.ParseHead(rest, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.status, 100);
  EXPECT_EQ(head.body, BodyKind::kNone);
  rest.remove_prefix(head.head_len);
  ASSERT_EQ(p.ParseHead(rest, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.status, 103);
  EXPECT_EQ(head.body, BodyKind::kNone);
  rest.remove_prefix(head.head_len);
  ASSERT_EQ(p.ParseHead(rest, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.status, 201);
  EXPECT_EQ(head.body, BodyKind::kContentLength);
  rest.remove_prefix(head.head_len);
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(rest, &consumed), ParseStatus::kDone);
  EXPECT_EQ(consumed, 2u);
}

TEST(Http1ResponseParser, SwitchingProtocolsIsNotReusable) {
  Parsed r = Parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\n\r\n");
  ASSERT_EQ(r.status, ParseStatus::kDone);
  EXPECT_EQ(r.head.body, BodyKind::kNone);
  EXPECT_FALSE(r.head.keep_alive);
}

TEST(Http1ResponseParser, CloseDelimited) {
  const std::string text = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome bytes";
  ResponseParser p;
  ResponseHead head;
  ASSERT_EQ(p.ParseHead(text, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.body, BodyKind::kUntilClose);
  EXPECT_FALSE(head.keep_alive);
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(std::string_view(text).substr(head.head_len), &consumed),
            ParseStatus::kIncomplete);
  EXPECT_EQ(consumed, 10u);
}

TEST(Http1ResponseParser, KeepAliveRules) {
  struct Case {
    const char* text;
    bool keep_alive;
  } cases[] = {
      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true},
      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", true},
      {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", false},  // until close
  };
  for (const Case& c : cases) {
    Parsed r = Parse(c.text);
    ASSERT_EQ(r.status, ParseStatus::kDone) << c.text;
    EXPECT_EQ(r.head.keep_alive, c.keep_alive) << c.text;
  }
}

TEST(Http1ResponseParser, ChunkedWithTrailers) {
  const std::string body = "3;x=y\r\nabc\r\n0\r\nServer-Timing: t;dur=1\r\n\r\n";
  const std::string text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body;
  ResponseParser p;
  ResponseHead head;
  ASSERT_EQ(p.ParseHead(text, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.body, BodyKind::kChunked);
  EXPECT_TRUE(head.keep_alive);
  for (size_t i = 0; i < body.size(); ++i) {
    size_t consumed = 0;
    const ParseStatus st = p.ParseBody(std::string_view(body).substr(i, 1), &consumed);
    ASSERT_EQ(consumed, 1u) << i;
    ASSERT_EQ(st, i + 1 == body.size() ? ParseStatus::kDone : ParseStatus::kIncomplete) << i;
  }
}

TEST(Http1ResponseParser, NonChunkedCodingIsCloseDelimited) {
  Parsed r = Parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
  ASSERT_EQ(r.status, ParseStatus::kDone) << r.reason;
  EXPECT_EQ(r.head.body, BodyKind::kUntilClose);
  EXPECT_FALSE(r.head.keep_alive);
  r = Parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
  ASSERT_EQ(r.status, ParseStatus::kDone) << r.reason;
  EXPECT_EQ(r.head.body, BodyKind::kChunked);
}

TEST(Http1ResponseParser, IdenticalDuplicateContentLengthFolded) {
  Parsed r = Parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
  ASSERT_EQ(r.status, ParseStatus::kDone) << r.reason;
  EXPECT_EQ(r.head.headers.size(), 1u);
  EXPECT_EQ(r.head.content_length, 3u);
}

TEST(Http1ResponseParser, ContentLengthListOfIdenticalValues) {
  for (const char* text : {"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                           "HTTP/1.1 200 OK\r\nContent-Length: 5,5,5\r\n\r\n",
                           "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n",
                           "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"}) {
    Parsed r = Parse(text);
    ASSERT_EQ(r.status, ParseStatus::kDone) << text << r.reason;
    EXPECT_EQ(r.head.body, BodyKind::kContentLength);
    EXPECT_EQ(r.head.content_length, 5u);
    ASSERT_EQ(r.head.headers.size(), 1u) << text;
    EXPECT_EQ(r.head.headers[0].value, "5") << text;
    EXPECT_TRUE(r.head.keep_alive);
  }
}

// RFC 9112 2.2: a recipient MAY accept a bare LF as a line end. Backends are
// allowed to; the head is rebuilt with CRLF before it reaches a client.
TEST(Http1ResponseParser, BareLfLineEnds) {
  for (const char* text : {
           "HTTP/1.1 200 OK\nContent-Length: 5\nX: a b\n\nhello",
           "HTTP/1.1 200 OK\r\nContent-Length: 5\nX: a b\r\n\nhello",
           "HTTP/1.1 200 OK\nContent-Length: 5\r\nX: a b\n\r\nhello",
           "\nHTTP/1.1 200 OK\nContent-Length: 5\nX: a b\n\nhello",
       }) {
    const std::string_view t(text);
    ResponseParser p;
    ResponseHead h;
    // Byte by byte too: the verdict must not depend on how reads split it.
    for (size_t n = 1; n < t.size() - 5; ++n) {
      ASSERT_EQ(p.ParseHead(t.substr(0, n), false, &h), ParseStatus::kIncomplete) << t << n;
    }
    ASSERT_EQ(p.ParseHead(t, false, &h), ParseStatus::kDone) << t << p.error_reason();
    EXPECT_EQ(h.status, 200);
    EXPECT_EQ(h.reason, "OK");
    EXPECT_EQ(h.head_len, t.size() - 5) << t;
    ASSERT_EQ(h.headers.size(), 2u);
    EXPECT_EQ(h.headers[0].name, "Content-Length");
    EXPECT_EQ(h.headers[0].value, "5");
    EXPECT_EQ(h.headers[1].name, "X");
    EXPECT_EQ(h.headers[1].value, "a b");
    EXPECT_EQ(h.body, BodyKind::kContentLength);
    size_t consumed = 0;
    EXPECT_EQ(p.ParseBody(t.substr(h.head_len), &consumed), ParseStatus::kDone);
    EXPECT_EQ(consumed, 5u);
  }
}

// busybox httpd's CGI gateway: "HTTP/1.0 200 OK\r\n" then the script's own
// bare-LF lines, no framing: the body runs until the connection closes.
TEST(Http1ResponseParser, Http10CloseDelimitedWithBareLf) {
  Parsed r = Parse("HTTP/1.0 200 OK\r\nContent-type: text/plain\nX-Cgi: 1\n\nbody");
  ASSERT_EQ(r.status, ParseStatus::kDone) << r.reason;
  EXPECT_EQ(r.head.version_minor, 0);
  EXPECT_EQ(r.head.body, BodyKind::kUntilClose);
  EXPECT_FALSE(r.head.keep_alive);
  EXPECT_EQ(r.head.headers.size(), 2u);
  r = Parse("HTTP/1.1 200\n\n");
  ASSERT_EQ(r.status, ParseStatus::kDone) << r.reason;
  EXPECT_EQ(r.head.reason, "");
  EXPECT_EQ(r.head.body, BodyKind::kUntilClose);
}

TEST(Http1ResponseParser, MissingReasonPhrase) {
  for (const char* text : {"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
                           "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"}) {
    Parsed r = Parse(text);
    ASSERT_EQ(r.status, ParseStatus::kDone) << text << r.reason;
    EXPECT_EQ(r.head.status, 200);
    EXPECT_EQ(r.head.reason, "");
  }
}

TEST(Http1ResponseParser, Refused) {
  for (const char* text : {
           "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
           "HTTP/2.0 200 OK\r\n\r\n",
           "HTTP/1.1 20 OK\r\n\r\n",
           "HTTP/1.1 2000 OK\r\n\r\n",
           "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
           "HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
           "HTTP/1.1 200 OK\rX: a\r\n\r\n",
           "HTTP/1.1 200 OK\nX: a\r\r\n\n",
           "HTTP/1.1 200 OK\nX: a\n b\n\n",
           "HTTP/1.1 200 OK\nX : a\n\n",
           // Would desync the client: two framings, or lengths that disagree.
           "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n",
           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
           "HTTP/1.1 200 OK\nContent-Length: 2\nTransfer-Encoding: gzip\n\n",
           "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5, 6\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 6\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: 5, x\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: ,\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
           "HTTP/1.1 200 OK\nContent-Length: 3\nContent-Length: 4\n\n",
           "ICY 200 OK\r\n\r\n",
       }) {
    Parsed r = Parse(text);
    EXPECT_EQ(r.status, ParseStatus::kError) << text;
    EXPECT_NE(r.reason, "") << text;
  }
}

// Upstream connection objects are recycled with their parser: a refused
// response must not poison the next connection's exchanges.
TEST(Http1ResponseParser, ResetForgetsAStickyError) {
  ResponseParser p;
  ResponseHead h;
  ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, &h),
            ParseStatus::kError);
  ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\n\r\n", false, &h), ParseStatus::kError);
  p.Reset();
  EXPECT_STREQ(p.error_reason(), "");
  ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false, &h), ParseStatus::kDone);
  EXPECT_EQ(h.content_length, 2u);
}

TEST(Http1ResponseParser, BadChunkIsAnError) {
  const std::string text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX";
  ResponseParser p;
  ResponseHead head;
  ASSERT_EQ(p.ParseHead(text, false, &head), ParseStatus::kDone);
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(std::string_view(text).substr(head.head_len), &consumed),
            ParseStatus::kError);
  EXPECT_STRNE(p.error_reason(), "");
}

TEST(Http1ResponseParser, HeadTooLarge) {
  Limits l;
  l.max_header_bytes = 128;
  ResponseParser p(l);
  ResponseHead head;
  const std::string text = "HTTP/1.1 200 OK\r\nSet-Cookie: " + std::string(200, 'c');
  EXPECT_EQ(p.ParseHead(text, false, &head), ParseStatus::kError);
}

TEST(Http1ResponseParser, ReusedForKeepAliveResponses) {
  const std::string text =
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\n\r\n";
  ResponseParser p;
  ResponseHead head;
  std::string_view rest = text;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(p.ParseHead(rest, false, &head), ParseStatus::kDone) << i << p.error_reason();
    rest.remove_prefix(head.head_len);
    size_t consumed = 0;
    ASSERT_EQ(p.ParseBody(rest, &consumed), ParseStatus::kDone) << i;
    rest.remove_prefix(consumed);
  }
  EXPECT_TRUE(rest.empty());
}


// A decoded body (for HTTP/2 clients): payload without chunk framing, and the
// trailer section, however the bytes are split across reads.
struct Collect final : BodyVisitor {
  std::string data;
  std::string trailers;
  void OnBodyData(std::string_view d) override { data.append(d); }
  void OnTrailerBytes(std::string_view b) override { trailers.append(b); }
};

TEST(Http1ResponseParser, DecodedChunkedBodyAndTrailersAtEverySplit) {
  const std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string body =
      "5\r\nhello\r\n1;ext=1\r\n \r\nb\r\nworld, more\r\n0\r\n"
      "Grpc-Status: 0\r\nX-Sum:  abc \r\n\r\n";
  for (size_t split = 0; split <= body.size(); ++split) {
    ResponseParser p;
    ResponseHead h;
    ASSERT_EQ(p.ParseHead(head, false, &h), ParseStatus::kDone);
    Collect c;
    size_t consumed = 0;
    ParseStatus st = p.ParseBody(std::string_view(body).substr(0, split), &consumed, &c);
    ASSERT_NE(st, ParseStatus::kError);
    if (st != ParseStatus::kDone) {
      ASSERT_EQ(consumed, split);
      st = p.ParseBody(std::string_view(body).substr(split), &consumed, &c);
    }
    ASSERT_EQ(st, ParseStatus::kDone) << split;
    EXPECT_EQ(c.data, "hello world, more") << split;
    std::vector<Header> fields;
    ParseTrailerSection(c.trailers, &fields);
    ASSERT_EQ(fields.size(), 2u) << split << " " << c.trailers;
    EXPECT_EQ(fields[0].name, "Grpc-Status");
    EXPECT_EQ(fields[0].value, "0");
    EXPECT_EQ(fields[1].name, "X-Sum");
    EXPECT_EQ(fields[1].value, "abc");
  }
}

TEST(Http1ResponseParser, DecodedContentLengthAndCloseDelimitedBodies) {
  ResponseParser p;
  ResponseHead h;
  ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, &h),
            ParseStatus::kDone);
  Collect c;
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody("abcdef", &consumed, &c), ParseStatus::kDone);
  EXPECT_EQ(consumed, 3u);
  EXPECT_EQ(c.data, "abc");
  EXPECT_TRUE(c.trailers.empty());

  ResponseParser q;
  ASSERT_EQ(q.ParseHead("HTTP/1.1 200 OK\r\n\r\n", false, &h), ParseStatus::kDone);
  Collect d;
  EXPECT_EQ(q.ParseBody("xyz", &consumed, &d), ParseStatus::kIncomplete);
  EXPECT_EQ(d.data, "xyz");
}

}  // namespace
}  // namespace ktlb::http1
