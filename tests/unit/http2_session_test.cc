// http2::Session against a real nghttp2 client session: what a client sends
// goes through Session::Receive, what the owner is told and what comes back
// out of OnOutput is read by the client.
#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ktlb/http2.h"

namespace ktlb::http2 {
namespace {

nghttp2_nv Nv(std::string_view name, std::string_view value) {
  return nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(name.data())),
                    const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(value.data())),
                    name.size(), value.size(), NGHTTP2_NV_FLAG_NONE};
}

std::vector<nghttp2_nv> Nvs(const std::vector<std::pair<std::string, std::string>>& f) {
  std::vector<nghttp2_nv> out;
  for (const auto& [n, v] : f) out.push_back(Nv(n, v));
  return out;
}

// --- the server side: a SessionOwner that records everything ---

struct Owner final : SessionOwner {
  struct Req {
    std::string method, target, host;
    http1::BodyKind body = http1::BodyKind::kNone;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string data;
    std::vector<std::pair<std::string, std::string>> trailers;
    bool ended = false;
  };

  std::map<int32_t, std::unique_ptr<Stream>> streams;
  std::map<int32_t, Req> reqs;
  std::map<int32_t, uint32_t> closed;
  std::vector<Refusal> refusals;
  std::vector<Glitch> glitches;
  bool exhausted = false;
  std::vector<uint32_t> resets_sent, resets_received, goaways_sent;
  std::string out;
  bool refuse_streams = false;
  Session* session = nullptr;
  // Called when a head arrives (to answer at once), if set.
  void (*on_head)(Owner*, Stream*) = nullptr;

  Stream* OpenStream(int32_t id) override {
    if (refuse_streams) return nullptr;
    auto& s = streams[id];
    s = std::make_unique<Stream>();
    return s.get();
  }
  void OnRequestHead(Stream* s) override {
    http1::RequestHead h;
    s->request.ToRequestHead(&h);
    Req& r = reqs[s->id];
    r.method = h.method;
    r.target = h.target;
    r.host = h.host;
    r.body = h.body;
    for (const auto& f : h.headers) r.headers.emplace_back(f.name, f.value);
    r.ended = s->request_ended;
    if (on_head != nullptr) on_head(this, s);
  }
  void OnRequestData(Stream* s, std::string_view data) override {
    reqs[s->id].data.append(data);
    session->ConsumeRequestData(s, data.size());
  }
  void OnRequestEnd(Stream* s) override {
    Req& r = reqs[s->id];
    r.ended = true;
    for (const auto& f : s->request.trailers()) r.trailers.emplace_back(f.name, f.value);
  }
  void OnStreamClosed(Stream* s, uint32_t code) override {
    closed[s->id] = code;
    streams.erase(s->id);
  }
  bool OnOutput(std::string_view bytes) override {
    out.append(bytes);
    return true;
  }
  void OnRefused(Refusal r) override { refusals.push_back(r); }
  void OnGlitch(Glitch g, bool ex) override {
    glitches.push_back(g);
    exhausted = exhausted || ex;
  }
  void OnResetSent(uint32_t c) override { resets_sent.push_back(c); }
  void OnResetReceived(uint32_t c) override { resets_received.push_back(c); }
  void OnGoawaySent(uint32_t c) override { goaways_sent.push_back(c); }
};

// --- the client side: nghttp2's own client session ---

struct Client {
  struct Resp {
    std::vector<std::vector<std::pair<std::string, std::string>>> blocks;  // header blocks
    std::string data;
    bool closed = false;
    uint32_t code = 0;
  };
  nghttp2_session* ng = nullptr;
  std::map<int32_t, Resp> resps;
  bool goaway = false;
  uint32_t goaway_code = 0;
  int pings_acked = 0;
  // Request body source.
  std::map<int32_t, std::pair<std::string, size_t>> bodies;
  std::vector<nghttp2_nv> trailer;
  std::vector<std::pair<std::string, std::string>> trailer_fields;

