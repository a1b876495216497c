// The real tls::Transport (server role) on one end of a loopback TCP
// connection, driven by a real Loop; a blocking OpenSSL client on the other
// end, in a thread. The transport's own handshake driver is the one under
// test: nothing here drives OpenSSL on the server side.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "ktlb/loop.h"
#include "ktlb/tls.h"
#include "ktlb/tls_transport.h"
#include "tls_test_util.h"

namespace ktlb::tls {
namespace {

// Accepts one connection on 127.0.0.1; the client thread connects to it.
struct LoopbackPair {
  int server_fd = -1;
  uint16_t port = 0;
  int listen_fd = -1;

  LoopbackPair() {
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    listen(listen_fd, 4);
    socklen_t len = sizeof a;
    getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~LoopbackPair() { close(listen_fd); }
  int ConnectClient() const {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    timeval tv{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
  }
  int Accept() { return accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC); }
};

// Echoes every byte it gets, upper-cased, and records what happened.
class EchoOwner final : public TransportOwner {
 public:
  Transport transport;
  bool handshake_done = false;
  bool released = false;
  bool not_tls = false;
  CloseReason closed_by = CloseReason::kPeerGone;
  bool closed = false;
  std::string received;

  void OnHandshakeDone() override { handshake_done = true; }
  void OnInput() override {
    std::string_view in = transport.input();
    if (!in.empty()) {
      received.append(in);
      std::string out(in);
      for (char& c : out) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
      transport.Consume(in.size());
      transport.Write(out);
      transport.ScheduleFlush();
    }
    if (transport.input_end() == InputEnd::kCloseNotify) transport.Close();
  }
  void OnWritable() override {}
  void OnTransportClosed(CloseReason why) override {
    closed = true;
    closed_by = why;
  }
  void OnReleased() override { released = true; }
  InputWanted WantsInput() const override { return InputWanted::kYes; }
  void OnNotTls() override {
    not_tls = true;
    transport.WriteRaw("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
  }
  // A stand-in preamble: "P...\n", at most 16 bytes.
  PreambleStatus OnPreamble(std::string_view bytes, size_t* consumed) override {
    ++preamble_calls;
    if (bytes[0] != 'P') return PreambleStatus::kFailed;
    size_t end = bytes.substr(0, 16).find('\n');
    if (end == std::string_view::npos) {
      return bytes.size() >= 16 ? PreambleStatus::kFailed : PreambleStatus::kNeedMore;
    }
    preamble.assign(bytes.substr(0, end));
    *consumed = end + 1;
    return PreambleStatus::kDone;
  }
  std::string preamble;
  int preamble_calls = 0;
};

class TransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(loop_.Init(Loop::Options{.ring_entries = 64, .recv_buffers = 16,
                                         .recv_buffer_size = 16 * 1024, .buffer_group = 1})
                    .ok());
    Config config;
    config.certificates = testing::WriteStandardCerts(dir_);
    auto loaded = LoadCertificates(config);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ListenerConfig listener = testing::MakeListener({"site"});
    listener.alpn = {"http/1.1"};
    listener.ktls = KtlsMode::kOff;
    auto ctx = ServerTlsContext::Create(listener, {(*loaded)[0]}, TicketKeys::Generate());
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = *std::move(ctx);
  }

  // Starts the owner's transport on an accepted socket.
  void Start(EchoOwner* owner, int fd, uint32_t handshake_timeout_ms = 5000,
             bool preamble = false) {
    TransportOptions opts;
    opts.preamble = preamble;
    opts.handshake_timeouts = &handshake_timeouts_;
    opts.loop = &loop_;
    opts.log = &log_;
    opts.metrics = &metrics_;
    opts.handshake_timeout_ms = handshake_timeout_ms;
    opts.ktls = KtlsMode::kOff;
    owner->transport.StartServer(opts, owner, fd, *ctx_, "test-peer");
  }

  // Runs the loop until `done`, or 60 s pass (a loaded machine or a
  // sanitizer build makes the client's RSA handshake slow).
  bool RunUntil(const std::function<bool()>& done) {
    const uint64_t deadline = NowMs() + 60'000;
    while (!done() && NowMs() < deadline) loop_.Turn(10);
    return done();
  }

