// ClientHelloParser against real ClientHellos written by OpenSSL clients (TLS
// 1.2-only and TLS 1.3), fed whole, one byte at a time and re-framed across
// records, and against hand-built hellos for each malformation it must refuse.
// The no-allocation check replaces the global operator new, which is why these
// tests have their own binary.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "ktlb/client_hello.h"
#include "ktlb/openssl_ptr.h"

// The replaced global operator new/delete pair below is malloc/free on both
// sides; GCC's inliner only sees free() on a new'ed pointer and warns.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

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

namespace ktlb::passthrough {
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

// ---- Byte builders -------------------------------------------------------

std::string U8(size_t v) { return std::string(1, static_cast<char>(v & 0xff)); }
std::string U16(size_t v) { return U8(v >> 8) + U8(v); }
std::string U24(size_t v) { return U8(v >> 16) + U16(v); }

std::string Record(std::string_view payload, uint8_t type = 22, uint16_t version = 0x0301) {
  return U8(type) + U16(version) + U16(payload.size()) + std::string(payload);
}

std::string Handshake(std::string_view body, uint8_t type = 1) {
  return U8(type) + U24(body.size()) + std::string(body);
}

// `message` in consecutive handshake records of the given sizes; the last
// record takes what is left.
std::string Frame(std::string_view message, const std::vector<size_t>& sizes) {
  std::string out;
  for (const size_t n : sizes) {
    out += Record(message.substr(0, n));
    message.remove_prefix(n);
  }
  if (!message.empty()) out += Record(message);
  return out;
}

struct Extension {
  uint16_t type;
  std::string body;
};

std::string ServerNameBody(std::string_view host) {
  const std::string entry = U8(0) + U16(host.size()) + std::string(host);
  return U16(entry.size()) + entry;
}

std::string AlpnBody(const std::vector<std::string>& protos) {
  std::string list;
  for (const auto& p : protos) list += U8(p.size()) + p;
  return U16(list.size()) + list;
}

std::string SupportedVersionsBody(const std::vector<uint16_t>& versions) {
  std::string list;
  for (const uint16_t v : versions) list += U16(v);
  return U8(list.size()) + list;
}

struct HelloSpec {
  uint16_t legacy_version = 0x0303;
  std::string session_id = std::string(32, 's');
  std::string cipher_suites = U16(0x1301) + U16(0xc02f);
  std::string compression_methods = U8(0);
  // nullopt: no extensions block at all.
  std::optional<std::vector<Extension>> extensions = std::vector<Extension>{
      {0, ServerNameBody("backend.example.test")},
      {16, AlpnBody({"h2", "http/1.1"})},
      {43, SupportedVersionsBody({0x0304, 0x0303})},
  };
};

std::string HelloBody(const HelloSpec& spec) {
  std::string body = U16(spec.legacy_version) + std::string(32, 'r');
  body += U8(spec.session_id.size()) + spec.session_id;
  body += U16(spec.cipher_suites.size()) + spec.cipher_suites;
  body += U8(spec.compression_methods.size()) + spec.compression_methods;
  if (spec.extensions) {
    std::string exts;
    for (const auto& e : *spec.extensions) exts += U16(e.type) + U16(e.body.size()) + e.body;
    body += U16(exts.size()) + exts;
  }
  return body;
}

std::string HelloRecord(const HelloSpec& spec = {}) { return Record(Handshake(HelloBody(spec))); }

// ---- Parsing helpers -----------------------------------------------------

struct Outcome {
  HelloStatus status = HelloStatus::kNeedMore;
  std::string sni;
  std::string alpn_list;
  uint16_t legacy_version = 0;
  bool offers_tls13 = false;
  size_t consumed = 0;
  std::string error;
  size_t decided_at = 0;  // FeedByteByByte: the prefix that gave status
};

Outcome ParseOnce(std::string_view bytes) {
  ClientHelloParser parser;
  ClientHello hello;
  Outcome o;
  o.status = parser.Parse(bytes, &hello, &o.consumed);
  o.error = parser.error();
  if (o.status == HelloStatus::kDone) {
    o.sni = std::string(hello.sni);
    o.alpn_list = std::string(hello.alpn_list);
    o.legacy_version = hello.legacy_version;
    o.offers_tls13 = hello.offers_tls13;
  }
  return o;
}

HelloStatus StatusOf(std::string_view bytes) { return ParseOnce(bytes).status; }

bool PointsInto(std::string_view view, std::string_view buffer) {
  return view.data() >= buffer.data() && view.data() + view.size() <= buffer.data() + buffer.size();
}

std::vector<std::string> AlpnNames(const ClientHello& hello) {
  std::vector<std::string> names;
  hello.ForEachAlpn([&](std::string_view n) { names.emplace_back(n); });
  return names;
}

// Feeds `stream` one byte per call through one parser, the way a server
// appends reads to its buffer (the buffer moves as it grows), until the parser
// decides. With `whole_hello`, every prefix short of `stream` must need more.
Outcome FeedByteByByte(std::string_view stream, bool whole_hello = true) {
  ClientHelloParser parser;
  ClientHello hello;
  std::string buffer;
  Outcome o;
  for (size_t i = 0; i < stream.size(); ++i) {
    buffer.push_back(stream[i]);
    o.status = parser.Parse(buffer, &hello, &o.consumed);
    o.decided_at = buffer.size();
    if (o.status != HelloStatus::kNeedMore) break;
  }
  if (whole_hello) {
    EXPECT_EQ(o.decided_at, stream.size()) << HelloStatusLabel(o.status) << ": " << parser.error();
  }
  o.error = parser.error();
  if (o.status == HelloStatus::kDone) {
    o.sni = std::string(hello.sni);
    o.alpn_list = std::string(hello.alpn_list);
    o.legacy_version = hello.legacy_version;
    o.offers_tls13 = hello.offers_tls13;
  }
  return o;
}

// ---- Real ClientHellos from OpenSSL ----------------------------------------

struct ClientSpec {
  const char* name;
  bool tls13;  // false: a client limited to TLS 1.2
  std::string sni;
  std::vector<std::string> alpn;
};

void PrintTo(const ClientSpec& spec, std::ostream* os) { *os << spec.name; }

// The first flight of an OpenSSL client: SSL_connect once on memory BIOs, then
// whatever it wrote.
std::string OpenSslClientHello(const ClientSpec& spec) {
  UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
  EXPECT_NE(ctx, nullptr);
  if (!spec.tls13) SSL_CTX_set_max_proto_version(ctx.get(), TLS1_2_VERSION);
  UniqueSsl ssl(SSL_new(ctx.get()));
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), rbio, wbio);  // ssl owns both
  SSL_set_connect_state(ssl.get());
  if (!spec.sni.empty()) {
    EXPECT_EQ(SSL_set_tlsext_host_name(ssl.get(), spec.sni.c_str()), 1);
  }
  if (!spec.alpn.empty()) {
    std::string wire;
    for (const auto& p : spec.alpn) wire += U8(p.size()) + p;
    EXPECT_EQ(SSL_set_alpn_protos(ssl.get(), reinterpret_cast<const unsigned char*>(wire.data()),
                                  static_cast<unsigned>(wire.size())),
              0);  // 0 is success here
  }
  const int rc = SSL_connect(ssl.get());
  EXPECT_EQ(SSL_get_error(ssl.get(), rc), SSL_ERROR_WANT_READ);
  char* data = nullptr;
  const long n = BIO_get_mem_data(wbio, &data);
  EXPECT_GT(n, 0);
  return std::string(data, static_cast<size_t>(n));
}

