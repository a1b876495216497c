// WebSocket over HTTP/2 (RFC 8441): an extended CONNECT stream (`:method
// CONNECT`, `:protocol websocket`) goes to the route's backend as an
// HTTP/1.1 upgrade (`GET` + `Upgrade` + `Connection: upgrade` + a
// Sec-WebSocket-Key ktlb makes up: the h2 side has no key/accept handshake).
// The backend's 101 becomes the stream's `:status 200`, and from then on
// the stream's DATA and the backend socket are relayed by an Http2Tunnel.
// Any other answer is passed on as the stream's response.
#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "http2_connection.h"
#include "worker.h"

namespace ktlb {

namespace {
// Backend bytes a tunnel stream may hold unsent before the backend is not
// read: the h2 peer's window, not our memory, decides beyond that.
constexpr size_t kTunnelDownMax = 256 * 1024;

bool IsWebSocket(std::string_view protocol) {
  if (protocol.size() != 9) return false;
  for (size_t i = 0; i < 9; ++i) {
    char c = protocol[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != "websocket"[i]) return false;
  }
  return true;
}
}  // namespace

void Http2Connection::PrepareTunnelRequest(Http2Stream* s) {
  s->tunnel_req = true;
  if (!IsWebSocket(s->request.protocol())) return;
  // RFC 6455 4.1: a fresh random 16-byte nonce, base64 (24 characters).
  unsigned char nonce[16];
  if (RAND_bytes(nonce, sizeof nonce) != 1) {
    for (size_t i = 0; i < sizeof nonce; ++i) nonce[i] = static_cast<unsigned char>(w_->now_ms() >> (i % 8));
  }
  std::string key;
  absl::Base64Escape(absl::string_view(reinterpret_cast<const char*>(nonce), sizeof nonce), &key);
  std::copy_n(key.data(), std::min(key.size(), sizeof s->ws_key - 1), s->ws_key);
  s->ws_key[sizeof s->ws_key - 1] = '\0';
  s->req_head.headers.push_back(
      http1::Header{"Sec-WebSocket-Key", std::string_view(s->ws_key, key.size())});
}

void Http2Connection::AcceptTunnelHead(Http2Stream* s, const http1::ResponseHead& head) {
  // The 101's end-to-end fields (Sec-WebSocket-Protocol, -Extensions...)
  // pass; Upgrade and Connection are hop-by-hop, and the accept hash
  // answers a key the client never sent.
  http1::ResponseHead ok = head;
  ok.status = 200;
  ok.body = http1::BodyKind::kNone;
  std::erase_if(ok.headers, [](const http1::Header& h) {
    return h.name.size() == 20 && std::equal(h.name.begin(), h.name.end(), "sec-websocket-accept",
                                             [](char a, char b) {
                                               return (a >= 'A' && a <= 'Z' ? a - 'A' + 'a' : a) == b;
                                             });
  });
  s->status = 200;
  s->tunnel = true;  // END_STREAM each way is a half-close from here on
  http2::BuildResponseFields(ok, &s->nv_storage, &s->nva);
  session_.SubmitResponse(s, s->nva, true);
  ScheduleSend();
}

void Http2Stream::OnUpgraded(UniqueFd backend, std::string_view already_read) {
  // A stream reset meanwhile lets the socket close.
  if (!tunnel_req || refused || !tunnel) return;
  conn->StartTunnel(this, std::move(backend), already_read);
}

void Http2Connection::StartTunnel(Http2Stream* s, UniqueFd backend,
                                  std::string_view already_read) {
  ListenerMetrics& m = gen_->listener_metrics(listener_);
  m.websocket_tunnels.Inc();
  m.websocket_tunnels_active.Inc();
  m.h2.websocket_tunnels.Inc();
  s->tunnel_live = true;
  Http2Tunnel::Options opts;
  opts.loop = &w_->loop();
  opts.idle_timeouts = &w_->metrics().timeouts[static_cast<size_t>(TimeoutKind::kTunnelIdle)];
  opts.idle_ms = gen_->config().server.timeouts.tunnel_idle_ms;
  s->relay.Start(opts, s, std::move(backend), already_read);
  if (!s->tunnel_live) return;
  // DATA the client sent before the 101 goes first.
  if (!s->early_body.empty()) {
    std::string early;
    early.swap(s->early_body);
    s->unconsumed += early.size();
    s->relay.SendUp(early);
  }
  if (s->request_ended) s->relay.EndUp();
}

void Http2Connection::EndTunnel(Http2Stream* s, const char* error) {
  if (!s->tunnel_live) return;
  s->tunnel_live = false;
  // A clean close may leave the client's last bytes (a WebSocket Close
  // frame) on their way to the backend: they go first.
  if (error == nullptr) {
    s->relay.Finish();
  } else {
    s->relay.Stop();
  }
  ListenerMetrics& m = gen_->listener_metrics(listener_);
  m.websocket_tunnels_active.Dec();
  CountResponse(200);
  if (s->log_pending) LogStream(s, 200, error);
}

void Http2Connection::OnTunnelReleased(Http2Stream* s) {
  // Still live: the stream closes later and goes to the pool then.
  auto it = std::find(draining_.begin(), draining_.end(), s);
  if (it == draining_.end()) return;
  draining_.erase(it);
  free_.push_back(std::unique_ptr<Http2Stream>(s));
  MaybeRelease();
}

// --- Http2Stream: the tunnel's host ---

bool Http2Stream::TunnelDownFull() const {
  if (unsent() >= kTunnelDownMax) return true;
  if (conn->BudgetAllows(this)) return false;
  budget_paused = true;
  return true;
}

void Http2Stream::OnTunnelDown(std::string_view bytes) {
  out.append(bytes);
  resp_bytes += bytes.size();
  conn->Buffered(this, bytes.size());
  conn->session().ResumeData(this);
  conn->ScheduleSend();
}

void Http2Stream::OnTunnelDownEnd() {
  out_eof = true;
  conn->session().ResumeData(this);
  conn->ScheduleSend();
}

void Http2Stream::OnTunnelUpSent(size_t n) {
  n = std::min(n, unconsumed);
  if (n == 0) return;
  unconsumed -= n;
  conn->session().ConsumeRequestData(this, n);
  conn->ScheduleSend();  // the WINDOW_UPDATE
}

void Http2Stream::OnTunnelFailed(const char* error) {
  // A backend reset is CONNECT_ERROR (RFC 9113 8.5); an idle tunnel is cancelled.
  const bool idle = std::string_view(error) == "tunnel_idle";
  conn->EndTunnel(this, error);
  conn->session().ResetStream(this, idle ? NGHTTP2_CANCEL : NGHTTP2_CONNECT_ERROR);
  conn->ScheduleSend();
}

void Http2Stream::OnTunnelReleased() { conn->OnTunnelReleased(this); }

}  // namespace ktlb
