// ktlb-tlsload: a load generator that opens a new TLS connection for every
// request, with a FULL handshake each time (wrk resumes TLS sessions, so its
// "Connection: close" runs mostly measure resumptions).
//
//   ktlb-tlsload --connect HOST:PORT [--path /size/100] [-c|--concurrency 32]
//                [-d|--duration 10] [--resume] [--tls 1.2|1.3] [--sni localhost]
//                [--curves X25519] [--timeout 5] [--provider-keys]
//                [-n|--requests N] [--handshake-only]
//
// One thread, one epoll loop, `concurrency` slots. Every slot loops: TCP
// connect, TLS handshake, "GET PATH HTTP/1.1 / Host: SNI / Connection: close",
// read until the response is complete (Content-Length body read, or the server
// closed a response without one), check the status is 200, close, start over.
//
// The client is built to be cheap, because in the benchmarks it shares a core
// with the origin: one SSL_CTX for everything, no certificate chain
// verification at all (the cert_verify callback accepts without building a
// chain; the handshake signature itself is still checked, as the protocol
// requires), one shared read buffer, the request bytes built once, edge-
// triggered epoll with each socket registered once for its lifetime.
//
// OpenSSL 3.0 decodes every certificate's public key through the provider
// decoder machinery, ~100 us per certificate (a third of a full handshake's
// client CPU). Unless --provider-keys, a do-nothing ENGINE is registered as the
// RSA and EC key-method engine: OpenSSL then takes its legacy decode path
// (~15 us) and verifies the handshake signature with its built-in legacy
// RSA/EC methods. Nothing on the wire changes.
//
// -n N stops after N completed requests instead of at the end of the duration
// (the duration is then only a limit). With -c 1 exactly N connections are
// made, which is what an instruction-count profile of the server wants: two
// runs with different N, subtracted, give the cost of one connection.
//
// --handshake-only sends no request: after the handshake the client sends a
// close_notify and reads until the server closes, so the server's cost is
// accept, handshake, session ticket and close, without any HTTP or upstream
// work. A TLS 1.3 ticket still arrives (and --resume still resumes).
//
// Sessions are never offered unless --resume: then every slot offers the
// newest session it received (the server's TLS 1.3 tickets, or its TLS 1.2
// session/ticket), so after each slot's first connection they resume.
//
// Output (wrk-like, parsed by bench/run.py):
//
//   Running 10s test @ https://127.0.0.1:8443/size/100
//     1 threads and 32 connections, full handshakes
//     TLS: TLSv1.3 TLS_AES_128_GCM_SHA256 x25519, server key RSA-2048
//     12345 requests in 10.00s, 3.01MB read
//   Requests/sec:   1234.50
//   Handshakes/sec: 1234.60
//   Errors: connect 0, handshake 0, status 0, read 0
//   Timeouts: 0 (counted in the errors above, by phase)
//   Resumed: 0.0000 (0 of 12346 handshakes)
//   Latency: avg 25.10ms, max 40.00ms
//   Client CPU: 5.31s, 430.1us per handshake
//
// A request counts once its response is complete, within the duration; the
// connections still in flight when it ends are dropped (servers see up to
// `concurrency` resets then). Once the response is complete the client closes
// without a close_notify, like wrk; Linux reuses its TIME_WAIT ports on
// loopback (net.ipv4.tcp_tw_reuse=2, the default). Error
// kinds: connect (TCP connect failed or timed out), handshake (TLS failed or
// the peer closed during it), status (not a 200, or an unparsable head), read
// (I/O failure or EOF after the handshake, before the response was complete;
// sending the request counts here too). Exit status 0 when at least one
// request completed.

// The ENGINE API is deprecated in 3.0 but is the only switch to the cheap
// legacy key decoding (see above).
#define OPENSSL_SUPPRESS_DEPRECATED
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr size_t kReadBuf = 64 * 1024;
constexpr size_t kMaxHead = 64 * 1024;
constexpr int kMaxEvents = 256;
constexpr int64_t kScanIntervalNs = 1'000'000;  // timeouts and retries: 1 ms granularity
constexpr int64_t kConnectRetryNs = 10'000'000;  // back off 10 ms after a failed connect