std::string AlpnWire(const std::vector<std::string>& protos) {
  std::string list;
  for (const auto& p : protos) list += U8(p.size()) + p;
  return list;
}

class RealClientHello : public ::testing::TestWithParam<ClientSpec> {
 protected:
  void SetUp() override {
    stream_ = OpenSslClientHello(GetParam());
    ASSERT_GE(stream_.size(), 9u);
    // OpenSSL writes its ClientHello as one record; the tests re-frame it.
    ASSERT_EQ(static_cast<uint8_t>(stream_[0]), 22);
    const size_t record_length =
        static_cast<size_t>(static_cast<uint8_t>(stream_[3]) << 8 | static_cast<uint8_t>(stream_[4]));
    ASSERT_EQ(stream_.size(), 5 + record_length);
    message_ = stream_.substr(5);
  }

  void ExpectSpec(const Outcome& o, size_t stream_size) const {
    const ClientSpec& spec = GetParam();
    ASSERT_EQ(o.status, HelloStatus::kDone) << o.error;
    EXPECT_EQ(o.sni, spec.sni);
    EXPECT_EQ(o.alpn_list, AlpnWire(spec.alpn));
    EXPECT_EQ(o.legacy_version, 0x0303);
    EXPECT_EQ(o.offers_tls13, spec.tls13);
    EXPECT_EQ(o.consumed, stream_size);
    EXPECT_EQ(o.error, "");
  }

