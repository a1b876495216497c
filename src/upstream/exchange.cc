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
  replayed_ = false;
  body_done_ = !request.has_body;
  wait_.owner = this;
  try_timer_.target = this;
  pending_body_.clear();
  live_ = true;
  cluster_->RequestStarted();
  if (request.upgrade && cluster->tls() != nullptr) {
    // A tunnel takes a bare backend socket, and a TLS upstream's carries
    // TLS: refused before any server is tried, so that such requests never
    // count against (and eject) healthy servers.
    cluster->log().Log(ErrorLog::Level::kWarn, "upstream",
                       "%s: upgrades (WebSocket) over upstream TLS are not supported",
                       cluster->name().c_str());
    return Fail(ExchangeFailure::kFailed, false);
  }
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
    cluster_->loop().ArmTimer(&queue_timer_, kQueueTimer, cluster_->queue_timeout_ms());
    return;
  }
  Launch(picked, avoid_server);
}

bool Exchange::ResumeQueued() {
  int picked = cluster_->Pick(wait_avoid_, request_.hash, request_.has_hash);
  if (picked == Cluster::kAllAtCap) return false;
  cluster_->Dequeue(this);
  Loop::CancelTimer(&queue_timer_);
  if (picked >= 0) cluster_->server_metrics(static_cast<size_t>(picked)).queue_waits.Inc();
  Launch(picked, wait_avoid_);
  return true;
}

void Exchange::OnDeadline(uint8_t kind) {
  if (kind == kTryTimer) {
    if (conn_ == nullptr || head_seen_) return;
    // No response head within try_timeout_ms: this server is given up for
    // the request (its connection closed: a late answer must not reach the
    // next request), and AttemptFailed decides whether another may take it.
    cluster_->metrics().timeouts.Inc();
    cluster_->CountTimeout(TimeoutKind::kUpstreamTry);
    cluster_->log().Log(ErrorLog::Level::kWarn, "upstream", "try timeout (%u ms) on %s",
                        cluster_->try_timeout_ms(),
                        cluster_->server(static_cast<size_t>(server_)).address.text.c_str());
    UpstreamConnection* c = conn_;
    conn_ = nullptr;
    const bool sent = c->reached_server();
    c->Abandon();
    // A pooled connection that never answered is no stale one: the server
    // took the request and sat on it.
    return AttemptFailed(ServerFailure::kTryTimeout, sent, false, false);
  }
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
  // A retry (or a replay) always opens a fresh connection: a pooled one may
  // be just as stale.
  UpstreamConnection* c =
      cluster_->Connection(server, avoid_server < 0 && attempts_ == 1 && !replayed_);
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
  if (body_done_) ArmTryTimer();
  c->Begin(this);
  if (!pending_body_.empty() && conn_ == c) {
    // Body bytes the client sent while the request waited for a connection.
    std::string body;
    body.swap(pending_body_);
    c->Send(body);
  }
}

void Exchange::ArmTryTimer() {
  if (cluster_->try_timeout_ms() == 0) return;
  cluster_->loop().ArmTimer(&try_timer_, kTryTimer, cluster_->try_timeout_ms());
}

void Exchange::EndBody() {
  // A request body's end starts the wait for the head: an upload is not
  // timed by the per-try limit.
  if (!body_done_ && conn_ != nullptr && !head_seen_) ArmTryTimer();
  body_done_ = true;
}

void Exchange::EndAttempt() {
  Loop::CancelTimer(&try_timer_);
  if (!counted_) return;
  counted_ = false;
  cluster_->AttemptEnded(static_cast<size_t>(server_));
}

void Exchange::OnResponseHeadSeen(int status) {
  if (head_seen_ || !counted_) return;
  head_seen_ = true;
  Loop::CancelTimer(&try_timer_);
  if (status >= 500) {
    cluster_->CountFailure(static_cast<size_t>(server_), ServerFailure::k5xx);
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
  const bool reused = failed != nullptr && failed->reused();
  const bool sent = failed != nullptr && failed->reached_server();
  ServerFailure why = ServerFailure::kConnect;
  if (failed != nullptr && failed->tls_failed()) {
    why = ServerFailure::kTls;
  } else if (timed_out) {
    why = sent ? ServerFailure::kTimeout : ServerFailure::kConnectTimeout;
  } else if (sent) {
    why = got_response_bytes ? ServerFailure::kBadResponse : ServerFailure::kReset;
  }
  AttemptFailed(why, sent, got_response_bytes, reused);
}

void Exchange::AttemptFailed(ServerFailure why, bool sent, bool got_response_bytes, bool reused) {
  if (server_ >= 0) cluster_->CountFailure(static_cast<size_t>(server_), why);
  // A stale pooled connection says nothing about the server; a refusal,
  // reset or timeout does, and p2c should see it.
  if (counted_ && !reused && !head_seen_) {
    cluster_->RecordLatency(static_cast<size_t>(server_), Cluster::NowUs() - attempt_start_us_,
                            true);
    // Before the retry picks: a failure that ejects steers it elsewhere.
    cluster_->ReportFailure(static_cast<size_t>(server_));
  }
  EndAttempt();
  // Replaying is safe only when nothing of the response was seen, the whole
  // request is still in hand (no streamed body), and the backend cannot
  // have acted on it: an idempotent method, a request that never left (the
  // connect had not finished), or a pooled connection the backend had
  // closed. The response timeout (upstream_response_timeout_ms) bounds the
  // whole request and is never retried; a try timeout is.
  const bool stale = reused && !replayed_;
  bool can_retry = why != ServerFailure::kTimeout && !got_response_bytes && !request_.has_body &&
                   (stale || attempts_ < 2) && (request_.idempotent || !sent || stale);
  // A retry on another server is new load on the cluster: retry_budget
  // bounds it (a stale pooled connection's replay is not one).
  if (can_retry && !stale && !retrying_) {
    if (cluster_->TryStartRetry()) {
      retrying_ = true;
    } else {
      can_retry = false;
    }
  }
  if (can_retry) {
    if (stale) {
      // A stale pooled connection is replayed on a fresh one, maybe to the
      // same server: not a try of its own.
      replayed_ = true;
      --attempts_;
      return Attempt(-1);
    }
    cluster_->metrics().retries.Inc();
    cluster_->server_metrics(static_cast<size_t>(server_)).retries.Inc();
    // A refusing server is avoided.
    return Attempt(server_);
  }
  Fail(why == ServerFailure::kConnect || why == ServerFailure::kReset ||
               why == ServerFailure::kBadResponse || why == ServerFailure::kTls
           ? ExchangeFailure::kFailed
           : ExchangeFailure::kTimedOut,
       false);
}

void Exchange::OnAttemptAborted() {
  conn_ = nullptr;
  if (counted_) cluster_->CountFailure(static_cast<size_t>(server_), ServerFailure::kAborted);
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
  Loop::CancelTimer(&try_timer_);
  Leave();
  if (conn_ == nullptr) return;
  UpstreamConnection* c = conn_;
  conn_ = nullptr;
  EndAttempt();
  c->Abandon();
}

}  // namespace ktlb::upstream
