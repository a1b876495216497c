// Per-request cost of the HTTP/1 edge: parse a typical browser request head
// (~400 bytes) and rewrite it for upstream, with the parser, head struct and
// output string reused the way a keep-alive connection reuses them.
#include <benchmark/benchmark.h>

#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace {

using namespace ktlb::http1;

const std::string& TypicalRequest() {
  static const std::string req =
      "GET /api/v1/users/12345/profile?fields=name,email&lang=en HTTP/1.1\r\n"
      "Host: api.example.test\r\n"
      "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0\r\n"
      "Accept: application/json, text/plain, */*\r\n"
      "Accept-Language: en-US,en;q=0.5\r\n"
      "Accept-Encoding: gzip, deflate, br\r\n"
      "Referer: https://example.test/app/dashboard\r\n"
      "Cookie: session=abc123def456ghi789; theme=dark\r\n"
      "X-Forwarded-For: 10.0.0.1\r\n"
      "Connection: keep-alive\r\n"
      "\r\n";
  return req;
}

const std::string& TypicalResponse() {
  static const std::string resp =
      "HTTP/1.1 200 OK\r\n"
      "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
      "Content-Type: application/json; charset=utf-8\r\n"
      "Content-Length: 1234\r\n"
      "Cache-Control: no-store\r\n"
      "Connection: keep-alive\r\n"
      "Keep-Alive: timeout=5\r\n"
      "Server: origin\r\n"
      "\r\n";
  return resp;
}

void BM_Http1ParseRequestHead(benchmark::State& state) {
  const std::string& req = TypicalRequest();
  RequestParser parser(Limits{});
  RequestHead head;
  for (auto _ : state) {
    ParseStatus st = parser.ParseHead(req, &head);
    benchmark::DoNotOptimize(st);
    benchmark::DoNotOptimize(head.headers.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * req.size()));
}
BENCHMARK(BM_Http1ParseRequestHead);

void BM_Http1ParseAndRewriteRequestHead(benchmark::State& state) {
  const std::string& req = TypicalRequest();
  RequestParser parser(Limits{});
  RequestHead head;
  ForwardingInfo fwd;
  fwd.client_ip = "203.0.113.7";
  fwd.client_port = 51000;
  fwd.sni = "api.example.test";
  std::string out;
  for (auto _ : state) {
    parser.ParseHead(req, &head);
    out.clear();  // keeps capacity: no allocation after the first round
    BuildUpstreamRequestHead(head, fwd, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * req.size()));
}
BENCHMARK(BM_Http1ParseAndRewriteRequestHead);

// The same head arriving in two reads (split inside a header line).
void BM_Http1ParseRequestHeadTwoReads(benchmark::State& state) {
  const std::string& req = TypicalRequest();
  const std::string_view first = std::string_view(req).substr(0, req.size() / 2);
  RequestParser parser(Limits{});
  RequestHead head;
  for (auto _ : state) {
    parser.ParseHead(first, &head);
    ParseStatus st = parser.ParseHead(req, &head);
    benchmark::DoNotOptimize(st);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * req.size()));
}
BENCHMARK(BM_Http1ParseRequestHeadTwoReads);

void BM_Http1ParseAndRewriteResponseHead(benchmark::State& state) {
  const std::string& resp = TypicalResponse();
  ResponseParser parser;
  ResponseHead head;
  std::string out;
  for (auto _ : state) {
    parser.ParseHead(resp, false, &head);
    out.clear();
    BuildClientResponseHead(head, 1, false, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * resp.size()));
}
BENCHMARK(BM_Http1ParseAndRewriteResponseHead);

void BM_Http1ChunkedBody(benchmark::State& state) {
  // 16 KiB in 1 KiB chunks: framing validation cost per byte of body.
  std::string body;
  for (int i = 0; i < 16; ++i) body += "400\r\n" + std::string(1024, 'x') + "\r\n";
  body += "0\r\n\r\n";
  const std::string head = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  RequestParser parser(Limits{});
  RequestHead h;
  for (auto _ : state) {
    parser.ParseHead(head, &h);
    size_t consumed = 0;
    ParseStatus st = parser.ParseBody(body, &consumed);
    benchmark::DoNotOptimize(st);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * body.size()));
}
BENCHMARK(BM_Http1ChunkedBody);

}  // namespace