  std::string stream_;
  std::string message_;  // the handshake message: header and ClientHello body
};

TEST_P(RealClientHello, ParsesInOneCall) {
  ClientHelloParser parser;
  ClientHello hello;
  size_t consumed = 0;
  ASSERT_EQ(parser.Parse(stream_, &hello, &consumed), HelloStatus::kDone) << parser.error();
  ExpectSpec(ParseOnce(stream_), stream_.size());
  // One record: the views point into the caller's bytes.
  if (!hello.sni.empty()) {
    EXPECT_TRUE(PointsInto(hello.sni, stream_));
  }
  if (!hello.alpn_list.empty()) {
    EXPECT_TRUE(PointsInto(hello.alpn_list, stream_));
  }
  EXPECT_EQ(AlpnNames(hello), GetParam().alpn);
  for (const auto& p : GetParam().alpn) EXPECT_TRUE(hello.OffersAlpn(p));
  EXPECT_FALSE(hello.OffersAlpn("h3"));
  EXPECT_FALSE(hello.OffersAlpn(""));
}

TEST_P(RealClientHello, EveryPrefixNeedsMore) {
  ExpectSpec(FeedByteByByte(stream_), stream_.size());
  // And each prefix on its own, with a fresh parser.
  for (size_t n = 0; n < stream_.size(); ++n) {
    ASSERT_EQ(StatusOf(std::string_view(stream_).substr(0, n)), HelloStatus::kNeedMore) << n;
  }
}

TEST_P(RealClientHello, ReassemblesTwoRecords) {
  const std::string framed = Frame(message_, {message_.size() / 2});
  ClientHelloParser parser;
  ClientHello hello;
  ASSERT_EQ(parser.Parse(framed, &hello), HelloStatus::kDone) << parser.error();
  // The message spans records: the views point into the parser's copy.
  if (!hello.sni.empty()) {
    EXPECT_FALSE(PointsInto(hello.sni, framed));
  }
  if (!hello.alpn_list.empty()) {
    EXPECT_FALSE(PointsInto(hello.alpn_list, framed));
  }
  ExpectSpec(ParseOnce(framed), framed.size());
  ExpectSpec(FeedByteByByte(framed), framed.size());
}

TEST_P(RealClientHello, ReassemblesThreeRecords) {
  // Split inside the handshake header and again inside the random.
  const std::string framed = Frame(message_, {2, 30});
  ExpectSpec(ParseOnce(framed), framed.size());
  ExpectSpec(FeedByteByByte(framed), framed.size());
  // Also split at the two thirds, which falls among the extensions.
  const size_t third = message_.size() / 3;
  const std::string thirds = Frame(message_, {third, third});
  ExpectSpec(ParseOnce(thirds), thirds.size());
  ExpectSpec(FeedByteByByte(thirds), thirds.size());
}

TEST_P(RealClientHello, IgnoresWhatFollowsTheHello) {
  // A TLS 1.3 middlebox-compatibility ChangeCipherSpec, then early data.
  const std::string more = stream_ + Record(U8(1), 20, 0x0303) + Record("early", 23, 0x0303);
  ExpectSpec(ParseOnce(more), stream_.size());
  const std::string framed = Frame(message_, {100});
  ExpectSpec(ParseOnce(framed + "garbage"), framed.size());
}

TEST_P(RealClientHello, SingleRecordDoesNotAllocate) {
  ClientHelloParser parser;
  ClientHello hello;
  CountAllocations count;
  for (size_t n = 1; n <= stream_.size(); ++n) {
    parser.Parse(std::string_view(stream_).substr(0, n), &hello);
  }
  EXPECT_EQ(count.count(), 0);
  EXPECT_EQ(parser.Parse(stream_, &hello), HelloStatus::kDone);
}

INSTANTIATE_TEST_SUITE_P(
    OpenSsl, RealClientHello,
    ::testing::Values(ClientSpec{"Tls12SniAlpn", false, "backend.example.test", {"h2", "http/1.1"}},
                      ClientSpec{"Tls12NoSniNoAlpn", false, "", {}},
                      ClientSpec{"Tls13SniAlpn", true, "backend.example.test", {"h2", "http/1.1"}},
                      ClientSpec{"Tls13SniOnly", true, "a-b_c.example.test", {}},
                      ClientSpec{"Tls13AlpnOnly", true, "", {"http/1.1"}},
                      ClientSpec{"Tls13NoSniNoAlpn", true, "", {}}),
    [](const ::testing::TestParamInfo<ClientSpec>& info) { return std::string(info.param.name); });

