// ktlb-tlshold: opens N TLS connections, makes one keep-alive request on each,
// then holds them all idle for a while. It exists to measure what an idle
// connection costs the server (bench/idle_memory.py does the same from Python
// on the host; this one also runs in the busybox kTLS guest).
//
//   ktlb-tlshold --connect 127.0.0.1:8443 [-n 1000] [--hold 5] [--path /size/100]
//                [--tls 1.2|1.3] [--sni localhost]
//
// Prints "held N" once every connection is open and idle, then sleeps.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  int count = 1000;
  int hold_s = 5;
  std::string path = "/size/100";
  std::string sni = "localhost";
  int version = 0;  // 0 = negotiate
};

[[noreturn]] void Die(const char* what) {
  fprintf(stderr, "ktlb-tlshold: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(1);
}

// Reads one response (head + Content-Length body) so the connection is idle
// between requests afterwards.
bool ReadResponse(SSL* ssl) {
  std::string buf;
  char tmp[4096];
  size_t head_end = std::string::npos;
  while (head_end == std::string::npos) {
    int n = SSL_read(ssl, tmp, sizeof tmp);
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
    head_end = buf.find("\r\n\r\n");
  }
  size_t cl = 0;
  size_t p = buf.find("Content-Length:");
  if (p == std::string::npos) p = buf.find("content-length:");
  if (p != std::string::npos) cl = strtoul(buf.c_str() + p + 15, nullptr, 10);
  size_t want = head_end + 4 + cl;
  while (buf.size() < want) {
    int n = SSL_read(ssl, tmp, sizeof tmp);
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
  }
  return buf.compare(0, 12, "HTTP/1.1 200") == 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing option value");
      return argv[++i];
    };
    if (a == "--connect") {
      std::string v = next();
      size_t colon = v.rfind(':');
      if (colon == std::string::npos) Die("--connect HOST:PORT");
      opt.host = v.substr(0, colon);
      opt.port = atoi(v.c_str() + colon + 1);
    } else if (a == "-n") {
      opt.count = atoi(next().c_str());
    } else if (a == "--hold") {
      opt.hold_s = atoi(next().c_str());
    } else if (a == "--path") {
      opt.path = next();
    } else if (a == "--sni") {
      opt.sni = next();
    } else if (a == "--tls") {
      opt.version = next() == "1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
    } else {
      Die("usage: ktlb-tlshold --connect HOST:PORT [-n N] [--hold S] [--path P] [--tls 1.2|1.3]");
    }
  }
  if (opt.port <= 0 || opt.count <= 0) Die("--connect HOST:PORT and -n N > 0 are required");
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) Die("SSL_CTX_new");
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  if (opt.version != 0) {
    SSL_CTX_set_min_proto_version(ctx, opt.version);
    SSL_CTX_set_max_proto_version(ctx, opt.version);
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(opt.port));
  if (inet_pton(AF_INET, opt.host.c_str(), &addr.sin_addr) != 1) Die("IPv4 address expected");
  std::string req = "GET " + opt.path + " HTTP/1.1\r\nHost: " + opt.sni + "\r\n\r\n";

  std::vector<std::pair<int, SSL*>> conns;
  conns.reserve(static_cast<size_t>(opt.count));
  for (int i = 0; i < opt.count; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Die("connect");
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, opt.sni.c_str());
    if (SSL_connect(ssl) != 1) Die("handshake");
    if (SSL_write(ssl, req.data(), static_cast<int>(req.size())) <= 0) Die("write");
    if (!ReadResponse(ssl)) Die("response");
    conns.emplace_back(fd, ssl);
  }
  printf("held %zu\n", conns.size());
  fflush(stdout);
  sleep(static_cast<unsigned>(opt.hold_s));
  for (auto& [fd, ssl] : conns) {
    SSL_free(ssl);
    close(fd);
  }
  SSL_CTX_free(ctx);
  return 0;
}
