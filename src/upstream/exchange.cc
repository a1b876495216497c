#include "ktlb/exchange.h"

#include <utility>

#include "ktlb/cluster.h"
#include "upstream_connection.h"

namespace ktlb::upstream {

Exchange::~Exchange() { Abandon(); }

void Exchange::Start(Cluster* cluster, const ExchangeRequest& request, ExchangeSink* sink) {
  Leave();  // a previous request on this object is over
  cluster_ = cluster;
  sink_ = sink;
  request_ = request;
  server_ = -1;
  attempts_ = 0;
  body_done_ = !request.has_body;
  wait_.owner = this;
  pending_body_.clear();
  live_ = true;
  cluster_->RequestStarted();
  Attempt(-1);
}

Exchange* Exchange::FromWaitNode(WaitNode* n) { return static_cast<Exchange*>(n->owner); }

void Exchange::Leave() {
  if (!live_) return;
  live_ = false;
  cluster_->RequestEnded();
  if (retrying_) {
    retrying_ = false;
    cluster_->RetryEnded();
  }
}

void Exchange::Fail(ExchangeFailure why, bool response_started) {
  Leave();
  sink_->OnExchangeFailed(why, response_started);
}

void Exchange::Attempt(int avoid_server) {
  ++attempts_;
  int picked = cluster_->Pick(avoid_server, request_.hash, request_.has_hash);
  if (picked == Cluster::kAllAtCap) {
    // Every server holds max_conns_per_server connections of this worker:
    // wait for one to end, a bounded time in a bounded queue.
    if (!cluster_->Enqueue(this)) {
      cluster_->metrics().queue_timeouts.Inc();
      retry_after_s_ = 1;
      return Fail(ExchangeFailure::kQueueTimeout, false);
    }
    wait_avoid_ = avoid_server;
    queue_timer_.target = this;
    cluster_->loop().ArmTimer(&queue_timer_, 0, cluster_->queue_timeout_ms());
    return;
  }
  Launch(picked, avoid_server);
}

bool Exchange::ResumeQueued() {
  int picked = cluster_->Pick(wait_avoid_, request_.hash, request_.has_hash);
  if (picked == Cluster::kAllAtCap) return false;
  cluster_->Dequeue(this);
  Loop::CancelTimer(&queue_timer_);
  Launch(picked, wait_avoid_);
  return true;
}

void Exchange::OnDeadline(uint8_t kind) {
  (void)kind;
  if (!wait_.queued) return;
  cluster_->Dequeue(this);
  pending_body_.clear();
  cluster_->metrics().queue_timeouts.Inc();
  retry_after_s_ = 1;
  Fail(ExchangeFailure::kQueueTimeout, false);
}

void Exchange::Launch(int picked, int avoid_server) {
  if (picked < 0) {
    // No server may take it (all unhealthy or ejected): answer now, never
    // queue blind or wait out a connect timeout.
    pending_body_.clear();
    retry_after_s_ = cluster_->RetryAfterSeconds();
    cluster_->metrics().no_server.Inc();
    return Fail(ExchangeFailure::kNoServer, false);
  }
  server_ = picked;
  const size_t server = static_cast<size_t>(picked);
  // A retry always opens a fresh connection: a pooled one may be just as stale.
  UpstreamConnection* c = cluster_->Connection(server, avoid_server < 0 && attempts_ == 1);
  if (c == nullptr) {
    pending_body_.clear();
    return OnAttemptFailed(false, false);
  }
  conn_ = c;
  cluster_->metrics().requests.Inc();
  cluster_->AttemptStarted(server);
  counted_ = true;
  head_seen_ = false;
  attempt_start_us_ = Cluster::NowUs();
  c->Begin(this);
  if (!pending_body_.empty() && conn_ == c) {
    // Body bytes the client sent while the request waited for a connection.
    std::string body;
    body.swap(pending_body_);
    c->Send(body);
  }
}

void Exchange::EndAttempt() {
  if (!counted_) return;
  counted_ = false;
  cluster_->AttemptEnded(static_cast<size_t>(server_));
}

void Exchange::OnResponseHeadSeen(int status) {
  if (head_seen_ || !counted_) return;
  head_seen_ = true;
  if (status >= 500) {
    cluster_->ReportFailure(static_cast<size_t>(server_));
  } else {
    cluster_->ReportSuccess(static_cast<size_t>(server_));
  }
  cluster_->RecordLatency(static_cast<size_t>(server_), Cluster::NowUs() - attempt_start_us_,
                          false);
}

void Exchange::OnAttemptFailed(bool timed_out, bool got_response_bytes) {
  UpstreamConnection* failed = conn_;
  conn_ = nullptr;
  bool reused = failed != nullptr && failed->reused();
  // A stale pooled connection says nothing about the server; a refusal,
  // reset or timeout does, and p2c should see it.
  if (counted_ && !reused && !head_seen_) {
    cluster_->RecordLatency(static_cast<size_t>(server_), Cluster::NowUs() - attempt_start_us_,
                            true);
    // Before the retry picks: a failure that ejects steers it elsewhere.
    cluster_->ReportFailure(static_cast<size_t>(server_));
  }
  EndAttempt();
  // Replaying is safe only when nothing of the response was seen and the
  // whole request is still in hand (no streamed body).
  bool can_retry = !timed_out && !got_response_bytes && !request_.has_body && attempts_ < 2 &&
                   (request_.idempotent || reused);
  // A retry on another server is new load on the cluster: retry_budget
  // bounds it (a stale pooled connection's replay is not one).
  if (can_retry && !reused && !retrying_) {
    if (cluster_->TryStartRetry()) {
      retrying_ = true;
    } else {
      can_retry = false;
    }
  }
  if (can_retry) {
    if (!reused) cluster_->metrics().retries.Inc();
    // A stale pooled connection is retried on a fresh one, maybe the same
    // server; a refusing server is avoided.
    return Attempt(reused ? -1 : server_);
  }
  Fail(timed_out ? ExchangeFailure::kTimedOut : ExchangeFailure::kFailed, false);
}

void Exchange::OnAttemptAborted() {
  conn_ = nullptr;
  EndAttempt();
  Fail(ExchangeFailure::kFailed, true);
}

void Exchange::OnAttemptDone() {
  conn_ = nullptr;
  EndAttempt();
  Leave();
  sink_->OnResponseComplete();
}

void Exchange::OnAttemptUpgraded(UniqueFd backend, std::string_view already_read) {
  conn_ = nullptr;
  // The attempt is over for the balancer: a long-lived tunnel is not an
  // in-flight request (passthrough tunnels are not either).
  EndAttempt();
  Leave();
  sink_->OnUpgraded(std::move(backend), already_read);
}

void Exchange::SendBody(std::string_view bytes) {
  if (conn_ != nullptr) {
    conn_->Send(bytes);
  } else if (wait_.queued) {
    pending_body_.append(bytes);  // bounded by the sink: RequestBacklog
  }
}

void Exchange::BodyProgress() {
  if (conn_ != nullptr) conn_->RequestBodyProgress();
}

size_t Exchange::RequestBacklog() const {
  return conn_ != nullptr ? conn_->SendBacklog() : pending_body_.size();
}

int Exchange::RequestSpliceFd() const { return conn_ != nullptr ? conn_->fd() : -1; }

bool Exchange::RequestSpliceable() const {
  if (cluster_->tls() == nullptr) return true;
  return conn_ != nullptr && conn_->fd() >= 0;  // kTLS TX on the backend socket
}

bool Exchange::RequestSpliceReady() const {
  return conn_ != nullptr && conn_->connected() && conn_->SendBacklog() == 0;
}

size_t Exchange::PipedBytes() const { return conn_ != nullptr ? conn_->PipedBytes() : 0; }

long Exchange::SplicePipedTo(int fd, size_t max) {
  return conn_ != nullptr ? conn_->SplicePipedTo(fd, max) : 0;
}

void Exchange::OnSinkWritable() {
  if (conn_ != nullptr) conn_->OnSinkWritable();
}

void Exchange::Abandon() {
  if (wait_.queued) {
    // The client went away while waiting: it leaves the queue.
    cluster_->Dequeue(this);
    Loop::CancelTimer(&queue_timer_);
    pending_body_.clear();
  }
  Leave();
  if (conn_ == nullptr) return;
  UpstreamConnection* c = conn_;
  conn_ = nullptr;
  EndAttempt();
  c->Abandon();
}

}  // namespace ktlb::upstream