  Client() {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* f, void* u) {
          static_cast<Client*>(u)->resps[f->hd.stream_id].blocks.emplace_back();
          return 0;
        });
    nghttp2_session_callbacks_set_on_header_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* f, const uint8_t* n, size_t nl,
               const uint8_t* v, size_t vl, uint8_t, void* u) {
          static_cast<Client*>(u)->resps[f->hd.stream_id].blocks.back().emplace_back(
              std::string(reinterpret_cast<const char*>(n), nl),
              std::string(reinterpret_cast<const char*>(v), vl));
          return 0;
        });
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cb, [](nghttp2_session*, uint8_t, int32_t id, const uint8_t* d, size_t len, void* u) {
          static_cast<Client*>(u)->resps[id].data.append(reinterpret_cast<const char*>(d), len);
          return 0;
        });
    nghttp2_session_callbacks_set_on_stream_close_callback(
        cb, [](nghttp2_session*, int32_t id, uint32_t code, void* u) {
          auto& r = static_cast<Client*>(u)->resps[id];
          r.closed = true;
          r.code = code;
          return 0;
        });
    nghttp2_session_callbacks_set_on_frame_recv_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* f, void* u) {
          auto* c = static_cast<Client*>(u);
          if (f->hd.type == NGHTTP2_GOAWAY) {
            c->goaway = true;
            c->goaway_code = f->goaway.error_code;
          }
          if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) ++c->pings_acked;
          return 0;
        });
    nghttp2_session_client_new(&ng, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~Client() { nghttp2_session_del(ng); }

  static ssize_t ReadBody(nghttp2_session* ng, int32_t id, uint8_t* buf, size_t len,
                          uint32_t* flags, nghttp2_data_source*, void* u) {
    auto* c = static_cast<Client*>(u);
    auto& [body, off] = c->bodies[id];
    size_t n = std::min(len, body.size() - off);
    std::copy_n(body.data() + off, n, buf);
    off += n;
    if (off == body.size()) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!c->trailer_fields.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        c->trailer = Nvs(c->trailer_fields);
        nghttp2_submit_trailer(ng, id, c->trailer.data(), c->trailer.size());
      }
    }
    return static_cast<ssize_t>(n);
  }

  int32_t Request(const std::vector<std::pair<std::string, std::string>>& fields,
                  const std::string* body = nullptr) {
    std::vector<nghttp2_nv> nva = Nvs(fields);
    if (body == nullptr) return nghttp2_submit_request(ng, nullptr, nva.data(), nva.size(), nullptr, nullptr);
    nghttp2_data_provider p;
    p.source.ptr = nullptr;
    p.read_callback = ReadBody;
    int32_t id = nghttp2_submit_request(ng, nullptr, nva.data(), nva.size(), &p, nullptr);
    bodies[id] = {*body, 0};
    return id;
  }

  std::string Drain() {
    std::string bytes;
    for (;;) {
      const uint8_t* p = nullptr;
      ssize_t n = nghttp2_session_mem_send(ng, &p);
      if (n <= 0) break;
      bytes.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
    }
    return bytes;
  }
};

const std::vector<std::pair<std::string, std::string>> kGet = {
    {":method", "GET"}, {":scheme", "https"}, {":authority", "example.test"}, {":path", "/hello"}};

std::vector<std::pair<std::string, std::string>> WithField(std::string name, std::string value) {
  auto f = kGet;
  f.emplace_back(std::move(name), std::move(value));
  return f;
}

class Http2SessionTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(Limits{}); }
  void Start(const Limits& limits) {
    owner.session = &session;
    ASSERT_TRUE(session.Start(&owner, limits, now));
  }
  // Client -> server -> client until neither has anything to say.
  void Pump() {
    for (int i = 0; i < 100; ++i) {
      std::string c = client.Drain();
      if (!c.empty()) {
        long n = session.Receive(c, now);
        last_receive = n;
        if (n < 0) return;
        EXPECT_EQ(static_cast<size_t>(n), c.size());
      }
      session.Send();
      std::string s;
      s.swap(owner.out);
      if (!s.empty()) {
        ssize_t n = nghttp2_session_mem_recv(client.ng, reinterpret_cast<const uint8_t*>(s.data()),
                                             s.size());
        EXPECT_EQ(n, static_cast<ssize_t>(s.size()));
      }
      if (c.empty() && s.empty()) return;
    }
    ADD_FAILURE() << "no quiescence";
  }

  uint64_t now = 1'000'000;
  Owner owner;
  Session session;
  Client client;
  long last_receive = 0;
};