// ---- Hand-built hellos -----------------------------------------------------

TEST(ClientHelloParser, StatusLabels) {
  EXPECT_STREQ(HelloStatusLabel(HelloStatus::kNeedMore), "need_more");
  EXPECT_STREQ(HelloStatusLabel(HelloStatus::kDone), "done");
  EXPECT_STREQ(HelloStatusLabel(HelloStatus::kNotTls), "not_tls");
  EXPECT_STREQ(HelloStatusLabel(HelloStatus::kMalformed), "malformed");
  EXPECT_STREQ(HelloStatusLabel(HelloStatus::kTooLarge), "too_large");
}

TEST(ClientHelloParser, BuiltHelloParses) {
  const std::string stream = HelloRecord();
  const Outcome o = ParseOnce(stream);
  ASSERT_EQ(o.status, HelloStatus::kDone) << o.error;
  EXPECT_EQ(o.sni, "backend.example.test");
  EXPECT_EQ(o.alpn_list, AlpnWire({"h2", "http/1.1"}));
  EXPECT_TRUE(o.offers_tls13);
  EXPECT_EQ(o.consumed, stream.size());
}

TEST(ClientHelloParser, EmptyInputNeedsMore) {
  EXPECT_EQ(StatusOf(""), HelloStatus::kNeedMore);
  EXPECT_EQ(StatusOf("\x16"), HelloStatus::kNeedMore);
}

TEST(ClientHelloParser, HttpIsNotTls) {
  ClientHelloParser parser;
  ClientHello hello;
  EXPECT_EQ(parser.Parse("GET / HTTP/1.1\r\n", &hello), HelloStatus::kNotTls);
  EXPECT_STRNE(parser.error(), "");
  // Decided on the first byte.
  EXPECT_EQ(StatusOf("G"), HelloStatus::kNotTls);
}

TEST(ClientHelloParser, SslV2HelloIsNotTls) {
  // SSLv2-compatible CLIENT-HELLO: 2-byte header with the high bit set.
  const std::string v2 = "\x80\x2e\x01\x03\x01" + U16(0x15) + U16(0) + U16(0x10);
  EXPECT_EQ(StatusOf(v2), HelloStatus::kNotTls);
}

TEST(ClientHelloParser, DeclaredLengthOver64KiBIsTooLargeAtOnce) {
  // Only the record and handshake headers: no need to wait for the body.
  const std::string head = U8(22) + U16(0x0301) + U16(16384) + U8(1);
  EXPECT_EQ(StatusOf(head + U24(64 * 1024)), HelloStatus::kTooLarge);
  EXPECT_EQ(StatusOf(head + U24(0xffffff)), HelloStatus::kTooLarge);
  // The largest hello one record header can frame within the limit is fine.
  EXPECT_EQ(StatusOf(head + U24(ClientHelloParser::kMaxHelloBytes - 9)), HelloStatus::kNeedMore);
  EXPECT_EQ(StatusOf(head + U24(ClientHelloParser::kMaxHelloBytes - 8)), HelloStatus::kTooLarge);
}

TEST(ClientHelloParser, RecordsOver64KiBAreTooLarge) {
  // A 60000-byte hello in 100-byte records needs 63000 bytes of records: fine.
  HelloSpec spec;
  spec.extensions->push_back({0xfe01, std::string(60000 - 4 - HelloBody(spec).size() - 4, 'p')});
  const std::string message = Handshake(HelloBody(spec));
  ASSERT_EQ(message.size(), 60000u);
  std::vector<size_t> hundreds(message.size() / 100, 100);
  EXPECT_EQ(StatusOf(Frame(message, hundreds)), HelloStatus::kDone);
  // In 20-byte records it needs 75000: refused at the first record header that
  // ends past 64 KiB, not when 64 KiB of it have arrived.
  const std::string framed = Frame(message, std::vector<size_t>(message.size() / 20, 20));
  const size_t crossing = (ClientHelloParser::kMaxHelloBytes / 25) * 25;  // header past the limit
  EXPECT_EQ(StatusOf(std::string_view(framed).substr(0, crossing + 4)), HelloStatus::kNeedMore);
  EXPECT_EQ(StatusOf(std::string_view(framed).substr(0, crossing + 5)), HelloStatus::kTooLarge);
  const Outcome fed = FeedByteByByte(framed, false);
  EXPECT_EQ(fed.status, HelloStatus::kTooLarge);
  EXPECT_EQ(fed.decided_at, crossing + 5);
}

