#include "upgrade_handoff.h"

#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ktlb {

namespace {

constexpr char kHello[] = "ktlb-upgrade 1";
constexpr char kReady[] = "ready";
constexpr char kReleased[] = "released";
// How long the predecessor waits for each step of its successor: the
// successor builds TLS contexts and starts workers before it says ready.
constexpr int kStepTimeoutMs = 60000;

sockaddr_un AddressFor(const std::string& name, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  // Abstract namespace: a leading NUL, no file.
  memcpy(a.sun_path + 1, name.data(), name.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

// One datagram-like message (SOCK_SEQPACKET keeps boundaries), with an
// optional descriptor attached.
bool SendMessage(int sock, const std::string& text, int fd = -1) {
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  return sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
}

// Waits up to `timeout_ms` for a message; "" on EOF, error or timeout.
std::string ReceiveMessage(int sock, int timeout_ms, UniqueFd* fd = nullptr) {
  pollfd p{sock, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) return "";
  char buf[512];
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) return "";
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int received;
      memcpy(&received, CMSG_DATA(c), sizeof received);
      if (fd != nullptr) {
        fd->reset(received);
      } else {
        close(received);  // not expected here: do not leak it
      }
    }
  }
  return std::string(buf, static_cast<size_t>(n));
}

// Only root or this process's own user may take or give listening sockets.
bool PeerIsTrusted(int sock, ucred* cred) {
  socklen_t len = sizeof *cred;
  return getsockopt(sock, SOL_SOCKET, SO_PEERCRED, cred, &len) == 0 &&
         (cred->uid == 0 || cred->uid == geteuid());
}

bool IsListeningTcpSocket(int fd) {
  int listening = 0, type = 0;
  socklen_t len = sizeof listening;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening == 0) {
    return false;
  }
  len = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

}  // namespace

std::string UpgradeSocketName(const std::string& config_path) {
  char real[PATH_MAX];
  std::string path = realpath(config_path.c_str(), real) != nullptr ? real : config_path;
  // FNV-1a: stable across builds, so an old and a new binary agree.
  uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : path) h = (h ^ ch) * 1099511628211ull;
  return absl::StrFormat("ktlb-upgrade-%016x", h);
}

absl::Status UpgradeListener::Open(const std::string& config_path) {
  std::string name = UpgradeSocketName(config_path);
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  socklen_t len;
  sockaddr_un a = AddressFor(name, &len);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(fd.get(), 4) != 0) {
    return absl::UnavailableError(absl::StrCat("@", name, ": ", strerror(errno),
                                               " (another ktlb runs this config?)"));
  }
  fd_ = std::move(fd);
  return absl::OkStatus();
}

bool UpgradeListener::HandOff(ListenSockets* sockets) {
  UniqueFd conn(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return false;
  ucred cred{};
  if (!PeerIsTrusted(conn.get(), &cred)) {
    fprintf(stderr, "ktlb: upgrade: refused a connection from uid %u\n", cred.uid);
    return false;
  }
  if (ReceiveMessage(conn.get(), kStepTimeoutMs) != kHello) return false;
  auto list = sockets->List();
  sockets->SetShared(true);
  bool sent = true;
  for (const auto& [address, fd] : list) {
    sent = sent && SendMessage(conn.get(), absl::StrCat("L ", address), fd.get());
  }
  sent = sent && SendMessage(conn.get(), absl::StrCat("E ", list.size()));
  if (sent) {
    fprintf(stderr, "ktlb: upgrade: handed %zu listening socket(s) to pid %d; waiting for it\n",
            list.size(), cred.pid);
  }
  if (!sent || ReceiveMessage(conn.get(), kStepTimeoutMs) != kReady) {
    // Closing the connection tells the successor, which then exits without
    // touching the sockets (its Ready() fails); they are ours alone again.
    fprintf(stderr, "ktlb: upgrade: pid %d did not take over; still serving\n", cred.pid);
    sockets->SetShared(false);
    return false;
  }
  // The name goes with the sockets: the successor answers the next upgrade.
  fd_.reset();
  SendMessage(conn.get(), kReleased);
  return true;
}

absl::Status UpgradeClient::TakeOver(const std::string& config_path, ListenSockets* into) {
  std::string name = UpgradeSocketName(config_path);
  conn_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!conn_) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  socklen_t len;
  sockaddr_un a = AddressFor(name, &len);
  if (connect(conn_.get(), reinterpret_cast<sockaddr*>(&a), len) != 0) {
    return absl::UnavailableError(absl::StrCat("no running ktlb answers on @", name, " (",
                                               strerror(errno), ")"));
  }
  // Abstract names have no permissions: anyone could have bound this one.
  ucred cred{};
  if (!PeerIsTrusted(conn_.get(), &cred)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "@", name, " is held by pid ", cred.pid, " uid ", cred.uid, ", not root or this user"));
  }
  if (!SendMessage(conn_.get(), kHello)) {
    return absl::UnavailableError(absl::StrCat("@", name, ": ", strerror(errno)));
  }
  size_t received = 0;
  for (;;) {
    UniqueFd fd;
    std::string m = ReceiveMessage(conn_.get(), kStepTimeoutMs, &fd);
    if (m.rfind("L ", 0) == 0 && fd) {
      if (!IsListeningTcpSocket(fd.get())) {
        return absl::InvalidArgumentError(
            absl::StrCat("the running ktlb sent ", m.substr(2), " but not a listening TCP socket"));
      }
      into->SetShared(true);
      into->Inherit(m.substr(2), std::move(fd));
      ++received;
    } else if (m.rfind("E ", 0) == 0) {
      size_t announced = 0;
      if (!absl::SimpleAtoi(m.substr(2), &announced) || announced != received) {
        return absl::UnavailableError(
            absl::StrCat("got ", received, " sockets of the ", m.substr(2), " announced"));
      }
      return absl::OkStatus();
    } else {
      return absl::UnavailableError("the running ktlb stopped handing over its sockets");
    }
  }
}

absl::Status UpgradeClient::Ready(ListenSockets* sockets) {
  if (!SendMessage(conn_.get(), kReady) || ReceiveMessage(conn_.get(), kStepTimeoutMs) != kReleased) {
    return absl::UnavailableError("the old process did not confirm the hand-off");
  }
  conn_.reset();
  sockets->SetShared(false);
  return absl::OkStatus();
}

}  // namespace ktlb