// `trailers` must outlive the response: the trailer fields point at them.
void Respond(Session* session, Stream* s, std::string body,
             const std::vector<http1::Header>& trailers = {}) {
  std::string storage;
  std::vector<nghttp2_nv> nva;
  BuildErrorFields(200, body.size(), 0, &storage, &nva);
  ASSERT_TRUE(session->SubmitResponse(s, nva, true));  // nghttp2 copies the fields
  s->out = std::move(body);
  BuildTrailerFields(trailers, &s->trailer_storage, &s->trailer_nva);
  s->out_eof = true;
  session->ResumeData(s);
}

std::string Get(const std::vector<std::pair<std::string, std::string>>& f, std::string_view n) {
  for (const auto& [k, v] : f) {
    if (k == n) return v;
  }
  return "<absent>";
}

TEST_F(Http2SessionTest, GetReachesOwnerAndResponseReachesClient) {
  owner.on_head = [](Owner* o, Stream* s) { Respond(o->session, s, "hello, world"); };
  int32_t id = client.Request(WithField("cookie", "a=1"));
  ASSERT_GT(id, 0);
  Pump();
  ASSERT_EQ(owner.reqs.count(id), 1u);
  const Owner::Req& r = owner.reqs[id];
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.target, "/hello");
  EXPECT_EQ(r.host, "example.test");
  EXPECT_EQ(r.body, http1::BodyKind::kNone);
  EXPECT_TRUE(r.ended);
  EXPECT_EQ(Get(r.headers, "cookie"), "a=1");
  EXPECT_TRUE(owner.refusals.empty());

  const Client::Resp& resp = client.resps[id];
  ASSERT_EQ(resp.blocks.size(), 1u);
  EXPECT_EQ(Get(resp.blocks[0], ":status"), "200");
  EXPECT_EQ(Get(resp.blocks[0], "content-length"), "12");
  EXPECT_EQ(resp.data, "hello, world");
  EXPECT_TRUE(resp.closed);
  EXPECT_EQ(resp.code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(owner.closed.count(id), 1u);
  EXPECT_EQ(session.open_streams(), 0u);
  EXPECT_TRUE(owner.glitches.empty());
}

