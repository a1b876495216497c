// The per-request path allocates nothing once a connection's parser, head
// struct and output string are warm. Counted with a replaced global operator
// new, which is why this test has its own binary.
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>
#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace {
long g_allocations = 0;
bool g_counting = false;
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting) ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace ktlb::http1 {
namespace {

class CountAllocations {
 public:
  CountAllocations() {
    g_allocations = 0;
    g_counting = true;
  }
  ~CountAllocations() { g_counting = false; }
  long count() const { return g_allocations; }
};

const std::string kStream =
    "GET /a?x=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t\r\nAccept: */*\r\n"
    "Cookie: a=b\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n"
    "POST /b HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello"
    "PUT /c HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n";

// One pass of a keep-alive connection's request path over kStream.
void ServeStream(RequestParser& parser, RequestHead& head, std::string& out) {
  ForwardingInfo fwd;
  fwd.client_ip = "2001:db8::1";
  std::string_view rest = kStream;
  while (!rest.empty()) {
    ASSERT_EQ(parser.ParseHead(rest, &head), ParseStatus::kDone);
    out.clear();
    BuildUpstreamRequestHead(head, fwd, &out);
    rest.remove_prefix(head.head_len);
    size_t consumed = 0;
    ASSERT_EQ(parser.ParseBody(rest, &consumed), ParseStatus::kDone);
    rest.remove_prefix(consumed);
  }
}

TEST(Http1Allocations, RequestPathIsAllocationFreeWhenWarm) {
  RequestParser parser(Limits{});
  RequestHead head;
  std::string out;
  ServeStream(parser, head, out);  // warm: vector and string capacity
  CountAllocations counter;
  for (int i = 0; i < 10; ++i) ServeStream(parser, head, out);
  EXPECT_EQ(counter.count(), 0);
}

TEST(Http1Allocations, ResponsePathIsAllocationFreeWhenWarm) {
  const std::string stream =
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: o\r\nKeep-Alive: timeout=5\r\n\r\nok"
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
  ResponseParser parser;
  ResponseHead head;
  std::string out;
  auto serve = [&] {
    std::string_view rest = stream;
    while (!rest.empty()) {
      ASSERT_EQ(parser.ParseHead(rest, false, &head), ParseStatus::kDone);
      out.clear();
      BuildClientResponseHead(head, 1, false, &out);
      rest.remove_prefix(head.head_len);
      size_t consumed = 0;
      ASSERT_EQ(parser.ParseBody(rest, &consumed), ParseStatus::kDone);
      rest.remove_prefix(consumed);
    }
  };
  serve();
  CountAllocations counter;
  for (int i = 0; i < 10; ++i) serve();
  EXPECT_EQ(counter.count(), 0);
}

TEST(Http1Allocations, ErrorResponseIntoReservedString) {
  std::string out;
  out.reserve(256);
  CountAllocations counter;
  BuildErrorResponse(431, true, &out);
  EXPECT_EQ(counter.count(), 0);
}

}  // namespace
}  // namespace ktlb::http1
