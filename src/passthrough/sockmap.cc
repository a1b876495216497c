#include "ktlb/sockmap.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h>  // tcp_info with the byte counters (netinet/tcp.h lacks them)
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>

#include "absl/strings/str_cat.h"

// The BPF object built from bpf/relay.bpf.c (CMake, clang -target bpf), in
// the binary itself: nothing to install next to ktlb, and the program always
// matches the code that fills its maps.
__asm__(".section .rodata\n"
        ".balign 8\n"
        ".global ktlb_relay_bpf_start\n"
        "ktlb_relay_bpf_start:\n"
        ".incbin \"" KTLB_RELAY_BPF_OBJECT "\"\n"
        ".global ktlb_relay_bpf_end\n"
        "ktlb_relay_bpf_end:\n"
        ".previous\n");
extern "C" const char ktlb_relay_bpf_start[];
extern "C" const char ktlb_relay_bpf_end[];

namespace ktlb::passthrough {

namespace {

Sockmap* g_sockmap = nullptr;

// libbpf prints to stderr by default; the loader reports one error instead.
int QuietLibbpf(enum libbpf_print_level, const char*, va_list) { return 0; }

bool SocketCookie(int fd, uint64_t* cookie) {
  socklen_t len = sizeof(*cookie);
  return getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Sockmap>> Sockmap::Load() {
  libbpf_set_print(QuietLibbpf);
  std::unique_ptr<Sockmap> m(new Sockmap());
  const size_t size = static_cast<size_t>(ktlb_relay_bpf_end - ktlb_relay_bpf_start);
  LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "ktlb_relay");
  m->obj_ = bpf_object__open_mem(ktlb_relay_bpf_start, size, &opts);
  if (m->obj_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("open BPF object: ", strerror(errno)));
  }
  if (int err = bpf_object__load(m->obj_); err != 0) {
    return absl::UnavailableError(absl::StrCat("load BPF program: ", strerror(-err)));
  }
  m->socks_fd_ = bpf_object__find_map_fd_by_name(m->obj_, "relay_socks");
  m->peer_fd_ = bpf_object__find_map_fd_by_name(m->obj_, "relay_peer");
  bpf_program* prog = bpf_object__find_program_by_name(m->obj_, "relay_verdict");
  m->prog_fd_ = prog != nullptr ? bpf_program__fd(prog) : -1;
  if (m->socks_fd_ < 0 || m->peer_fd_ < 0 || m->prog_fd_ < 0) {
    return absl::InternalError("BPF object lacks relay_socks, relay_peer or relay_verdict");
  }
  if (bpf_prog_attach(m->prog_fd_, m->socks_fd_, BPF_SK_SKB_STREAM_VERDICT, 0) != 0) {
    return absl::UnavailableError(absl::StrCat("attach stream verdict: ", strerror(errno)));
  }
  return m;
}

Sockmap::~Sockmap() {
  if (obj_ != nullptr) bpf_object__close(obj_);
}

bool Sockmap::Pair(int a, int b, SockmapPair* out, std::string* error) {
  SockmapPair p;
  if (!SocketCookie(a, &p.cookie[0]) || !SocketCookie(b, &p.cookie[1])) {
    *error = absl::StrCat("SO_COOKIE: ", strerror(errno));
    return false;
  }
  // Peers first, sockets after: a socket's bytes are redirected as soon as
  // it is in relay_socks.
  if (bpf_map_update_elem(peer_fd_, &p.cookie[0], &p.cookie[1], BPF_ANY) != 0 ||
      bpf_map_update_elem(peer_fd_, &p.cookie[1], &p.cookie[0], BPF_ANY) != 0) {
    *error = absl::StrCat("relay_peer: ", strerror(errno));
    Unpair(&p);
    return false;
  }
  uint64_t fd_a = static_cast<uint64_t>(a);
  if (bpf_map_update_elem(socks_fd_, &p.cookie[0], &fd_a, BPF_NOEXIST) != 0) {
    *error = absl::StrCat("relay_socks: ", strerror(errno));
    Unpair(&p);
    return false;
  }
  uint64_t fd_b = static_cast<uint64_t>(b);
  if (bpf_map_update_elem(socks_fd_, &p.cookie[1], &fd_b, BPF_NOEXIST) != 0) {
    *error = absl::StrCat("relay_socks: ", strerror(errno));
    bpf_map_delete_elem(socks_fd_, &p.cookie[0]);
    Unpair(&p);
    return false;
  }
  // Bytes that reached a socket before it was in the map sit in its receive
  // queue, and the verdict runs only when more arrive, which may be never
  // (the backend's ServerHello, with the client waiting for it). Setting
  // SO_RCVLOWAT signals data-ready at once when bytes are queued
  // (tcp_set_rcvlowat), which runs the verdict on them, in order.
  const int one = 1;
  setsockopt(a, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
  setsockopt(b, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
  p.paired = true;
  *out = p;
  return true;
}

void Sockmap::Unpair(SockmapPair* p) {
  for (uint64_t& c : p->cookie) {
    if (c != 0) bpf_map_delete_elem(peer_fd_, &c);
    c = 0;
  }
  p->paired = false;
}

Sockmap* ProcessSockmap() { return g_sockmap; }

void SetProcessSockmap(std::unique_ptr<Sockmap> sockmap) {
  // Lives as long as the process: relays on every worker use it until exit.
  g_sockmap = sockmap.release();
}

uint64_t TcpBytesReceived(int fd) {
  tcp_info ti{};
  socklen_t len = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return 0;
  return ti.tcpi_bytes_received;
}

uint64_t TcpBytesWritten(int fd) {
  // Acknowledged, then what is still queued: an ACK landing between the
  // two reads makes the sum smaller, never larger, so a drain is never seen
  // early.
  tcp_info ti{};
  socklen_t len = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return 0;
  int queued = 0;
  if (ioctl(fd, SIOCOUTQ, &queued) != 0) queued = 0;
  return ti.tcpi_bytes_acked + static_cast<uint64_t>(queued);
}

}  // namespace ktlb::passthrough
