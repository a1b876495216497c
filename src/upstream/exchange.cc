#include "ktlb/exchange.h"

#include <utility>

#include "ktlb/cluster.h"
#include "upstream_connection.h"

namespace ktlb::upstream {

Exchange::~Exchange() { Abandon(); }

void Exchange::Start(Cluster* cluster, const ExchangeRequest& request, ExchangeSink* sink) {
  cluster_ = cluster;
  sink_ = sink;
  request_ = request;
  server_ = -1;
  attempts_ = 0;
  body_done_ = !request.has_body;
  Attempt(-1);
}

void Exchange::Attempt(int avoid_server) {
  ++attempts_;
  int picked = cluster_->Pick(avoid_server, request_.hash, request_.has_hash);
  if (picked < 0) {
    // No server may take it (all unhealthy or ejected): answer now, never
    // queue blind or wait out a connect timeout.
    retry_after_s_ = cluster_->RetryAfterSeconds();
    cluster_->metrics().no_server.Inc();
    return sink_->OnExchangeFailed(ExchangeFailure::kNoServer, false);
  }
  server_ = picked;
  const size_t server = static_cast<size_t>(picked);
  // A retry always opens a fresh connection: a pooled one may be just as stale.
  UpstreamConnection* c = cluster_->Connection(server, avoid_server < 0 && attempts_ == 1);
  if (c == nullptr) return OnAttemptFailed(false, false);
  conn_ = c;
  cluster_->metrics().requests.Inc();
  cluster_->AttemptStarted(server);
  counted_ = true;
  head_seen_ = false;
  attempt_start_us_ = Cluster::NowUs();
  c->Begin(this);
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
  if (can_retry) {
    if (!reused) cluster_->metrics().retries.Inc();
    // A stale pooled connection is retried on a fresh one, maybe the same
    // server; a refusing server is avoided.
    return Attempt(reused ? -1 : server_);
  }
  sink_->OnExchangeFailed(timed_out ? ExchangeFailure::kTimedOut : ExchangeFailure::kFailed, false);
}

void Exchange::OnAttemptAborted() {
  conn_ = nullptr;
  EndAttempt();
  sink_->OnExchangeFailed(ExchangeFailure::kFailed, true);
}

void Exchange::OnAttemptDone() {
  conn_ = nullptr;
  EndAttempt();
  sink_->OnResponseComplete();
}

void Exchange::OnAttemptUpgraded(UniqueFd backend, std::string_view already_read) {
  conn_ = nullptr;
  // The attempt is over for the balancer: a long-lived tunnel is not an
  // in-flight request (passthrough tunnels are not either).
  EndAttempt();
  sink_->OnUpgraded(std::move(backend), already_read);
}

void Exchange::SendBody(std::string_view bytes) {
  if (conn_ != nullptr) conn_->Send(bytes);
}

void Exchange::BodyProgress() {
  if (conn_ != nullptr) conn_->RequestBodyProgress();
}

size_t Exchange::RequestBacklog() const { return conn_ != nullptr ? conn_->SendBacklog() : 0; }

int Exchange::RequestSpliceFd() const { return conn_ != nullptr ? conn_->fd() : -1; }

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
  if (conn_ == nullptr) return;
  UpstreamConnection* c = conn_;
  conn_ = nullptr;
  EndAttempt();
  c->Abandon();
}

}  // namespace ktlb::upstream