TEST(ClientHelloParser, NoExtensionsIsDoneWithoutSni) {
  HelloSpec spec;
  spec.extensions.reset();
  const Outcome o = ParseOnce(HelloRecord(spec));
  ASSERT_EQ(o.status, HelloStatus::kDone) << o.error;
  EXPECT_EQ(o.sni, "");
  EXPECT_EQ(o.alpn_list, "");
  EXPECT_FALSE(o.offers_tls13);
  // An empty extensions block is as good as none.
  spec.extensions.emplace();
  EXPECT_EQ(StatusOf(HelloRecord(spec)), HelloStatus::kDone);
}

TEST(ClientHelloParser, HostNameKeptAsSent) {
  for (const std::string& host : {std::string("Backend.Example.TEST."), std::string("x"),
                                  std::string("a_b-c.d"), std::string(255, 'a')}) {
    HelloSpec spec;
    spec.extensions = std::vector<Extension>{{0, ServerNameBody(host)}};
    const Outcome o = ParseOnce(HelloRecord(spec));
    ASSERT_EQ(o.status, HelloStatus::kDone) << host << ": " << o.error;
    EXPECT_EQ(o.sni, host);
  }
}

TEST(ClientHelloParser, BadHostNamesAreMalformed) {
  for (const std::string& host : {std::string("a b"), std::string("a\0b", 3), std::string("a/b"),
                                 std::string("[::1]"), std::string("a\xc3\xa9"), std::string(""),
                                 std::string(256, 'a')}) {
    HelloSpec spec;
    spec.extensions = std::vector<Extension>{{0, ServerNameBody(host)}};
    EXPECT_EQ(StatusOf(HelloRecord(spec)), HelloStatus::kMalformed) << host;
  }
}

TEST(ClientHelloParser, ServerNameList) {
  const std::string other = U8(7) + U16(3) + "x y";  // unknown name types are skipped, unchecked
  const auto parse = [](const std::string& list) {
    HelloSpec spec;
    spec.extensions = std::vector<Extension>{{0, U16(list.size()) + list}};
    return ParseOnce(HelloRecord(spec));
  };
  EXPECT_EQ(parse(other + U8(0) + U16(6) + "a.test").sni, "a.test");
  EXPECT_EQ(parse(U8(0) + U16(6) + "a.test" + other).sni, "a.test");
  const Outcome only_other = parse(other);
  EXPECT_EQ(only_other.status, HelloStatus::kDone);
  EXPECT_EQ(only_other.sni, "");
  // Two host_names: the backend might route on the other one.
  EXPECT_EQ(parse(U8(0) + U16(6) + "a.test" + U8(0) + U16(6) + "b.test").status,
            HelloStatus::kMalformed);
  EXPECT_EQ(parse("").status, HelloStatus::kMalformed);                         // empty list
  EXPECT_EQ(parse(U8(0) + U16(7) + "a.test").status, HelloStatus::kMalformed);  // name overruns
  EXPECT_EQ(parse(U8(0) + U16(6)).status, HelloStatus::kMalformed);
  EXPECT_EQ(parse(U8(0) + U16(6) + "a.test" + U8(0)).status, HelloStatus::kMalformed);
}

TEST(ClientHelloParser, DuplicateExtensionIsMalformed) {
  HelloSpec spec;
  spec.extensions->push_back({10, U16(2) + U16(29)});
  spec.extensions->push_back({10, U16(2) + U16(23)});
  EXPECT_EQ(StatusOf(HelloRecord(spec)), HelloStatus::kMalformed);
  HelloSpec two_sni;
  two_sni.extensions->push_back({0, ServerNameBody("other.example.test")});
  EXPECT_EQ(StatusOf(HelloRecord(two_sni)), HelloStatus::kMalformed);
}

TEST(ClientHelloParser, DuplicateAmongManyExtensions) {
  // Past the inline set of seen types, duplicates are still found.
  HelloSpec spec;
  for (uint16_t t = 1000; t < 1200; ++t) spec.extensions->push_back({t, ""});
  EXPECT_EQ(StatusOf(HelloRecord(spec)), HelloStatus::kDone);
  spec.extensions->push_back({1003, ""});
  EXPECT_EQ(StatusOf(HelloRecord(spec)), HelloStatus::kMalformed);
  HelloSpec early;
  for (uint16_t t = 1000; t < 1200; ++t) early.extensions->push_back({t, ""});
  early.extensions->push_back({43, ""});  // duplicates supported_versions from the defaults
  EXPECT_EQ(StatusOf(HelloRecord(early)), HelloStatus::kMalformed);
}

