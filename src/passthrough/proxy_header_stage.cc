#include "ktlb/proxy_header_stage.h"

#include "ktlb/sockets.h"

namespace ktlb::passthrough {

void ProxyHeaderStage::Start(bool enabled, ListenerMetrics* metrics, ErrorLog* log,
                             const sockaddr_storage& socket_peer) {
  pending_ = enabled;
  received_ = false;
  metrics_ = metrics;
  log_ = log;
  // Only read on a failure; a listener without accept_proxy never gets one.
  if (enabled) socket_peer_ = socket_peer;
}

ProxyHeaderResult ProxyHeaderStage::Feed(std::string_view bytes) {
  received_ = received_ || !bytes.empty();
  ProxyHeaderResult r = ParseProxyHeader(bytes);
  if (r.status == ProxyHeaderStatus::kNeedMore) return r;
  pending_ = false;
  if (r.status == ProxyHeaderStatus::kFailed) Count(r.failure, r.error);
  return r;
}

void ProxyHeaderStage::Abandon(bool timed_out) {
  if (!pending_) return;
  pending_ = false;
  if (timed_out) {
    return Count(ProxyHeaderFailure::kTimeout, "not complete within the handshake timeout");
  }
  if (received_) Count(ProxyHeaderFailure::kTruncated, "the connection closed mid-header");
}

void ProxyHeaderStage::Count(ProxyHeaderFailure why, const char* error) {
  metrics_->proxy_header_failures[static_cast<size_t>(why)].Inc();
  log_->Log(ErrorLog::Level::kWarn, "proxy", "%s:%u: PROXY header refused: %s: %s",
            AddressIp(socket_peer_).c_str(), AddressPort(socket_peer_),
            ProxyHeaderFailureLabel(why), error);
}

}  // namespace ktlb::passthrough