  Loop loop_;
  ErrorLog log_;
  TlsMetrics metrics_;
  Counter handshake_timeouts_;
  testing::TempDir dir_;
  std::unique_ptr<ServerTlsContext> ctx_;
  LoopbackPair pair_;
};

// A blocking client: `before` (bytes ahead of TLS), handshake with SNI and
// ALPN, then `script`.
std::thread Client(int fd, std::function<void(SSL*)> script,
                   std::function<void()> before = nullptr) {
  return std::thread([fd, script, before] {
    if (before) before();
    UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
    UniqueSsl ssl(SSL_new(ctx.get()));
    SSL_set_tlsext_host_name(ssl.get(), "site.example.test");
    static const unsigned char kAlpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(ssl.get(), kAlpn, sizeof kAlpn - 1);
    SSL_set_fd(ssl.get(), fd);
    if (SSL_connect(ssl.get()) == 1) script(ssl.get());
    close(fd);
  });
}

TEST_F(TransportTest, HandshakeInfoAndPlaintextBothWaysThenCloseNotify) {
  std::string reply;
  std::atomic<bool> client_done{false};
  std::thread client = Client(pair_.ConnectClient(), [&](SSL* ssl) {
    SSL_write(ssl, "hello transport", 15);
    char buf[64];
    int n = SSL_read(ssl, buf, sizeof buf);
    if (n > 0) reply.assign(buf, static_cast<size_t>(n));
    SSL_shutdown(ssl);  // close_notify
    n = SSL_read(ssl, buf, sizeof buf);  // the server's close_notify ends this
    client_done = true;
  });
  EchoOwner owner;
  Start(&owner, pair_.Accept());
  EXPECT_TRUE(RunUntil([&] { return owner.released; }));
  client.join();
  EXPECT_TRUE(client_done);
  EXPECT_TRUE(owner.handshake_done);
  EXPECT_EQ(owner.transport.info().sni, "site.example.test");
  EXPECT_EQ(owner.transport.info().alpn, "http/1.1");
  EXPECT_EQ(owner.transport.info().version, TLS1_3_VERSION);
  EXPECT_FALSE(owner.transport.info().resumed);
  EXPECT_EQ(owner.received, "hello transport");
  EXPECT_EQ(reply, "HELLO TRANSPORT");
  EXPECT_FALSE(owner.closed);  // closed by its owner, not by itself
  EXPECT_EQ(metrics_.handshakes_full.Get(), 1u);
}

TEST_F(TransportTest, CorruptedRecordGetsBadRecordMacAlertBeforeTheClose) {
  std::string alert;
  std::thread client = Client(pair_.ConnectClient(), [&](SSL* ssl) {
    // One application record, written raw with a flipped ciphertext byte:
    // seal it through a memory BIO swapped in for the socket.
    BIO* mem = BIO_new(BIO_s_mem());
    BIO* sock = SSL_get_wbio(ssl);
    BIO_up_ref(sock);
    SSL_set0_wbio(ssl, mem);
    SSL_write(ssl, "GET / HTTP/1.1\r\n\r\n", 18);
    char* data = nullptr;
    long len = BIO_get_mem_data(mem, &data);
    std::string record(data, static_cast<size_t>(len));
    record[record.size() - 3] ^= 0x01;
    send(SSL_get_fd(ssl), record.data(), record.size(), MSG_NOSIGNAL);
    SSL_set0_wbio(ssl, sock);
    char buf[256];
    int n = SSL_read(ssl, buf, sizeof buf);
    if (n <= 0 && SSL_get_error(ssl, n) == SSL_ERROR_SSL) {
      // OpenSSL reports the peer's alert as "sslv3 alert bad record mac".
      alert = ERR_reason_error_string(ERR_peek_last_error());
    }
    ERR_clear_error();
  });
  EchoOwner owner;
  Start(&owner, pair_.Accept());
  EXPECT_TRUE(RunUntil([&] { return owner.released; }));
  client.join();
  EXPECT_TRUE(owner.closed);
  EXPECT_EQ(owner.closed_by, CloseReason::kProtocolError);
  EXPECT_EQ(alert, "sslv3 alert bad record mac");
  EXPECT_EQ(metrics_.protocol_errors.Get(), 1u);
}

TEST_F(TransportTest, PlainHttpGetsTheOwnersAnswer) {
  std::string answer;
  int fd = pair_.ConnectClient();
  std::thread client([&] {
    send(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, MSG_NOSIGNAL);
    char buf[256];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0) answer.append(buf, static_cast<size_t>(n));
    close(fd);
  });
  EchoOwner owner;
  Start(&owner, pair_.Accept());
  EXPECT_TRUE(RunUntil([&] { return owner.released; }));
  client.join();
  EXPECT_TRUE(owner.not_tls);
  EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
  EXPECT_EQ(metrics_.handshake_failures[static_cast<size_t>(HandshakeFailure::kPlainHttp)].Get(),
            1u);
}

TEST_F(TransportTest, HandshakeTimeoutClosesAndCounts) {
  int fd = pair_.ConnectClient();  // connects, never says anything
  EchoOwner owner;
  Start(&owner, pair_.Accept(), /*handshake_timeout_ms=*/50);
  EXPECT_TRUE(RunUntil([&] { return owner.released; }));
  EXPECT_TRUE(owner.closed);
  EXPECT_EQ(owner.closed_by, CloseReason::kHandshakeFailed);
  EXPECT_EQ(metrics_.handshake_failures[static_cast<size_t>(HandshakeFailure::kTimeout)].Get(), 1u);
  close(fd);
}

uint64_t HandshakeFailures(const TlsMetrics& m) {
  uint64_t n = 0;
  for (const Counter& c : m.handshake_failures) n += c.Get();
  return n;
}

// The owner's preamble comes off the front of the stream and the TLS bytes
// behind it reach OpenSSL untouched, whether the preamble arrives in pieces
// (reassembled in the transport) or shares a segment with the ClientHello.
TEST_F(TransportTest, PreambleBeforeTheHandshake) {
  for (bool split : {true, false}) {
    SCOPED_TRACE(split ? "preamble in three segments" : "preamble and ClientHello in one segment");
    LoopbackPair pair;
    std::string reply;
    int fd = pair.ConnectClient();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, split ? TCP_NODELAY : TCP_CORK, &one, sizeof one);
    auto before = [fd, split] {
      if (split) {
        for (const char* piece : {"PRE", "AMB", "LE\n"}) {
          send(fd, piece, strlen(piece), MSG_NOSIGNAL);
          usleep(30'000);  // each piece in a receive of its own
        }
      } else {
        // Corked: held back until the ClientHello joins it (at most 200 ms).
        send(fd, "PREAMBLE\n", 9, MSG_NOSIGNAL);
      }
    };
    EchoOwner owner;
    Start(&owner, pair.Accept(), 5000, /*preamble=*/true);
    std::thread client = Client(fd, [&](SSL* ssl) {
      SSL_write(ssl, "after", 5);
      char buf[64];
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n > 0) reply.assign(buf, static_cast<size_t>(n));
      SSL_shutdown(ssl);
      SSL_read(ssl, buf, sizeof buf);
    }, before);
    EXPECT_TRUE(RunUntil([&] { return owner.released; }));
    client.join();
    EXPECT_EQ(owner.preamble, "PREAMBLE");
    EXPECT_TRUE(owner.handshake_done);
    EXPECT_EQ(reply, "AFTER");
    if (split) {
      EXPECT_GE(owner.preamble_calls, 2);  // reassembled, not read at once
    }
  }
  EXPECT_EQ(HandshakeFailures(metrics_), 0u);
}

