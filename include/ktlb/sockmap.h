// Passthrough forwarding in the kernel: a BPF stream-verdict program on a
// SOCKHASH (bpf/relay.bpf.c, built into the binary) sends the bytes each
// socket of a relay receives out of the relay's other socket, so they never
// cross into user space and no pipe or splice call is needed per chunk.
//
// Loaded once per process, before the workers start (it needs CAP_BPF or
// root, which ktlb may drop right after); every worker's relays then share
// the maps. Where it cannot be loaded (no BPF, no permission, an old
// kernel), relays splice as before.
//
// What stays in user space is the end of each direction: ktlb polls a
// relay's sockets only to see a FIN or a reset, and passes a FIN on only once
// every byte received before it has been written into the other socket (see
// RedirectDrained: the psock may still hold redirected bytes in its backlog
// when the FIN is seen, and a shutdown then would cut them off).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct bpf_object;  // libbpf

namespace ktlb::passthrough {

// A relay's two sockets while they are in the map (their cookies key it).
struct SockmapPair {
  uint64_t cookie[2] = {0, 0};
  bool paired = false;
};

class Sockmap {
 public:
  // Loads the program and its maps and attaches the program to the socket
  // map. An error says what failed (for the one log line of the fallback).
  static absl::StatusOr<std::unique_ptr<Sockmap>> Load();
  ~Sockmap();
  Sockmap(const Sockmap&) = delete;
  Sockmap& operator=(const Sockmap&) = delete;

  // From now on bytes received on `a` leave by `b` and the reverse. Bytes
  // already waiting in either socket's receive queue are forwarded too, in
  // order. `a` goes in first: it must be the side that is quiet now (the
  // client, waiting for the ServerHello the backend may be sending). False
  // when the map is full or the kernel refuses: the entries made are undone
  // (if `b` could not go in, `a` was in the map for a moment; a byte the
  // client sent in that moment, which TLS clients do not, would be lost).
  bool Pair(int a, int b, SockmapPair* out, std::string* error);
  // Forgets the pairing (before the sockets close; a closing socket leaves
  // the socket map by itself).
  void Unpair(SockmapPair* p);

 private:
  Sockmap() = default;
  ::bpf_object* obj_ = nullptr;
  int socks_fd_ = -1;  // SOCKHASH: cookie -> socket
  int peer_fd_ = -1;   // HASH: cookie -> the peer's cookie
  int prog_fd_ = -1;
};

// The process's loaded Sockmap, or nullptr when relays splice. Set once at
// startup, before any worker runs, and never changed after: workers read it
// without a lock.
Sockmap* ProcessSockmap();
void SetProcessSockmap(std::unique_ptr<Sockmap> sockmap);

// TCP counters of one socket, from the kernel: every data byte it has
// received since it opened, and every byte written into it (sent or still
// queued).
uint64_t TcpBytesReceived(int fd);
uint64_t TcpBytesWritten(int fd);

// The bytes the kernel redirected from a source socket: what it received
// (tcpi_bytes_received, which counts a received FIN as one more byte: it is
// rcv_nxt's advance) less what ktlb read from it itself before pairing. 0
// when the counter is not there to read (a failed socket).
inline uint64_t RedirectedBytes(uint64_t src_received, uint64_t src_read_by_ktlb,
                                bool fin_received) {
  const uint64_t data = fin_received && src_received > 0 ? src_received - 1 : src_received;
  return data > src_read_by_ktlb ? data - src_read_by_ktlb : 0;
}

// One direction of a kernel relay is drained when every byte redirected from
// its source has been written into its sink (counted from the pairing: the
// sink's tcpi_bytes_acked + SIOCOUTQ then and now). Until then a FIN must
// wait: the rest is still in the psock's backlog.
inline bool RedirectDrained(uint64_t redirected_in, uint64_t written_out) {
  return written_out >= redirected_in;
}

}  // namespace ktlb::passthrough
