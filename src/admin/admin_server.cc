#include "ktlb/admin_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace ktlb {

AdminServer::AdminServer(const SocketAddress& addr, MetricsRegistry* metrics,
                         ListenSockets* sockets)
    : addr_(addr), metrics_(metrics), sockets_(sockets), key_(absl::StrCat("admin ", addr.text)) {}

AdminServer::~AdminServer() { Stop(); }

absl::Status AdminServer::Start() {
  UniqueFd fd = sockets_ != nullptr ? sockets_->Take(key_) : UniqueFd();
  if (!fd) {
    fd.reset(socket(addr_.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return absl::InternalError(absl::StrCat("admin socket: ", strerror(errno)));
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr_.storage), addr_.len) != 0 ||
        listen(fd.get(), 64) != 0) {
      return absl::UnavailableError(
          absl::StrCat("admin_listen ", addr_.text, ": ", strerror(errno)));
    }
  }
  // Non-blocking: during a binary upgrade two processes poll this socket,
  // and the one that loses the race for a connection must not block.
  fcntl(fd.get(), F_SETFL, fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
  if (sockets_ != nullptr) sockets_->Register(key_, fd.get());
  listen_fd_ = std::move(fd);
  thread_ = std::thread([this] { Serve(); });
  return absl::OkStatus();
}

void AdminServer::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (sockets_ != nullptr && listen_fd_) sockets_->Unregister(listen_fd_.get());
  listen_fd_.reset();  // only after the join: Serve() polls it until then
}

void AdminServer::Serve() {
  while (!stop_.load()) {
    // Poll with a short timeout so Stop() is noticed without signals.
    pollfd p{listen_fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    UniqueFd c(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    // Accepted sockets do not inherit O_NONBLOCK; the timeouts bound them.
    timeval tv{2, 0};
    setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    HandleClient(c.get());
  }
}

void AdminServer::HandleClient(int fd) {
  std::string req;
  char buf[2048];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    req.append(buf, static_cast<size_t>(n));
  }
  std::string status = "200 OK", type = "text/plain; charset=utf-8", body;
  if (absl::StartsWith(req, "GET /metrics ") || absl::StartsWith(req, "GET /metrics?")) {
    type = "text/plain; version=0.0.4";
    body = metrics_->Render();
  } else if (absl::StartsWith(req, "GET /healthz ")) {
    if (draining_.load(std::memory_order_relaxed)) {
      status = "503 Service Unavailable";
      body = "draining\n";
    } else {
      body = "ok\n";
    }
  } else {
    status = "404 Not Found";
    body = "not found\n";
  }
  std::string resp = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                                  "\r\nContent-Length: ", body.size(),
                                  "\r\nConnection: close\r\n\r\n", body);
  size_t off = 0;
  while (off < resp.size()) {
    ssize_t n = send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

}  // namespace ktlb