TEST_F(TransportTest, RefusedLateOrCutPreambleClosesWithoutAHandshakeFailure) {
  struct Case {
    const char* bytes;
    bool fin;
    CloseReason reason;
  } cases[] = {
      {"\x16\x03\x01", false, CloseReason::kPreambleFailed},     // TLS with no preamble
      {"PPPPPPPPPPPPPPPPPPPP", false, CloseReason::kPreambleFailed},  // too long
      {"PRE", false, CloseReason::kPreambleTimeout},
      {"PRE", true, CloseReason::kPeerGone},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.bytes);
    LoopbackPair pair;
    int fd = pair.ConnectClient();
    send(fd, c.bytes, strlen(c.bytes), MSG_NOSIGNAL);
    if (c.fin) shutdown(fd, SHUT_WR);
    EchoOwner owner;
    Start(&owner, pair.Accept(), /*handshake_timeout_ms=*/200, /*preamble=*/true);
    EXPECT_TRUE(RunUntil([&] { return owner.released; }));
    EXPECT_TRUE(owner.closed);
    EXPECT_EQ(owner.closed_by, c.reason);
    EXPECT_FALSE(owner.handshake_done);
    close(fd);
  }
  EXPECT_EQ(handshake_timeouts_.Get(), 1u);  // the deadline is the handshake's
  EXPECT_EQ(HandshakeFailures(metrics_), 0u);
}

TEST_F(TransportTest, PeerResetMidSessionIsPeerGone) {
  std::thread client = Client(pair_.ConnectClient(), [&](SSL* ssl) {
    SSL_write(ssl, "x", 1);
    char buf[8];
    SSL_read(ssl, buf, sizeof buf);
    linger l{1, 0};  // RST on close
    setsockopt(SSL_get_fd(ssl), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  });
  EchoOwner owner;
  Start(&owner, pair_.Accept());
  EXPECT_TRUE(RunUntil([&] { return owner.released; }));
  client.join();
  EXPECT_TRUE(owner.closed);
  EXPECT_EQ(owner.closed_by, CloseReason::kPeerGone);
  EXPECT_EQ(owner.received, "x");
}

}  // namespace
}  // namespace ktlb::tls
