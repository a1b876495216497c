// One request sent upstream, and what it reports back.
//
// An Exchange carries one client request to one of a cluster's servers over
// a pooled HTTP/1.1 connection, retrying on another server when that is safe.
// It reports to an ExchangeSink: the parsed response head, body bytes (or
// room for a splice), completion, failure, and backpressure both ways. It
// never builds bytes for the client: the client protocol (HTTP/1.1 today,
// an HTTP/2 stream next) is a sink and writes its own wire format.
//
// Ownership: the client-side object embeds its Exchange and is its sink; the
// Exchange borrows a connection from the Cluster for the time of one attempt.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/deadline_queue.h"
#include "ktlb/http1.h"
#include "ktlb/metrics.h"
#include "ktlb/unique_fd.h"
#include "ktlb/upstream_limits.h"

namespace ktlb::upstream {

class Cluster;
class UpstreamConnection;

// Stop reading a response while the client side holds this much unsent;
// stop reading a request body while this much waits for the backend.
inline constexpr size_t kMaxResponseBacklog = 512 * 1024;
inline constexpr size_t kMaxRequestBacklog = 256 * 1024;

enum class ExchangeFailure : uint8_t {
  kFailed,    // connect refused, reset, bad response: 502
  kTimedOut,  // connect or response timeout: 504
  kNoServer,  // every server is unhealthy or ejected: 503 at once, with
              // Retry-After: Exchange::retry_after_s()
  kQueueTimeout,  // every server at max_conns_per_server and queue_timeout_ms
                  // passed (or the queue was full): 503 with Retry-After too
};

class ExchangeSink {
 public:
  // A response head: interim ones (1xx) may come before the final one. The
  // views point into the exchange's buffers and last for this call only.
  virtual void OnResponseHead(const http1::ResponseHead& head) = 0;
  // Body bytes in the framing the final head announced: a chunked body
  // arrives as-is (chunk sizes and trailers included). With
  // ExchangeRequest::decode_body, only the payload, and the trailers of a
  // chunked body come to OnResponseTrailers before OnResponseComplete.
  virtual void OnResponseBody(std::string_view bytes) = 0;
  virtual void OnResponseTrailers(const std::vector<http1::Header>& trailers) { (void)trailers; }
  virtual void OnResponseComplete() = 0;
  // The exchange gave up. `response_started`: a head went to the sink, so
  // the client cannot be answered anymore.
  virtual void OnExchangeFailed(ExchangeFailure why, bool response_started) = 0;
  // The backend took everything queued: more request body may be sent.
  virtual void OnRequestWritable() = 0;
  // Response bytes the sink holds but its client has not taken yet.
  virtual size_t ResponseBacklog() const = 0;
  // Splice: a socket the response body may be spliced into now (its own
  // output queue is empty and the kernel encrypts), or -1.
  virtual int ResponseSpliceFd() const { return -1; }
  virtual bool ResponseSpliceReady() const { return false; }
  virtual void OnResponseSpliced(uint64_t n) { (void)n; }
  // Piped body (decode_body, Content-Length): the exchange splices the body
  // from the backend into a pipe and the sink moves it out itself, in
  // pieces it frames (HTTP/2 DATA under kTLS): Exchange::PipedBytes and
  // SplicePipedTo, then OnSinkWritable for more.
  virtual bool TakesResponsePipe() const { return false; }
  virtual void OnResponsePiped() {}
  // ExchangeRequest::upgrade and the backend answered 101 (its head went to
  // OnResponseHead just before): the exchange is over and the backend socket
  // is the sink's now, never to be pooled again. `already_read`: bytes the
  // backend sent after the 101 head (already the new protocol), valid for
  // this call only. A sink that cannot tunnel lets `backend` close.
  virtual void OnUpgraded(UniqueFd backend, std::string_view already_read) {
    (void)backend;
    (void)already_read;
  }

 protected:
  ~ExchangeSink() = default;
};

struct ExchangeRequest {
  // The request head as it goes upstream. Not copied: the caller keeps it
  // unchanged until the exchange ends (a retry sends it again).
  std::string_view head;
  bool is_head = false;   // HEAD: the response has no body
  bool has_body = false;
  bool idempotent = false;
  // Asked of the backend in HTTP/1.0 (for an HTTP/1.0 client): the backend
  // may close after it, so the connection is never pooled.
  bool http10 = false;
  // The sink frames bodies itself (HTTP/2): it gets the response payload and
  // trailers without HTTP/1 chunk framing (and no splice of chunked data).
  bool decode_body = false;
  // The client asked to switch protocols (an HTTP/1.1 Upgrade): a 101 ends
  // the exchange with OnUpgraded. Without it a 101 is a bad response.
  bool upgrade = false;
  // The balancer's key (RequestHasher over the cluster's hash_key()), when
  // the cluster hashes and the request has one.
  uint64_t hash = 0;
  bool has_hash = false;
};

class Exchange final : private DeadlineTarget {
 public:
  Exchange() = default;
  ~Exchange();
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  // Sends `request` to a server of `cluster`. The sink hears of the result,
  // possibly before Start returns (a connect that fails at once).
  void Start(Cluster* cluster, const ExchangeRequest& request, ExchangeSink* sink);
  // An attempt runs, or the request waits for a connection (the sink may
  // send body bytes: they are held until one is free).
  bool active() const { return conn_ != nullptr || wait_.queued; }
  bool queued() const { return wait_.queued; }

