// RequestHeaders: every refusal reason for the input RFC 9113 names, and the
// HTTP/1.1 head a valid request becomes.
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ktlb/http2.h"

namespace ktlb::http2 {
namespace {

using Field = std::pair<std::string_view, std::string_view>;

constexpr uint32_t kMaxList = 65536;

// A GET's pseudo-headers in the order clients send them.
std::vector<Field> Get(std::string_view path = "/") {
  return {{":method", "GET"}, {":scheme", "https"}, {":authority", "example.test"}, {":path", path}};
}

std::vector<Field> With(std::vector<Field> base, std::initializer_list<Field> more) {
  base.insert(base.end(), more);
  return base;
}

// Feeds fields until one is refused; then FinishHead. The first refusal wins.
Refusal Validate(RequestHeaders* r, const std::vector<Field>& fields, bool end_stream = true,
                 uint32_t max_list = kMaxList) {
  r->Reset(max_list);
  for (const auto& [name, value] : fields) {
    if (Refusal got = r->Add(name, value); got != Refusal::kNone) return got;
  }
  return r->FinishHead(end_stream);
}

Refusal Validate(const std::vector<Field>& fields, bool end_stream = true) {
  RequestHeaders r;
  return Validate(&r, fields, end_stream);
}

std::string_view Find(const http1::RequestHead& h, std::string_view name) {
  for (const http1::Header& f : h.headers) {
    if (f.name == name) return f.value;
  }
  return "<absent>";
}

size_t Count(const http1::RequestHead& h, std::string_view name) {
  size_t n = 0;
  for (const http1::Header& f : h.headers) n += f.name == name;
  return n;
}

TEST(Http2RequestHeaders, ValidGetIsAccepted) {
  EXPECT_EQ(Validate(Get()), Refusal::kNone);
  EXPECT_EQ(Validate(With(Get(), {{"accept", "*/*"}, {"user-agent", "t"}})), Refusal::kNone);
}

TEST(Http2RequestHeaders, UppercaseName) {
  EXPECT_EQ(Validate(With(Get(), {{"Accept", "*/*"}})), Refusal::kUppercaseName);
  EXPECT_EQ(Validate(With(Get(), {{"x-FOO", "1"}})), Refusal::kUppercaseName);
}

TEST(Http2RequestHeaders, BadNameAndValue) {
  EXPECT_EQ(Validate(With(Get(), {{"x foo", "1"}})), Refusal::kBadName);
  EXPECT_EQ(Validate(With(Get(), {{"x:foo", "1"}})), Refusal::kBadName);
  EXPECT_EQ(Validate(With(Get(), {{"", "1"}})), Refusal::kBadName);
  EXPECT_EQ(Validate(With(Get(), {{"x-foo", "a\r\nb"}})), Refusal::kBadValue);
  EXPECT_EQ(Validate(With(Get(), {{"x-foo", std::string_view("a\0b", 3)}})), Refusal::kBadValue);
  // RFC 9113 8.2.1: no leading or trailing whitespace.
  EXPECT_EQ(Validate(With(Get(), {{"x-foo", " a"}})), Refusal::kBadValue);
  EXPECT_EQ(Validate(With(Get(), {{"x-foo", "a\t"}})), Refusal::kBadValue);
}

TEST(Http2RequestHeaders, ConnectionSpecificFields) {
  for (std::string_view name :
       {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(Validate(With(Get(), {{name, "x"}})), Refusal::kConnectionHeader);
  }
  EXPECT_EQ(Validate(With(Get(), {{"transfer-encoding", "chunked"}}), false),
            Refusal::kConnectionHeader);
  EXPECT_EQ(Validate(With(Get(), {{"upgrade", "h2c"}})), Refusal::kConnectionHeader);
}

TEST(Http2RequestHeaders, TeOnlyTrailers) {
  EXPECT_EQ(Validate(With(Get(), {{"te", "trailers"}})), Refusal::kNone);
  EXPECT_EQ(Validate(With(Get(), {{"te", "Trailers"}})), Refusal::kNone);
  EXPECT_EQ(Validate(With(Get(), {{"te", "gzip"}})), Refusal::kBadTe);
  EXPECT_EQ(Validate(With(Get(), {{"te", "trailers, gzip"}})), Refusal::kBadTe);
  EXPECT_EQ(Validate(With(Get(), {{"te", ""}})), Refusal::kBadTe);
}

TEST(Http2RequestHeaders, UnknownPseudo) {
  EXPECT_EQ(Validate(With(Get(), {{":foo", "x"}})), Refusal::kUnknownPseudo);
  EXPECT_EQ(Validate({{":status", "200"}, {":method", "GET"}}), Refusal::kUnknownPseudo);
  EXPECT_EQ(Validate({{":Method", "GET"}}), Refusal::kUnknownPseudo);
}

TEST(Http2RequestHeaders, DuplicatePseudo) {
  for (std::string_view name : {":method", ":scheme", ":authority", ":path"}) {
    SCOPED_TRACE(name);
    std::vector<Field> f = Get();
    for (const Field& p : Get()) {
      if (p.first == name) f.push_back(p);
    }
    EXPECT_EQ(Validate(f), Refusal::kDuplicatePseudo);
  }
}

TEST(Http2RequestHeaders, PseudoAfterRegular) {
  EXPECT_EQ(Validate({{":method", "GET"}, {":scheme", "https"}, {"accept", "*/*"}, {":path", "/"}}),
            Refusal::kPseudoAfterRegular);
  // Even a refused regular field counts as one: the order is what is wrong.
  EXPECT_EQ(Validate({{"x-a", "1"}, {":method", "GET"}}), Refusal::kPseudoAfterRegular);
}

TEST(Http2RequestHeaders, MissingPseudo) {
  EXPECT_EQ(Validate({{":scheme", "https"}, {":path", "/"}}), Refusal::kMissingPseudo);
  EXPECT_EQ(Validate({{":method", "GET"}, {":path", "/"}}), Refusal::kMissingPseudo);
  EXPECT_EQ(Validate({{":method", "GET"}, {":scheme", "https"}}), Refusal::kMissingPseudo);
  // :authority is optional (Host may stand in, or neither).
  EXPECT_EQ(Validate({{":method", "GET"}, {":scheme", "https"}, {":path", "/"}}), Refusal::kNone);
  // CONNECT (RFC 9113 8.5): :authority only.
  EXPECT_EQ(Validate({{":method", "CONNECT"}, {":authority", "e.test:443"}}), Refusal::kNone);
  EXPECT_EQ(Validate({{":method", "CONNECT"}}), Refusal::kMissingPseudo);
  EXPECT_EQ(Validate({{":method", "CONNECT"}, {":authority", "e.test:443"}, {":path", "/"}}),
            Refusal::kMissingPseudo);
  // Extended CONNECT (RFC 8441) needs all four.
  EXPECT_EQ(Validate({{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"},
                      {":authority", "e.test"}, {":path", "/ws"}}),
            Refusal::kNone);
  EXPECT_EQ(Validate({{":method", "CONNECT"}, {":protocol", "websocket"}, {":authority", "e.test"}}),
            Refusal::kMissingPseudo);
}

TEST(Http2RequestHeaders, ExtendedConnectRules) {
  const std::vector<Field> ws = {{":method", "CONNECT"}, {":protocol", "websocket"},
                                 {":scheme", "https"}, {":path", "/ws"}, {":authority", "e.test"}};
  EXPECT_EQ(Validate(ws, false), Refusal::kNone);
  // :protocol is an upgrade token.
  EXPECT_EQ(Validate({{":method", "CONNECT"}, {":protocol", "web socket"}}), Refusal::kBadPseudoValue);
  // A scheme a WebSocket can have.
  std::vector<Field> ftp = ws;
  ftp[2].second = "ftp";
  EXPECT_EQ(Validate(ftp, false), Refusal::kBadPseudoValue);
  // The stream's DATA is the tunnel: no content-length.
  EXPECT_EQ(Validate(With(ws, {{"content-length", "0"}}), false), Refusal::kBadContentLength);
  // :path origin-form as for any request.
  std::vector<Field> abs = ws;
  abs[3].second = "http://other.test/ws";
  EXPECT_EQ(Validate(abs, false), Refusal::kBadPseudoValue);
}

TEST(Http2RequestHeaders, ExtendedConnectBecomesAnUpgradeGet) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r,
                     {{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"},
                      {":path", "/ws?x=1"}, {":authority", "e.test"},
                      {"sec-websocket-version", "13"}, {"sec-websocket-protocol", "chat"},
                      {"sec-websocket-key", "from-the-client"}},
                     false),
            Refusal::kNone);
  EXPECT_TRUE(r.is_extended_connect());
  EXPECT_EQ(r.protocol(), "websocket");
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/ws?x=1");
  EXPECT_TRUE(h.upgrade);
  EXPECT_FALSE(h.idempotent);
  EXPECT_EQ(h.body, http1::BodyKind::kNone);
  EXPECT_EQ(Find(h, "Upgrade"), "websocket");
  EXPECT_EQ(Find(h, "sec-websocket-version"), "13");
  EXPECT_EQ(Find(h, "sec-websocket-protocol"), "chat");
  // The owner makes up the key: the client's (if any) is dropped.
  EXPECT_EQ(Count(h, "sec-websocket-key"), 0u);
  EXPECT_EQ(Count(h, "Transfer-Encoding"), 0u);
}

TEST(Http2RequestHeaders, BadPseudoValues) {
  EXPECT_EQ(Validate({{":method", "G T"}}), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", ""}}), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "GET"}, {":scheme", ""}}), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "GET"}, {":path", "/a b"}}), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "GET"}, {":path", "/a\r\nX: y"}}), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "GET"}, {":authority", "a b"}}), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "GET"}, {":authority", "e.test/x"}}), Refusal::kBadPseudoValue);
  // :protocol outside CONNECT.
  EXPECT_EQ(Validate(With(Get(), {{":protocol", "websocket"}})), Refusal::kBadPseudoValue);
}

TEST(Http2RequestHeaders, PathMustBeOriginFormOrAsterisk) {
  // RFC 9113 8.3.1: not empty; "*" only for OPTIONS. Anything else would
  // reach the backend as a request-target that is not origin-form, e.g. an
  // absolute-form whose authority overrides Host (RFC 9112 3.2.2) while ktlb
  // routed on :authority.
  EXPECT_EQ(Validate(Get("")), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate(Get("http://other.test/x")), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate(Get("x")), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate(Get("*")), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "OPTIONS"}, {":scheme", "https"}, {":path", "*"}}),
            Refusal::kNone);
  EXPECT_EQ(Validate(Get("/a/b?c=d")), Refusal::kNone);
}

