// ktlb-tlsrogue: completes a real TLS handshake as a client, then sends one
// crafted record that a correct server must reject with a fatal alert (or, for
// the control cases, correct records), and reports the alert the server
// answered with.
//
//   ktlb-tlsrogue --case NAME [--tls12] [--sni NAME] [--ca FILE] [--alpn LIST]
//                 [--cipher NAME] [--timeout-ms 5000] [--delay-ms 0] [--verbose]
//                 HOST:PORT                (or --connect HOST:PORT)
//   ktlb-tlsrogue --list                   (the cases, with what they send)
//
// Output: one line on stdout,
//
//   alert <code> <name>        the first alert the server sent (e.g. "alert 20 bad_record_mac")
//   closed-without-alert       EOF or a reset before any alert
//   timeout                    nothing conclusive within --timeout-ms
//
// and exit status 0 in all three cases: the caller decides what it expected.
// Exit 1: a tool error (connect, handshake, a server record this tool cannot
// decrypt); exit 2: usage. Details (protocol, cipher, the records seen) go to
// stderr.
//
// How: OpenSSL does the handshake over memory BIOs, so the bytes it did not
// consume stay visible to us. The traffic secrets come from the keylog
// callback (TLS 1.3: CLIENT/SERVER_TRAFFIC_SECRET_0 expanded with
// HKDF-Expand-Label "key"/"iv"); for TLS 1.2 the key block is derived from the
// session's master secret (PRF "key expansion"). From then on OpenSSL is not
// used for I/O: the tool seals the crafted record itself (client sequence
// number 0 for TLS 1.3, 1 for TLS 1.2 where the client Finished was 0), sends
// it right after the handshake (--delay-ms waits first, e.g. so that a kTLS
// server has moved its receive side to the kernel), and decrypts what the
// server sends with the server's keys, counting every record for the sequence
// number (TLS 1.3 NewSessionTickets are skipped). AEAD suites only:
// AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

// --- OpenSSL ownership (the style of include/ktlb/openssl_ptr.h, kept local so
// the tool builds on its own) ------------------------------------------------

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using UniqueSslCtx = std::unique_ptr<SSL_CTX, Deleter<SSL_CTX, SSL_CTX_free>>;
using UniqueSsl = std::unique_ptr<SSL, Deleter<SSL, SSL_free>>;
using UniqueCipher = std::unique_ptr<EVP_CIPHER, Deleter<EVP_CIPHER, EVP_CIPHER_free>>;
using UniqueCipherCtx =
    std::unique_ptr<EVP_CIPHER_CTX, Deleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>>;
using UniqueKdf = std::unique_ptr<EVP_KDF, Deleter<EVP_KDF, EVP_KDF_free>>;
using UniqueKdfCtx = std::unique_ptr<EVP_KDF_CTX, Deleter<EVP_KDF_CTX, EVP_KDF_CTX_free>>;

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

using Bytes = std::string;  // binary-safe

// --- constants ----------------------------------------------------------------

constexpr uint8_t kChangeCipherSpec = 20;
constexpr uint8_t kAlert = 21;
constexpr uint8_t kHandshake = 22;
constexpr uint8_t kApplicationData = 23;
constexpr size_t kHeader = 5;
constexpr size_t kTag = 16;
constexpr size_t kMaxPlain = 16384;                // 2^14
constexpr size_t kMaxCipher13 = kMaxPlain + 256;   // RFC 8446 5.2
constexpr size_t kMaxCipher12 = kMaxPlain + 2048;  // RFC 5246 6.2.3

// --- diagnostics --------------------------------------------------------------

bool g_verbose = false;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "ktlb-tlsrogue: error: %s\n", what.c_str());
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    std::fprintf(stderr, "  openssl: %s\n", buf);
  }
  std::exit(1);
}

