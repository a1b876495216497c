// A connection on a passthrough listener: ktlb reads the client's TLS
// ClientHello (never decrypting anything), picks an upstream by its SNI,
// connects, replays the bytes read so far, then relays both directions.
//
// Each direction starts in copy mode: an io_uring recv into the worker's
// buffer ring and an io_uring send of the same buffer, no system call of its
// own (both ride the loop's one io_uring_enter), which is what small TLS
// records want. A recv that fills a whole buffer means bulk transfer: the
// direction switches for good to splice mode (socket -> pipe -> socket), and
// the bytes no longer enter ktlb's memory.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "ktlb/client_hello.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/loop.h"
#include "ktlb/splice_pipe.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

class Generation;
class Worker;

// The tunnel's operations (Loop::Tag's op).
enum class TunnelOp : uint8_t {
  kRecv = 1,         // ClientHello bytes (buffer ring)
  kConnect = 2,
  kSend = 3,         // the replayed ClientHello bytes to the backend
  kClientIn = 4,     // readiness polls for the two relay directions
  kClientOut = 5,
  kBackendIn = 6,
  kBackendOut = 7,
  kUpRecv = 8,       // copy mode: client -> backend
  kUpSend = 9,
  kDownRecv = 10,    // copy mode: backend -> client
  kDownSend = 11,
};

class TunnelConnection final : public IoHandler, public DeadlineTarget {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  void Start(Worker* w, Generation* gen, size_t listener_index, int fd,
             const sockaddr_storage& peer);
  void OnRecv(int res, uint32_t flags);
  void OnConnect(int res);
  void OnSend(int res);
  void OnPoll(TunnelOp op, int res);
  void OnDeadline(uint8_t kind) override;
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  // The buffer ring was empty: try the recv for `op` again.
  void OnDeferred(uint8_t op) override;
  void RetryRecv(TunnelOp op);
  void OnCopyRecv(TunnelOp op, int res, uint32_t flags);
  void OnCopySend(TunnelOp op, int res);
  // Drain: a connection still reading its ClientHello closes now; relays
  // run on until they end or the drain deadline cuts them.
  void Drain();
  // The drain deadline cuts this connection: log it if it is open.
  void LogIfOpen(const char* error);

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
    // Copy mode (until `bulk`).
    bool bulk = false;
    bool recv_inflight = false;
    bool send_inflight = false;
    TunnelOp recv_op;
    TunnelOp send_op;
    uint16_t bid = 0;     // buffer being sent
    uint32_t len = 0;     // its bytes
    uint32_t sent = 0;    // of them, sent
    // After a short send (a slow reader) the rest is copied here and the
    // ring buffer goes back at once: ring buffers are shared by every
    // connection of the worker and must never wait on one slow peer.
    std::string spill;
    bool spilling = false;
  };

  uint64_t Tag(TunnelOp op) const;
  void ArmRecv();
  void OnHelloComplete(const passthrough::ClientHello& hello);
  void FailHello(passthrough::HelloStatus why);
  bool Connect(size_t upstream, size_t server);
  void SendHello();
  void StartRelay();
  void Pump(Direction& d);
  void Relay(Direction& d);  // copy or splice, whichever mode d is in
  void ArmCopyRecv(Direction& d);
  void SendCopied(Direction& d);
  void EndDirection(Direction& d);  // its source ended and everything was sent
  void CountMoved(Direction& d, uint64_t n);
  Direction& DirectionOf(TunnelOp op) {
    return op == TunnelOp::kClientIn || op == TunnelOp::kBackendOut || op == TunnelOp::kUpRecv ||
                   op == TunnelOp::kUpSend
               ? up_
               : down_;
  }
  void ArmPoll(Direction& d, bool on_src);
  bool* PolledFlag(TunnelOp op);
  void CloseNow();
  void MaybeRelease();
  // The access log line of this tunnel, written once when it closes.
  void LogTunnel(const char* error);

  Worker* w_ = nullptr;
  Generation* gen_ = nullptr;
  HandlerSlot slot_;
  size_t listener_ = 0;
  UniqueFd fd_;     // client
  UniqueFd up_fd_;  // backend
  int upstream_ = -1;
  int server_ = -1;
  State state_ = State::kClosed;
  int inflight_ = 0;
  bool recv_inflight_ = false;
  sockaddr_storage peer_{};
  DeadlineNode timer_;

  uint64_t start_ms_ = 0;
  const char* close_reason_ = nullptr;  // why it ends, when not a clean end of both directions
  char sni_[256] = {};                  // lowercased, as routed on and logged
  size_t sni_len_ = 0;

  passthrough::ClientHelloParser hello_parser_;
  std::string hello_;  // every byte read before the relay starts; replayed to the backend
  size_t sent_ = 0;    // of hello_
  size_t proxy_header_len_ = 0;  // at the front of hello_, ours, not the client's

  Direction up_;    // client -> backend
  Direction down_;  // backend -> client
};

}  // namespace ktlb
