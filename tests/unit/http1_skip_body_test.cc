// Skipping opaque body bytes (what splice moves without userspace seeing
// them): both parsers must stay in step with the framing around them.
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

// Feeds `body` to `p`, but skips every run of chunk data longer than `min`
// bytes (as a splice would) instead of showing it. Returns the final status;
// *skipped counts the bytes that were skipped.
template <class Parser>
ParseStatus FeedSkipping(Parser& p, std::string_view body, uint64_t min, uint64_t* skipped) {
  *skipped = 0;
  size_t i = 0;
  ParseStatus st = ParseStatus::kIncomplete;
  while (i < body.size()) {
    uint64_t opaque = p.OpaqueBodyBytes();
    if (opaque >= min) {
      if (p.SkipOpaqueBody(opaque) == ParseStatus::kError) return ParseStatus::kError;
      i += opaque;
      *skipped += opaque;
      continue;
    }
    // Framing, a byte at a time: the worst case for the state machines.
    size_t consumed = 0;
    st = p.ParseBody(body.substr(i, 1), &consumed);
    if (st == ParseStatus::kError) return st;
    i += consumed;
    if (st == ParseStatus::kDone) break;
  }
  EXPECT_EQ(i, body.size());
  return st;
}

std::string Chunked(const std::string& a, const std::string& b) {
  char size_a[16], size_b[16];
  snprintf(size_a, sizeof(size_a), "%zx", a.size());
  snprintf(size_b, sizeof(size_b), "%zx", b.size());
  return std::string(size_a) + ";ext=1\r\n" + a + "\r\n" + size_b + "\r\n" + b +
         "\r\n0\r\nTrailer: x\r\n\r\n";
}

TEST(Http1SkipBody, RequestChunkedDataSkippedFramingParsed) {
  RequestParser p(Limits{});
  RequestHead head;
  const std::string h = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  ASSERT_EQ(p.ParseHead(h, &head), ParseStatus::kDone);
  EXPECT_EQ(p.OpaqueBodyBytes(), 0u);  // the size line comes first
  EXPECT_EQ(p.ChunkSize(), 0u);
  const std::string body = Chunked(std::string(70000, 'a'), std::string(5, 'b'));
  uint64_t skipped = 0;
  EXPECT_EQ(FeedSkipping(p, body, 1000, &skipped), ParseStatus::kDone);
  EXPECT_EQ(skipped, 70000u);
  // The next request parses normally.
  const std::string next = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  EXPECT_EQ(p.ParseHead(next, &head), ParseStatus::kDone);
}

TEST(Http1SkipBody, ChunkSizeTellsLargeChunksApart) {
  RequestParser p(Limits{});
  RequestHead head;
  ASSERT_EQ(p.ParseHead("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &head),
            ParseStatus::kDone);
  size_t consumed = 0;
  ASSERT_EQ(p.ParseBody("10000\r\nabc", &consumed), ParseStatus::kIncomplete);
  EXPECT_EQ(p.ChunkSize(), 0x10000u);
  EXPECT_EQ(p.OpaqueBodyBytes(), 0x10000u - 3);
  ASSERT_EQ(p.SkipOpaqueBody(0x10000u - 3), ParseStatus::kIncomplete);
  EXPECT_EQ(p.OpaqueBodyBytes(), 0u);  // CRLF and the next size line are framing
  EXPECT_EQ(p.ChunkSize(), 0x10000u);  // still the last chunk's size
  ASSERT_EQ(p.ParseBody("\r\n2\r\nxy", &consumed), ParseStatus::kIncomplete);
  EXPECT_EQ(p.ChunkSize(), 2u);
  EXPECT_EQ(p.ParseBody("\r\n0\r\n\r\n", &consumed), ParseStatus::kDone);
}

TEST(Http1SkipBody, SkippingPastTheChunkIsAnError) {
  RequestParser p(Limits{});
  RequestHead head;
  ASSERT_EQ(p.ParseHead("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &head),
            ParseStatus::kDone);
  size_t consumed = 0;
  ASSERT_EQ(p.ParseBody("8\r\n", &consumed), ParseStatus::kIncomplete);
  EXPECT_EQ(p.SkipOpaqueBody(9), ParseStatus::kError);
}

TEST(Http1SkipBody, BadFramingAfterSkippedDataIsCaught) {
  RequestParser p(Limits{});
  RequestHead head;
  ASSERT_EQ(p.ParseHead("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &head),
            ParseStatus::kDone);
  size_t consumed = 0;
  ASSERT_EQ(p.ParseBody("8000\r\n", &consumed), ParseStatus::kIncomplete);
  ASSERT_EQ(p.SkipOpaqueBody(0x8000), ParseStatus::kIncomplete);
  // The data must be followed by CRLF; a smuggled extra byte is refused.
  EXPECT_EQ(p.ParseBody("X\r\n0\r\n\r\n", &consumed), ParseStatus::kError);
  EXPECT_EQ(p.error(), RequestError::kBadChunk);
}

TEST(Http1SkipBody, RequestContentLengthSkipEndsTheBody) {
  RequestParser p(Limits{});
  RequestHead head;
  ASSERT_EQ(p.ParseHead("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n", &head),
            ParseStatus::kDone);
  EXPECT_EQ(p.ChunkSize(), 0u);
  size_t consumed = 0;
  ASSERT_EQ(p.ParseBody(std::string(100, 'x'), &consumed), ParseStatus::kIncomplete);
  EXPECT_EQ(p.OpaqueBodyBytes(), 99900u);
  EXPECT_EQ(p.SkipOpaqueBody(90000), ParseStatus::kIncomplete);
  EXPECT_EQ(p.SkipOpaqueBody(9900), ParseStatus::kDone);
  EXPECT_EQ(p.OpaqueBodyBytes(), 0u);
  EXPECT_EQ(p.ParseHead("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &head), ParseStatus::kDone);
}

TEST(Http1SkipBody, ResponseChunkedAndContentLength) {
  {
    ResponseParser p;
    ResponseHead head;
    ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, &head),
              ParseStatus::kDone);
    const std::string body = Chunked(std::string(40000, 'a'), std::string(40000, 'b'));
    uint64_t skipped = 0;
    EXPECT_EQ(FeedSkipping(p, body, 1000, &skipped), ParseStatus::kDone);
    EXPECT_EQ(skipped, 80000u);
  }
  {
    ResponseParser p;
    ResponseHead head;
    ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n", false, &head),
              ParseStatus::kDone);
    EXPECT_EQ(p.OpaqueBodyBytes(), 70000u);
    EXPECT_EQ(p.SkipOpaqueBody(70000), ParseStatus::kDone);
  }
  {
    // A close-delimited body has no known length to skip.
    ResponseParser p;
    ResponseHead head;
    ASSERT_EQ(p.ParseHead("HTTP/1.1 200 OK\r\n\r\n", false, &head), ParseStatus::kDone);
    EXPECT_EQ(p.OpaqueBodyBytes(), 0u);
    EXPECT_EQ(p.ChunkSize(), 0u);
  }
}

}  // namespace
}  // namespace ktlb::http1
