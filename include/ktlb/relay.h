// The passthrough relay: one connection on a passthrough listener. ktlb
// reads the client's TLS ClientHello (never decrypting anything), picks an
// upstream by its SNI, connects, replays the bytes read so far, then relays
// both directions.
//
// Each direction starts in copy mode: an io_uring recv into the loop's
// buffer ring and an io_uring send of the same buffer, no system call of its
// own (both ride the loop's one io_uring_enter), which is what small TLS
// records want. A recv that fills a whole buffer means bulk transfer: the
// direction switches for good to splice mode (socket -> pipe -> socket), and
// the bytes no longer enter ktlb's memory.
//
// Where the process loaded the BPF relay (ktlb/sockmap.h), a relay instead
// pairs its two sockets in the socket map once the replay is written, and
// from then on the kernel forwards every byte; ktlb only waits for each
// direction's end, and passes the FIN on once the kernel has written every
// byte that came before it.
//
// The relay knows its owner only through RelayHost (the loop, the logs, the
// timeout counters, and where to hand it back when it is done) and the
// RelayContext it starts with (what the config generation it was accepted on
// gives it).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "ktlb/access_log.h"
#include "ktlb/client_hello.h"
#include "ktlb/cluster.h"
#include "ktlb/config.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/error_log.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/proxy_header_stage.h"
#include "ktlb/router.h"
#include "ktlb/sockmap.h"
#include "ktlb/splice_pipe.h"
#include "ktlb/unique_fd.h"

namespace ktlb::passthrough {

class Relay;

// What a relay needs from the one that runs it (a worker). Every call is on
// the loop's own thread.
class RelayHost {
 public:
  virtual Loop& loop() = 0;
  virtual ErrorLog& error_log() = 0;
  virtual AccessLog& access_log() = 0;
  // Wall-clock time of this loop turn, for the access log.
  virtual std::string_view log_time() = 0;
  // One of the relay's deadlines fired (timeouts_total).
  virtual void CountTimeout(TimeoutKind k) = 0;
  // `relay` is closed and no operation of its own is in flight: it may be
  // started again (or freed). Its listener's active gauge is already down.
  virtual void OnRelayReleased(Relay* relay) = 0;

 protected:
  ~RelayHost() = default;
};

// What the config generation a relay was accepted on gives it, for its
// whole life. Everything pointed to outlives the relay.
struct RelayContext {
  const Config* config = nullptr;
  const Router* router = nullptr;
  size_t listener = 0;                 // index into config->listeners
  ListenerMetrics* metrics = nullptr;  // that listener's counters
  // By upstream index in config->upstreams.
  std::span<const std::unique_ptr<upstream::Cluster>> clusters;
};

// The relay's operations (Loop::Tag's op).
enum class RelayOp : uint8_t {
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

// Reusable: the host keeps relays in a pool and starts one per accepted
// connection; it may derive from Relay to keep its own per-connection data.
class Relay : public IoHandler, public DeadlineTarget {
 public:
  // Takes `fd` (non-blocking: the relay splices from it). The connection is
  // counted as active in ctx.metrics already; the relay counts it down when
  // it is released.
  void Start(RelayHost* host, const RelayContext& ctx, int fd, const sockaddr_storage& peer);
  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  // The buffer ring was empty: try the recv for `op` again.
  void OnDeferred(uint8_t op) override;
  void OnDeadline(uint8_t kind) override;
  // Drain: nothing is cut; a ClientHello on its way finishes (handshake
  // timeout), relays run on until they end or the drain deadline cuts them.
  void Drain();
  // The drain deadline cuts this connection: log it if it is open.
  void LogIfOpen(const char* error);

 protected:
  ~Relay() = default;

 private:
  enum class State { kHello, kConnecting, kReplay, kRelay, kClosed };

  // One direction of the relay: its own pipe, taken from the loop's pool
  // while bytes are in flight and given back when the direction is idle, so
  // an idle relay holds no pipe.
  struct Direction {
    SplicePipe pipe;
    int src = -1;
    int dst = -1;
    RelayOp poll_src;  // the op to wait for readable source / writable sink
    RelayOp poll_dst;
    bool src_polled = false;
    bool dst_polled = false;
    bool eof = false;   // the source ended; the pipe drains, then SHUT_WR on dst
    bool done = false;  // dst shut for writing
    uint64_t bytes = 0;
    // Copy mode (until `bulk`).
    bool bulk = false;
    bool recv_inflight = false;
    bool send_inflight = false;
    RelayOp recv_op;
    RelayOp send_op;
    uint16_t bid = 0;     // buffer being sent
    uint32_t len = 0;     // its bytes
    uint32_t sent = 0;    // of them, sent
    // After a short send (a slow reader) the rest is copied here and the
    // ring buffer goes back at once: ring buffers are shared by every
    // connection of the loop and must never wait on one slow peer.
    std::string spill;
    bool spilling = false;
    // Kernel mode: bytes ktlb read from src itself (the ClientHello), what
    // had been written into dst when the sockets were paired (the replay),
    // and the redirected bytes counted so far.
    uint64_t ktlb_read = 0;
    uint64_t dst_written_at_pairing = 0;
    uint64_t kernel_counted = 0;
  };
  // The timer kind of the kernel-mode drain check (past every TimeoutKind).
  static constexpr uint8_t kKernelDrainCheck = 0xf0;