TEST(Http2RequestHeaders, AuthorityWithoutUserinfo) {
  // RFC 9113 8.3.1: :authority MUST NOT include userinfo for http(s).
  std::vector<Field> f = Get();
  f[2].second = "user@example.test";
  EXPECT_EQ(Validate(f), Refusal::kBadPseudoValue);
  EXPECT_EQ(Validate({{":method", "GET"}, {":scheme", "https"}, {":path", "/"},
                      {"host", "user@example.test"}}),
            Refusal::kBadValue);
}

TEST(Http2RequestHeaders, HostAndAuthority) {
  EXPECT_EQ(Validate(With(Get(), {{"host", "example.test"}})), Refusal::kNone);
  EXPECT_EQ(Validate(With(Get(), {{"host", "EXAMPLE.test"}})), Refusal::kNone);
  EXPECT_EQ(Validate(With(Get(), {{"host", "other.test"}})), Refusal::kHostMismatch);
  EXPECT_EQ(Validate(With(Get(), {{"host", "example.test:8443"}})), Refusal::kHostMismatch);
  EXPECT_EQ(Validate(With(Get(), {{"host", "example.test"}, {"host", "example.test"}})),
            Refusal::kBadValue);
  EXPECT_EQ(Validate(With(Get(), {{"host", "a b"}})), Refusal::kBadValue);
}

