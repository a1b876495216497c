// Head rewriting: exact bytes sent upstream and to the client.
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

ForwardingInfo V4() {
  ForwardingInfo f;
  f.client_ip = "203.0.113.7";
  f.client_port = 51000;
  f.proto = "https";
  f.sni = "example.test";
  return f;
}

// Parses `request` and rewrites it for upstream.
std::string Upstream(std::string_view request, const ForwardingInfo& fwd = V4()) {
  RequestParser p(Limits{});
  RequestHead head;
  EXPECT_EQ(p.ParseHead(request, &head), ParseStatus::kDone) << p.error_reason();
  std::string out;
  BuildUpstreamRequestHead(head, fwd, &out);
  return out;
}

std::string Client(std::string_view response, int client_minor, bool close) {
  ResponseParser p;
  ResponseHead head;
  EXPECT_EQ(p.ParseHead(response, false, &head), ParseStatus::kDone) << p.error_reason();
  std::string out;
  BuildClientResponseHead(head, client_minor, close, &out);
  return out;
}

TEST(Http1Rewrite, ClientForwardingHeadersAreReplaced) {
  EXPECT_EQ(Upstream("GET /index.html?q=1 HTTP/1.1\r\n"
                     "Host: example.test\r\n"
                     "User-Agent: curl/8\r\n"
                     "X-Forwarded-For: 1.2.3.4\r\n"
                     "Forwarded: for=1.2.3.4;proto=http\r\n"
                     "X-Real-IP: 1.2.3.4\r\n"
                     "x-forwarded-proto: http\r\n"
                     "X-Forwarded-Host: evil.test\r\n"
                     "X-Forwarded-Port: 80\r\n"
                     "X_Forwarded_For: 6.6.6.6\r\n"
                     "Accept: */*\r\n"
                     "\r\n"),
            "GET /index.html?q=1 HTTP/1.1\r\n"
            "Host: example.test\r\n"
            "User-Agent: curl/8\r\n"
            "Accept: */*\r\n"
            "X-Forwarded-For: 203.0.113.7\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: example.test\r\n"
            "Forwarded: for=203.0.113.7;proto=https;host=example.test\r\n"
            "\r\n");
}

// The client's X-Client-Cert-* are dropped everywhere (any spelling, any
// member of the family); on an mTLS listener ktlb adds its own.
constexpr std::string_view kSpoofedClientCert =
    "GET / HTTP/1.1\r\n"
    "Host: example.test\r\n"
    "X-Client-Cert-Subject: CN=mallory\r\n"
    "x-client-cert-verified: SUCCESS\r\n"
    "X_Client_Cert_Fingerprint: 00\r\n"
    "X-Client-Cert-SAN: DNS:evil.test\r\n"
    "X-Client-Cert-Chain: evil\r\n"
    "X-Client-Certificate: kept\r\n"
    "\r\n";
constexpr std::string_view kForwarded =
    "X-Forwarded-For: 203.0.113.7\r\n"
    "X-Forwarded-Proto: https\r\n"
    "X-Forwarded-Host: example.test\r\n"
    "Forwarded: for=203.0.113.7;proto=https;host=example.test\r\n";

TEST(Http1Rewrite, ClientCertFieldsAreStrippedWithoutMtls) {
  EXPECT_EQ(Upstream(kSpoofedClientCert),
            std::string("GET / HTTP/1.1\r\nHost: example.test\r\nX-Client-Certificate: kept\r\n") +
                std::string(kForwarded) + "\r\n");
}

TEST(Http1Rewrite, MtlsListenerSendsVerifiedIdentity) {
  ForwardingInfo fwd = V4();
  fwd.client_cert_headers = true;
  fwd.client_cert_verified = true;
  fwd.client_cert_subject = "CN=alice,O=Example";
  fwd.client_cert_san = "DNS:alice.test,IP:10.0.0.1";
  fwd.client_cert_fingerprint = "ab01";
  EXPECT_EQ(Upstream(kSpoofedClientCert, fwd),
            std::string("GET / HTTP/1.1\r\nHost: example.test\r\nX-Client-Certificate: kept\r\n") +
                std::string(kForwarded) +
                "X-Client-Cert-Subject: CN=alice,O=Example\r\n"
                "X-Client-Cert-SAN: DNS:alice.test,IP:10.0.0.1\r\n"
                "X-Client-Cert-Fingerprint: ab01\r\n"
                "X-Client-Cert-Verified: SUCCESS\r\n"
                "\r\n");
}

TEST(Http1Rewrite, MtlsListenerWithoutCertificateSaysNone) {
  ForwardingInfo fwd = V4();
  fwd.client_cert_headers = true;
  EXPECT_EQ(Upstream(kSpoofedClientCert, fwd),
            std::string("GET / HTTP/1.1\r\nHost: example.test\r\nX-Client-Certificate: kept\r\n") +
                std::string(kForwarded) + "X-Client-Cert-Verified: NONE\r\n\r\n");
}