  // --- the request body, from the client side ---
  void SendBody(std::string_view bytes);
  // Body bytes went to the backend another way (splice): the response
  // deadline counts from the last of them, not from the head.
  void BodyProgress();
  // The whole request body went upstream (the connection may be pooled).
  void EndBody();
  size_t RequestBacklog() const;
  // Splice of the request body: the backend socket, once everything queued
  // before the body was sent; else -1.
  int RequestSpliceFd() const;
  // Whether a request body may be spliced to the backend at all: not while
  // its bytes must go through a userspace TLS channel.
  bool RequestSpliceable() const;
  bool RequestSpliceReady() const;

  // The client took response bytes: reading may resume.
  void OnSinkWritable();
  // A piped response body (ExchangeSink::TakesResponsePipe).
  size_t PipedBytes() const;
  long SplicePipedTo(int fd, size_t max);
  // The client went away: the backend connection is closed (its exchange
  // cannot be reused safely).
  void Abandon();

  // For the access log: the cluster and server of the last attempt.
  const Cluster* cluster() const { return cluster_; }
  int server() const { return server_; }
  // After kNoServer or kQueueTimeout: seconds until a server may be back
  // (at least 1).
  uint32_t retry_after_s() const { return retry_after_s_; }

  // --- from the UpstreamConnection of the current attempt ---
  ExchangeSink* sink() const { return sink_; }
  const ExchangeRequest& request() const { return request_; }
  bool body_done() const { return body_done_; }
  // A response head arrived (before the sink hears of it): the balancer's
  // latency sample, and passive health (a 5xx counts as a failure).
  void OnResponseHeadSeen(int status);
  void OnAttemptFailed(bool timed_out, bool got_response_bytes);
  void OnAttemptAborted();
  void OnAttemptDone();
  void OnAttemptUpgraded(UniqueFd backend, std::string_view already_read);

  // --- from the Cluster's wait queue ---
  WaitNode* wait_node() { return &wait_; }
  static Exchange* FromWaitNode(WaitNode* n);
  // A connection may be free: the attempt starts unless every server is
  // still at its cap (false: it stays queued).
  bool ResumeQueued();

 private:
  void Attempt(int avoid_server);
  // Starts the attempt on `picked` (a server, or -1: none available).
  void Launch(int picked, int avoid_server);
  // The queue timeout (kQueueTimer) or the try timeout (kTryTimer).
  void OnDeadline(uint8_t kind) override;
  enum : uint8_t { kQueueTimer = 0, kTryTimer = 1 };
  // Starts the try timeout of the current attempt, if the upstream has one.
  void ArmTryTimer();
  // The attempt on server_ failed for `why`. `sent`: request bytes may have
  // reached the backend (it had connected); `got_response_bytes`: some of a
  // response came back; `reused`: it was a pooled keep-alive connection.
  // Retries elsewhere when that is safe, else fails the exchange.
  void AttemptFailed(ServerFailure why, bool sent, bool got_response_bytes, bool reused);
  void Fail(ExchangeFailure why, bool response_started);
  // The request is over for the cluster's retry budget.
  void Leave();
  // The cluster's in-flight count for the attempt's server goes down.
  void EndAttempt();

  Cluster* cluster_ = nullptr;
  ExchangeSink* sink_ = nullptr;
  UpstreamConnection* conn_ = nullptr;
  ExchangeRequest request_;
  int server_ = -1;
  int attempts_ = 0;
  // A stale pooled connection was replayed on a fresh one: that replay is
  // not a try of its own, and happens at most once.
  bool replayed_ = false;
  DeadlineNode try_timer_;
  bool body_done_ = true;
  bool counted_ = false;  // the attempt is in the cluster's in-flight count
  bool head_seen_ = false;
  uint64_t attempt_start_us_ = 0;
  uint32_t retry_after_s_ = 0;
  // Waiting for a connection (max_conns_per_server).
  WaitNode wait_;
  DeadlineNode queue_timer_;
  int wait_avoid_ = -1;        // the server the waiting attempt avoids
  std::string pending_body_;   // request body sent while waiting
  bool live_ = false;          // counted in the cluster's requests in flight
  bool retrying_ = false;      // holds a place in the retry budget
};

}  // namespace ktlb::upstream