enum ErrorKind { kConnect, kHandshake, kStatus, kRead, kNumKinds };

enum class State { kIdle, kConnecting, kHandshake, kWrite, kRead };

struct Slot {
  uint32_t gen = 0;  // bumped per connection; stale epoll events are ignored
  int fd = -1;
  SSL* ssl = nullptr;
  SSL_SESSION* session = nullptr;  // --resume: newest session from the server
  State state = State::kIdle;
  int64_t started_ns = 0;
  int64_t deadline_ns = 0;  // timeout, or the retry time while kIdle
  size_t sent = 0;
  bool head_done = false;
  int64_t body_left = -1;  // -1: no Content-Length, read until the server closes
  std::string head;        // capacity kept across connections
};

struct Options {
  std::string connect;
  std::string path = "/";
  std::string sni = "localhost";
  std::string curves;
  int concurrency = 32;
  double duration_s = 10;
  double timeout_s = 5;
  bool resume = false;
  bool provider_keys = false;
  bool handshake_only = false;
  uint64_t requests = 0;  // 0: run for the duration
  int tls_version = 0;  // 0: 1.2..1.3
};

struct Stats {
  uint64_t completed = 0;
  uint64_t handshakes = 0;
  uint64_t resumed = 0;
  uint64_t errors[kNumKinds] = {};
  uint64_t timeouts = 0;
  uint64_t bytes = 0;
  int64_t latency_sum_ns = 0;
  int64_t latency_max_ns = 0;
  bool described = false;
  std::string tls_desc;
};

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

double CpuSeconds() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

[[noreturn]] void Usage(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "ktlb-tlsload: %s\n", why);
  std::fputs(
      "usage: ktlb-tlsload --connect HOST:PORT [--path /size/100] [-c|--concurrency 32]\n"
      "                    [-d|--duration 10] [--resume] [--tls 1.2|1.3] [--sni localhost]\n"
      "                    [--curves X25519] [--timeout 5] [--provider-keys]\n"
      "                    [-n|--requests N] [--handshake-only]\n",
      why != nullptr ? stderr : stdout);
  std::exit(why != nullptr ? 2 : 0);
}

bool ParseDouble(std::string_view s, double* out) {
  if (!s.empty() && s.back() == 's') s.remove_suffix(1);
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && *out > 0;
}

bool IStartsWith(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    char a = s[i];
    if (a >= 'A' && a <= 'Z') a = static_cast<char>(a + 32);
    if (a != prefix[i]) return false;
  }
  return true;
}

bool ResolveAddress(const std::string& text, sockaddr_storage* ss, socklen_t* len) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string host = text.substr(0, colon);
  std::string port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) return false;
  std::memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

// Accept any certificate without building or checking a chain: the client
// must stay cheap. (SSL_VERIFY_NONE alone would still run X509_verify_cert.)
int AcceptAnyCertificate(X509_STORE_CTX* /*ctx*/, void* /*arg*/) { return 1; }

#ifndef OPENSSL_NO_ENGINE
constexpr int kLegacyKeyNids[] = {EVP_PKEY_RSA, EVP_PKEY_EC};

int LegacyPkeyMethods(ENGINE* /*e*/, EVP_PKEY_METHOD** pmeth, const int** nids, int nid) {
  if (pmeth == nullptr) {
    *nids = kLegacyKeyNids;
    return static_cast<int>(std::size(kLegacyKeyNids));
  }
  // OpenSSL's own built-in method for the type: the engine only exists so that
  // ENGINE_get_pkey_meth_engine() finds something.
  *pmeth = const_cast<EVP_PKEY_METHOD*>(EVP_PKEY_meth_find(nid));
  return *pmeth != nullptr ? 1 : 0;
}
#endif

