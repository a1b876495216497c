// A connection on a passthrough listener: ktlb reads the client's TLS
// ClientHello (never decrypting anything), picks an upstream by its SNI,
// connects, replays the bytes read so far, and from then on the kernel moves
// the bytes both ways (socket -> pipe -> socket, splice), so they never enter
// ktlb's memory.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "ktlb/client_hello.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/splice_pipe.h"

namespace ktlb {

class Worker;

// Per-connection operations of OpKind::kTunnel (UserData::op).
enum class TunnelOp : uint8_t {
  kRecv = 1,         // ClientHello bytes (buffer ring)
  kConnect = 2,
  kSend = 3,         // the replayed ClientHello bytes to the backend
  kClientIn = 4,     // readiness polls for the two relay directions
  kClientOut = 5,
  kBackendIn = 6,
  kBackendOut = 7,
};

class TunnelConnection final : public DeadlineTarget {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  void Start(Worker* w, size_t listener_index, int fd, const sockaddr_storage& peer);
  void OnRecv(int res, uint32_t flags);
  void OnConnect(int res);
  void OnSend(int res);
  void OnPoll(TunnelOp op, int res);
  void OnDeadline(uint8_t kind) override;
  void RetryRecv() { ArmRecv(); }
  // Drain: a connection still reading its ClientHello closes now; relays
  // run on until they end or the drain deadline cuts them.
  void Drain();

 private:
  enum class State { kHello, kConnecting, kReplay, kRelay, kClosed };

  // One direction of the relay: its own pipe, taken from the worker's pool
  // while bytes are in flight and given back when the direction is idle, so
  // an idle tunnel holds no pipe.
  struct Direction {
    SplicePipe pipe;
    int src = -1;
    int dst = -1;
    TunnelOp poll_src;  // the op to wait for readable source / writable sink
    TunnelOp poll_dst;
    bool src_polled = false;
    bool dst_polled = false;
    bool eof = false;   // the source ended; the pipe drains, then SHUT_WR on dst
    bool done = false;  // dst shut for writing
    uint64_t bytes = 0;
  };

  uint64_t Tag(TunnelOp op) const;
  void ArmRecv();
  void OnHelloComplete(const passthrough::ClientHello& hello);
  void FailHello(passthrough::HelloStatus why);
  bool Connect(size_t upstream, size_t server);
  void SendHello();
  void StartRelay();
  void Pump(Direction& d);
  void ArmPoll(Direction& d, bool on_src);
  bool* PolledFlag(TunnelOp op);
  void CloseNow();
  void MaybeRelease();

  Worker* w_ = nullptr;
  size_t listener_ = 0;
  int fd_ = -1;       // client
  int up_fd_ = -1;    // backend
  int upstream_ = -1;
  int server_ = -1;
  State state_ = State::kClosed;
  int inflight_ = 0;
  bool recv_inflight_ = false;
  sockaddr_storage peer_{};
  DeadlineNode timer_;

  passthrough::ClientHelloParser hello_parser_;
  std::string hello_;  // every byte read before the relay starts; replayed to the backend
  size_t sent_ = 0;    // of hello_

  Direction up_;    // client -> backend
  Direction down_;  // backend -> client
};

}  // namespace ktlb
