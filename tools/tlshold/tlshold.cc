// ktlb-tlshold: opens N TLS connections, makes one keep-alive request on each,
// then holds them all idle for a while. It exists to measure what an idle
// connection costs the server (bench/idle_memory.py does the same from Python
// on the host; this one also runs in the busybox kTLS guest).
//
//   ktlb-tlshold --connect 127.0.0.1:8443 [-n 1000] [--hold 5] [--path /size/100]
//                [--tls 1.2|1.3] [--sni localhost] [--progress 100] [--parallel 1]
//
// --parallel K opens the connections from K threads at once (each connection still
// makes its handshake and request before it is held), so that in a slow emulated
// guest the client's work overlaps the server's instead of alternating with it.
//
// Prints "opened I of N (T s)" every --progress connections (0: never), then
// "held N in T s" once every connection is open and idle, then holds them for
// --hold seconds or until SIGTERM/SIGINT, whichever comes first. Before closing
// them it checks each one and prints "still open M of N (closed by the server: C,
// unexpected data: D)"; the exit status is 0 only when all N were still open, so a
// server that dropped held connections (an idle timeout, say) is visible.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
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
  int progress = 100;
  int parallel = 1;
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

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Sleeps up to `seconds`, returning early on SIGTERM or SIGINT (blocked by the
// caller, so they are taken here and never kill the process mid-check).
void Hold(int seconds, const sigset_t& stop) {
  timespec left{seconds, 0};
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    int sig = sigtimedwait(&stop, nullptr, &left);
    if (sig > 0 || errno != EINTR) return;  // a stop signal, or the time is up
    double rest = static_cast<double>(left.tv_sec) - SecondsSince(t0);
    if (rest <= 0) return;
    left.tv_sec = static_cast<time_t>(rest);
    left.tv_nsec = static_cast<long>((rest - static_cast<double>(left.tv_sec)) * 1e9);
  }
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
    } else if (a == "--progress") {
      opt.progress = atoi(next().c_str());
    } else if (a == "--parallel") {
      opt.parallel = atoi(next().c_str());
    } else {
      Die("usage: ktlb-tlshold --connect HOST:PORT [-n N] [--hold S] [--path P] [--tls 1.2|1.3]"
          " [--sni NAME] [--progress K] [--parallel K]");
    }
  }
  if (opt.port <= 0 || opt.count <= 0) Die("--connect HOST:PORT and -n N > 0 are required");
  if (opt.parallel < 1 || opt.parallel > 64) Die("--parallel must be 1..64");
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

  // Taken only by Hold(), also while connecting, so that a stop request always
  // ends with the check below.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, nullptr);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::pair<int, SSL*>> conns(static_cast<size_t>(opt.count), {-1, nullptr});
  std::atomic<int> next_index{0}, opened{0};
  auto open_some = [&] {
    for (;;) {
      int i = next_index.fetch_add(1);
      if (i >= opt.count) return;
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
      conns[static_cast<size_t>(i)] = {fd, ssl};
      int done = opened.fetch_add(1) + 1;
      if (opt.progress > 0 && done % opt.progress == 0 && done < opt.count) {
        printf("opened %d of %d (%.1f s)\n", done, opt.count, SecondsSince(t0));
        fflush(stdout);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < opt.parallel; ++t) threads.emplace_back(open_some);
  open_some();
  for (auto& t : threads) t.join();
  printf("held %zu in %.1f s\n", conns.size(), SecondsSince(t0));
  fflush(stdout);
  Hold(opt.hold_s, stop);

  // Every connection should still be open and quiet: the server sends nothing on
  // an idle keep-alive connection unless it closes it (close_notify, FIN, RST).
  size_t open = 0, closed = 0, data = 0;
  for (auto& [fd, ssl] : conns) {
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    int r = poll(&p, 1, 0);
    if (r == 0) {
      ++open;
    } else if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      ++closed;
    } else {
      ++data;
    }
  }
  printf("still open %zu of %zu (closed by the server: %zu, unexpected data: %zu) after %.1f s\n",
         open, conns.size(), closed, data, SecondsSince(t0));
  fflush(stdout);
  for (auto& [fd, ssl] : conns) {
    SSL_free(ssl);
    close(fd);
  }
  SSL_CTX_free(ctx);
  return open == conns.size() ? 0 : 3;
}