TEST_F(Http2SessionTest, DeferredBodyInPiecesWithInterimAndTrailers) {
  int32_t id = client.Request(kGet);
  Pump();
  ASSERT_EQ(owner.streams.count(id), 1u);
  Stream* s = owner.streams[id].get();

  std::string st;
  std::vector<nghttp2_nv> nva;
  http1::ResponseHead early;
  early.status = 103;
  early.headers.push_back({"Link", "</s.css>; rel=preload"});
  BuildResponseFields(early, &st, &nva);
  ASSERT_TRUE(session.SubmitInterim(s, nva));
  http1::ResponseHead head;
  head.status = 200;
  head.headers.push_back({"Content-Type", "text/plain"});
  head.headers.push_back({"Connection", "close"});
  head.headers.push_back({"Transfer-Encoding", "chunked"});
  head.body = http1::BodyKind::kChunked;
  BuildResponseFields(head, &st, &nva);
  ASSERT_TRUE(session.SubmitResponse(s, nva, true));
  Pump();
  // Nothing to send yet: the provider deferred.
  EXPECT_TRUE(s->out_deferred);
  EXPECT_TRUE(client.resps[id].data.empty());

  // A body bigger than one DATA frame, in three pieces.
  std::string body;
  for (int i = 0; body.size() < 40000; ++i) body += std::to_string(i) + ",";
  s->out.append(body, 0, 100);
  session.ResumeData(s);
  Pump();
  EXPECT_EQ(client.resps[id].data, body.substr(0, 100));
  s->out.append(body, 100, 20000);
  session.ResumeData(s);
  Pump();
  s->out.append(body, 20100);
  std::vector<http1::Header> trailers = {{"X-Checksum", "abc"}, {"Content-Length", "9"}};
  BuildTrailerFields(trailers, &s->trailer_storage, &s->trailer_nva);
  s->out_eof = true;
  session.ResumeData(s);
  Pump();

  const Client::Resp& resp = client.resps[id];
  ASSERT_EQ(resp.blocks.size(), 3u);
  EXPECT_EQ(Get(resp.blocks[0], ":status"), "103");
  EXPECT_EQ(Get(resp.blocks[0], "link"), "</s.css>; rel=preload");
  EXPECT_EQ(Get(resp.blocks[1], ":status"), "200");
  EXPECT_EQ(Get(resp.blocks[1], "content-type"), "text/plain");
  EXPECT_EQ(Get(resp.blocks[1], "connection"), "<absent>");
  EXPECT_EQ(Get(resp.blocks[1], "transfer-encoding"), "<absent>");
  EXPECT_EQ(resp.blocks[2].size(), 1u);
  EXPECT_EQ(Get(resp.blocks[2], "x-checksum"), "abc");
  EXPECT_EQ(resp.data, body);
  EXPECT_TRUE(resp.closed);
  EXPECT_EQ(resp.code, NGHTTP2_NO_ERROR);
}

TEST_F(Http2SessionTest, PostWithBodyAndTrailers) {
  std::string body(100000, 'x');
  for (size_t i = 0; i < body.size(); i += 7) body[i] = static_cast<char>('a' + i % 26);
  client.trailer_fields = {{"x-sum", "42"}};
  owner.on_head = nullptr;
  auto f = kGet;
  f[0].second = "POST";
  int32_t id = client.Request(f, &body);
  Pump();
  ASSERT_EQ(owner.reqs.count(id), 1u);
  const Owner::Req& r = owner.reqs[id];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.body, http1::BodyKind::kChunked);
  EXPECT_EQ(Get(r.headers, "Transfer-Encoding"), "chunked");
  EXPECT_TRUE(r.ended);
  EXPECT_EQ(r.data, body);
  ASSERT_EQ(r.trailers.size(), 1u);
  EXPECT_EQ(r.trailers[0].first, "x-sum");
  EXPECT_EQ(r.trailers[0].second, "42");
  EXPECT_TRUE(owner.refusals.empty());
}

TEST_F(Http2SessionTest, MalformedRequestIsResetWithItsReason) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> fields;
    Refusal why;
  };
  const std::vector<Case> cases = {
      {WithField("connection", "keep-alive"), Refusal::kConnectionHeader},
      {WithField("te", "gzip"), Refusal::kBadTe},
      {WithField("host", "other.test"), Refusal::kHostMismatch},
      {{{":method", "GET"}, {":scheme", "https"}, {"accept", "*/*"}, {":path", "/"}},
       Refusal::kPseudoAfterRegular},
      {{{":method", "GET"}, {":scheme", "https"}, {":bogus", "1"}, {":path", "/"}},
       Refusal::kUnknownPseudo},
      {{{":method", "GET"}, {":scheme", "https"}}, Refusal::kMissingPseudo},
      {{{":method", "GET"}, {":scheme", "https"}, {":path", "http://evil.test/"}},
       Refusal::kBadPseudoValue},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(RefusalLabel(c.why));
    owner.refusals.clear();
    owner.resets_sent.clear();
    int32_t id = client.Request(c.fields);
    Pump();
    EXPECT_EQ(owner.reqs.count(id), 0u) << "the owner never sees a refused head";
    ASSERT_EQ(owner.refusals.size(), 1u);
    EXPECT_EQ(owner.refusals[0], c.why);
    EXPECT_EQ(owner.resets_sent, std::vector<uint32_t>{NGHTTP2_PROTOCOL_ERROR});
    EXPECT_TRUE(client.resps[id].closed);
    EXPECT_EQ(client.resps[id].code, NGHTTP2_PROTOCOL_ERROR);
    EXPECT_EQ(owner.closed.count(id), 1u);
  }
  EXPECT_FALSE(client.goaway);
  EXPECT_EQ(session.open_streams(), 0u);
}