// Makes OpenSSL decode RSA and EC certificate keys the cheap legacy way.
bool UseLegacyKeyDecoding() {
#ifndef OPENSSL_NO_ENGINE
  ENGINE* e = ENGINE_new();
  if (e == nullptr) return false;
  bool ok = ENGINE_set_id(e, "ktlb-tlsload-legacy-keys") == 1 &&
            ENGINE_set_name(e, "built-in legacy RSA/EC key methods") == 1 &&
            ENGINE_set_pkey_meths(e, LegacyPkeyMethods) == 1 &&
            ENGINE_set_default_pkey_meths(e) == 1;
  ENGINE_free(e);  // the default-method table keeps its own reference
  ERR_clear_error();
  return ok;
#else
  return false;
#endif
}

int g_slot_index = -1;  // SSL ex_data index holding the Slot*

// --resume: keep the newest session the server gave this slot. Returning 1
// takes the reference OpenSSL passes us.
int OnNewSession(SSL* ssl, SSL_SESSION* session) {
  auto* slot = static_cast<Slot*>(SSL_get_ex_data(ssl, g_slot_index));
  if (slot == nullptr) return 0;
  if (slot->session != nullptr) SSL_SESSION_free(slot->session);
  slot->session = session;
  return 1;
}

class Loader {
 public:
  Loader(const Options& opt, SSL_CTX* ctx, const sockaddr_storage& addr, socklen_t addr_len)
      : opt_(opt), ctx_(ctx), addr_(addr), addr_len_(addr_len), slots_(opt.concurrency),
        buf_(kReadBuf) {
    request_ = "GET " + opt.path + " HTTP/1.1\r\nHost: " + opt.sni +
               "\r\nUser-Agent: ktlb-tlsload\r\nConnection: close\r\n\r\n";
    for (Slot& s : slots_) s.head.reserve(4096);
  }

  ~Loader() {
    for (Slot& s : slots_) {
      Teardown(&s, false);
      if (s.session != nullptr) SSL_SESSION_free(s.session);
    }
    if (ep_ >= 0) close(ep_);
  }

