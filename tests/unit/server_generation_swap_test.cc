// A running worker is handed a new snapshot: new connections are served from
// it (new certificate, new route, new upstream), while a keep-alive
// connection opened before the swap keeps being served from the old one.
// Real sockets on 127.0.0.1, a real ktlb Server with one worker, two tiny
// plain-HTTP backends that answer with their own name.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ktlb/server.h"
#include "ktlb/snapshot.h"
#include "tls_test_util.h"

namespace ktlb {
namespace {

using tls::testing::TempDir;

int ListenOn(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 64) != 0) {
    close(fd);
    return -1;
  }
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// A keep-alive HTTP/1.1 backend answering every request with `name`.
class Backend {
 public:
  explicit Backend(std::string name) : name_(std::move(name)) {
    fd_ = ListenOn(&port_);
    thread_ = std::thread([this] { Serve(); });
  }
  ~Backend() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
    for (auto& t : conns_) t.join();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  void Serve() {
    while (!stop_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      conns_.emplace_back([this, c] {
        std::string buf;
        char tmp[4096];
        for (;;) {
          ssize_t n = recv(c, tmp, sizeof tmp, 0);
          if (n <= 0) break;
          buf.append(tmp, static_cast<size_t>(n));
          size_t end;
          while ((end = buf.find("\r\n\r\n")) != std::string::npos) {
            buf.erase(0, end + 4);
            std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: " +
                               std::to_string(name_.size()) + "\r\n\r\n" + name_;
            send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
          }
        }
        close(c);
      });
    }
  }
  std::string name_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::thread> conns_;
};

// A blocking TLS client over one keep-alive connection.
class Client {
 public:
  explicit Client(uint16_t port) : ctx_(SSL_CTX_new(TLS_client_method())) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{20, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ssl_.reset(SSL_new(ctx_.get()));
    SSL_set_tlsext_host_name(ssl_.get(), "localhost");
    SSL_set_fd(ssl_.get(), fd_);
    connected_ = connected_ && SSL_connect(ssl_.get()) == 1;
  }
  ~Client() {
    ssl_.reset();
    close(fd_);
  }
  bool connected() const { return connected_; }
  // The subject CN of the certificate the server presented.
  std::string PeerCn() {
    X509* cert = SSL_get1_peer_certificate(ssl_.get());
    if (cert == nullptr) return "";
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    X509_free(cert);
    return cn;
  }
  bool SendGet() {
    const std::string req = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    return SSL_write(ssl_.get(), req.data(), static_cast<int>(req.size())) > 0;
  }
  std::string ReadSome() {
    char tmp[4096];
    int n = SSL_read(ssl_.get(), tmp, sizeof tmp);
    return n > 0 ? std::string(tmp, static_cast<size_t>(n)) : "";
  }
  void ReadUntilClosed() {
    char tmp[4096];
    while (SSL_read(ssl_.get(), tmp, sizeof tmp) > 0) {
    }
  }
  // The body of the response to GET /, or "" on failure.
  std::string Get() {
    const std::string req = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if (SSL_write(ssl_.get(), req.data(), static_cast<int>(req.size())) <= 0) return "";
    std::string buf;
    char tmp[4096];
    for (;;) {
      size_t end = buf.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t cl = buf.find("Content-Length: ");
        if (cl != std::string::npos && cl < end) {
          size_t len = std::stoul(buf.substr(cl + 16));
          if (buf.size() >= end + 4 + len) return buf.substr(end + 4, len);
        }
      }
      int n = SSL_read(ssl_.get(), tmp, sizeof tmp);
      if (n <= 0) return "";
      buf.append(tmp, static_cast<size_t>(n));
    }
  }

 private:
  UniqueSslCtx ctx_;
  UniqueSsl ssl_;
  int fd_ = -1;
  bool connected_ = false;
};

std::shared_ptr<const Snapshot> MakeSnapshot(const TempDir& dir, uint16_t port,
                                             const std::string& cert,
                                             const std::string& upstream,
                                             const std::string& server) {
  auto c = std::make_shared<Config>();
  c->path = dir.path() + "/ktlb.toml";
  c->server.workers = 1;
  c->certificates = tls::testing::WriteStandardCerts(dir);
  ListenerConfig l = tls::testing::MakeListener({cert});
  l.alpn = {"http/1.1"};
  l.listen = *ParseSocketAddress("127.0.0.1:" + std::to_string(port));
  c->listeners.push_back(l);
  RouteConfig r;
  r.listener = "public";
  r.upstream = upstream;
  c->routes.push_back(r);
  UpstreamConfig u;
  u.name = upstream;
  u.servers.push_back(UpstreamServer{*ParseSocketAddress(server)});
  c->upstreams.push_back(u);
  auto snap = BuildSnapshot(c, tls::TicketKeys::Generate());
  EXPECT_TRUE(snap.ok()) << snap.status();
  return *snap;
}