// --- hand-built frames, for what nghttp2's client API will not send ---

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, std::string_view payload) {
  std::string f;
  const size_t n = payload.size();
  f += static_cast<char>(n >> 16);
  f += static_cast<char>(n >> 8);
  f += static_cast<char>(n);
  f += static_cast<char>(type);
  f += static_cast<char>(flags);
  f += static_cast<char>(stream >> 24);
  f += static_cast<char>(stream >> 16);
  f += static_cast<char>(stream >> 8);
  f += static_cast<char>(stream);
  f.append(payload);
  return f;
}

// An HPACK block as is (names not lowercased), never indexed, so blocks
// from independent encoders do not disturb the decoder's dynamic table.
std::string Block(const std::vector<std::pair<std::string, std::string>>& fields) {
  nghttp2_hd_deflater* d = nullptr;
  nghttp2_hd_deflate_new(&d, 4096);
  std::vector<nghttp2_nv> nva = Nvs(fields);
  for (nghttp2_nv& nv : nva) nv.flags = NGHTTP2_NV_FLAG_NO_INDEX;
  std::string out(nghttp2_hd_deflate_bound(d, nva.data(), nva.size()), '\0');
  ssize_t n = nghttp2_hd_deflate_hd(d, reinterpret_cast<uint8_t*>(out.data()), out.size(),
                                    nva.data(), nva.size());
  nghttp2_hd_deflate_del(d);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

struct OutFrame {
  uint8_t type, flags;
  uint32_t stream;
  std::string payload;
};

std::vector<OutFrame> Parse(std::string_view b) {
  std::vector<OutFrame> frames;
  while (b.size() >= 9) {
    const auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(b[i])); };
    const size_t len = u(0) << 16 | u(1) << 8 | u(2);
    if (b.size() < 9 + len) break;
    frames.push_back(OutFrame{static_cast<uint8_t>(u(3)), static_cast<uint8_t>(u(4)),
                              (u(5) << 24 | u(6) << 16 | u(7) << 8 | u(8)) & 0x7fffffff,
                              std::string(b.substr(9, len))});
    b.remove_prefix(9 + len);
  }
  EXPECT_TRUE(b.empty()) << "a partial frame";
  return frames;
}

uint32_t Be32(std::string_view p, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<uint8_t>(p[at + i]);
  return v;
}

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

TEST_F(Http2SessionTest, UppercaseNameOnTheWireIsReset) {
  // nghttp2's client lowercases names; an encoder of its own does not.
  std::string in(kPreface);
  in += Frame(NGHTTP2_SETTINGS, 0, 0, "");
  auto f = kGet;
  f.emplace_back("X-Upper", "1");
  in += Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1, Block(f));
  // A good one after it on the same connection still works.
  in += Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 3, Block(kGet));
  ASSERT_EQ(session.Receive(in, now), static_cast<long>(in.size()));
  session.Send();
  EXPECT_EQ(owner.refusals, std::vector<Refusal>{Refusal::kUppercaseName});
  EXPECT_EQ(owner.reqs.count(1), 0u);
  EXPECT_EQ(owner.reqs.count(3), 1u);
  EXPECT_EQ(owner.reqs[3].target, "/hello");
  bool reset = false;
  for (const OutFrame& fr : Parse(owner.out)) {
    if (fr.type == NGHTTP2_RST_STREAM) {
      EXPECT_EQ(fr.stream, 1u);
      EXPECT_EQ(Be32(fr.payload, 0), static_cast<uint32_t>(NGHTTP2_PROTOCOL_ERROR));
      reset = true;
    }
    EXPECT_NE(fr.type, NGHTTP2_GOAWAY);
  }
  EXPECT_TRUE(reset);
}