void Note(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Note(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("ktlb-tlsrogue: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

std::string Hex(std::string_view b, size_t max = 32) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < b.size() && i < max; ++i) {
    auto c = static_cast<uint8_t>(b[i]);
    if (i > 0) out += ' ';
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  if (b.size() > max) out += " ...";
  return out;
}

std::optional<Bytes> Unhex(std::string_view s) {
  if (s.size() % 2 != 0) return std::nullopt;
  Bytes out;
  for (size_t i = 0; i < s.size(); i += 2) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = nib(s[i]), lo = nib(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi << 4 | lo);
  }
  return out;
}

const char* AlertName(int code) {
  switch (code) {
    case 0:
      return "close_notify";
    case 10:
      return "unexpected_message";
    case 20:
      return "bad_record_mac";
    case 21:
      return "decryption_failed";
    case 22:
      return "record_overflow";
    case 40:
      return "handshake_failure";
    case 42:
      return "bad_certificate";
    case 47:
      return "illegal_parameter";
    case 48:
      return "unknown_ca";
    case 50:
      return "decode_error";
    case 51:
      return "decrypt_error";
    case 70:
      return "protocol_version";
    case 71:
      return "insufficient_security";
    case 80:
      return "internal_error";
    case 86:
      return "inappropriate_fallback";
    case 90:
      return "user_canceled";
    case 100:
      return "no_renegotiation";
    case 109:
      return "missing_extension";
    case 110:
      return "unsupported_extension";
    case 112:
      return "unrecognized_name";
    case 120:
      return "no_application_protocol";
    default:
      return "unknown";
  }
}

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

void PutU16(Bytes* b, size_t v) {
  *b += static_cast<char>((v >> 8) & 0xff);
  *b += static_cast<char>(v & 0xff);
}

void PutU64(Bytes* b, uint64_t v) {
  for (int i = 7; i >= 0; --i) *b += static_cast<char>((v >> (8 * i)) & 0xff);
}

Bytes RecordHeader(uint8_t type, size_t length) {
  Bytes h;
  h += static_cast<char>(type);
  h += '\x03';
  h += '\x03';
  PutU16(&h, length);
  return h;
}

// --- the cases ----------------------------------------------------------------

struct Case {
  const char* name;
  bool tls12;  // every case runs over TLS 1.3; these over TLS 1.2 too
  const char* what;
};

constexpr Case kCases[] = {
    {"valid", true,
     "control: a correct GET / with Connection: close (the response, then close_notify)"},
    {"empty-appdata", true,
     "control: a zero-length application_data record (allowed), then the correct GET of \"valid\""},
    {"close-notify", true,
     "a correct close_notify alert (servers may answer with close_notify or just close)"},
    {"bad-mac", true, "a GET record with one ciphertext byte flipped"},
    {"oversized", true,
     "a record header announcing one byte over the ciphertext limit (2^14+256 for 1.3, "
     "2^14+2048 for 1.2), then that many bytes"},
    {"oversized-plaintext", true, "a correctly encrypted record with 2^14+1 bytes of plaintext"},
    {"bad-version", true, "a GET record whose header says version 03 01 instead of 03 03"},
    {"empty-alert", true, "an encrypted alert record with no content"},
    {"bad-keyupdate", false, "KeyUpdate with a 2-byte body: 18 00 00 02 00 00"},
    {"keyupdate-empty", false, "KeyUpdate with an empty body: 18 00 00 00"},
    {"keyupdate-bad-value", false, "KeyUpdate asking for update type 5: 18 00 00 01 05"},
    {"unexpected", true, "an encrypted Finished (14 00 00 20 + 32 zero bytes) after the handshake"},
    {"garbage-type", true,
     "a record of content type 0x42 (1.3: the outer type, sealed with that header as AAD; "
     "1.2: sealed as type 0x42)"},
    {"garbage-inner-type", false,
     "TLS 1.3 only: an application_data record whose inner content type is 0x42"},
    {"all-padding", false,
     "TLS 1.3 only: a record whose inner plaintext is all zeros (no content type)"},
};

const Case* FindCase(std::string_view name) {
  for (const Case& c : kCases)
    if (name == c.name) return &c;
  return nullptr;
}

// --- options ------------------------------------------------------------------

struct Options {
  std::string host;
  std::string port;
  std::string case_name;
  std::string sni = "localhost";
  std::string ca;
  std::string alpn;
  std::string cipher;
  bool tls12 = false;
  int timeout_ms = 5000;
  int delay_ms = 0;
};

[[noreturn]] void Usage(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "ktlb-tlsrogue: %s\n", why);
  std::fputs(
      "usage: ktlb-tlsrogue --case NAME [--tls12] [--sni NAME] [--ca FILE] [--alpn LIST]\n"
      "                     [--cipher NAME] [--timeout-ms 5000] [--delay-ms 0] [--verbose]\n"
      "                     HOST:PORT | --connect HOST:PORT\n"
      "       ktlb-tlsrogue --list\n"
      "prints \"alert CODE NAME\", \"closed-without-alert\" or \"timeout\" (exit 0);\n"
      "exit 1 on a connect/handshake/tool error, 2 on a usage error\n",
      why != nullptr ? stderr : stdout);
  std::exit(why != nullptr ? 2 : 0);
}

void SplitHostPort(const std::string& v, Options* opt) {
  size_t colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == v.size())
    Usage("HOST:PORT expected");
  opt->host = v.substr(0, colon);
  opt->port = v.substr(colon + 1);
  if (opt->host.size() >= 2 && opt->host.front() == '[' && opt->host.back() == ']')
    opt->host = opt->host.substr(1, opt->host.size() - 2);
}

