// Http1Connection after a 101: the connection becomes a WebSocketTunnel
// (any upgraded protocol) until either side ends it. The tunnel does the
// relaying; this file wires it to the connection's state, metrics and log.
#include <utility>

#include "http1_connection.h"
#include "worker.h"

namespace ktlb {

void Http1Connection::OnUpgraded(UniqueFd backend, std::string_view already_read) {
  // A request body still being spliced cannot go on as raw tunnel bytes: the
  // pipe may hold some of it. Upgrades with large bodies are not a thing.
  if (state_ != State::kProxying || !upgrade_requested_ || req_pipe_.active()) return CloseNow();
  WritePendingHead();  // the 101 goes before anything the backend sent after it
  if (state_ != State::kProxying) return;
  DeadlineQueue::Cancel(&timer_);
  DeadlineQueue::Cancel(&trim_timer_);
  // Whatever the client sends from here on (the rest of a body included) is
  // the new protocol's, passed on as it is; the connection never returns to
  // HTTP.
  req_body_done_ = true;
  resp_done_ = true;
  keep_alive_ = false;
  state_ = State::kTunnel;
  ListenerMetrics& m = gen_->listener_metrics(listener_);
  m.websocket_tunnels.Inc();
  m.websocket_tunnels_active.Inc();
  WebSocketTunnel::Options opts;
  opts.loop = &w_->loop();
  opts.idle_timeouts = &w_->metrics().timeouts[static_cast<size_t>(TimeoutKind::kTunnelIdle)];
  opts.idle_ms = gen_->config().server.timeouts.tunnel_idle_ms;
  tunnel_.Start(opts, this, &transport_, std::move(backend), already_read);
}

void Http1Connection::FinishTunnel(const char* error) {
  if (state_ != State::kTunnel) return;
  // Transport events no longer go to the tunnel; the connection closes.
  state_ = State::kProxying;
  tunnel_.Stop();
  ListenerMetrics& m = gen_->listener_metrics(listener_);
  m.websocket_tunnels_active.Dec();
  m.requests_by_class[1].Inc();
  resp_bytes_ += tunnel_.bytes_down();
  tunnel_bytes_up_ = static_cast<int64_t>(tunnel_.bytes_up());
  if (log_pending_) LogRequest(101, error);
  tunnel_bytes_up_ = -1;
}

void Http1Connection::OnTunnelEnded(const char* error, bool graceful) {
  FinishTunnel(error);
  if (graceful) {
    BeginClose();  // what the backend sent last reaches the client, then close_notify
  } else {
    CloseNow();
  }
}

void Http1Connection::OnTunnelReleased() { MaybeRelease(); }

}  // namespace ktlb