TEST_F(Http2SessionTest, PseudoInTrailersAndTrailersWithoutEndStream) {
  std::string in(kPreface);
  in += Frame(NGHTTP2_SETTINGS, 0, 0, "");
  auto post = kGet;
  post[0].second = "POST";
  in += Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, Block(post));
  in += Frame(NGHTTP2_DATA, 0, 1, "body");
  in += Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1,
              Block({{":path", "/again"}}));
  in += Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 3, Block(post));
  in += Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 3, Block({{"x-t", "1"}}));
  ASSERT_EQ(session.Receive(in, now), static_cast<long>(in.size()));
  session.Send();
  EXPECT_EQ(owner.refusals,
            (std::vector<Refusal>{Refusal::kPseudoInTrailers, Refusal::kTrailersWithoutEnd}));
  EXPECT_EQ(owner.reqs[1].data, "body");
  EXPECT_FALSE(owner.reqs[1].ended);
  EXPECT_FALSE(owner.reqs[3].ended);
  std::vector<uint32_t> reset;
  for (const OutFrame& fr : Parse(owner.out)) {
    if (fr.type == NGHTTP2_RST_STREAM) reset.push_back(fr.stream);
  }
  EXPECT_EQ(reset, (std::vector<uint32_t>{1, 3}));
}

TEST_F(Http2SessionTest, HeaderListTooLargeIsRefused) {
  Limits limits;
  limits.max_header_list_size = 1024;
  Start(limits);
  int32_t id = client.Request(WithField("x-big", std::string(2000, 'b')));
  Pump();
  EXPECT_EQ(owner.refusals, std::vector<Refusal>{Refusal::kHeaderListTooLarge});
  EXPECT_EQ(client.resps[id].code, NGHTTP2_PROTOCOL_ERROR);
  EXPECT_EQ(owner.reqs.count(id), 0u);
}

TEST_F(Http2SessionTest, ContentLengthMismatchOnDataAndOnEnd) {
  auto more = kGet;
  more[0].second = "POST";
  more.emplace_back("content-length", "3");
  std::string four = "abcd", two = "ab", three = "abc";
  int32_t too_much = client.Request(more, &four);
  int32_t too_little = client.Request(more, &two);
  int32_t right = client.Request(more, &three);
  Pump();
  EXPECT_EQ(client.resps[too_much].code, NGHTTP2_PROTOCOL_ERROR);
  EXPECT_EQ(client.resps[too_little].code, NGHTTP2_PROTOCOL_ERROR);
  EXPECT_EQ(owner.refusals, (std::vector<Refusal>{Refusal::kContentLengthMismatch,
                                                  Refusal::kContentLengthMismatch}));
  EXPECT_TRUE(owner.reqs[right].ended);
  EXPECT_EQ(owner.reqs[right].data, "abc");
  EXPECT_EQ(owner.reqs[right].body, http1::BodyKind::kContentLength);
}

TEST_F(Http2SessionTest, OwnerRefusingAStreamSendsRefusedStream) {
  owner.refuse_streams = true;
  int32_t id = client.Request(kGet);
  Pump();
  EXPECT_TRUE(client.resps[id].closed);
  EXPECT_EQ(client.resps[id].code, NGHTTP2_REFUSED_STREAM);
  EXPECT_EQ(session.open_streams(), 0u);
}