int ParseMs(const std::string& s) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (end == s.c_str() || *end != '\0' || v < 0 || v > 3'600'000) Usage("bad milliseconds value");
  return static_cast<int>(v);
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--case") {
      opt.case_name = next();
    } else if (a == "--connect") {
      SplitHostPort(next(), &opt);
    } else if (a == "--tls12") {
      opt.tls12 = true;
    } else if (a == "--tls13") {
      opt.tls12 = false;
    } else if (a == "--sni") {
      opt.sni = next();
    } else if (a == "--ca") {
      opt.ca = next();
    } else if (a == "--alpn") {
      opt.alpn = next();
    } else if (a == "--cipher") {
      opt.cipher = next();
    } else if (a == "--timeout-ms") {
      opt.timeout_ms = ParseMs(next());
    } else if (a == "--delay-ms") {
      opt.delay_ms = ParseMs(next());
    } else if (a == "--verbose" || a == "-v") {
      g_verbose = true;
    } else if (a == "--list") {
      for (const Case& c : kCases)
        std::printf("%-20s %-9s %s\n", c.name, c.tls12 ? "1.3,1.2" : "1.3", c.what);
      std::exit(0);
    } else if (a == "-h" || a == "--help") {
      Usage(nullptr);
    } else if (!a.empty() && a[0] != '-' && opt.host.empty()) {
      SplitHostPort(a, &opt);
    } else {
      Usage(("unknown argument " + a).c_str());
    }
  }
  if (opt.host.empty()) Usage("HOST:PORT is required");
  const Case* c = FindCase(opt.case_name);
  if (c == nullptr) Usage("--case NAME is required (see --list)");
  if (opt.tls12 && !c->tls12) Usage("this case is TLS 1.3 only");
  return opt;
}

// --- record protection --------------------------------------------------------

// One direction's AEAD state.
struct Keys {
  const EVP_CIPHER* cipher = nullptr;
  Bytes key;
  Bytes iv;  // 1.3 and ChaCha: 12 bytes, XORed with the sequence; 1.2 GCM: the 4-byte salt
  uint64_t seq = 0;
};

struct Protocol {
  bool tls13 = true;
  bool explicit_nonce = false;  // TLS 1.2 AES-GCM: 8-byte nonce in front of the ciphertext
  UniqueCipher cipher;
  Keys client;
  Keys server;
};

Bytes Nonce(const Protocol& p, const Keys& k, uint64_t seq, std::string_view explicit_part) {
  Bytes nonce;
  if (p.explicit_nonce) {
    nonce = k.iv + Bytes(explicit_part);
  } else {
    nonce = k.iv;
    for (int i = 0; i < 8; ++i) nonce[4 + i] ^= static_cast<char>((seq >> (8 * (7 - i))) & 0xff);
  }
  return nonce;
}

// AEAD encrypt (encrypt = true) or decrypt; for decryption `in` ends with the tag.
std::optional<Bytes> Aead(const Keys& k, bool encrypt, std::string_view nonce, std::string_view aad,
                          std::string_view in) {
  UniqueCipherCtx ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) Fail("EVP_CIPHER_CTX_new");
  std::string_view body = in;
  if (!encrypt) {
    if (in.size() < kTag) return std::nullopt;
    body = in.substr(0, in.size() - kTag);
  }
  const auto* key = reinterpret_cast<const unsigned char*>(k.key.data());
  const auto* iv = reinterpret_cast<const unsigned char*>(nonce.data());
  if (EVP_CipherInit_ex(ctx.get(), k.cipher, nullptr, nullptr, nullptr, encrypt ? 1 : 0) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, static_cast<int>(nonce.size()),
                          nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, key, iv, encrypt ? 1 : 0) != 1)
    Fail("AEAD init");
  int len = 0;
  if (EVP_CipherUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                       static_cast<int>(aad.size())) != 1)
    Fail("AEAD aad");
  Bytes out(body.size() + kTag, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (EVP_CipherUpdate(ctx.get(), o, &len, reinterpret_cast<const unsigned char*>(body.data()),
                       static_cast<int>(body.size())) != 1)
    Fail("AEAD update");
  size_t total = static_cast<size_t>(len);
  if (!encrypt) {
    Bytes tag(in.substr(body.size()));
    if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kTag), tag.data()) !=
        1)
      Fail("AEAD set tag");
  }
  if (EVP_CipherFinal_ex(ctx.get(), o + total, &len) != 1) {
    ERR_clear_error();
    return std::nullopt;  // authentication failed
  }
  total += static_cast<size_t>(len);
  if (encrypt) {
    if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kTag), o + total) !=
        1)
      Fail("AEAD get tag");
    total += kTag;
  }
  out.resize(total);
  return out;
}