TEST(Http2RequestHeaders, PseudoInTrailers) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get(), {}), false), Refusal::kNone);
  r.BeginTrailers();
  EXPECT_EQ(r.Add(":path", "/x"), Refusal::kPseudoInTrailers);
  RequestHeaders r2;
  ASSERT_EQ(Validate(&r2, With(Get(), {}), false), Refusal::kNone);
  r2.BeginTrailers();
  EXPECT_EQ(r2.Add("x-checksum", "abc"), Refusal::kNone);
  EXPECT_EQ(r2.Add("X-Upper", "1"), Refusal::kUppercaseName);
  EXPECT_EQ(r2.Add("connection", "close"), Refusal::kConnectionHeader);
}

TEST(Http2RequestHeaders, BadContentLength) {
  for (std::string_view v : {"", "abc", "1x", "-1", "+1", "1 ", "0x10", "1.0", "-0",
                             "99999999999999999999"}) {
    SCOPED_TRACE(v);
    const Refusal got = Validate(With(Get(), {{"content-length", v}}), false);
    // Whitespace fails as a field value before it is read as a length.
    EXPECT_TRUE(got == Refusal::kBadContentLength || (v == "1 " && got == Refusal::kBadValue));
  }
  // Two different lengths; an identical duplicate folds into one.
  EXPECT_EQ(Validate(With(Get(), {{"content-length", "5"}, {"content-length", "6"}}), false),
            Refusal::kBadContentLength);
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get(), {{"content-length", "5"}, {"content-length", "5"}}), false),
            Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(Count(h, "content-length"), 1u);
}