  uint64_t Tag(RelayOp op) const;
  Loop& loop() const { return host_->loop(); }
  upstream::Cluster* cluster(size_t upstream) const { return ctx_.clusters[upstream].get(); }
  const Timeouts& timeouts() const { return ctx_.config->server.timeouts; }
  void OnRecv(int res, uint32_t flags);
  void OnConnect(int res);
  void OnSend(int res);
  void OnPoll(RelayOp op, int res);
  void RetryRecv(RelayOp op);
  void OnCopyRecv(RelayOp op, int res, uint32_t flags);
  void OnCopySend(RelayOp op, int res);
  void ArmRecv();
  // The PROXY header stage of OnRecv (accept_proxy): false when nothing is
  // left for the ClientHello parser yet, or the relay is closing.
  bool TakeProxyHeader();
  void OnHelloComplete(const ClientHello& hello);
  void FailHello(HelloStatus why);
  bool Connect(size_t upstream, size_t server);
  void SendHello();
  void StartRelay();
  void Pump(Direction& d);
  void Forward(Direction& d);  // copy or splice, whichever mode d is in
  void ArmCopyRecv(Direction& d);
  void SendCopied(Direction& d);
  void EndDirection(Direction& d);  // its source ended and everything was sent
  void CountMoved(Direction& d, uint64_t n);
  // Kernel mode (sockmap): pair the sockets; false leaves the relay to splice.
  bool StartKernelRelay();
  // d's source is readable: its end (FIN or reset), or bytes the kernel
  // kept back.
  void OnKernelReadable(Direction& d);
  // d's source ended: pass the FIN on once every byte before it is out.
  void CheckKernelDrain(Direction& d);
  // Counts the bytes the kernel moved since the last call; true if any.
  bool CountKernelMoved();
  void ArmTimer(TimeoutKind kind, uint32_t duration_ms);
  Direction& DirectionOf(RelayOp op) {
    return op == RelayOp::kClientIn || op == RelayOp::kBackendOut || op == RelayOp::kUpRecv ||
                   op == RelayOp::kUpSend
               ? up_
               : down_;
  }
  void ArmPoll(Direction& d, bool on_src);
  bool* PolledFlag(RelayOp op);
  void CloseNow();
  void MaybeRelease();
  // The access log line of this relay, written once when it closes.
  void LogTunnel(const char* error);

  RelayHost* host_ = nullptr;
  RelayContext ctx_;
  HandlerSlot slot_;
  UniqueFd fd_;     // client
  UniqueFd up_fd_;  // backend
  int upstream_ = -1;
  int server_ = -1;
  bool counted_ = false;  // in the cluster's in-flight count for server_
  State state_ = State::kClosed;
  int inflight_ = 0;
  bool recv_inflight_ = false;
  // The client and the address it connected to: the socket's, or what its
  // PROXY header said (accept_proxy). local_ is read from the socket only
  // when needed (AF_UNSPEC until then).
  sockaddr_storage peer_{};
  sockaddr_storage local_{};
  ProxyHeaderStage proxy_header_;
  DeadlineNode timer_;
  // Kernel mode: the sockets are in the socket map; drain_timer_ re-checks
  // a direction whose FIN waits for redirected bytes.
  bool kernel_ = false;
  SockmapPair pair_;
  DeadlineNode drain_timer_;

  uint64_t start_ms_ = 0;
  const char* close_reason_ = nullptr;  // why it ends, when not a clean end of both directions
  char sni_[256] = {};                  // lowercased, as routed on and logged
  size_t sni_len_ = 0;

  ClientHelloParser hello_parser_;
  // Every byte read before the relay starts (after the PROXY header it
  // received, if any); replayed to the backend.
  std::string hello_;
  size_t sent_ = 0;    // of hello_
  size_t proxy_header_len_ = 0;  // at the front of hello_, ours, not the client's

  Direction up_;    // client -> backend
  Direction down_;  // backend -> client
};

}  // namespace ktlb::passthrough