// Seals one client record. TLS 1.3: the inner plaintext is
// `content || inner_type || zeros(padding)` under outer type `outer_type`
// (the AAD is the record header as sent). TLS 1.2: `content` under `outer_type`.
Bytes Seal(Protocol& p, uint8_t outer_type, uint8_t inner_type, std::string_view content,
           size_t padding = 0) {
  Keys& k = p.client;
  const uint64_t seq = k.seq++;
  if (p.tls13) {
    Bytes inner(content);
    inner += static_cast<char>(inner_type);
    inner.append(padding, '\0');
    Bytes header = RecordHeader(outer_type, inner.size() + kTag);
    auto ct = Aead(k, true, Nonce(p, k, seq, {}), header, inner);
    return header + *ct;
  }
  Bytes explicit_part;
  if (p.explicit_nonce) PutU64(&explicit_part, seq);
  Bytes aad;
  PutU64(&aad, seq);
  aad += static_cast<char>(outer_type);
  aad += "\x03\x03";
  PutU16(&aad, content.size());
  auto ct = Aead(k, true, Nonce(p, k, seq, explicit_part), aad, content);
  return RecordHeader(outer_type, explicit_part.size() + ct->size()) + explicit_part + *ct;
}

struct Opened {
  uint8_t type;  // the inner content type for TLS 1.3
  Bytes plain;
};

// Opens one server record (header + body). nullopt: authentication failed.
std::optional<Opened> Open(Protocol& p, std::string_view record) {
  Keys& k = p.server;
  const uint64_t seq = k.seq++;
  const auto outer = static_cast<uint8_t>(record[0]);
  std::string_view header = record.substr(0, kHeader);
  std::string_view body = record.substr(kHeader);
  if (p.tls13) {
    auto plain = Aead(k, false, Nonce(p, k, seq, {}), header, body);
    if (!plain) return std::nullopt;
    size_t end = plain->size();
    while (end > 0 && (*plain)[end - 1] == '\0') --end;  // padding
    if (end == 0) return Opened{0, {}};                  // no content type at all
    return Opened{static_cast<uint8_t>((*plain)[end - 1]), plain->substr(0, end - 1)};
  }
  std::string_view explicit_part;
  if (p.explicit_nonce) {
    if (body.size() < 8) return std::nullopt;
    explicit_part = body.substr(0, 8);
    body.remove_prefix(8);
  }
  if (body.size() < kTag) return std::nullopt;
  Bytes aad;
  PutU64(&aad, seq);
  aad += static_cast<char>(outer);
  aad += "\x03\x03";
  PutU16(&aad, body.size() - kTag);
  auto plain = Aead(k, false, Nonce(p, k, seq, explicit_part), aad, body);
  if (!plain) return std::nullopt;
  return Opened{outer, *plain};
}

// --- key derivation -----------------------------------------------------------

struct Secrets {
  Bytes client_traffic;  // TLS 1.3 CLIENT_TRAFFIC_SECRET_0
  Bytes server_traffic;  // TLS 1.3 SERVER_TRAFFIC_SECRET_0
};

void OnKeylog(const SSL* ssl, const char* line) {
  auto* s = static_cast<Secrets*>(SSL_get_app_data(ssl));
  std::string_view l(line);
  size_t sp1 = l.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : l.find(' ', sp1 + 1);
  if (s == nullptr || sp2 == std::string_view::npos) return;
  std::string_view label = l.substr(0, sp1);
  auto secret = Unhex(l.substr(sp2 + 1));
  if (!secret) return;
  if (label == "CLIENT_TRAFFIC_SECRET_0") s->client_traffic = *secret;
  if (label == "SERVER_TRAFFIC_SECRET_0") s->server_traffic = *secret;
}

Bytes Tls13ExpandLabel(const EVP_MD* md, const Bytes& secret, const char* label, size_t len) {
  UniqueKdf kdf(EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr));
  if (kdf == nullptr) Fail("EVP_KDF_fetch(TLS13-KDF)");
  UniqueKdfCtx ctx(EVP_KDF_CTX_new(kdf.get()));
  if (ctx == nullptr) Fail("EVP_KDF_CTX_new");
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static char kPrefix[] = "tls13 ";
  // No OSSL_KDF_PARAM_DATA: the context is empty, and passing NULL/0 fails.
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(secret.data()),
                                        secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, kPrefix, 6),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label),
                                        std::strlen(label)),
      OSSL_PARAM_construct_end(),
  };
  Bytes out(len, '\0');
  if (EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), len, params) != 1)
    Fail(std::string("HKDF-Expand-Label ") + label);
  return out;
}