TEST(ClientHelloParser, PreSharedKeyMustBeLast) {
  HelloSpec last;
  last.extensions->push_back({41, "psk"});
  EXPECT_EQ(StatusOf(HelloRecord(last)), HelloStatus::kDone);
  HelloSpec not_last;
  not_last.extensions->insert(not_last.extensions->begin(), {41, "psk"});
  EXPECT_EQ(StatusOf(HelloRecord(not_last)), HelloStatus::kMalformed);
}

TEST(ClientHelloParser, AlpnAndSupportedVersionsAreChecked) {
  const auto with = [](uint16_t type, std::string body) {
    HelloSpec spec;
    spec.extensions = std::vector<Extension>{{type, std::move(body)}};
    return StatusOf(HelloRecord(spec));
  };
  EXPECT_EQ(with(16, AlpnBody({"h2"})), HelloStatus::kDone);
  EXPECT_EQ(with(16, AlpnBody({})), HelloStatus::kMalformed);          // empty list
  EXPECT_EQ(with(16, AlpnBody({"h2", ""})), HelloStatus::kMalformed);  // empty name
  EXPECT_EQ(with(16, U16(3) + U8(3) + "h2"), HelloStatus::kMalformed);  // name overruns list
  EXPECT_EQ(with(16, U16(4) + U8(2) + "h2"), HelloStatus::kMalformed);  // list overruns extension
  EXPECT_EQ(with(16, U16(3) + U8(2) + "h2" + "x"), HelloStatus::kMalformed);  // trailing byte
  EXPECT_EQ(with(16, ""), HelloStatus::kMalformed);
  EXPECT_EQ(with(43, SupportedVersionsBody({0x0303})), HelloStatus::kDone);
  EXPECT_EQ(with(43, SupportedVersionsBody({})), HelloStatus::kMalformed);
  EXPECT_EQ(with(43, U8(3) + U16(0x0304) + U8(3)), HelloStatus::kMalformed);  // odd
  EXPECT_EQ(with(43, U8(4) + U16(0x0304)), HelloStatus::kMalformed);          // overruns
  EXPECT_EQ(with(43, ""), HelloStatus::kMalformed);
}

TEST(ClientHelloParser, Tls13OnlyFromSupportedVersions) {
  HelloSpec spec;
  spec.extensions = std::vector<Extension>{{43, SupportedVersionsBody({0x0a0a, 0x0303, 0x0304})}};
  const Outcome o = ParseOnce(HelloRecord(spec));
  ASSERT_EQ(o.status, HelloStatus::kDone);
  EXPECT_TRUE(o.offers_tls13);
  spec.legacy_version = 0x0304;  // legacy_version never says 1.3
  spec.extensions = std::vector<Extension>{{43, SupportedVersionsBody({0x0303})}};
  const Outcome old = ParseOnce(HelloRecord(spec));
  ASSERT_EQ(old.status, HelloStatus::kDone);
  EXPECT_FALSE(old.offers_tls13);
  EXPECT_EQ(old.legacy_version, 0x0304);
}

// Lengths that run past what holds them, or fall short of it.
TEST(ClientHelloParser, BadLengthsAreMalformed) {
  const std::string good = HelloBody({});
  const auto as_record = [](const std::string& body) { return Record(Handshake(body)); };
  {
    HelloSpec s;
    s.session_id = std::string(33, 's');
    EXPECT_EQ(StatusOf(HelloRecord(s)), HelloStatus::kMalformed);
  }
  for (const std::string& suites : {std::string(), U8(0x13), U16(0x1301) + U8(0xc0)}) {
    HelloSpec s;
    s.cipher_suites = suites;
    EXPECT_EQ(StatusOf(HelloRecord(s)), HelloStatus::kMalformed) << suites.size();
  }
  {
    HelloSpec s;
    s.compression_methods.clear();
    EXPECT_EQ(StatusOf(HelloRecord(s)), HelloStatus::kMalformed);
  }
  // Extensions block length one short, one long; a byte after it; a lone byte
  // where the block length would be.
  const size_t ext_len_at = 2 + 32 + 1 + 32 + 2 + 4 + 1 + 1;
  const size_t ext_len = static_cast<uint8_t>(good[ext_len_at]) << 8 | static_cast<uint8_t>(good[ext_len_at + 1]);
  std::string shorter = good;
  shorter.replace(ext_len_at, 2, U16(ext_len - 1));
  EXPECT_EQ(StatusOf(as_record(shorter)), HelloStatus::kMalformed);
  std::string longer = good;
  longer.replace(ext_len_at, 2, U16(ext_len + 1));
  EXPECT_EQ(StatusOf(as_record(longer)), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(as_record(good + "x")), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(as_record(good.substr(0, ext_len_at) + "x")), HelloStatus::kMalformed);
  // An extension longer than the block.
  HelloSpec s;
  s.extensions = std::vector<Extension>{{0xfe00, "abc"}};
  std::string overlong = HelloBody(s);
  overlong.replace(overlong.size() - 5, 2, U16(4));
  EXPECT_EQ(StatusOf(as_record(overlong)), HelloStatus::kMalformed);
  // A message cut before the end of its fixed fields, in a record that ends
  // with it: the handshake length is what the hello is held to.
  EXPECT_EQ(StatusOf(as_record(good.substr(0, 30))), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(as_record(good.substr(0, 2 + 32 + 1 + 10))), HelloStatus::kMalformed);
  // The handshake length says less than the record carries.
  std::string short_message = Handshake(good);
  short_message.replace(1, 3, U24(good.size() - 1));
  EXPECT_EQ(StatusOf(Record(short_message)), HelloStatus::kMalformed);
  // And more: the extensions block no longer fills the message.
  std::string long_message = Handshake(good);
  long_message.replace(1, 3, U24(good.size() + 1));
  EXPECT_EQ(StatusOf(Record(long_message)), HelloStatus::kMalformed);
}