TEST(Http2RequestHeaders, ContentLengthMismatch) {
  // END_STREAM on a head that announced a body.
  EXPECT_EQ(Validate(With(Get(), {{"content-length", "3"}}), true), Refusal::kContentLengthMismatch);
  EXPECT_EQ(Validate(With(Get(), {{"content-length", "0"}}), true), Refusal::kNone);

  // More DATA than announced.
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get(), {{"content-length", "5"}}), false), Refusal::kNone);
  EXPECT_EQ(r.OnData(3), Refusal::kNone);
  EXPECT_EQ(r.OnData(2), Refusal::kNone);
  EXPECT_EQ(r.OnData(1), Refusal::kContentLengthMismatch);

  // Less DATA than announced when the body ends.
  ASSERT_EQ(Validate(&r, With(Get(), {{"content-length", "5"}}), false), Refusal::kNone);
  EXPECT_EQ(r.OnData(4), Refusal::kNone);
  EXPECT_EQ(r.OnEnd(), Refusal::kContentLengthMismatch);

  // Exactly right.
  ASSERT_EQ(Validate(&r, With(Get(), {{"content-length", "5"}}), false), Refusal::kNone);
  EXPECT_EQ(r.OnData(5), Refusal::kNone);
  EXPECT_EQ(r.OnEnd(), Refusal::kNone);

  // No content-length: any amount.
  ASSERT_EQ(Validate(&r, Get(), false), Refusal::kNone);
  EXPECT_EQ(r.OnData(100000), Refusal::kNone);
  EXPECT_EQ(r.OnEnd(), Refusal::kNone);
}

TEST(Http2RequestHeaders, HeaderListTooLarge) {
  // Each field costs name + value + 32 (RFC 9113 6.5.2).
  RequestHeaders r;
  r.Reset(200);
  EXPECT_EQ(r.Add(":method", "GET"), Refusal::kNone);   // 42
  EXPECT_EQ(r.Add(":path", "/"), Refusal::kNone);        // 80
  EXPECT_EQ(r.Add("x-a", std::string(85, 'a')), Refusal::kNone);  // 200: at the limit
  EXPECT_EQ(r.Add("x", ""), Refusal::kHeaderListTooLarge);        // 233

  EXPECT_EQ(Validate(&r, With(Get(), {{"x-big", std::string(70000, 'b')}})),
            Refusal::kHeaderListTooLarge);
  // Trailers count against the same list.
  ASSERT_EQ(Validate(&r, Get(), false, 400), Refusal::kNone);
  r.BeginTrailers();
  EXPECT_EQ(r.Add("x-t", std::string(400, 't')), Refusal::kHeaderListTooLarge);
}

