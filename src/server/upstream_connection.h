// A plain TCP connection from a worker to one backend server, carrying one
// HTTP/1.1 exchange at a time for a ClientConnection, then parked in the
// worker's keep-alive pool.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ktlb/deadline_queue.h"
#include "ktlb/http1.h"
#include "ktlb/splice_pipe.h"

namespace ktlb {

class Worker;
class ClientConnection;

class UpstreamConnection final : public DeadlineTarget {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  // Opens a socket and starts a connect; false (and counted) if the socket
  // could not even be created.
  bool Connect(Worker* w, size_t upstream, size_t server);
  // Binds to a client exchange and sends the request head.
  void Begin(ClientConnection* client, std::string_view request_head, bool request_is_head);
  // More request bytes (body) to send.
  void Send(std::string_view bytes);
  // The client consumed output: resume reading the response if it was paused.
  void OnClientWritable();
  // The client is still sending the request body: the response deadline
  // counts from the last byte of it, not from the head.
  void RequestBodyProgress();
  // The client went away: close (the exchange cannot be reused safely).
  void Abandon();
  // Shut down an idle pooled connection (drain / pool overflow).
  void CloseIdle();

  void OnConnect(int res);
  // Readiness for the splice pump (POLLIN on the backend, POLLOUT on the client).
  void OnSplicePoll(uint8_t op, int res);
  void OnRecv(int res, uint32_t flags);
  void OnSend(int res);
  void OnDeadline(uint8_t kind) override;
  void RetryRecv() { ArmRecv(); }

  size_t upstream() const { return upstream_; }
  int fd() const { return fd_; }
  bool connected() const { return state_ == State::kActive; }
  size_t server() const { return server_; }
  bool reused() const { return reused_; }
  size_t SendBacklog() const { return out_.size() + (sending_.size() - sending_off_); }
  bool idle() const { return state_ == State::kIdle; }

 private:
  enum class State { kConnecting, kActive, kIdle, kClosing, kClosed };

  uint64_t Tag(uint8_t op) const;
  void ArmRecv();
  void FlushSend();
  void HandleBytes(std::string_view data);
  void EmitToClient();  // sends what scratch_ holds
  // Splice (splice_pump.cc): a large Content-Length body, or the data of
  // large chunks, to a kTLS client moves backend socket -> pipe -> client
  // socket without entering userspace.
  void StartSplice(uint64_t n);
  void Pump();
  void ReadFraming();
  void EndSplice(bool ok);
  void ArmPoll(int fd, bool out);
  void Fail(bool timed_out);
  void CloseNow();
  void MaybeRelease();
  void Finish();

  Worker* w_ = nullptr;
  int fd_ = -1;
  size_t upstream_ = 0;
  size_t server_ = 0;
  State state_ = State::kClosed;
  ClientConnection* client_ = nullptr;
  DeadlineNode timer_;

  std::string out_;
  std::string sending_;
  size_t sending_off_ = 0;
  bool recv_inflight_ = false;
  bool send_inflight_ = false;
  bool connect_inflight_ = false;
  int inflight_ = 0;

  bool reused_ = false;
  bool request_is_head_ = false;
  bool got_bytes_ = false;
  bool head_done_ = false;
  bool resp_done_ = false;
  bool reusable_ = false;
  uint64_t body_seen_ = 0;  // body bytes of this response forwarded so far
  SplicePipe pipe_;  // active while a response body is being spliced
  bool poll_in_inflight_ = false;
  bool poll_out_inflight_ = false;
  std::optional<http1::ResponseParser> parser_;
  http1::ResponseHead head_;
  std::string head_buf_;
  std::string scratch_;
};

}  // namespace ktlb