Bytes Tls12KeyBlock(const EVP_MD* md, const Bytes& master, const Bytes& seed, size_t len) {
  UniqueKdf kdf(EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr));
  if (kdf == nullptr) Fail("EVP_KDF_fetch(TLS1-PRF)");
  UniqueKdfCtx ctx(EVP_KDF_CTX_new(kdf.get()));
  if (ctx == nullptr) Fail("EVP_KDF_CTX_new");
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, const_cast<char*>(master.data()),
                                        master.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, const_cast<char*>(seed.data()),
                                        seed.size()),
      OSSL_PARAM_construct_end(),
  };
  Bytes out(len, '\0');
  if (EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), len, params) != 1)
    Fail("TLS 1.2 key expansion");
  return out;
}

void DeriveKeys(SSL* ssl, const Secrets& secrets, Protocol* p) {
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl);
  if (suite == nullptr) Fail("no cipher after the handshake");
  const int nid = SSL_CIPHER_get_cipher_nid(suite);
  const EVP_MD* md = SSL_CIPHER_get_handshake_digest(suite);
  if (md == nullptr) Fail("no handshake digest");
  const char* cipher_name = nullptr;
  if (nid == NID_aes_128_gcm) cipher_name = "AES-128-GCM";
  if (nid == NID_aes_256_gcm) cipher_name = "AES-256-GCM";
  if (nid == NID_chacha20_poly1305) cipher_name = "ChaCha20-Poly1305";
  if (cipher_name == nullptr)
    Fail(std::string("unsupported cipher suite ") + SSL_CIPHER_get_name(suite));
  p->cipher.reset(EVP_CIPHER_fetch(nullptr, cipher_name, nullptr));
  if (p->cipher == nullptr) Fail(std::string("EVP_CIPHER_fetch ") + cipher_name);
  const auto key_len = static_cast<size_t>(EVP_CIPHER_get_key_length(p->cipher.get()));
  p->client.cipher = p->server.cipher = p->cipher.get();
  p->tls13 = SSL_version(ssl) == TLS1_3_VERSION;
  if (p->tls13) {
    if (secrets.client_traffic.empty() || secrets.server_traffic.empty())
      Fail("the keylog callback gave no traffic secrets");
    p->client.key = Tls13ExpandLabel(md, secrets.client_traffic, "key", key_len);
    p->client.iv = Tls13ExpandLabel(md, secrets.client_traffic, "iv", 12);
    p->server.key = Tls13ExpandLabel(md, secrets.server_traffic, "key", key_len);
    p->server.iv = Tls13ExpandLabel(md, secrets.server_traffic, "iv", 12);
    // The Finished messages were protected with the handshake keys: the
    // application keys start at 0 in both directions.
    p->client.seq = p->server.seq = 0;
    return;
  }
  // TLS 1.2: key_block = PRF(master, "key expansion", server_random + client_random)
  // = client key, server key, client IV, server IV (AEAD: no MAC keys).
  const size_t iv_len = nid == NID_chacha20_poly1305 ? 12 : 4;
  p->explicit_nonce = nid != NID_chacha20_poly1305;
  const SSL_SESSION* session = SSL_get_session(ssl);
  Bytes master(SSL_SESSION_get_master_key(session, nullptr, 0), '\0');
  SSL_SESSION_get_master_key(session, reinterpret_cast<unsigned char*>(master.data()),
                             master.size());
  Bytes client_random(SSL_get_client_random(ssl, nullptr, 0), '\0');
  SSL_get_client_random(ssl, reinterpret_cast<unsigned char*>(client_random.data()),
                        client_random.size());
  Bytes server_random(SSL_get_server_random(ssl, nullptr, 0), '\0');
  SSL_get_server_random(ssl, reinterpret_cast<unsigned char*>(server_random.data()),
                        server_random.size());
  Bytes block = Tls12KeyBlock(md, master, "key expansion" + server_random + client_random,
                              2 * key_len + 2 * iv_len);
  p->client.key = block.substr(0, key_len);
  p->server.key = block.substr(key_len, key_len);
  p->client.iv = block.substr(2 * key_len, iv_len);
  p->server.iv = block.substr(2 * key_len + iv_len, iv_len);
  // Each side's Finished was its record 0 under these keys.
  p->client.seq = p->server.seq = 1;
}

// --- socket -------------------------------------------------------------------

int Connect(const Options& opt) {
  addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(opt.host.c_str(), opt.port.c_str(), &hints, &res);
  if (rc != 0) Fail("resolve " + opt.host + ": " + gai_strerror(rc));
  int fd = -1;
  int saved = 0;
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      saved = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) Fail("connect " + opt.host + ":" + opt.port + ": " + std::strerror(saved));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void SendAll(int fd, std::string_view data, bool tolerate_peer_gone) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      // The server may close while a long crafted record is still going out:
      // what it sent before closing is what we are after.
      if (tolerate_peer_gone && (errno == EPIPE || errno == ECONNRESET)) {
        Note("send: %s (the server closed early; reading what it sent)", std::strerror(errno));
        return;
      }
      Fail(std::string("send: ") + std::strerror(errno));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