TEST(GenerationSwapTest, OldConnectionsKeepTheirSnapshotNewOnesGetTheNew) {
  TempDir dir;
  Backend a("backend-a"), b("backend-b");
  uint16_t port = 0;
  int probe = ListenOn(&port);  // a free port for the listener
  ASSERT_GE(probe, 0);
  close(probe);

  Server server(MakeSnapshot(dir, port, "site", "app-a", a.address()));
  ASSERT_TRUE(server.Start().ok());

  Client old_conn(port);
  ASSERT_TRUE(old_conn.connected());
  EXPECT_EQ(old_conn.PeerCn(), "site.example.test");
  EXPECT_EQ(old_conn.Get(), "backend-a");

  server.Swap(MakeSnapshot(dir, port, "other", "app-b", b.address()));
  for (int i = 0; i < 3000 && server.swaps_applied() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(server.swaps_applied(), 1u);
  EXPECT_EQ(server.swaps_failed(), 0u);

  // New connection: the new certificate and the new route.
  Client new_conn(port);
  ASSERT_TRUE(new_conn.connected());
  EXPECT_EQ(new_conn.PeerCn(), "other");
  EXPECT_EQ(new_conn.Get(), "backend-b");

  // The connection from before the swap: still the old route, several times.
  EXPECT_EQ(old_conn.Get(), "backend-a");
  EXPECT_EQ(old_conn.Get(), "backend-a");
  EXPECT_EQ(new_conn.Get(), "backend-b");

  // Both upstreams are counted, by name, side by side.
  std::string metrics = server.metrics().Render();
  EXPECT_NE(metrics.find("ktlb_upstream_requests_total{upstream=\"app-a\"} 3"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("ktlb_upstream_requests_total{upstream=\"app-b\"} 2"), std::string::npos)
      << metrics;
  server.StopAndWait();
}

TEST(GenerationSwapTest, ABadSnapshotKeepsTheRunningOne) {
  TempDir dir;
  Backend a("backend-a");
  uint16_t port = 0;
  int probe = ListenOn(&port);
  ASSERT_GE(probe, 0);
  close(probe);
  Server server(MakeSnapshot(dir, port, "site", "app-a", a.address()));
  ASSERT_TRUE(server.Start().ok());

  // The new snapshot adds a listener on a port someone else holds.
  uint16_t taken_port = 0;
  int taken = ListenOn(&taken_port);
  ASSERT_GE(taken, 0);
  auto c = std::make_shared<Config>(*MakeSnapshot(dir, port, "other", "app-b", a.address())->config);
  ListenerConfig extra = c->listeners[0];
  extra.name = "second";
  extra.listen = *ParseSocketAddress("127.0.0.1:" + std::to_string(taken_port));
  c->listeners.push_back(extra);
  auto bad = BuildSnapshot(c, tls::TicketKeys::Generate());
  ASSERT_TRUE(bad.ok()) << bad.status();
  server.Swap(*bad);
  for (int i = 0; i < 3000 && server.swaps_failed() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server.swaps_failed(), 1u);
  EXPECT_EQ(server.swaps_applied(), 0u);
  close(taken);

  Client conn(port);
  ASSERT_TRUE(conn.connected());
  EXPECT_EQ(conn.PeerCn(), "site.example.test");
  EXPECT_EQ(conn.Get(), "backend-a");
  server.StopAndWait();
}


// Found in review: after a swap, the last old connection's upstream fails
// mid-response (a bad chunk); its generation must not be freed while the
// upstream connection's own method is still on the stack (ASan/UBSan catch it).
TEST(GenerationSwapTest, OldGenerationOutlivesTheCallbackThatEndsIt) {
  TempDir dir;
  uint16_t be_port = 0;
  int be = ListenOn(&be_port);
  ASSERT_GE(be, 0);
  std::atomic<bool> swapped{false};
  std::thread backend([&] {
    int c = accept(be, nullptr, nullptr);
    char tmp[4096];
    recv(c, tmp, sizeof tmp, 0);
    std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    send(c, head.data(), head.size(), MSG_NOSIGNAL);
    while (!swapped) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    send(c, "zz\r\n", 4, MSG_NOSIGNAL);  // not a chunk size
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    close(c);
  });
  uint16_t port = 0;
  int probe = ListenOn(&port);
  ASSERT_GE(probe, 0);
  close(probe);
  const std::string backend_addr = "127.0.0.1:" + std::to_string(be_port);
  Server server(MakeSnapshot(dir, port, "site", "app-a", backend_addr));
  ASSERT_TRUE(server.Start().ok());
  {
    Client conn(port);
    ASSERT_TRUE(conn.connected());
    ASSERT_TRUE(conn.SendGet());
    EXPECT_NE(conn.ReadSome().find("hello"), std::string::npos);
    server.Swap(MakeSnapshot(dir, port, "site", "app-b", backend_addr));
    for (int i = 0; i < 3000 && server.swaps_applied() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(server.swaps_applied(), 1u);
    swapped = true;
    conn.ReadUntilClosed();  // ktlb cuts the response when the chunk breaks
  }
  backend.join();
  close(be);
  // Still serving, from the new generation.
  Backend b("backend-b");
  server.Swap(MakeSnapshot(dir, port, "site", "app-b", b.address()));
  for (int i = 0; i < 3000 && server.swaps_applied() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Client next(port);
  ASSERT_TRUE(next.connected());
  EXPECT_EQ(next.Get(), "backend-b");
  server.StopAndWait();
}

}  // namespace
}  // namespace ktlb
