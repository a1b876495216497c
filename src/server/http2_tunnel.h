// The byte relay behind one HTTP/2 extended CONNECT stream (RFC 8441,
// WebSocket over HTTP/2): the backend socket handed over after its `101`,
// and the stream's DATA both ways.
//
// Down (backend -> client): bytes received from the backend go to the host,
// which queues them as the stream's response DATA. Reading stops while the
// host says it is full (the stream's unsent bytes, or the connection's
// response budget), so a client that keeps its window shut makes the
// backend's TCP window fill, not our memory.
//
// Up (client -> backend): the stream's DATA is queued and sent; the host
// gives the client's window back only as the backend takes the bytes
// (OnTunnelUpSent), so the queue is bounded by the stream window.
//
// Ends: the backend's FIN becomes END_STREAM (OnTunnelDownEnd), the
// client's END_STREAM becomes a FIN (SHUT_WR) once everything before it is
// sent; a backend error or an idle tunnel is reported (OnTunnelFailed) and
// the host resets the stream. The host stops the tunnel when the stream
// closes; the object may be reused once OnTunnelReleased says no operation
// is in flight.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ktlb/deadline_queue.h"
#include "ktlb/loop.h"
#include "ktlb/metrics.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

class Http2Tunnel final : public IoHandler, public DeadlineTarget {
 public:
  class Host {
   public:
    // The client side holds enough unsent bytes: do not read the backend.
    virtual bool TunnelDownFull() const = 0;
    virtual void OnTunnelDown(std::string_view bytes) = 0;
    // The backend's FIN: the stream's response ends (END_STREAM).
    virtual void OnTunnelDownEnd() = 0;
    // The backend took `n` bytes of the client's DATA.
    virtual void OnTunnelUpSent(size_t n) = 0;
    // "upstream_reset" or "tunnel_idle": the host resets the stream and stops the tunnel.
    virtual void OnTunnelFailed(const char* error) = 0;
    // Stopped, and nothing of the tunnel is in flight anymore.
    virtual void OnTunnelReleased() = 0;

   protected:
    ~Host() = default;
  };

  struct Options {
    Loop* loop = nullptr;
    Counter* idle_timeouts = nullptr;  // timeouts_total{kind="tunnel_idle"}
    uint32_t idle_ms = 600000;
  };

  // `already_read`: backend bytes past its 101 head, the client's first.
  void Start(const Options& options, Host* host, UniqueFd backend, std::string_view already_read);
  // Client DATA payload for the backend.
  void SendUp(std::string_view bytes);
  // The client's END_STREAM.
  void EndUp();
  // The client took bytes: read the backend again if it was paused.
  void ResumeDown();
  // Ends the relay (the stream closed): no host call but OnTunnelReleased follows.
  void Stop();
  // The stream closed cleanly (both END_STREAMs): what the client sent last
  // still reaches the backend, then its socket is half-closed and the relay
  // stops, bounded by the idle timeout. Like Stop, no host call but
  // OnTunnelReleased follows.
  void Finish();

  bool open() const { return open_; }
  bool busy() const { return inflight_ > 0 || backend_.valid(); }
  uint64_t bytes_up() const { return bytes_up_; }
  uint64_t bytes_down() const { return bytes_down_; }

  void OnCompletion(uint8_t op, int res, uint32_t flags) override;
  void OnDeferred(uint8_t op) override;
  void OnDeadline(uint8_t kind) override;

 private:
  enum Op : uint8_t { kRecv = 1, kSend, kRetryRecv };

  size_t up_backlog() const { return out_.size() + (sending_.size() - sending_off_); }
  void ArmRecv();
  void OnRecv(int res, uint32_t flags);
  void FlushUp();
  void OnSend(int res);
  void MaybeShutUp();
  void Touch();
  void Fail(const char* error);
  void MaybeRelease();

  Loop* loop_ = nullptr;
  Host* host_ = nullptr;
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
  bool client_eof_ = false;
  bool up_shut_ = false;
  bool finishing_ = false;  // Finish(): the host is gone, the up bytes drain
  std::string out_;      // client -> backend, queued
  std::string sending_;  // ... in the send in flight
  size_t sending_off_ = 0;
  uint64_t bytes_up_ = 0;
  uint64_t bytes_down_ = 0;
};

}  // namespace ktlb