TEST(Http2RequestHeaders, LabelsAreDistinct) {
  std::vector<std::string> seen;
  for (int i = 0; i < static_cast<int>(Refusal::kCount); ++i) {
    std::string l = RefusalLabel(static_cast<Refusal>(i));
    EXPECT_NE(l, "unknown");
    for (const std::string& s : seen) EXPECT_NE(s, l);
    seen.push_back(l);
  }
  EXPECT_STREQ(RefusalLabel(Refusal::kCount), "unknown");
}

// --- ToRequestHead ---

TEST(Http2RequestHeaders, GetBecomesHttp11Head) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get("/p?q=1"), {{"accept", "*/*"}, {"te", "trailers"}}), true),
            Refusal::kNone);
  http1::RequestHead h;
  h.headers.push_back({"stale", "x"});  // cleared
  r.ToRequestHead(&h);
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/p?q=1");
  EXPECT_EQ(h.host, "example.test");
  EXPECT_EQ(h.version_minor, 1);
  EXPECT_EQ(h.body, http1::BodyKind::kNone);
  EXPECT_EQ(h.content_length, 0u);
  EXPECT_TRUE(h.idempotent);
  EXPECT_FALSE(h.is_head);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_FALSE(h.upgrade);
  EXPECT_FALSE(h.expect_continue);
  ASSERT_GE(h.headers.size(), 2u);
  EXPECT_EQ(h.headers[0].name, "Host");
  EXPECT_EQ(h.headers[0].value, "example.test");
  EXPECT_EQ(Find(h, "accept"), "*/*");
  EXPECT_EQ(Count(h, "stale"), 0u);
  EXPECT_EQ(Count(h, "Transfer-Encoding"), 0u);
  for (const http1::Header& f : h.headers) EXPECT_NE(f.name[0], ':');
}

TEST(Http2RequestHeaders, HostFromAuthorityFirst) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get(), {{"host", "EXAMPLE.TEST"}})), Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(h.host, "example.test");
  EXPECT_EQ(Count(h, "Host") + Count(h, "host"), 1u);
  EXPECT_EQ(Find(h, "Host"), "example.test");

  // No :authority: Host stands in.
  ASSERT_EQ(Validate(&r, {{":method", "GET"}, {":scheme", "https"}, {":path", "/"},
                          {"host", "h.test"}}),
            Refusal::kNone);
  r.ToRequestHead(&h);
  EXPECT_EQ(h.host, "h.test");
  EXPECT_EQ(Find(h, "Host"), "h.test");

  // Neither: no Host field at all.
  ASSERT_EQ(Validate(&r, {{":method", "GET"}, {":scheme", "https"}, {":path", "/"}}),
            Refusal::kNone);
  r.ToRequestHead(&h);
  EXPECT_EQ(h.host, "");
  EXPECT_EQ(Count(h, "Host"), 0u);
}

TEST(Http2RequestHeaders, CookiesJoined) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get(), {{"cookie", "a=1"}, {"accept", "x"}, {"cookie", "b=2"},
                                      {"cookie", "c=3"}})),
            Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(Count(h, "cookie"), 1u);
  EXPECT_EQ(Find(h, "cookie"), "a=1; b=2; c=3");
  EXPECT_EQ(Find(h, "accept"), "x");
  // The views stay good: the head's other fields were not moved by the join.
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/");
  EXPECT_EQ(h.host, "example.test");
}

TEST(Http2RequestHeaders, ContentLengthFraming) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, {{":method", "POST"}, {":scheme", "https"}, {":authority", "e.test"},
                          {":path", "/up"}, {"content-length", "42"}},
                     false),
            Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(h.body, http1::BodyKind::kContentLength);
  EXPECT_EQ(h.content_length, 42u);
  EXPECT_EQ(Find(h, "content-length"), "42");
  EXPECT_EQ(Count(h, "Transfer-Encoding"), 0u);
  EXPECT_FALSE(h.idempotent);
}

