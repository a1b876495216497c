// One HTTP/2 stream of an Http2Connection: its request goes upstream as an
// HTTP/1.1 exchange (head, body with flow control, trailers), and the
// exchange's answer comes back through Http2Stream, the exchange's sink,
// as HEADERS, DATA and trailers. Also ktlb's own answers (404, 502, 503...)
// and the stream's access-log line.
#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "client_cert.h"
#include "http2_connection.h"
#include "ktlb/request_hash.h"
#include "worker.h"

namespace ktlb {

namespace {
int StatusClass(int status) { return status >= 100 && status < 600 ? status / 100 : 5; }
}  // namespace

void Http2Connection::StartExchange(Http2Stream* s) {
  if (s->refused) return;
  s->start_ms = w_->now_ms();
  s->log_pending = w_->access_log().enabled();
  s->request.ToRequestHead(&s->req_head);
  // Plain CONNECT (a TCP tunnel to any host) is not offered; RFC 8441's
  // extended CONNECT is a WebSocket (or other upgrade) to the route's backend.
  if (s->request.is_connect() && !s->request.is_extended_connect()) {
    return RespondError(s, 501, "connect_unsupported");
  }
  if (s->request.is_extended_connect()) PrepareTunnelRequest(s);
  std::string_view target = s->req_head.target;
  std::string_view path = target.substr(0, target.find('?'));
  const RouteMatch route =
      gen_->router().MatchRoute(listener_, transport_->info().sni, s->req_head.host, path);
  const int upstream = route.upstream;
  if (upstream < 0) return RespondError(s, 404, "no_route");
  if (ClientCertRequiredButMissing(route, transport_->info())) {
    return RespondError(s, 403, "client_cert_required");
  }

  s->up_head.clear();
  http1::ForwardingInfo fwd;
  fwd.client_ip = peer_ip_;
  fwd.client_port = peer_port_;
  fwd.sni = transport_->info().sni;
  AddClientCert(gen_->config().listeners[listener_], transport_->info(), &fwd);
  http1::BuildUpstreamRequestHead(s->req_head, fwd, &s->up_head);
  s->chunked_up = s->req_head.body == http1::BodyKind::kChunked;

  upstream::Cluster* cluster = gen_->cluster(static_cast<size_t>(upstream));
  s->cluster = cluster;
  upstream::ExchangeRequest req;
  req.head = s->up_head;
  req.is_head = s->req_head.is_head;
  req.has_body = s->req_head.body != http1::BodyKind::kNone;
  req.idempotent = s->req_head.idempotent;
  req.decode_body = true;
  req.upgrade = s->tunnel_req;
  if (const HashKeyConfig* key = cluster->hash_key()) {
    upstream::RequestHasher hasher(*key);
    hasher.ClientIp(peer_ip_);
    if (hasher.wants_headers()) {
      for (const http1::Header& h : s->req_head.headers) hasher.Header(h.name, h.value);
    }
    req.hash = hasher.hash();
    req.has_hash = hasher.found();
  }
  s->exchange_started = true;
  s->exchange.Start(cluster, req, s);
  // A tunnel's early DATA waits for the 101 (StartTunnel): it is not a body.
  if (!s->early_body.empty() && !s->tunnel_req) {
    std::string early;
    early.swap(s->early_body);
    SendBodyUpstream(s, early);
  }
  if (s->request_ended) EndBodyUpstream(s);
}

void Http2Connection::OnRequestData(http2::Stream* stream, std::string_view data) {
  auto* s = static_cast<Http2Stream*>(stream);
  if (s->tunnel_live) {
    s->unconsumed += data.size();  // given back as the backend takes it
    s->relay.SendUp(data);
    return;
  }
  if (s->tunnel_req && !s->discard_body) {
    // Before the backend's 101: held, bounded by the stream's window.
    s->early_body.append(data);
    return;
  }
  if (!s->exchange_started && !s->discard_body) {
    // Bounded by the stream's window: nothing is given back until the
    // backend takes it.
    s->early_body.append(data);
    return;
  }
  SendBodyUpstream(s, data);
}

void Http2Connection::SendBodyUpstream(Http2Stream* s, std::string_view data) {
  if (data.empty()) return;  // a zero-size chunk would end the chunked body
  if (s->discard_body || !s->exchange.active()) {
    session_.ConsumeRequestData(s, data.size() + s->unconsumed);
    s->unconsumed = 0;
    ScheduleSend();
    return;
  }
  if (s->chunked_up) {
    char size_line[24];
    int n = std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
    s->exchange.SendBody(std::string_view(size_line, static_cast<size_t>(n)));
    s->exchange.SendBody(data);
    s->exchange.SendBody("\r\n");
  } else {
    s->exchange.SendBody(data);
  }
  s->exchange.BodyProgress();
  s->unconsumed += data.size();
  ConsumeBody(s);
}

void Http2Connection::ConsumeBody(Http2Stream* s) {
  if (s->unconsumed == 0) return;
  if (s->exchange.active() && s->exchange.RequestBacklog() >= upstream::kMaxRequestBacklog) return;
  session_.ConsumeRequestData(s, s->unconsumed);
  s->unconsumed = 0;
  ScheduleSend();  // the WINDOW_UPDATE
}

void Http2Connection::OnRequestEnd(http2::Stream* stream) {
  auto* s = static_cast<Http2Stream*>(stream);
  if (s->tunnel_live) return s->relay.EndUp();
  if (s->exchange_started) EndBodyUpstream(s);
}

void Http2Connection::EndBodyUpstream(Http2Stream* s) {
  if (s->body_closed || s->discard_body || !s->exchange.active()) return;
  if (s->req_head.body == http1::BodyKind::kNone) return;
  s->body_closed = true;
  if (s->chunked_up) {
    // The last chunk carries the request's trailers.
    std::string end = "0\r\n";
    for (const http1::Header& h : s->request.trailers()) {
      if (h.name == "host" || h.name == "content-length" || h.name == "te" || h.name == "trailer") {
        continue;
      }
      end.append(h.name).append(": ").append(h.value).append("\r\n");
    }
    end.append("\r\n");
    s->exchange.SendBody(end);
  }
  s->exchange.EndBody();
}

void Http2Connection::RespondError(Http2Stream* s, int status, const char* error,
                                   uint32_t retry_after_s) {
  s->discard_body = true;
  s->exchange.Abandon();
  if (s->unconsumed + s->early_body.size() > 0) {
    session_.ConsumeRequestData(s, s->unconsumed + s->early_body.size());
    s->unconsumed = 0;
  }
  s->early_body.clear();
  s->status = status;
  Unbuffer(s->unsent());
  s->out.clear();
  s->out_off = 0;
  absl::StrAppend(&s->out, status, " ");
  s->out.append(http1::ReasonPhrase(status)).push_back('\n');
  Buffered(s, s->out.size());
  s->out_eof = true;
  s->resp_bytes = s->out.size();
  http2::BuildErrorFields(status, s->out.size(), retry_after_s, &s->nv_storage, &s->nva);
  session_.SubmitResponse(s, s->nva, true);
  CountResponse(status);
  FinishStream(s, status, error);
  ScheduleSend();
}

void Http2Connection::CountResponse(int status) {
  gen_->listener_metrics(listener_).requests_by_class[StatusClass(status)].Inc();
}

void Http2Connection::FinishStream(Http2Stream* s, int status, const char* error) {
  if (s->log_pending) LogStream(s, status, error);
}

void Http2Connection::LogStream(Http2Stream* s, int status, const char* error) {
  s->log_pending = false;
  std::string* out = w_->access_log().BeginLine(
      w_->log_time(), gen_->config().listeners[listener_].name, peer_ip_, peer_port_,
      transport_->info().sni);
  if (out == nullptr) return;
  out->append(",\"method\":\"");
  AppendJsonEscaped(out, s->request.method());
  out->append("\",\"target\":\"");
  AppendJsonEscaped(out, s->request.path().substr(0, 4096));
  out->append("\",\"host\":\"");
  AppendJsonEscaped(out, s->request.authority());
  absl::StrAppend(out, "\",\"version\":\"2\",\"status\":", status, ",\"bytes\":", s->resp_bytes,
                  ",\"ms\":", w_->now_ms() - s->start_ms);
  std::string_view upstream, server;
  if (s->cluster != nullptr) {
    upstream = s->cluster->name();
    int sv = s->exchange.cluster() == s->cluster ? s->exchange.server() : -1;
    if (sv >= 0 && static_cast<size_t>(sv) < s->cluster->size()) {
      server = s->cluster->server(static_cast<size_t>(sv)).address.text;
    }
  }
  w_->access_log().EndLine(out, upstream, server, error);
}

// --- Http2Stream: the exchange's sink ---

void Http2Stream::OnResponseHead(const http1::ResponseHead& h) {
  if (refused) return;
  if (h.status == 101 && tunnel_req) return conn->AcceptTunnelHead(this, h);
  if (tunnel_req && h.status >= 200) {
    // The backend refused the upgrade: its answer is the stream's, and
    // DATA the client sent for the tunnel is dropped.
    discard_body = true;
    conn->session().ConsumeRequestData(this, early_body.size());
    early_body.clear();
  }
  if (h.status < 200) {
    // 101 has no meaning in HTTP/2; other interim responses pass.
    if (h.status == 101) return;
    http2::BuildResponseFields(h, &nv_storage, &nva);
    conn->session().SubmitInterim(this, nva);
    conn->ScheduleSend();
    return;
  }
  status = h.status;
  const bool has_body = h.body != http1::BodyKind::kNone && !req_head.is_head;
  http2::BuildResponseFields(h, &nv_storage, &nva);
  conn->session().SubmitResponse(this, nva, has_body);
  conn->ScheduleSend();
}

void Http2Stream::OnResponseBody(std::string_view bytes) {
  if (refused) return;
  out.append(bytes);
  resp_bytes += bytes.size();
  conn->Buffered(this, bytes.size());
  conn->session().ResumeData(this);
  conn->ScheduleSend();
}

void Http2Stream::OnResponseTrailers(const std::vector<http1::Header>& trailers) {
  if (refused) return;
  http2::BuildTrailerFields(trailers, &trailer_storage, &trailer_nva);
}

void Http2Stream::OnResponseComplete() {
  if (refused) return;
  out_eof = true;
  conn->session().ResumeData(this);
  if (!request_ended) {
    // The backend answered before the body ended: the rest is dropped.
    discard_body = true;
    conn->ConsumeBody(this);
  }
  conn->FinishStream(this, status, nullptr);
  conn->CountResponse(status);
  conn->ScheduleSend();
}

void Http2Stream::OnExchangeFailed(upstream::ExchangeFailure why, bool response_started) {
  if (refused) return;
  if (!response_started) {
    if (why == upstream::ExchangeFailure::kNoServer) {
      return conn->RespondError(this, 503, "no_server", exchange.retry_after_s());
    }
    if (why == upstream::ExchangeFailure::kQueueTimeout) {
      return conn->RespondError(this, 503, "queue_timeout", exchange.retry_after_s());
    }
    const bool timed_out = why == upstream::ExchangeFailure::kTimedOut;
    return conn->RespondError(this, timed_out ? 504 : 502,
                              timed_out ? "upstream_timeout" : "upstream_failed");
  }
  conn->FinishStream(this, status, "aborted");
  conn->session().ResetStream(this, NGHTTP2_INTERNAL_ERROR);
  conn->ScheduleSend();
}

void Http2Stream::OnRequestWritable() { conn->ConsumeBody(this); }

size_t Http2Stream::ResponseBacklog() const {
  if (conn->BudgetAllows(this)) return unsent();
  // The connection's budget is spent: this stream waits until it frees up.
  budget_paused = true;
  return upstream::kMaxResponseBacklog;
}

bool Http2Stream::TakesResponsePipe() const { return !refused && conn->splices_data(); }

void Http2Stream::OnResponsePiped() {
  if (refused) return;
  conn->session().ResumeData(this);
  conn->ScheduleSend();
}

}  // namespace ktlb