TEST(Http1Rewrite, HopByHopAndConnectionNamedHeadersAreDropped) {
  EXPECT_EQ(Upstream("POST /f HTTP/1.1\r\n"
                     "Host: example.test\r\n"
                     "Connection: keep-alive, X-Secret\r\n"
                     "Connection: Content-Length, host, x-other\r\n"
                     "Content-Length: 3\r\n"
                     "X-Secret: s\r\n"
                     "x-secret: t\r\n"
                     "X-Other: o\r\n"
                     "Keep-Alive: timeout=5\r\n"
                     "TE: trailers\r\n"
                     "Trailer: X-Sum\r\n"
                     "Proxy-Authorization: Basic eDp5\r\n"
                     "Proxy-Connection: keep-alive\r\n"
                     "Proxy: http://evil.test\r\n"
                     "Upgrade: h2c\r\n"
                     "HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
                     "X-Keep: k\r\n"
                     "\r\n"),
            // Connection may not strip framing or routing headers.
            "POST /f HTTP/1.1\r\n"
            "Host: example.test\r\n"
            "Content-Length: 3\r\n"
            "X-Keep: k\r\n"
            "X-Forwarded-For: 203.0.113.7\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: example.test\r\n"
            "Forwarded: for=203.0.113.7;proto=https;host=example.test\r\n"
            "\r\n");
}

TEST(Http1Rewrite, Ipv6ClientAndHostWithPortAreQuoted) {
  ForwardingInfo f = V4();
  f.client_ip = "2001:db8::1";
  EXPECT_EQ(Upstream("GET / HTTP/1.1\r\nHost: example.test:8443\r\n\r\n", f),
            "GET / HTTP/1.1\r\n"
            "Host: example.test:8443\r\n"
            "X-Forwarded-For: 2001:db8::1\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: example.test:8443\r\n"
            "Forwarded: for=\"[2001:db8::1]\";proto=https;host=\"example.test:8443\"\r\n"
            "\r\n");
}

TEST(Http1Rewrite, Http10ClientBecomesPooledHttp11Request) {
  // No Host (legal in 1.0): the SNI name stands in; Connection: close is the
  // client's business, not the pooled upstream connection's.
  EXPECT_EQ(Upstream("GET /old HTTP/1.0\r\nConnection: close\r\nAccept: */*\r\n\r\n"),
            "GET /old HTTP/1.1\r\n"
            "Accept: */*\r\n"
            "Host: example.test\r\n"
            "X-Forwarded-For: 203.0.113.7\r\n"
            "X-Forwarded-Proto: https\r\n"
            "Forwarded: for=203.0.113.7;proto=https\r\n"
            "\r\n");
}