TEST_F(Http2SessionTest, RapidResetRunsOutTheBudget) {
  Limits limits;
  limits.glitch_budget = 50;
  Start(limits);
  int goaway_at = -1;
  for (int i = 0; i < 200 && goaway_at < 0; ++i) {
    int32_t id = client.Request(kGet);
    ASSERT_GT(id, 0);
    std::string bytes = client.Drain();
    nghttp2_submit_rst_stream(client.ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    bytes += client.Drain();
    if (session.Receive(bytes, now) < 0) break;
    session.Send();
    if (!owner.goaways_sent.empty()) goaway_at = i;
  }
  // 50 resets were allowed within the second, the 51st was not.
  EXPECT_EQ(goaway_at, 50);
  EXPECT_TRUE(owner.exhausted);
  ASSERT_EQ(owner.goaways_sent.size(), 1u);
  EXPECT_EQ(owner.goaways_sent[0], NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_TRUE(session.terminated());
  size_t resets = 0;
  for (Glitch g : owner.glitches) resets += g == Glitch::kClientReset;
  EXPECT_EQ(resets, 51u);
  nghttp2_session_mem_recv(client.ng, reinterpret_cast<const uint8_t*>(owner.out.data()),
                           owner.out.size());
  EXPECT_TRUE(client.goaway);
  EXPECT_EQ(client.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
  // Nothing more is read.
  const size_t heads = owner.reqs.size();
  client.Request(kGet);
  std::string late = client.Drain();
  EXPECT_EQ(session.Receive(late, now), static_cast<long>(late.size()));
  EXPECT_EQ(owner.reqs.size(), heads);
}

TEST_F(Http2SessionTest, ResetsSpreadOverAMinuteAreForgiven) {
  Limits limits;
  limits.glitch_budget = 50;
  Start(limits);
  // One reset every 1.5 s (budget/60 = 0.83 a second refills faster).
  for (int i = 0; i < 150; ++i) {
    now += 1500;
    int32_t id = client.Request(kGet);
    std::string bytes = client.Drain();
    nghttp2_submit_rst_stream(client.ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    bytes += client.Drain();
    ASSERT_GE(session.Receive(bytes, now), 0);
    session.Send();
  }
  EXPECT_FALSE(owner.exhausted);
  EXPECT_TRUE(owner.goaways_sent.empty());
  EXPECT_FALSE(session.terminated());
}

TEST_F(Http2SessionTest, PingFloodEndsWithEnhanceYourCalm) {
  Limits limits;
  limits.glitch_budget = 20;
  Start(limits);
  for (int i = 0; i < 30; ++i) nghttp2_submit_ping(client.ng, NGHTTP2_FLAG_NONE, nullptr);
  Pump();
  EXPECT_TRUE(owner.exhausted);
  EXPECT_EQ(owner.goaways_sent, std::vector<uint32_t>{NGHTTP2_ENHANCE_YOUR_CALM});
  EXPECT_TRUE(client.goaway);
  EXPECT_EQ(client.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
}

TEST_F(Http2SessionTest, PingsAreAnsweredWithinBudget) {
  for (int i = 0; i < 5; ++i) nghttp2_submit_ping(client.ng, NGHTTP2_FLAG_NONE, nullptr);
  Pump();
  EXPECT_EQ(client.pings_acked, 5);
  EXPECT_FALSE(owner.exhausted);
}

TEST_F(Http2SessionTest, BadPrefaceIsFatal) {
  Session s;
  Owner o;
  o.session = &s;
  ASSERT_TRUE(s.Start(&o, Limits{}, 0));
  EXPECT_LT(s.Receive("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0), 0);
  EXPECT_TRUE(s.terminated());
}

TEST_F(Http2SessionTest, ShutdownLetsStreamsInFlightFinish) {
  int32_t id = client.Request(kGet);
  Pump();
  ASSERT_EQ(owner.streams.count(id), 1u);
  session.Shutdown();
  Pump();
  EXPECT_TRUE(client.goaway);
  EXPECT_EQ(client.goaway_code, NGHTTP2_NO_ERROR);
  const std::vector<http1::Header> trailers = {{"x-t", "1"}};
  Respond(&session, owner.streams[id].get(), "late", trailers);
  Pump();
  EXPECT_EQ(client.resps[id].data, "late");
  EXPECT_EQ(client.resps[id].code, NGHTTP2_NO_ERROR);
  ASSERT_EQ(client.resps[id].blocks.size(), 2u);
  EXPECT_EQ(Get(client.resps[id].blocks[1], "x-t"), "1");
  EXPECT_TRUE(session.Done());
}

}  // namespace
}  // namespace ktlb::http2