// A handshake length that ends the message inside a field: refused with the
// field named, not waited on.
TEST(ClientHelloParser, MessageEndingInsideAFieldIsMalformed) {
  const std::string good = HelloBody({});
  const auto error_of = [](std::string_view body) {
    const Outcome o = ParseOnce(Record(Handshake(body)));
    EXPECT_EQ(o.status, HelloStatus::kMalformed);
    return o.error;
  };
  // version 0-1, random 2-33, session_id 34-66, cipher_suites 67-72,
  // compression_methods 73-74, extensions length 75.
  EXPECT_EQ(error_of(good.substr(0, 67)), "ClientHello ends before cipher_suites");
  EXPECT_EQ(error_of(good.substr(0, 68)), "ClientHello ends before cipher_suites");
  EXPECT_EQ(error_of(good.substr(0, 70)), "cipher_suites past the ClientHello");
  EXPECT_EQ(error_of(good.substr(0, 73)), "ClientHello ends before compression_methods");
  EXPECT_EQ(error_of(good.substr(0, 74)), "compression_methods past the ClientHello");
  EXPECT_EQ(error_of(good.substr(0, 75) + U16(3) + "abc"), "truncated extension header");
  HelloSpec sslv2_version;
  sslv2_version.legacy_version = 0x0002;
  EXPECT_EQ(error_of(HelloBody(sslv2_version)), "ClientHello version major is not 3");
}

TEST(ClientHelloParser, RecordFraming) {
  const std::string message = Handshake(HelloBody({}));
  // Zero-length handshake records, first or later.
  EXPECT_EQ(StatusOf(Record("") + Record(message)), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(Record(message.substr(0, 10)) + Record("")), HelloStatus::kMalformed);
  // Longer than 2^14.
  EXPECT_EQ(StatusOf(U8(22) + U16(0x0303) + U16(16385)), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(U8(22) + U16(0x0303) + U16(16384)), HelloStatus::kNeedMore);
  // Versions: major 3 only, checked byte by byte.
  EXPECT_EQ(StatusOf(U8(22) + U8(2)), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(U8(22) + U8(3) + U8(4)), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(U8(22) + U8(3) + U8(3)), HelloStatus::kNeedMore);
  for (const uint16_t v : {0x0300, 0x0301, 0x0302, 0x0303}) {
    EXPECT_EQ(StatusOf(Record(message, 22, v)), HelloStatus::kDone) << v;
  }
  // 0x0300 is for the first record only.
  EXPECT_EQ(StatusOf(Record(message.substr(0, 10), 22, 0x0300) + Record(message.substr(10), 22, 0x0301)),
            HelloStatus::kDone);
  EXPECT_EQ(StatusOf(Record(message.substr(0, 10)) + Record(message.substr(10), 22, 0x0300)),
            HelloStatus::kMalformed);
  // Another handshake message first; decided on its type byte.
  EXPECT_EQ(StatusOf(U8(22) + U16(0x0301) + U16(100) + U8(2)), HelloStatus::kMalformed);
  // The handshake header itself split three ways.
  const Outcome split = ParseOnce(Frame(message, {1, 1, 1, 1}));
  ASSERT_EQ(split.status, HelloStatus::kDone) << split.error;
  EXPECT_EQ(split.sni, "backend.example.test");
}

