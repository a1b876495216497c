// Pipelined requests on one connection, delivered in every possible split,
// and the classic request-smuggling shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/http1.h"

namespace ktlb::http1 {
namespace {

struct Seen {
  std::string method;
  std::string target;
  std::string host;
  BodyKind body = BodyKind::kNone;
  bool keep_alive = false;
  std::string body_bytes;  // exactly what would be forwarded after the head

  bool operator==(const Seen&) const = default;
};

struct StreamResult {
  std::vector<Seen> seen;
  RequestError error = RequestError::kNone;
  size_t leftover = 0;  // bytes received but not claimed by any message
};

// What the server's read loop does: append what arrived, parse heads and
// bodies out of the front of the buffer, erase what was claimed. Erasing and
// appending move the buffer, as a real connection buffer would.
template <typename NextSize>
StreamResult Drive(std::string_view stream, NextSize next_size) {
  RequestParser parser(Limits{});
  RequestHead head;
  std::string pending;
  size_t fed = 0;
  bool in_body = false;
  StreamResult run;
  for (;;) {
    for (;;) {
      if (!in_body) {
        if (pending.empty()) break;
        const ParseStatus st = parser.ParseHead(pending, &head);
        if (st == ParseStatus::kError) {
          run.error = parser.error();
          return run;
        }
        if (st == ParseStatus::kIncomplete) break;
        run.seen.push_back({std::string(head.method), std::string(head.target),
                            std::string(head.host), head.body, head.keep_alive, {}});
        pending.erase(0, head.head_len);
        in_body = head.body != BodyKind::kNone;
        continue;
      }
      size_t consumed = 0;
      const ParseStatus st = parser.ParseBody(pending, &consumed);
      if (st == ParseStatus::kError) {
        run.error = parser.error();
        return run;
      }
      run.seen.back().body_bytes.append(pending, 0, consumed);
      pending.erase(0, consumed);
      if (st == ParseStatus::kIncomplete) break;
      in_body = false;
    }
    if (fed == stream.size()) break;
    const size_t n = std::min(next_size(), stream.size() - fed);
    pending.append(stream.substr(fed, n));
    fed += n;
  }
  run.leftover = pending.size();
  return run;
}

const std::string kReq1 =
    "POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\n\r\n";
const std::string kBody1 = "hello world";
const std::string kReq2 =
    "PUT /chunks HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n";
const std::string kBody2 = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n";
// A stray CRLF after a body, as some clients send, then the last request.
const std::string kReq3 = "\r\nGET /last HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";
const std::string kStream = kReq1 + kBody1 + kReq2 + kBody2 + kReq3;

std::vector<Seen> Expected() {
  return {
      {"POST", "/upload", "example.test", BodyKind::kContentLength, true, kBody1},
      {"PUT", "/chunks", "example.test", BodyKind::kChunked, true, kBody2},
      {"GET", "/last", "example.test", BodyKind::kNone, false, ""},
  };
}

void ExpectThreeRequests(const StreamResult& run, const std::string& how) {
  EXPECT_EQ(run.error, RequestError::kNone) << how;
  EXPECT_EQ(run.leftover, 0u) << how;
  ASSERT_EQ(run.seen.size(), 3u) << how;
  const std::vector<Seen> want = Expected();
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(run.seen[i], want[i]) << how << " request " << i << " body ["
                                    << run.seen[i].body_bytes << "]";
  }
}

TEST(Http1Pipeline, WholeStreamAtOnce) {
  ExpectThreeRequests(Drive(kStream, [] { return kStream.size(); }), "whole");
}

TEST(Http1Pipeline, OneByteAtATime) {
  ExpectThreeRequests(Drive(kStream, [] { return size_t{1}; }), "1-byte");
}

TEST(Http1Pipeline, EveryTwoWaySplit) {
  for (size_t cut = 1; cut < kStream.size(); ++cut) {
    bool first = true;
    StreamResult run = Drive(kStream, [&] {
      const size_t n = first ? cut : kStream.size();
      first = false;
      return n;
    });
    ExpectThreeRequests(run, "cut at " + std::to_string(cut));
  }
}

TEST(Http1Pipeline, RandomChunkSizes) {
  for (uint32_t seed = 1; seed <= 200; ++seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<size_t> size(1, 40);
    ExpectThreeRequests(Drive(kStream, [&] { return size(rng); }),
                        "seed " + std::to_string(seed));
  }
}

TEST(Http1Pipeline, PartialFinalRequestIsLeftOver) {
  const std::string stream = kReq1 + kBody1 + "GET / HT";
  StreamResult run = Drive(stream, [] { return size_t{3}; });
  EXPECT_EQ(run.error, RequestError::kNone);
  ASSERT_EQ(run.seen.size(), 1u);
  EXPECT_EQ(run.seen[0].body_bytes, kBody1);
  EXPECT_EQ(run.leftover, 8u);
}

// ----------------------------------------------------------------- smuggling

// The second request in each stream is a smuggling attempt: the first must
// still come through intact, then the connection must fail (never a third
// request, whatever the split).
struct Attempt {
  const char* name;
  std::string request;
  RequestError error;
};

std::vector<Attempt> Attempts() {
  return {
      {"CL.TE",
       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
       "0\r\n\r\nG",
       RequestError::kBothContentLengthAndTransferEncoding},
      {"TE.CL",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
       "8\r\nSMUGGLED\r\n0\r\n\r\n",
       RequestError::kBothContentLengthAndTransferEncoding},
      {"TE.TE obfuscated second coding",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n",
       RequestError::kBadTransferEncoding},
      {"TE with space before colon",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n",
       RequestError::kBadHeader},
      {"TE folded onto another header",
       "POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
       RequestError::kObsFold},
      {"xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
       RequestError::kBadTransferEncoding},
      {"two Content-Lengths",
       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n",
       RequestError::kDuplicateContentLength},
      {"chunk data without CRLF (llhttp loose skips it)",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3\r\nabcXX0\r\n\r\n",
       RequestError::kBadChunk},
      {"LF-only chunk lines",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
       RequestError::kBadChunk},
      {"bare CR line end", "GET / HTTP/1.1\r\nHost: a\rContent-Length: 5\r\n\r\n",
       RequestError::kBareCr},
      {"Content_Length", "POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n",
       RequestError::kBadHeader},
  };
}

TEST(Http1Pipeline, SmugglingAttemptsStopTheConnection) {
  const std::string first = kReq1 + kBody1;
  for (const Attempt& a : Attempts()) {
    const std::string stream = first + a.request + "GET /third HTTP/1.1\r\nHost: a\r\n\r\n";
    for (size_t step : {stream.size(), size_t{1}, size_t{7}}) {
      StreamResult run = Drive(stream, [&] { return step; });
      EXPECT_EQ(run.error, a.error) << a.name << " step " << step;
      ASSERT_GE(run.seen.size(), 1u) << a.name;
      EXPECT_EQ(run.seen[0].body_bytes, kBody1) << a.name;
      for (const Seen& s : run.seen) EXPECT_NE(s.target, "/third") << a.name;
    }
  }
}

}  // namespace
}  // namespace ktlb::http1