  int Run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      std::perror("epoll_create1");
      return 1;
    }
    const double cpu0 = CpuSeconds();
    start_ns_ = NowNs();
    end_ns_ = start_ns_ + static_cast<int64_t>(opt_.duration_s * 1e9);
    now_ns_ = start_ns_;
    for (size_t i = 0; i < slots_.size(); ++i) StartConnect(i);

    epoll_event events[kMaxEvents];
    int64_t next_scan = now_ns_ + kScanIntervalNs;
    while (true) {
      now_ns_ = NowNs();
      if (now_ns_ >= end_ns_) break;
      int64_t wait_ns = std::min(end_ns_, next_scan) - now_ns_;
      int timeout_ms = static_cast<int>(std::max<int64_t>(1, (wait_ns + 999'999) / 1'000'000));
      int n = epoll_wait(ep_, events, kMaxEvents, timeout_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("epoll_wait");
        return 1;
      }
      now_ns_ = NowNs();
      if (now_ns_ >= end_ns_ || Done()) break;
      for (int i = 0; i < n; ++i) {
        const size_t index = static_cast<size_t>(events[i].data.u64 & 0xffffffffu);
        const auto gen = static_cast<uint32_t>(events[i].data.u64 >> 32);
        Slot& s = slots_[index];
        if (s.gen != gen || s.fd < 0) continue;  // stale: the connection is gone
        Drive(index, events[i].events);
      }
      if (Done()) break;
      if (now_ns_ >= next_scan) {
        Scan();
        next_scan = now_ns_ + kScanIntervalNs;
      }
    }
    const int64_t elapsed_ns = now_ns_ - start_ns_;
    const double cpu = CpuSeconds() - cpu0;
    Report(elapsed_ns, cpu);
    return stats_.completed > 0 ? 0 : 1;
  }

 private:
  bool Done() const { return opt_.requests != 0 && stats_.completed >= opt_.requests; }

  void Scan() {
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (now_ns_ < s.deadline_ns) continue;
      if (s.state == State::kIdle) {
        StartConnect(i);
        continue;
      }
      ++stats_.timeouts;
      Fail(i, s.state == State::kConnecting  ? kConnect
              : s.state == State::kHandshake ? kHandshake
                                             : kRead);
    }
  }

  void StartConnect(size_t index) {
    Slot& s = slots_[index];
    // -n: no connection beyond the ones the count still needs.
    if (opt_.requests != 0 && stats_.completed + InFlight() >= opt_.requests) return;
    ++s.gen;
    s.sent = 0;
    s.head_done = false;
    s.body_left = -1;
    s.head.clear();
    s.started_ns = now_ns_;
    s.deadline_ns = now_ns_ + static_cast<int64_t>(opt_.timeout_s * 1e9);
    s.fd = socket(addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s.fd < 0) {
      ConnectFailed(index);
      return;
    }
    int one = 1;
    // The client Finished and the request are separate writes: without
    // NODELAY, Nagle holds the request until the Finished is acknowledged.
    setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    epoll_event ev = {};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = (static_cast<uint64_t>(s.gen) << 32) | index;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, s.fd, &ev) != 0) {
      ConnectFailed(index);
      return;
    }
    if (connect(s.fd, reinterpret_cast<const sockaddr*>(&addr_), addr_len_) == 0) {
      if (!NewSsl(index)) return;
      s.state = State::kHandshake;
      Drive(index, 0);
      return;
    }
    if (errno != EINPROGRESS) {
      ConnectFailed(index);
      return;
    }
    s.state = State::kConnecting;
  }

  uint64_t InFlight() const {
    uint64_t n = 0;
    for (const Slot& s : slots_) n += s.fd >= 0 ? 1 : 0;
    return n;
  }

  void ConnectFailed(size_t index) {
    Slot& s = slots_[index];
    ++stats_.errors[kConnect];
    Teardown(&s, false);
    s.state = State::kIdle;
    s.deadline_ns = now_ns_ + kConnectRetryNs;  // Scan() retries
  }

  bool NewSsl(size_t index) {
    Slot& s = slots_[index];
    s.ssl = SSL_new(ctx_);
    if (s.ssl == nullptr || SSL_set_fd(s.ssl, s.fd) != 1 ||
        SSL_set_tlsext_host_name(s.ssl, opt_.sni.c_str()) != 1) {
      ERR_clear_error();
      Fail(index, kHandshake);
      return false;
    }
    SSL_set_connect_state(s.ssl);
    if (opt_.resume) {
      SSL_set_ex_data(s.ssl, g_slot_index, &s);
      if (s.session != nullptr) SSL_set_session(s.ssl, s.session);
    }
    return true;
  }

  // Advances the slot as far as it goes without blocking. With edge-triggered
  // epoll every step runs until OpenSSL reports WANT_READ/WANT_WRITE.
  void Drive(size_t index, uint32_t events) {
    Slot& s = slots_[index];
    if (s.state == State::kConnecting) {
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
      int err = 0;
      socklen_t len = sizeof(err);
      if (getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0 ||
          (events & (EPOLLERR | EPOLLHUP)) != 0) {
        ConnectFailed(index);
        return;
      }
      if (!NewSsl(index)) return;
      s.state = State::kHandshake;
    }
    if (s.state == State::kHandshake) {
      int r = SSL_do_handshake(s.ssl);
      if (r != 1) {
        if (!Retry(s.ssl, r)) Fail(index, kHandshake);
        return;
      }
      ++stats_.handshakes;
      if (SSL_session_reused(s.ssl)) ++stats_.resumed;
      if (!stats_.described) Describe(s.ssl);
      s.state = State::kWrite;
      if (opt_.handshake_only) {
        // close_notify now; the read below sees the ticket, then the
        // server's close.
        s.sent = request_.size();
        s.head_done = true;
        int r = SSL_shutdown(s.ssl);
        if (r < 0 && !Retry(s.ssl, r)) {
          Fail(index, kRead);
          return;
        }
        s.state = State::kRead;
      }
    }
    if (s.state == State::kWrite) {
      while (s.sent < request_.size()) {
        int r = SSL_write(s.ssl, request_.data() + s.sent, static_cast<int>(request_.size() - s.sent));
        if (r <= 0) {
          if (!Retry(s.ssl, r)) Fail(index, kRead);
          return;
        }
        s.sent += static_cast<size_t>(r);
      }
      s.state = State::kRead;
    }
    if (s.state == State::kRead) {
      while (true) {
        int r = SSL_read(s.ssl, buf_.data(), static_cast<int>(buf_.size()));
        if (r > 0) {
          stats_.bytes += static_cast<uint64_t>(r);
          int verdict = Consume(&s, std::string_view(buf_.data(), static_cast<size_t>(r)));
          if (verdict == 0) continue;
          if (verdict > 0) {
            Complete(index);
          } else {
            Fail(index, kStatus);
          }
          return;
        }
        int e = SSL_get_error(s.ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
        // A clean EOF (close_notify, or a bare FIN: SSL_ERROR_SYSCALL with an
        // empty error queue, or SSL_R_UNEXPECTED_EOF_WHILE_READING) ends a
        // response without Content-Length.
        ERR_clear_error();
        if (s.head_done && s.body_left < 0) {
          Complete(index);
        } else {
          Fail(index, kRead);
        }
        return;
      }
    }
  }

  // True when the call only needs to wait for the socket.
  static bool Retry(SSL* ssl, int r) {
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return true;
    ERR_clear_error();
    return false;
  }

  // 0: need more, 1: response complete, -1: status error.
  int Consume(Slot* s, std::string_view data) {
    if (s->head_done) {
      if (s->body_left < 0) return 0;
      s->body_left -= static_cast<int64_t>(data.size());
      return s->body_left <= 0 ? 1 : 0;
    }
    const size_t old = s->head.size();
    s->head.append(data);
    size_t end = s->head.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
    if (end == std::string::npos) return s->head.size() > kMaxHead ? -1 : 0;
    std::string_view head(s->head.data(), end + 2);  // through the last header's CRLF
    // "HTTP/1.x 200 ..."
    if (head.size() < 12 || head.substr(0, 7) != "HTTP/1." || head[8] != ' ' ||
        head.substr(9, 3) != "200" || (head.size() > 12 && head[12] != ' ' && head[12] != '\r')) {
      return -1;
    }
    s->head_done = true;
    s->body_left = -1;
    size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos && pos + 2 < head.size()) {
      size_t line_start = pos + 2;
      size_t line_end = head.find("\r\n", line_start);
      std::string_view line = head.substr(line_start, line_end - line_start);
      if (IStartsWith(line, "content-length:")) {
        std::string_view v = line.substr(15);
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
        while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
        int64_t cl = 0;
        auto r = std::from_chars(v.data(), v.data() + v.size(), cl);
        if (r.ec != std::errc() || r.ptr != v.data() + v.size() || cl < 0) return -1;
        s->body_left = cl;
      }
      pos = line_end;
    }
    if (s->body_left < 0) return 0;  // close-delimited (or chunked): read to EOF
    s->body_left -= static_cast<int64_t>(s->head.size() - (end + 4));
    return s->body_left <= 0 ? 1 : 0;
  }

  void Complete(size_t index) {
    Slot& s = slots_[index];
    ++stats_.completed;
    const int64_t latency = now_ns_ - s.started_ns;
    stats_.latency_sum_ns += latency;
    stats_.latency_max_ns = std::max(stats_.latency_max_ns, latency);
    Teardown(&s, true);
    StartConnect(index);
  }

  void Fail(size_t index, ErrorKind kind) {
    ++stats_.errors[kind];
    Teardown(&slots_[index], false);
    StartConnect(index);
  }

  // Closes without a close_notify (the server already sent the response and
  // is closing; browsers do not send one either). After a good exchange the
  // SSL is marked as shut down so that OpenSSL keeps its session resumable.
  static void Teardown(Slot* s, bool clean) {
    if (s->ssl != nullptr) {
      if (clean) SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      SSL_free(s->ssl);
      s->ssl = nullptr;
    }
    if (s->fd >= 0) {
      close(s->fd);  // also removes it from the epoll set
      s->fd = -1;
    }
    s->state = State::kIdle;
  }

  void Describe(SSL* ssl) {
    stats_.described = true;
    const char* group = "?";
    const int nid = static_cast<int>(SSL_get_negotiated_group(ssl));
    if (nid != NID_undef) {
      const char* name = SSL_group_to_name(ssl, nid);
      if (name != nullptr) group = name;
    }
    std::string key = "?";
    if (X509* cert = SSL_get0_peer_certificate(ssl)) {
      if (EVP_PKEY* pkey = X509_get0_pubkey(cert)) {
        key = std::string(EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "?") +
              "-" + std::to_string(EVP_PKEY_get_bits(pkey));
      }
    }
    stats_.tls_desc = std::string(SSL_get_version(ssl)) + " " +
                      SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)) + " " + group +
                      ", server key " + key;
  }

  void Report(int64_t elapsed_ns, double cpu) {
    const double secs = static_cast<double>(elapsed_ns) / 1e9;
    std::printf("Running %gs test @ https://%s%s\n", opt_.duration_s, opt_.connect.c_str(),
                opt_.path.c_str());
    std::printf("  1 threads and %d connections, %s\n", opt_.concurrency,
                opt_.resume ? "session resumption offered" : "full handshakes");
    if (stats_.described) std::printf("  TLS: %s\n", stats_.tls_desc.c_str());
    std::printf("  %llu requests in %.2fs, %.2fMB read\n",
                static_cast<unsigned long long>(stats_.completed), secs,
                static_cast<double>(stats_.bytes) / (1024.0 * 1024.0));
    std::printf("Requests/sec: %10.2f\n", static_cast<double>(stats_.completed) / secs);
    std::printf("Handshakes/sec: %8.2f\n", static_cast<double>(stats_.handshakes) / secs);
    std::printf("Errors: connect %llu, handshake %llu, status %llu, read %llu\n",
                static_cast<unsigned long long>(stats_.errors[kConnect]),
                static_cast<unsigned long long>(stats_.errors[kHandshake]),
                static_cast<unsigned long long>(stats_.errors[kStatus]),
                static_cast<unsigned long long>(stats_.errors[kRead]));
    std::printf("Timeouts: %llu (counted in the errors above, by phase)\n",
                static_cast<unsigned long long>(stats_.timeouts));
    std::printf("Resumed: %.4f (%llu of %llu handshakes)\n",
                stats_.handshakes ? static_cast<double>(stats_.resumed) /
                                        static_cast<double>(stats_.handshakes)
                                  : 0.0,
                static_cast<unsigned long long>(stats_.resumed),
                static_cast<unsigned long long>(stats_.handshakes));
    std::printf("Latency: avg %.2fms, max %.2fms\n",
                stats_.completed ? static_cast<double>(stats_.latency_sum_ns) /
                                       static_cast<double>(stats_.completed) / 1e6
                                 : 0.0,
                static_cast<double>(stats_.latency_max_ns) / 1e6);
    std::printf("Client CPU: %.2fs, %.1fus per handshake\n", cpu,
                stats_.handshakes ? cpu * 1e6 / static_cast<double>(stats_.handshakes) : 0.0);
    std::fflush(stdout);
  }

  const Options& opt_;
  SSL_CTX* ctx_;
  sockaddr_storage addr_;
  socklen_t addr_len_;
  std::vector<Slot> slots_;
  std::vector<char> buf_;  // one read buffer for every slot
  std::string request_;
  Stats stats_;
  int ep_ = -1;
  int64_t start_ns_ = 0;
  int64_t end_ns_ = 0;
  int64_t now_ns_ = 0;
};