TEST(Http2RequestHeaders, UnknownLengthBodyIsChunked) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, {{":method", "PUT"}, {":scheme", "https"}, {":authority", "e.test"},
                          {":path", "/up"}},
                     false),
            Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(h.body, http1::BodyKind::kChunked);
  EXPECT_EQ(h.content_length, 0u);
  EXPECT_EQ(Find(h, "Transfer-Encoding"), "chunked");
  EXPECT_EQ(Count(h, "Transfer-Encoding"), 1u);
  EXPECT_TRUE(h.idempotent);  // PUT
}

TEST(Http2RequestHeaders, EndStreamOnHeadMeansNoBody) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, {{":method", "POST"}, {":scheme", "https"}, {":authority", "e.test"},
                          {":path", "/"}},
                     true),
            Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(h.body, http1::BodyKind::kNone);
  EXPECT_EQ(Count(h, "Transfer-Encoding"), 0u);

  // content-length: 0 is no body either way.
  ASSERT_EQ(Validate(&r, With(Get(), {{"content-length", "0"}}), false), Refusal::kNone);
  r.ToRequestHead(&h);
  EXPECT_EQ(h.body, http1::BodyKind::kNone);
  EXPECT_EQ(Count(h, "Transfer-Encoding"), 0u);
}

TEST(Http2RequestHeaders, MethodFlags) {
  struct Case {
    std::string_view method;
    bool idempotent, is_head;
  };
  for (const Case& c : {Case{"GET", true, false}, Case{"HEAD", true, true},
                        Case{"OPTIONS", true, false}, Case{"TRACE", true, false},
                        Case{"PUT", true, false}, Case{"DELETE", true, false},
                        Case{"POST", false, false}, Case{"PATCH", false, false},
                        Case{"head", false, false}}) {
    SCOPED_TRACE(c.method);
    RequestHeaders r;
    ASSERT_EQ(Validate(&r, {{":method", c.method}, {":scheme", "https"}, {":path", "/"}}),
              Refusal::kNone);
    http1::RequestHead h;
    r.ToRequestHead(&h);
    EXPECT_EQ(h.method, c.method);
    EXPECT_EQ(h.idempotent, c.idempotent);
    EXPECT_EQ(h.is_head, c.is_head);
  }
}

TEST(Http2RequestHeaders, TrailersKeepTheHeadsViews) {
  // The head is handed out before the body; trailers arriving afterwards
  // must not move what its views point at (they live until Reset()).
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get("/upload"), {{"cookie", "a=1"}, {"cookie", "b=2"}}), false),
            Refusal::kNone);
  http1::RequestHead h;
  r.ToRequestHead(&h);
  const char* method = h.method.data();
  const char* target = h.target.data();
  r.BeginTrailers();
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(r.Add("x-trailer-" + std::to_string(i), std::string(200, 'v')), Refusal::kNone);
  }
  ASSERT_EQ(r.OnEnd(), Refusal::kNone);
  EXPECT_EQ(h.method.data(), method);
  EXPECT_EQ(h.target.data(), target);
  EXPECT_EQ(r.method().data(), method);
  EXPECT_EQ(r.path().data(), target);
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/upload");
  EXPECT_EQ(Find(h, "cookie"), "a=1; b=2");
  ASSERT_EQ(r.trailers().size(), 50u);
  EXPECT_EQ(r.trailers()[0].name, "x-trailer-0");
  EXPECT_EQ(r.trailers()[49].name, "x-trailer-49");
  EXPECT_EQ(r.trailers()[49].value, std::string(200, 'v'));
}

TEST(Http2RequestHeaders, ResetForgetsTheLastRequest) {
  RequestHeaders r;
  ASSERT_EQ(Validate(&r, With(Get(), {{"content-length", "5"}, {"cookie", "a"}}), false),
            Refusal::kNone);
  ASSERT_EQ(Validate(&r, {{":method", "GET"}, {":scheme", "https"}, {":path", "/2"}}),
            Refusal::kNone);
  EXPECT_FALSE(r.has_content_length());
  http1::RequestHead h;
  r.ToRequestHead(&h);
  EXPECT_EQ(h.target, "/2");
  EXPECT_EQ(h.host, "");
  EXPECT_EQ(Count(h, "cookie"), 0u);
  EXPECT_EQ(h.body, http1::BodyKind::kNone);
}

}  // namespace
}  // namespace ktlb::http2
