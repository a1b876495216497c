// The byte tunnel an HTTP/1.1 client connection becomes after its backend
// answered `101 Switching Protocols` (WebSocket, or any other upgrade):
// plaintext from the client's TLS transport goes to the backend socket as
// it is, and bytes from the backend go to the transport to be encrypted.
//
// Userspace both ways: backend bytes arrive in the loop's buffer ring and
// are handed to tls::Transport::Write; client plaintext is copied from the
// transport's input into a send queue. Backpressure holds both ways (the
// transport's backlog stops backend reads, our send queue stops client
// reads). Splicing (socket -> pipe -> socket) would need kTLS in both
// directions on the client side and a splice reader that handles control
// records mid-stream; WebSocket traffic is mostly small messages, so the
// copy path is the one that matters here.
//
// Ends: the backend's FIN (or error) ends the tunnel after what it sent
// reached the client (close_notify then, by the owner). The client's
// close_notify is passed on as a FIN (SHUT_WR) to the backend, whose
// remaining bytes still flow back. No byte either way for idle_ms ends it.
//
// Ownership: embedded in its (pooled) owner, which routes the transport's
// events here while the tunnel is open and closes the transport when the
// tunnel reports its end. The backend socket is the tunnel's.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ktlb/deadline_queue.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/tls_transport.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

class WebSocketTunnel final : public IoHandler, public DeadlineTarget {
 public:
  class Host {
   public:
    // The tunnel ended by itself. `error`: nullptr for a clean end (the
    // backend closed), else why ("tunnel_idle", "upstream_reset",
    // "client_write"). `graceful`: what is queued for the client should
    // still go out, with a close_notify. The host closes the transport.
    virtual void OnTunnelEnded(const char* error, bool graceful) = 0;
    // The backend socket is closed and no operation of the tunnel is in
    // flight: the owner may be reused.
    virtual void OnTunnelReleased() = 0;

   protected:
    ~Host() = default;
  };

  struct Options {
    Loop* loop = nullptr;
    Counter* idle_timeouts = nullptr;  // timeouts_total{kind="tunnel_idle"}
    uint32_t idle_ms = 600000;
  };

  // Starts relaying. Bytes the client already sent sit in the transport's
  // input and go first; `already_read` (backend bytes read past its 101
  // head) goes to the client first.
  void Start(const Options& options, Host* host, tls::Transport* client, UniqueFd backend,
             std::string_view already_read);

  // --- the client transport's events, from the owner ---
  tls::InputWanted WantsInput() const;
  void OnClientInput();
  void OnClientWritable();
  // The owner ends the tunnel (transport closed, drain deadline): the
  // backend socket is shut, no OnTunnelEnded follows.
  void Stop();

  bool open() const { return open_; }
  // Operations still in flight, or the socket still open.
  bool busy() const { return inflight_ > 0 || backend_.valid(); }
  uint64_t bytes_up() const { return bytes_up_; }      // client -> backend
  uint64_t bytes_down() const { return bytes_down_; }  // backend -> client

  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  void OnDeferred(uint8_t op) override;
  void OnDeadline(uint8_t kind) override;

 private:
  enum Op : uint8_t { kRecv = 1, kSend, kRetryRecv };
  // Client bytes waiting for the backend past which the client is not read.
  static constexpr size_t kMaxUpBacklog = 256 * 1024;
  // Encrypted-but-unsent bytes for the client past which the backend is not read.
  static constexpr size_t kMaxDownBacklog = 512 * 1024;

  uint64_t Tag(uint8_t op) const { return slot_.Tag(op); }
  size_t up_backlog() const { return out_.size() + (sending_.size() - sending_off_); }
  void ArmRecv();
  void OnRecv(int res, uint32_t flags);
  void FlushUp();
  void OnSend(int res);
  void MaybeShutUp();
  void Touch();
  void End(const char* error, bool graceful);
  void Shut();
  void MaybeRelease();

  Loop* loop_ = nullptr;
  Host* host_ = nullptr;
  tls::Transport* client_ = nullptr;
  Counter* idle_timeouts_ = nullptr;
  uint32_t idle_ms_ = 0;
  HandlerSlot slot_;
  DeadlineNode timer_;
  UniqueFd backend_;
  bool open_ = false;
  int inflight_ = 0;
  bool recv_inflight_ = false;
  bool send_inflight_ = false;
  bool backend_eof_ = false;
  bool client_eof_ = false;  // close_notify (or no more reads): FIN to the backend
  bool up_shut_ = false;
  std::string out_;      // client -> backend, queued
  std::string sending_;  // ... in the send in flight
  size_t sending_off_ = 0;
  uint64_t bytes_up_ = 0;
  uint64_t bytes_down_ = 0;
};

}  // namespace ktlb