TEST(ClientHelloParser, OtherRecordBeforeTheHelloEndsIsMalformed) {
  const std::string message = Handshake(HelloBody({}));
  const std::string first = Record(message.substr(0, 50));
  const std::string rest = Record(message.substr(50));
  // More handshake bytes than the hello in its last record: refused on that
  // record's header.
  const std::string overlong = first + U8(22) + U16(0x0301) + U16(message.size() - 50 + 1);
  EXPECT_EQ(StatusOf(overlong), HelloStatus::kMalformed);
  EXPECT_EQ(StatusOf(overlong.substr(0, overlong.size() - 1)), HelloStatus::kNeedMore);
  EXPECT_EQ(StatusOf(first + Record(U16(0x0228), 21)), HelloStatus::kMalformed);  // alert
  EXPECT_EQ(StatusOf(first + Record(U8(1), 20)), HelloStatus::kMalformed);        // CCS
  EXPECT_EQ(StatusOf(first + U8(21)), HelloStatus::kMalformed);  // on its type byte
  EXPECT_EQ(StatusOf(first + rest), HelloStatus::kDone);
}

TEST(ClientHelloParser, ErrorsAreReportedEarly) {
  // A session_id length of 33 is refused with the rest of the hello unsent.
  std::string body = HelloBody({});
  body[2 + 32] = 33;
  const std::string stream = Record(Handshake(body));
  EXPECT_EQ(StatusOf(std::string_view(stream).substr(0, 9 + 2 + 32)), HelloStatus::kNeedMore);
  EXPECT_EQ(StatusOf(std::string_view(stream).substr(0, 9 + 2 + 32 + 1)), HelloStatus::kMalformed);
  // A cipher_suites length past the declared message, before its bytes come.
  HelloSpec s;
  s.cipher_suites = std::string(2000, 'c');
  std::string big = Handshake(HelloBody(s));
  big.replace(1, 3, U24(200));
  const std::string head = U8(22) + U16(0x0301) + U16(204) + big.substr(0, 4 + 2 + 32 + 1 + 32 + 2);
  EXPECT_EQ(StatusOf(head.substr(0, head.size() - 1)), HelloStatus::kNeedMore);
  const Outcome o = ParseOnce(head);
  EXPECT_EQ(o.status, HelloStatus::kMalformed);
  EXPECT_EQ(o.error, "cipher_suites past the ClientHello");
}

TEST(ClientHelloParser, ResultIsStickyAndShorterInputStartsOver) {
  ClientHelloParser parser;
  ClientHello hello;
  const std::string good = HelloRecord();
  EXPECT_EQ(parser.Parse("GET / HTTP/1.1\r\n", &hello), HelloStatus::kNotTls);
  EXPECT_EQ(parser.Parse("GET / HTTP/1.1\r\nHost: x\r\n", &hello), HelloStatus::kNotTls);
  // A shorter buffer is a new stream.
  EXPECT_EQ(parser.Parse(std::string_view(good).substr(0, 20), &hello), HelloStatus::kNeedMore);
  EXPECT_STREQ(parser.error(), "");
  size_t consumed = 0;
  const std::string more = good + "more";
  EXPECT_EQ(parser.Parse(more, &hello, &consumed), HelloStatus::kDone);
  EXPECT_EQ(consumed, good.size());
  EXPECT_EQ(hello.sni, "backend.example.test");
  // Still done, with views into the buffer of this call.
  const std::string longer = good + "more and more";
  ClientHello again;
  EXPECT_EQ(parser.Parse(longer, &again, &consumed), HelloStatus::kDone);
  EXPECT_TRUE(PointsInto(again.sni, longer));
  EXPECT_EQ(again.sni, "backend.example.test");
}

TEST(ClientHelloParser, ForEachAlpnStopsAtABadLength) {
  ClientHello hello;
  const std::string list = U8(2) + "h2" + U8(8) + "http/1.1" + U8(9) + "short";
  hello.alpn_list = list;
  EXPECT_EQ(AlpnNames(hello), (std::vector<std::string>{"h2", "http/1.1"}));
  EXPECT_TRUE(hello.OffersAlpn("http/1.1"));
  EXPECT_FALSE(hello.OffersAlpn("short"));
  EXPECT_FALSE(hello.OffersAlpn("H2"));
}

}  // namespace
}  // namespace ktlb::passthrough
