// A client connection on a terminate listener: TLS over io_uring, then
// HTTP/1.1 requests proxied one at a time (pipelined requests wait in the
// plaintext buffer, so responses go out in request order).
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <optional>
#include <string>

#include "ktlb/deadline_queue.h"
#include "ktlb/http1.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/tls.h"

namespace ktlb {

class Worker;
class UpstreamConnection;

class ClientConnection : public DeadlineTarget {
 public:
  uint32_t slot_index = 0;
  uint16_t generation = 0;

  void Start(Worker* w, size_t listener_index, int fd, const sockaddr_storage& peer,
             const tls::ServerTlsContext& tls);

  void OnRecv(int res, uint32_t flags);
  void OnSend(int res);
  void OnDeadline(uint8_t kind) override;
  // Arms the recv again after the buffer ring ran dry.
  void RetryRecv() { ArmRecv(); }
  // Drain: close now if idle between requests, else after the current response.
  void Drain();

  // --- called by the UpstreamConnection serving the current request ---
  // Response bytes (head already rewritten, or body) to encrypt and send.
  void SendToClient(std::string_view plain);
  // The response is complete; `upstream_reusable` says nothing is left unread.
  void OnResponseComplete(int status);
  // The response head arrived (used for the status metric and keep-alive).
  void OnResponseHead(int status, bool close_after);
  // The upstream failed before a response head: 502/504 or a retry.
  void OnUpstreamFailed(bool timed_out, bool got_response_bytes);
  // The upstream failed mid-response: the client connection cannot be saved.
  void OnUpstreamAborted();
  // Bytes queued towards the client, for upstream backpressure.
  size_t ClientBacklog() const { return tls_out_.size() + (sending_.size() - sending_off_); }
  // The upstream drained its send queue: more request body may be read.
  void OnUpstreamWritable();
  const std::string& upstream_request_head() const { return up_head_; }
  bool request_body_pending() const { return !req_body_done_; }

 private:
  enum class State { kHandshake, kReadingHead, kProxying, kClosing, kLingering, kClosed };

  uint64_t Tag(uint8_t op) const;
  void ArmRecv();
  void FlushSend();
  void DriveTls();
  void OnHandshakeDone();
  void FailHandshake(int ssl_error);
  void ProcessPlain();
  bool ReadingAllowed() const;
  void StartExchange();
  bool ConnectUpstream(int avoid_server);
  void FinishExchange();
  void RespondError(int status, bool close);
  void RefuseRequest(http1::RequestError e);
  void BeginClose();  // flush what is queued, then close
  void CloseNow();
  void MaybeRelease();
  void ShrinkIdleBuffers();
  void DetachUpstream(bool reusable);
  void ForwardRequestBody();

  Worker* w_ = nullptr;
  size_t listener_ = 0;
  int fd_ = -1;
  sockaddr_storage peer_{};
  std::string peer_ip_;
  uint16_t peer_port_ = 0;

  UniqueSsl ssl_;
  tls::BioIo bio_;
  std::string cipher_stash_;  // received ciphertext OpenSSL has not taken yet
  std::string tls_out_;       // ciphertext waiting to be sent
  std::string sending_;       // ciphertext of the send in flight
  size_t sending_off_ = 0;
  bool recv_inflight_ = false;
  bool send_inflight_ = false;
  bool peer_eof_ = false;
  int inflight_ = 0;

  State state_ = State::kClosed;
  DeadlineNode timer_;

  std::string plain_;  // decrypted bytes not yet consumed
  size_t plain_off_ = 0;
  std::optional<http1::RequestParser> parser_;
  http1::RequestHead head_;
  std::string up_head_;  // the rewritten request head for the upstream (kept for retries)
  std::string scratch_;

  // The current exchange.
  UpstreamConnection* up_ = nullptr;
  int upstream_index_ = -1;
  int server_index_ = -1;
  int attempts_ = 0;
  bool req_body_done_ = true;
  bool resp_head_seen_ = false;
  bool resp_done_ = false;
  bool keep_alive_ = true;
  bool request_idempotent_ = false;
  bool request_has_body_ = false;
  int resp_status_ = 0;
};

}  // namespace ktlb
