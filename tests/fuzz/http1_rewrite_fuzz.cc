// Fuzzes BuildUpstreamRequestHead and BuildClientResponseHead.
//
// Input: byte 0 is options (IPv6 client, close the client, HTTP/1.0 client,
// request was HEAD); then a request head, then a response head. Whatever the
// client and upstream sent, what ktlb writes must parse back as one complete
// head with the same framing, carry exactly ktlb's own forwarding headers,
// and carry no hop-by-hop field.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ktlb/http1.h"

namespace {

using ktlb::http1::BodyKind;
using ktlb::http1::ForwardingInfo;
using ktlb::http1::Header;
using ktlb::http1::HeaderNameIs;
using ktlb::http1::Limits;
using ktlb::http1::ParseStatus;
using ktlb::http1::RequestHead;
using ktlb::http1::RequestParser;
using ktlb::http1::ResponseHead;
using ktlb::http1::ResponseParser;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// Lowercased, with '_' as '-': how CGI-style backends compare names.
std::string Normalized(std::string_view name) {
  std::string s(name);
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c == '_') c = '-';
  }
  return s;
}

size_t Count(const std::vector<Header>& headers, std::string_view lower) {
  size_t n = 0;
  for (const Header& h : headers) n += Normalized(h.name) == lower;
  return n;
}

// The rewritten heads may be longer than what the client was allowed to send.
constexpr Limits kRoomy{1u << 20, 1u << 20, 1u << 16};

void CheckRequest(const RequestHead& in, const ForwardingInfo& fwd) {
  std::string out = "~";  // appends, never clobbers
  BuildUpstreamRequestHead(in, fwd, &out);
  Check(out[0] == '~');
  const std::string_view written = std::string_view(out).substr(1);

  RequestParser p(kRoomy);
  RequestHead back;
  Check(p.ParseHead(written, &back) == ParseStatus::kDone);
  Check(back.head_len == written.size());
  Check(back.method == in.method && back.target == in.target);
  Check(back.version_minor == 1);
  Check(back.body == in.body && back.content_length == in.content_length);
  Check(back.keep_alive);  // the pooled connection stays reusable
  Check(back.upgrade == in.upgrade);
  Check(back.expect_continue == in.expect_continue);
  if (!in.host.empty()) Check(back.host == in.host);

  Check(Count(back.headers, "x-forwarded-for") == 1);
  Check(Count(back.headers, "x-forwarded-proto") == 1);
  Check(Count(back.headers, "forwarded") == 1);
  Check(Count(back.headers, "x-forwarded-host") == (in.host.empty() ? 0u : 1u));
  Check(Count(back.headers, "x-forwarded-port") == 0);
  Check(Count(back.headers, "x-real-ip") == 0);
  for (const Header& h : back.headers) {
    if (Normalized(h.name) == "x-forwarded-for") Check(h.value == fwd.client_ip);
  }
  for (std::string_view hop : {"keep-alive", "te", "trailer", "proxy", "proxy-connection",
                               "proxy-authorization", "http2-settings"}) {
    Check(Count(back.headers, hop) == 0);
  }
  Check(Count(back.headers, "connection") == (in.upgrade ? 1u : 0u));
  if (!in.upgrade) Check(Count(back.headers, "upgrade") == 0);
}

void CheckResponse(const ResponseHead& in, int client_minor, bool close, bool was_head) {
  std::string out;
  BuildClientResponseHead(in, client_minor, close, &out);
  ResponseParser p(kRoomy);
  ResponseHead back;
  Check(p.ParseHead(out, was_head, &back) == ParseStatus::kDone);
  Check(back.head_len == out.size());
  // Normalised whatever the backend sent: CRLF only, a reason phrase.
  for (size_t i = 0; i < out.size(); ++i) Check(out[i] != '\n' || (i > 0 && out[i - 1] == '\r'));
  Check(back.status == in.status && !back.reason.empty() &&
        back.reason == (in.reason.empty() ? ktlb::http1::ReasonPhrase(in.status) : in.reason));
  Check(back.version_minor == client_minor);
  Check(back.body == in.body);
  Check(back.content_length == in.content_length);
  if (close) Check(!back.keep_alive);
  Check(Count(back.headers, "keep-alive") == 0 && Count(back.headers, "trailer") == 0 &&
        Count(back.headers, "proxy-connection") == 0);
  Check(Count(back.headers, "connection") <= 1);
  if (in.status != 101) Check(Count(back.headers, "upgrade") == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t opts = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);

  ForwardingInfo fwd;
  fwd.client_ip = (opts & 1) ? "2001:db8::1" : "203.0.113.7";
  fwd.client_port = 443;
  fwd.sni = "example.test";

  RequestParser req_parser(Limits{});
  RequestHead req;
  size_t used = 0;
  if (req_parser.ParseHead(rest, &req) == ParseStatus::kDone) {
    CheckRequest(req, fwd);
    used = req.head_len;
  }

  const bool close = opts & 2;
  const int client_minor = (opts & 4) ? 0 : 1;
  const bool was_head = opts & 8;
  ResponseParser resp_parser;
  ResponseHead resp;
  if (resp_parser.ParseHead(rest.substr(used), was_head, &resp) == ParseStatus::kDone) {
    CheckResponse(resp, client_minor, close, was_head);
  }
  return 0;
}