enum class ReadResult { kData, kEof, kReset, kTimeout };

// Appends what arrives to `buf`, waiting until `deadline_ms` at most.
ReadResult ReadSome(int fd, int64_t deadline_ms, Bytes* buf) {
  for (;;) {
    int64_t left = deadline_ms - NowMs();
    if (left <= 0) return ReadResult::kTimeout;
    pollfd pfd = {fd, POLLIN, 0};
    int r = poll(&pfd, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) Fail(std::string("poll: ") + std::strerror(errno));
    if (r == 0) return ReadResult::kTimeout;
    char tmp[65536];
    ssize_t n = recv(fd, tmp, sizeof tmp, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) return ReadResult::kReset;
    if (n < 0) Fail(std::string("recv: ") + std::strerror(errno));
    if (n == 0) return ReadResult::kEof;
    buf->append(tmp, static_cast<size_t>(n));
    return ReadResult::kData;
  }
}

// --- handshake over memory BIOs -------------------------------------------------

void FlushToSocket(int fd, BIO* wbio) {
  char tmp[16384];
  for (;;) {
    int n = BIO_read(wbio, tmp, sizeof tmp);
    if (n <= 0) return;
    SendAll(fd, std::string_view(tmp, static_cast<size_t>(n)), false);
  }
}

// Returns the bytes that arrived after the server's last handshake record and
// that OpenSSL left unread.
Bytes Handshake(int fd, SSL* ssl, BIO* rbio, BIO* wbio, int64_t deadline_ms) {
  for (;;) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    FlushToSocket(fd, wbio);  // the ClientHello, the second flight, alerts
    if (r == 1) break;
    int err = SSL_get_error(ssl, r);
    if (err != SSL_ERROR_WANT_READ)
      Fail("TLS handshake failed (SSL_get_error " + std::to_string(err) + ")");
    Bytes in;
    switch (ReadSome(fd, deadline_ms, &in)) {
      case ReadResult::kData:
        break;
      case ReadResult::kEof:
        Fail("the server closed the connection during the handshake");
      case ReadResult::kReset:
        Fail("the server reset the connection during the handshake");
      case ReadResult::kTimeout:
        Fail("handshake timed out");
    }
    if (BIO_write(rbio, in.data(), static_cast<int>(in.size())) != static_cast<int>(in.size()))
      Fail("BIO_write");
  }
  Bytes leftover;
  char tmp[16384];
  for (;;) {
    int n = BIO_read(rbio, tmp, sizeof tmp);
    if (n <= 0) break;
    leftover.append(tmp, static_cast<size_t>(n));
  }
  return leftover;
}

// --- building the crafted record -------------------------------------------------

Bytes Request(const Options& opt) {
  return "GET / HTTP/1.1\r\nHost: " + opt.sni +
         "\r\nUser-Agent: ktlb-tlsrogue\r\nConnection: close\r\n\r\n";
}

Bytes Craft(const Options& opt, Protocol& p) {
  const std::string& c = opt.case_name;
  // TLS 1.3 seals everything as application_data with the real type inside;
  // TLS 1.2 puts the type in the record header.
  auto seal = [&](uint8_t type, std::string_view content) {
    return p.tls13 ? Seal(p, kApplicationData, type, content) : Seal(p, type, type, content);
  };
  if (c == "valid") return seal(kApplicationData, Request(opt));
  if (c == "empty-appdata") {
    Bytes empty = seal(kApplicationData, {});
    return empty + seal(kApplicationData, Request(opt));
  }
  if (c == "close-notify") return seal(kAlert, std::string_view("\x01\x00", 2));
  if (c == "bad-mac") {
    Bytes rec = seal(kApplicationData, Request(opt));
    rec[kHeader + (rec.size() - kHeader) / 2] ^= 0x01;  // a ciphertext byte, mid-record
    return rec;
  }
  if (c == "oversized") {
    const size_t len = (p.tls13 ? kMaxCipher13 : kMaxCipher12) + 1;
    return RecordHeader(kApplicationData, len) + Bytes(len, '\0');
  }
  if (c == "bad-version") {
    Bytes rec = seal(kApplicationData, Request(opt));
    rec[2] = '\x01';  // 03 03 -> 03 01, after sealing (a 1.3 record is rejected before decryption)
    return rec;
  }
  if (c == "oversized-plaintext") return seal(kApplicationData, Bytes(kMaxPlain + 1, 'A'));
  if (c == "empty-alert") return seal(kAlert, {});
  if (c == "bad-keyupdate")
    return seal(kHandshake, std::string_view("\x18\x00\x00\x02\x00\x00", 6));
  if (c == "keyupdate-empty") return seal(kHandshake, std::string_view("\x18\x00\x00\x00", 4));
  if (c == "keyupdate-bad-value")
    return seal(kHandshake, std::string_view("\x18\x00\x00\x01\x05", 5));
  if (c == "unexpected") return seal(kHandshake, Bytes("\x14\x00\x00\x20", 4) + Bytes(32, '\0'));
  if (c == "garbage-type") {
    return p.tls13 ? Seal(p, 0x42, kApplicationData, "x") : Seal(p, 0x42, 0x42, "x");
  }
  if (c == "garbage-inner-type") return Seal(p, kApplicationData, 0x42, "x");
  if (c == "all-padding") return Seal(p, kApplicationData, 0, {}, 15);  // 16 zero bytes inside
  Fail("no builder for case " + c);
}