SSL_CTX* MakeContext(const Options& opt) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return nullptr;
  int min = opt.tls_version ? opt.tls_version : TLS1_2_VERSION;
  int max = opt.tls_version ? opt.tls_version : TLS1_3_VERSION;
  if (SSL_CTX_set_min_proto_version(ctx, min) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, max) != 1) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  if (!opt.curves.empty() && SSL_CTX_set1_groups_list(ctx, opt.curves.c_str()) != 1) {
    std::fprintf(stderr, "ktlb-tlsload: bad --curves %s\n", opt.curves.c_str());
    SSL_CTX_free(ctx);
    return nullptr;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_cert_verify_callback(ctx, AcceptAnyCertificate, nullptr);
  if (opt.resume) {
    // External store only: the new-session callback hands each session to its slot.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, OnNewSession);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
  return ctx;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage("missing value");
      return argv[++i];
    };
    if (a == "--connect") {
      opt.connect = value();
    } else if (a == "--path") {
      opt.path = value();
      if (opt.path.empty() || opt.path.front() != '/') Usage("--path must start with /");
    } else if (a == "--concurrency" || a == "-c") {
      std::string v = value();
      auto r = std::from_chars(v.data(), v.data() + v.size(), opt.concurrency);
      if (r.ec != std::errc() || r.ptr != v.data() + v.size() || opt.concurrency < 1 ||
          opt.concurrency > 60000) {
        Usage("--concurrency must be 1..60000");
      }
    } else if (a == "--duration" || a == "-d") {
      if (!ParseDouble(value(), &opt.duration_s)) Usage("bad --duration");
    } else if (a == "--timeout") {
      if (!ParseDouble(value(), &opt.timeout_s)) Usage("bad --timeout");
    } else if (a == "--provider-keys") {
      opt.provider_keys = true;
    } else if (a == "--handshake-only") {
      opt.handshake_only = true;
    } else if (a == "--requests" || a == "-n") {
      std::string v = value();
      auto r = std::from_chars(v.data(), v.data() + v.size(), opt.requests);
      if (r.ec != std::errc() || r.ptr != v.data() + v.size() || opt.requests < 1) {
        Usage("--requests must be a positive count");
      }
    } else if (a == "--resume") {
      opt.resume = true;
    } else if (a == "--tls") {
      std::string v = value();
      if (v == "1.2") {
        opt.tls_version = TLS1_2_VERSION;
      } else if (v == "1.3") {
        opt.tls_version = TLS1_3_VERSION;
      } else {
        Usage("--tls must be 1.2 or 1.3");
      }
    } else if (a == "--sni") {
      opt.sni = value();
    } else if (a == "--curves") {
      opt.curves = value();
    } else if (a == "--help" || a == "-h") {
      Usage(nullptr);
    } else {
      Usage("unknown argument");
    }
  }
  if (opt.connect.empty()) Usage("--connect is required");

  sockaddr_storage addr = {};
  socklen_t addr_len = 0;
  if (!ResolveAddress(opt.connect, &addr, &addr_len)) Usage("bad --connect address");

  signal(SIGPIPE, SIG_IGN);
  if (!opt.provider_keys && !UseLegacyKeyDecoding()) {
    std::fputs("ktlb-tlsload: legacy key decoding unavailable, using providers\n", stderr);
  }
  g_slot_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  SSL_CTX* ctx = MakeContext(opt);
  if (ctx == nullptr) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  int rc;
  {
    Loader loader(opt, ctx, addr, addr_len);
    rc = loader.Run();
  }
  SSL_CTX_free(ctx);
  return rc;
}