TEST(Http1Rewrite, WebSocketUpgradeIsCarried) {
  EXPECT_EQ(Upstream("GET /ws HTTP/1.1\r\n"
                     "Host: example.test\r\n"
                     "Connection: Upgrade\r\n"
                     "Upgrade: websocket\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "\r\n"),
            "GET /ws HTTP/1.1\r\n"
            "Host: example.test\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "X-Forwarded-For: 203.0.113.7\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: example.test\r\n"
            "Forwarded: for=203.0.113.7;proto=https;host=example.test\r\n"
            "Connection: upgrade\r\n"
            "Upgrade: websocket\r\n"
            "\r\n");
}

TEST(Http1Rewrite, H2cUpgradeIsStripped) {
  EXPECT_EQ(Upstream("GET / HTTP/1.1\r\n"
                     "Host: a\r\n"
                     "Connection: Upgrade, HTTP2-Settings\r\n"
                     "Upgrade: h2c\r\n"
                     "HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
                     "\r\n"),
            "GET / HTTP/1.1\r\n"
            "Host: a\r\n"
            "X-Forwarded-For: 203.0.113.7\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: a\r\n"
            "Forwarded: for=203.0.113.7;proto=https;host=a\r\n"
            "\r\n");
}

TEST(Http1Rewrite, ChunkedRequestKeepsTransferEncodingAndOneContentLength) {
  EXPECT_EQ(Upstream("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "POST /c HTTP/1.1\r\n"
            "Host: a\r\n"
            "Transfer-Encoding: chunked\r\n"
            "X-Forwarded-For: 203.0.113.7\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: a\r\n"
            "Forwarded: for=203.0.113.7;proto=https;host=a\r\n"
            "\r\n");
  const std::string out = Upstream(
      "POST /d HTTP/1.1\r\nContent-Length: 7\r\nHost: a\r\nContent-Length: 7\r\n\r\n");
  EXPECT_EQ(out.find("Content-Length: 7\r\n"), out.rfind("Content-Length: 7\r\n"));
}

TEST(Http1Rewrite, AppendsAndReparsesWithTheSameFraming) {
  const std::string req =
      "PUT /x HTTP/1.1\r\nhost: Example.Test\r\ncontent-length: 12\r\nconnection: close\r\n\r\n";
  RequestParser p(Limits{});
  RequestHead head;
  ASSERT_EQ(p.ParseHead(req, &head), ParseStatus::kDone);
  std::string out = "prefix";
  BuildUpstreamRequestHead(head, V4(), &out);
  ASSERT_TRUE(std::string_view(out).starts_with("prefixPUT /x HTTP/1.1\r\n"));

  RequestParser again(Limits{});
  RequestHead h2;
  const std::string_view rewritten = std::string_view(out).substr(6);
  ASSERT_EQ(again.ParseHead(rewritten, &h2), ParseStatus::kDone) << again.error_reason();
  EXPECT_EQ(h2.head_len, rewritten.size());
  EXPECT_EQ(h2.body, BodyKind::kContentLength);
  EXPECT_EQ(h2.content_length, 12u);
  EXPECT_EQ(h2.host, "Example.Test");
  EXPECT_TRUE(h2.keep_alive);  // the upstream connection stays reusable
}

TEST(Http1Rewrite, ClientResponseDropsHopByHop) {
  EXPECT_EQ(Client("HTTP/1.1 200 OK\r\n"
                   "Content-Length: 5\r\n"
                   "Connection: keep-alive, X-Hop\r\n"
                   "Keep-Alive: timeout=5\r\n"
                   "X-Hop: 1\r\n"
                   "Proxy-Connection: keep-alive\r\n"
                   "Trailer: X-Sum\r\n"
                   "Upgrade: h2c\r\n"
                   "Server: origin\r\n"
                   "\r\n",
                   1, false),
            "HTTP/1.1 200 OK\r\n"
            "Content-Length: 5\r\n"
            "Server: origin\r\n"
            "\r\n");
}

TEST(Http1Rewrite, ClientResponseConnectionHeader) {
  const char* resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
  EXPECT_EQ(Client(resp, 1, true),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(Client(resp, 0, false),
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_EQ(Client(resp, 0, true),
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

TEST(Http1Rewrite, ClientResponseSwitchingProtocolsKeepsUpgrade) {
  EXPECT_EQ(Client("HTTP/1.1 101 Switching Protocols\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                   "\r\n",
                   1, false),
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            "Connection: upgrade\r\n"
            "\r\n");
}

TEST(Http1Rewrite, ClientResponseEmptyReasonGetsTheStandardOne) {
  EXPECT_EQ(Client("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 1, false),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(Client("HTTP/1.1 201 \r\nContent-Length: 0\r\n\r\n", 1, false),
            "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
}

// Whatever line ends, version, reason and Content-Length spelling a backend
// used, the client gets one canonical head.
TEST(Http1Rewrite, ClientResponseHeadIsNormalised) {
  const std::string want = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\n";
  for (const char* text : {
           "HTTP/1.1 200 OK\nContent-Length: 5\nX: y\n\n",
           "HTTP/1.1 200\nContent-Length: 5\r\nX: y\n\r\n",
           "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nX: y\r\nConnection: keep-alive\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\nX: y\r\n\r\n",
           "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX: y\r\n\r\n",
           "HTTP/1.1 200 OK\nContent-Length: 5,5\nContent-Length: 5\nX: y\n\n",
       }) {
    EXPECT_EQ(Client(text, 1, false), want) << text;
  }
}

TEST(Http1Rewrite, ErrorResponses) {
  std::string out;
  BuildErrorResponse(431, true, &out);
  EXPECT_EQ(out,
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "Content-Type: text/plain\r\n"
            "Content-Length: 36\r\n"
            "Connection: close\r\n"
            "\r\n"
            "431 Request Header Fields Too Large\n");
  out.clear();
  BuildErrorResponse(502, false, &out);
  EXPECT_EQ(out,
            "HTTP/1.1 502 Bad Gateway\r\n"
            "Content-Type: text/plain\r\n"
            "Content-Length: 16\r\n"
            "\r\n"
            "502 Bad Gateway\n");
  // Every status a RequestError maps to has a proper reason phrase.
  for (int s : {400, 414, 431, 501, 505, 504}) {
    out.clear();
    BuildErrorResponse(s, true, &out);
    EXPECT_EQ(out.find(" Error\r\n"), std::string::npos) << s;
  }
}

TEST(Http1Rewrite, ErrorResponseParsesAsAResponse) {
  std::string out;
  BuildErrorResponse(400, true, &out);
  ResponseParser p;
  ResponseHead head;
  ASSERT_EQ(p.ParseHead(out, false, &head), ParseStatus::kDone);
  EXPECT_EQ(head.status, 400);
  EXPECT_FALSE(head.keep_alive);
  size_t consumed = 0;
  EXPECT_EQ(p.ParseBody(std::string_view(out).substr(head.head_len), &consumed),
            ParseStatus::kDone);
  EXPECT_EQ(head.head_len + consumed, out.size());
}

TEST(Http1Rewrite, HeaderNameIs) {
  EXPECT_TRUE(HeaderNameIs("Content-Length", "content-length"));
  EXPECT_TRUE(HeaderNameIs("HOST", "host"));
  EXPECT_FALSE(HeaderNameIs("Hostx", "host"));
  EXPECT_FALSE(HeaderNameIs("Content_Length", "content-length"));
  EXPECT_FALSE(HeaderNameIs("", "host"));
  EXPECT_TRUE(HeaderNameIs("", ""));
}

}  // namespace
}  // namespace ktlb::http1