// --- reading the server's answer ---------------------------------------------------

const char* TypeName(uint8_t t) {
  switch (t) {
    case kChangeCipherSpec:
      return "change_cipher_spec";
    case kAlert:
      return "alert";
    case kHandshake:
      return "handshake";
    case kApplicationData:
      return "application_data";
    default:
      return "unknown";
  }
}

// Reads and decrypts server records until an alert, EOF or the deadline; prints
// the result line.
void Report(int fd, Protocol& p, Bytes buf, int64_t deadline_ms, bool show_first_line) {
  size_t records = 0;
  for (;;) {
    // Every complete record in the buffer.
    while (buf.size() >= kHeader) {
      const auto outer = static_cast<uint8_t>(buf[0]);
      const size_t len = static_cast<uint8_t>(buf[3]) << 8 | static_cast<uint8_t>(buf[4]);
      if (buf.size() < kHeader + len) break;
      std::string_view rec(buf.data(), kHeader + len);
      ++records;
      if (outer == kAlert && len == 2 && p.tls13) {
        // Not protected: a TLS 1.3 server should never do this after the handshake.
        const int level = static_cast<uint8_t>(rec[5]), code = static_cast<uint8_t>(rec[6]);
        Note("record %zu: PLAINTEXT alert level %d (not encrypted!)", records, level);
        std::printf("alert %d %s\n", code, AlertName(code));
        return;
      }
      if (outer == kChangeCipherSpec) {
        Note("record %zu: change_cipher_spec (skipped)", records);
        buf.erase(0, rec.size());
        continue;
      }
      const uint64_t seq = p.server.seq;
      auto opened = Open(p, rec);
      if (!opened) {
        Fail("cannot decrypt server record " + std::to_string(records) + " (outer type " +
             std::to_string(outer) + ", " + std::to_string(len) + " bytes, sequence " +
             std::to_string(seq) + "): " + Hex(rec));
      }
      if (g_verbose)
        Note("record %zu (seq %llu): %s, %zu bytes: %s", records,
             static_cast<unsigned long long>(seq), TypeName(opened->type), opened->plain.size(),
             Hex(opened->plain, 16).c_str());
      if (opened->type == kAlert) {
        if (opened->plain.size() != 2) {
          Note("record %zu: malformed alert of %zu bytes: %s", records, opened->plain.size(),
               Hex(opened->plain).c_str());
          Fail("malformed alert from the server");
        }
        const int level = static_cast<uint8_t>(opened->plain[0]),
                  code = static_cast<uint8_t>(opened->plain[1]);
        Note("record %zu: alert level %d (%s), %d %s", records, level,
             level == 2   ? "fatal"
             : level == 1 ? "warning"
                          : "?",
             code, AlertName(code));
        std::printf("alert %d %s\n", code, AlertName(code));
        return;
      }
      if (opened->type == kHandshake) {
        const int hs = opened->plain.empty() ? -1 : static_cast<uint8_t>(opened->plain[0]);
        if (hs == 4) {
          if (g_verbose) Note("record %zu: NewSessionTicket (skipped)", records);
        } else if (hs == 24) {
          Fail("the server sent a KeyUpdate; this tool does not follow key updates");
        } else {
          Note("record %zu: handshake message type %d (skipped)", records, hs);
        }
      } else if (opened->type == kApplicationData) {
        if (show_first_line) {
          Bytes line = opened->plain.substr(0, opened->plain.find('\r'));
          Note("record %zu: application data, %zu bytes: %s", records, opened->plain.size(),
               line.c_str());
          show_first_line = false;
        }
      } else {
        Note("record %zu: content type %d, %zu bytes (skipped)", records, opened->type,
             opened->plain.size());
      }
      buf.erase(0, rec.size());
    }
    const ReadResult r = ReadSome(fd, deadline_ms, &buf);
    if (r == ReadResult::kData) continue;
    if (r == ReadResult::kTimeout) {
      Note("no alert and no close within the timeout (%zu records seen)", records);
      std::printf("timeout\n");
      return;
    }
    Note("connection %s after %zu records, no alert%s",
         r == ReadResult::kReset ? "reset" : "closed (EOF)", records,
         buf.empty() ? "" : " (a partial record was pending)");
    std::printf("closed-without-alert\n");
    return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const Options opt = ParseArgs(argc, argv);

  UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
  if (ctx == nullptr) Fail("SSL_CTX_new");
  const int version = opt.tls12 ? TLS1_2_VERSION : TLS1_3_VERSION;
  SSL_CTX_set_min_proto_version(ctx.get(), version);
  SSL_CTX_set_max_proto_version(ctx.get(), version);
  SSL_CTX_set_keylog_callback(ctx.get(), OnKeylog);
  // AEAD suites only (the record code handles nothing else); --cipher narrows it.
  if (opt.tls12) {
    const std::string list = opt.cipher.empty() ? "ECDHE+AESGCM:ECDHE+CHACHA20" : opt.cipher;
    if (SSL_CTX_set_cipher_list(ctx.get(), list.c_str()) != 1) Fail("bad --cipher " + list);
  } else if (!opt.cipher.empty() && SSL_CTX_set_ciphersuites(ctx.get(), opt.cipher.c_str()) != 1) {
    Fail("bad --cipher " + opt.cipher);
  }
  if (!opt.ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), opt.ca.c_str(), nullptr) != 1)
      Fail("cannot load --ca " + opt.ca);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  }
  if (!opt.alpn.empty()) {
    std::string wire;  // "h2,http/1.1" -> length-prefixed list
    size_t start = 0;
    while (start <= opt.alpn.size()) {
      size_t comma = opt.alpn.find(',', start);
      if (comma == std::string::npos) comma = opt.alpn.size();
      std::string proto = opt.alpn.substr(start, comma - start);
      if (proto.empty() || proto.size() > 255) Usage("bad --alpn list");
      wire += static_cast<char>(proto.size());
      wire += proto;
      start = comma + 1;
    }
    if (SSL_CTX_set_alpn_protos(ctx.get(), reinterpret_cast<const unsigned char*>(wire.data()),
                                static_cast<unsigned>(wire.size())) != 0)
      Fail("SSL_CTX_set_alpn_protos");
  }

  Fd fd(Connect(opt));
  UniqueSsl ssl(SSL_new(ctx.get()));
  if (ssl == nullptr) Fail("SSL_new");
  Secrets secrets;
  SSL_set_app_data(ssl.get(), &secrets);
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (rbio == nullptr || wbio == nullptr) Fail("BIO_new");
  BIO_set_mem_eof_return(rbio, -1);    // empty = "retry", not EOF
  SSL_set_bio(ssl.get(), rbio, wbio);  // the SSL owns both from here
  if (!opt.sni.empty() && SSL_set_tlsext_host_name(ssl.get(), opt.sni.c_str()) != 1) Fail("SNI");
  if (!opt.ca.empty() && SSL_set1_host(ssl.get(), opt.sni.c_str()) != 1) Fail("SSL_set1_host");
  SSL_set_connect_state(ssl.get());

  Bytes leftover = Handshake(fd.get(), ssl.get(), rbio, wbio, NowMs() + opt.timeout_ms);
  Protocol p;
  DeriveKeys(ssl.get(), secrets, &p);
  const unsigned char* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(ssl.get(), &alpn, &alpn_len);
  Note("%s %s%s%.*s, case %s", SSL_get_version(ssl.get()),
       SSL_CIPHER_get_name(SSL_get_current_cipher(ssl.get())), alpn_len > 0 ? ", ALPN " : "",
       static_cast<int>(alpn_len), reinterpret_cast<const char*>(alpn), opt.case_name.c_str());

  if (opt.delay_ms > 0) {
    // Whatever the server sends meanwhile (tickets) stays in the socket buffer.
    timespec ts = {opt.delay_ms / 1000, static_cast<long>(opt.delay_ms % 1000) * 1'000'000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
  }
  const Bytes record = Craft(opt, p);
  Note("sending %zu bytes: %s", record.size(), Hex(record, 16).c_str());
  SendAll(fd.get(), record, true);
  Report(fd.get(), p, std::move(leftover), NowMs() + opt.timeout_ms,
         opt.case_name == "valid" || opt.case_name == "empty-appdata");
  return 0;
}
