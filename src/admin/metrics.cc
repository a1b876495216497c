#include "ktlb/metrics.h"

#include <deque>
#include <initializer_list>
#include <utility>

#include "absl/strings/str_cat.h"
#include "ktlb/deadline_queue.h"

namespace ktlb {

const char* TimeoutKindLabel(TimeoutKind k) {
  switch (k) {
    case TimeoutKind::kHandshake: return "handshake";
    case TimeoutKind::kRequestHeader: return "request_header";
    case TimeoutKind::kKeepalive: return "keepalive";
    case TimeoutKind::kUpstreamConnect: return "upstream_connect";
    case TimeoutKind::kUpstreamResponse: return "upstream_response";
    case TimeoutKind::kDrain: return "drain";
    case TimeoutKind::kTunnelIdle: return "tunnel_idle";
    case TimeoutKind::kSend: return "send";
    case TimeoutKind::kUpstreamTry: return "upstream_try";
    case TimeoutKind::kCount: break;
  }
  return "unknown";
}

const char* ServerFailureLabel(ServerFailure f) {
  switch (f) {
    case ServerFailure::kConnect: return "connect";
    case ServerFailure::kConnectTimeout: return "connect_timeout";
    case ServerFailure::kTimeout: return "timeout";
    case ServerFailure::kTryTimeout: return "try_timeout";
    case ServerFailure::kReset: return "reset";
    case ServerFailure::kBadResponse: return "bad_response";
    case ServerFailure::kTls: return "tls";
    case ServerFailure::kAborted: return "aborted";
    case ServerFailure::k5xx: return "5xx";
    case ServerFailure::kCount: break;
  }
  return "unknown";
}

MetricsRegistry::MetricsRegistry(MetricsLabels labels, size_t workers) : labels_(std::move(labels)) {
  for (size_t i = 0; i < workers; ++i) {
    auto w = std::make_unique<WorkerMetrics>();
    w->listeners.resize(labels_.listeners.size());
    w->upstreams.resize(labels_.upstreams.size());
    workers_.push_back(std::move(w));
  }
}

size_t MetricsRegistry::Slot(std::vector<std::string>* names, std::string_view name) {
  for (size_t i = 0; i < names->size(); ++i) {
    if ((*names)[i] == name) return i;
  }
  names->emplace_back(name);
  return names->size() - 1;
}

template <typename M>
M& MetricsRegistry::Register(std::vector<std::string>* names,
                             std::deque<M> WorkerMetrics::*list, size_t worker,
                             std::string_view name) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t slot = Slot(names, name);
  std::deque<M>& metrics = (*workers_[worker]).*list;
  while (metrics.size() <= slot) metrics.emplace_back();
  return metrics[slot];
}

ListenerMetrics& MetricsRegistry::Listener(size_t worker, std::string_view name) {
  return Register(&labels_.listeners, &WorkerMetrics::listeners, worker, name);
}

UpstreamMetrics& MetricsRegistry::Upstream(size_t worker, std::string_view name) {
  return Register(&labels_.upstreams, &WorkerMetrics::upstreams, worker, name);
}

UpstreamHealthMetrics& MetricsRegistry::UpstreamHealth(std::string_view name) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t slot = Slot(&labels_.upstreams, name);
  while (health_.size() <= slot) health_.emplace_back();
  health_[slot].checked = true;
  return health_[slot];
}

size_t MetricsRegistry::ServerSlot(size_t upstream_slot, std::string_view server) {
  if (server_names_.size() <= upstream_slot) server_names_.resize(upstream_slot + 1);
  return Slot(&server_names_[upstream_slot], server);
}

ServerMetrics& MetricsRegistry::Server(size_t worker, std::string_view upstream,
                                       std::string_view server) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t u = Slot(&labels_.upstreams, upstream);
  const size_t s = ServerSlot(u, server);
  std::deque<UpstreamMetrics>& ups = workers_[worker]->upstreams;
  while (ups.size() <= u) ups.emplace_back();
  std::deque<ServerMetrics>& servers = ups[u].servers;
  while (servers.size() <= s) servers.emplace_back();
  return servers[s];
}

ServerHealthMetrics& MetricsRegistry::ServerHealth(std::string_view upstream,
                                                   std::string_view server) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t u = Slot(&labels_.upstreams, upstream);
  const size_t s = ServerSlot(u, server);
  while (health_.size() <= u) health_.emplace_back();
  std::deque<ServerHealthMetrics>& servers = health_[u].servers;
  while (servers.size() <= s) servers.emplace_back();
  servers[s].checked = true;
  return servers[s];
}

UpstreamDnsMetrics& MetricsRegistry::UpstreamDns(std::string_view name) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t slot = Slot(&labels_.upstreams, name);
  while (dns_.size() <= slot) dns_.emplace_back();
  dns_[slot].used = true;
  return dns_[slot];
}

namespace {

// Sums one counter over every worker. `pick` gives a worker's counter, or
// nullptr where that worker has none.
template <typename F>
uint64_t Sum(const std::vector<std::unique_ptr<WorkerMetrics>>& ws, F&& pick) {
  uint64_t total = 0;
  for (const auto& w : ws) {
    if (const Counter* c = pick(*w)) total += c->Get();
  }
  return total;
}

// Sums one counter of listener (or upstream) `slot` over the workers that
// have registered it: `list` is &WorkerMetrics::listeners (or ::upstreams),
// and `pick` takes that slot's metrics to the counter. A worker that never
// registered the name has no entry for it (its deque is shorter).
template <typename M, typename F>
uint64_t SumSlot(const std::vector<std::unique_ptr<WorkerMetrics>>& ws,
                 const std::deque<M> WorkerMetrics::*list, size_t slot, F&& pick) {
  return Sum(ws, [&](const WorkerMetrics& w) -> const Counter* {
    const std::deque<M>& metrics = w.*list;
    return slot < metrics.size() ? &pick(metrics[slot]) : nullptr;
  });
}

void Family(std::string* out, const char* name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

std::string MetricsRegistry::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  const auto& L = labels_.listeners;
  auto per_listener = [&](const char* name, const char* type, const char* help,
                          auto pick) {
    Family(&out, name, type, help);
    for (size_t i = 0; i < L.size(); ++i) {
      absl::StrAppend(&out, name, "{listener=\"", L[i], "\"} ",
                      SumSlot(workers_, &WorkerMetrics::listeners, i, pick),
                      "\n");
    }
  };
  per_listener("ktlb_connections_accepted_total", "counter", "TCP connections accepted.",
               [](const ListenerMetrics& m) -> const Counter& { return m.accepted; });
  per_listener("ktlb_connections_active", "gauge", "Client connections open now.",
               [](const ListenerMetrics& m) -> const Counter& { return m.active; });
  per_listener("ktlb_client_resets_total", "counter", "Client connections reset mid-exchange.",
               [](const ListenerMetrics& m) -> const Counter& { return m.client_resets; });
  per_listener("ktlb_tls_protocol_errors_total", "counter",
               "Fatal TLS errors after the handshake (an alert was sent, then the close).",
               [](const ListenerMetrics& m) -> const Counter& { return m.tls.protocol_errors; });

  Family(&out, "ktlb_tls_handshakes_total", "counter", "Completed TLS handshakes by kind.");
  for (size_t i = 0; i < L.size(); ++i) {
    absl::StrAppend(&out, "ktlb_tls_handshakes_total{listener=\"", L[i], "\",kind=\"full\"} ",
                    SumSlot(workers_, &WorkerMetrics::listeners, i,
                            [](const ListenerMetrics& m) -> const Counter& {
                              return m.tls.handshakes_full;
                            }),
                    "\n");
    absl::StrAppend(&out, "ktlb_tls_handshakes_total{listener=\"", L[i], "\",kind=\"resumed\"} ",
                    SumSlot(workers_, &WorkerMetrics::listeners, i,
                            [](const ListenerMetrics& m) -> const Counter& {
                              return m.tls.handshakes_resumed;
                            }),
                    "\n");
  }

  // A listener's counters indexed by an enum, one series per labelled value:
  // {listener="...",<key>="<label>"}.
  auto by_label = [&](const char* name, const char* help, const char* key,
                      const std::vector<const char*>& labels, auto pick) {
    Family(&out, name, "counter", help);
    for (size_t i = 0; i < L.size(); ++i) {
      for (size_t r = 0; r < labels.size() && r < kMaxReasons; ++r) {
        if (labels[r] == nullptr) continue;
        uint64_t v = SumSlot(workers_, &WorkerMetrics::listeners, i,
                             [&](const ListenerMetrics& m) -> const Counter& {
                               return pick(m)[r];
                             });
        absl::StrAppend(&out, name, "{listener=\"", L[i], "\",", key, "=\"", labels[r], "\"} ",
                        v, "\n");
      }
    }
  };
  auto reasons = [&](const char* name, const char* help, const std::vector<const char*>& labels,
                     auto pick) { by_label(name, help, "reason", labels, pick); };
  by_label("ktlb_tls_resumptions_total",
           "Resumed TLS handshakes by the keys that opened the session ticket: a ticket_keys "
           "file, or keys ktlb generated in-process.",
           "source", labels_.ticket_sources,
           [](const ListenerMetrics& m) -> const auto& { return m.tls.resumptions; });
  reasons("ktlb_tls_handshake_failures_total", "Failed TLS handshakes by reason.",
          labels_.handshake_failures,
          [](const ListenerMetrics& m) -> const auto& { return m.tls.handshake_failures; });
  reasons("ktlb_http_parse_errors_total", "Refused HTTP requests by reason.", labels_.parse_errors,
          [](const ListenerMetrics& m) -> const auto& { return m.parse_errors; });

  Family(&out, "ktlb_http_requests_total", "counter", "Responses sent to clients by status class.");
  for (size_t i = 0; i < L.size(); ++i) {
    for (int c = 1; c <= 5; ++c) {
      absl::StrAppend(&out, "ktlb_http_requests_total{listener=\"", L[i], "\",class=\"", c, "xx\"} ",
                      SumSlot(workers_, &WorkerMetrics::listeners, i,
                              [&](const ListenerMetrics& m) -> const Counter& {
                                return m.requests_by_class[c];
                              }),
                      "\n");
    }
  }

  per_listener("ktlb_ktls_tx_total", "counter", "Connections with kernel TLS transmit offload.",
               [](const ListenerMetrics& m) -> const Counter& { return m.tls.ktls_tx; });
  per_listener("ktlb_ktls_rx_total", "counter", "Connections with kernel TLS receive offload.",
               [](const ListenerMetrics& m) -> const Counter& { return m.tls.ktls_rx; });
  per_listener("ktlb_ktls_ssl_released_total", "counter",
               "Connections whose OpenSSL state was freed once both directions were in the kernel.",
               [](const ListenerMetrics& m) -> const Counter& { return m.tls.ktls_ssl_released; });
  per_listener("ktlb_spliced_bytes_total", "counter",
               "Body bytes spliced between a backend and a kTLS client socket, both directions (never copied to userspace).",
               [](const ListenerMetrics& m) -> const Counter& { return m.bytes_spliced; });
  per_listener("ktlb_websocket_tunnels_total", "counter",
               "HTTP/1.1 upgrades (WebSocket) the backend accepted with 101: tunnels opened.",
               [](const ListenerMetrics& m) -> const Counter& { return m.websocket_tunnels; });
  per_listener("ktlb_websocket_tunnels_active", "gauge", "Upgrade tunnels open now.",
               [](const ListenerMetrics& m) -> const Counter& { return m.websocket_tunnels_active; });
  per_listener("ktlb_ktls_keyupdates_total", "counter",
               "TLS 1.3 KeyUpdates received on kTLS RX sockets.",
               [](const ListenerMetrics& m) -> const Counter& { return m.tls.ktls_keyupdates; });
  per_listener("ktlb_ktls_rekeys_total", "counter",
               "KeyUpdates after which the kernel took the new keys (kernels that can rekey).",
               [](const ListenerMetrics& m) -> const Counter& { return m.tls.ktls_rekeys; });
  reasons("ktlb_ktls_keyupdate_closes_total",
          "Connections closed after a peer KeyUpdate on a kTLS connection, by reason.",
          labels_.keyupdate_closes,
          [](const ListenerMetrics& m) -> const auto& { return m.tls.ktls_keyupdate_closes; });
  reasons("ktlb_ktls_fallbacks_total", "Connections left in userspace TLS, by reason.",
          labels_.ktls_fallbacks,
          [](const ListenerMetrics& m) -> const auto& { return m.tls.ktls_fallbacks; });
  reasons("ktlb_passthrough_hello_failures_total",
          "Passthrough connections closed because their first bytes were not a usable ClientHello.",
          labels_.hello_failures,
          [](const ListenerMetrics& m) -> const auto& { return m.passthrough_hello_failures; });
  reasons("ktlb_proxy_header_failures_total",
          "Connections to accept_proxy listeners closed because their PROXY protocol header was "
          "missing, invalid, cut short or late.",
          labels_.proxy_header_failures,
          [](const ListenerMetrics& m) -> const auto& { return m.proxy_header_failures; });
  per_listener("ktlb_h2_connections_total", "counter", "Client connections that chose HTTP/2 (ALPN h2).",
               [](const ListenerMetrics& m) -> const Counter& { return m.h2.connections; });
  per_listener("ktlb_h2_streams_total", "counter", "HTTP/2 request streams opened by clients.",
               [](const ListenerMetrics& m) -> const Counter& { return m.h2.streams; });
  per_listener("ktlb_h2_websocket_tunnels_total", "counter",
               "HTTP/2 extended CONNECT streams (RFC 8441 WebSocket) the backend accepted with 101.",
               [](const ListenerMetrics& m) -> const Counter& { return m.h2.websocket_tunnels; });
  per_listener("ktlb_h2_response_buffered_bytes", "gauge",
               "Response bytes HTTP/2 streams hold for clients that have not taken them yet.",
               [](const ListenerMetrics& m) -> const Counter& { return m.h2.response_buffered; });
  reasons("ktlb_h2_refused_streams_total",
          "HTTP/2 requests refused as malformed (RST_STREAM PROTOCOL_ERROR), by RFC 9113 rule.",
          labels_.h2_refusals,
          [](const ListenerMetrics& m) -> const auto& { return m.h2.refused; });
  reasons("ktlb_h2_stream_resets_by_client_total",
          "HTTP/2 streams the client reset, by error code.", labels_.h2_error_codes,
          [](const ListenerMetrics& m) -> const auto& { return m.h2.resets_by_client; });
  reasons("ktlb_h2_stream_resets_by_ktlb_total",
          "HTTP/2 streams ktlb reset, by error code.", labels_.h2_error_codes,
          [](const ListenerMetrics& m) -> const auto& { return m.h2.resets_by_ktlb; });
  reasons("ktlb_h2_goaways_sent_total", "HTTP/2 GOAWAY frames sent, by error code.",
          labels_.h2_error_codes,
          [](const ListenerMetrics& m) -> const auto& { return m.h2.goaways; });
  reasons("ktlb_h2_glitches_total",
          "HTTP/2 client misbehaviour charged to the connection's abuse budget, by kind.",
          labels_.h2_glitches,
          [](const ListenerMetrics& m) -> const auto& { return m.h2.glitches; });
  reasons("ktlb_h2_glitch_budget_exhausted_total",
          "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM, by the glitch that ended the budget.",
          labels_.h2_glitches,
          [](const ListenerMetrics& m) -> const auto& { return m.h2.budget_exhausted; });
  per_listener("ktlb_passthrough_no_route_total", "counter",
               "Passthrough connections closed because no route matched their SNI.",
               [](const ListenerMetrics& m) -> const Counter& { return m.passthrough_no_route; });
  per_listener("ktlb_passthrough_bytes_up_total", "counter",
               "Bytes relayed client -> backend on passthrough listeners (spliced, never copied).",
               [](const ListenerMetrics& m) -> const Counter& { return m.passthrough_bytes_up; });
  per_listener("ktlb_passthrough_bytes_down_total", "counter",
               "Bytes relayed backend -> client on passthrough listeners (spliced, never copied).",
               [](const ListenerMetrics& m) -> const Counter& { return m.passthrough_bytes_down; });

  const auto& U = labels_.upstreams;
  auto per_upstream = [&](const char* name, const char* help, auto pick,
                          const char* type = "counter") {
    Family(&out, name, type, help);
    for (size_t i = 0; i < U.size(); ++i) {
      absl::StrAppend(&out, name, "{upstream=\"", U[i], "\"} ",
                      SumSlot(workers_, &WorkerMetrics::upstreams, i, pick),
                      "\n");
    }
  };
  per_upstream("ktlb_upstream_requests_total", "Requests sent upstream.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.requests; });
  per_upstream("ktlb_upstream_connect_failures_total", "Upstream connects that failed.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.connect_failures; });
  per_upstream("ktlb_upstream_timeouts_total", "Upstream connect or response timeouts.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.timeouts; });
  per_upstream("ktlb_upstream_retries_total", "Requests retried on another server.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.retries; });
  per_upstream("ktlb_upstream_resets_total", "Upstream connections reset or closed early.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.resets; });
  per_upstream("ktlb_upstream_in_flight", "Requests (passthrough: tunnels) on a server now.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.in_flight; }, "gauge");
  per_upstream("ktlb_upstream_ejections_total",
               "Servers ejected after consecutive failures (passive health, counted per worker).",
               [](const UpstreamMetrics& m) -> const Counter& { return m.ejections; });
  per_upstream("ktlb_upstream_no_server_total",
               "Requests answered 503 because every server was unhealthy or ejected.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.no_server; });
  per_upstream("ktlb_upstream_queued_total",
               "Requests that waited for a connection: every server at max_conns_per_server.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.queued; });
  per_upstream("ktlb_upstream_queue_timeouts_total",
               "Requests answered 503 after queue_timeout_ms in the queue, or finding it full.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.queue_timeouts; });
  per_upstream("ktlb_upstream_retries_budget_exhausted_total",
               "Retries not made because retry_budget was used up.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.retries_budget_exhausted; });
  // Upstream TLS: {upstream, <key>=<label>} series from a few counters each.
  auto upstream_by = [&](const char* name, const char* help, const char* key,
                         std::initializer_list<std::pair<const char*, const Counter UpstreamMetrics::*>>
                             series) {
    Family(&out, name, "counter", help);
    for (size_t i = 0; i < U.size(); ++i) {
      for (const auto& entry : series) {
        // Named, not a structured binding: clang 14 cannot capture those.
        const char* label = entry.first;
        const Counter UpstreamMetrics::*member = entry.second;
        absl::StrAppend(&out, name, "{upstream=\"", U[i], "\",", key, "=\"", label, "\"} ",
                        SumSlot(workers_, &WorkerMetrics::upstreams, i,
                                [member](const UpstreamMetrics& m) -> const Counter& {
                                  return m.*member;
                                }),
                        "\n");
      }
    }
  };
  upstream_by("ktlb_upstream_tls_failures_total",
              "Upstream attempts failed in the TLS handshake to the server, by stage: the "
              "server's certificate refused (upstream_tls_verify), or any other failure.",
              "stage",
              {{"upstream_tls_verify", &UpstreamMetrics::tls_verify_failures},
               {"upstream_tls_handshake", &UpstreamMetrics::tls_handshake_failures}});
  Family(&out, "ktlb_upstream_tls_handshakes_total", "counter",
         "Completed TLS handshakes to upstream servers by kind (resumed: a cached session).");
  for (size_t i = 0; i < U.size(); ++i) {
    for (bool resumed : {false, true}) {
      absl::StrAppend(&out, "ktlb_upstream_tls_handshakes_total{upstream=\"", U[i], "\",kind=\"",
                      resumed ? "resumed" : "full", "\"} ",
                      SumSlot(workers_, &WorkerMetrics::upstreams, i,
                              [resumed](const UpstreamMetrics& m) -> const Counter& {
                                return resumed ? m.tls.handshakes_resumed : m.tls.handshakes_full;
                              }),
                      "\n");
    }
  }
  per_upstream("ktlb_upstream_ktls_tx_total", "Upstream TLS connections with kernel TLS transmit offload.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.tls.ktls_tx; });
  per_upstream("ktlb_upstream_ktls_rx_total", "Upstream TLS connections with kernel TLS receive offload.",
               [](const UpstreamMetrics& m) -> const Counter& { return m.tls.ktls_rx; });
  RenderHealth(&out);
  RenderServers(&out);
  RenderDns(&out);
  RenderConfig(&out);

  Family(&out, "ktlb_error_log_lines_total", "counter",
         "Lines the workers' error logs were given (printed or not).");
  absl::StrAppend(&out, "ktlb_error_log_lines_total ",
                  Sum(workers_, [](const WorkerMetrics& w) { return &w.log_lines; }),
                  "\n");
  Family(&out, "ktlb_error_log_lines_suppressed_total", "counter",
         "Error log lines kept from stderr by the rate limit (5/s, bursts of 20, per worker).");
  absl::StrAppend(&out, "ktlb_error_log_lines_suppressed_total ",
                  Sum(workers_, [](const WorkerMetrics& w) { return &w.log_lines_suppressed; }),
                  "\n");

  Family(&out, "ktlb_timeouts_total", "counter", "Timeouts fired, by kind.");
  for (size_t k = 0; k < static_cast<size_t>(TimeoutKind::kCount); ++k) {
    absl::StrAppend(&out, "ktlb_timeouts_total{kind=\"", TimeoutKindLabel(static_cast<TimeoutKind>(k)),
                    "\"} ",
                    Sum(workers_, [&](const WorkerMetrics& w) { return &w.timeouts[k]; }),
                    "\n");
  }
  return out;
}

void MetricsRegistry::RenderServers(std::string* out) const {
  const auto& U = labels_.upstreams;
  // Sums one counter of server `s` of upstream `u` over the workers that
  // registered it.
  auto sum = [&](size_t u, size_t s, auto pick) {
    return Sum(workers_, [&](const WorkerMetrics& w) -> const Counter* {
      if (u >= w.upstreams.size() || s >= w.upstreams[u].servers.size()) return nullptr;
      return &pick(w.upstreams[u].servers[s]);
    });
  };
  auto labels = [&](size_t u, size_t s) {
    return absl::StrCat("upstream=\"", U[u], "\",server=\"", server_names_[u][s], "\"");
  };
  auto each = [&](auto fn) {
    for (size_t u = 0; u < server_names_.size() && u < U.size(); ++u) {
      for (size_t s = 0; s < server_names_[u].size(); ++s) fn(u, s);
    }
  };
  auto simple = [&](const char* name, const char* type, const char* help, auto pick) {
    Family(out, name, type, help);
    each([&](size_t u, size_t s) {
      absl::StrAppend(out, name, "{", labels(u, s), "} ", sum(u, s, pick), "\n");
    });
  };
  simple("ktlb_upstream_server_requests_total", "counter",
         "Attempts started on a server (a retry counts on the server it went to; passthrough: "
         "tunnels).",
         [](const ServerMetrics& m) -> const Counter& { return m.requests; });
  simple("ktlb_upstream_server_in_flight", "gauge", "Attempts (passthrough: tunnels) on a server now.",
         [](const ServerMetrics& m) -> const Counter& { return m.in_flight; });
  Family(out, "ktlb_upstream_server_failures_total", "counter",
         "Failed attempts on a server, by reason (connect, connect_timeout, timeout, try_timeout, "
         "reset, bad_response, aborted, 5xx).");
  each([&](size_t u, size_t s) {
    for (size_t r = 0; r < static_cast<size_t>(ServerFailure::kCount); ++r) {
      absl::StrAppend(out, "ktlb_upstream_server_failures_total{", labels(u, s), ",reason=\"",
                      ServerFailureLabel(static_cast<ServerFailure>(r)), "\"} ",
                      sum(u, s, [&](const ServerMetrics& m) -> const Counter& {
                        return m.failures[r];
                      }),
                      "\n");
    }
  });
  simple("ktlb_upstream_server_ejections_total", "counter",
         "Times a worker ejected the server after consecutive failures (passive health).",
         [](const ServerMetrics& m) -> const Counter& { return m.ejections; });
  Family(out, "ktlb_upstream_server_ejected", "gauge",
         "Workers that hold the server ejected now (passive health; each worker ejects on its own).");
  const uint64_t now_ms = NowMs();
  each([&](size_t u, size_t s) {
    uint64_t ejected = 0;
    for (const auto& w : workers_) {
      if (u >= w->upstreams.size() || s >= w->upstreams[u].servers.size()) continue;
      ejected += w->upstreams[u].servers[s].ejected_until_ms.Get() > now_ms ? 1 : 0;
    }
    absl::StrAppend(out, "ktlb_upstream_server_ejected{", labels(u, s), "} ", ejected, "\n");
  });
  simple("ktlb_upstream_server_retries_total", "counter",
         "Requests that failed on the server and were retried on another.",
         [](const ServerMetrics& m) -> const Counter& { return m.retries; });
  simple("ktlb_upstream_server_queue_waits_total", "counter",
         "Attempts on the server that first waited for a connection (max_conns_per_server).",
         [](const ServerMetrics& m) -> const Counter& { return m.queue_waits; });

  const char* const kHist = "ktlb_upstream_server_response_seconds";
  Family(out, kHist, "histogram",
         "Time from an attempt's start (its connect included, on a new connection) to the "
         "server's response head.");
  each([&](size_t u, size_t s) {
    const std::string l = labels(u, s);
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= kLatencyBucketsUs.size(); ++b) {
      cumulative += sum(u, s, [&](const ServerMetrics& m) -> const Counter& {
        return m.latency.buckets[b];
      });
      if (b < kLatencyBucketsUs.size()) {
        absl::StrAppend(out, kHist, "_bucket{", l, ",le=\"",
                        static_cast<double>(kLatencyBucketsUs[b]) / 1e6, "\"} ", cumulative,
                        "\n");
      } else {
        absl::StrAppend(out, kHist, "_bucket{", l, ",le=\"+Inf\"} ", cumulative, "\n");
      }
    }
    const uint64_t sum_us =
        sum(u, s, [](const ServerMetrics& m) -> const Counter& { return m.latency.sum_us; });
    absl::StrAppend(out, kHist, "_sum{", l, "} ", sum_us / 1'000'000, ".",
                    absl::Dec(sum_us % 1'000'000, absl::kZeroPad6), "\n");
    // The count is the +Inf bucket, so the two always agree within a scrape.
    absl::StrAppend(out, kHist, "_count{", l, "} ", cumulative, "\n");
  });

  // Active checks, per server (upstreams with a prober only).
  auto health = [&](size_t u, size_t s) -> const ServerHealthMetrics* {
    if (u >= health_.size() || !health_[u].checked || s >= health_[u].servers.size()) return nullptr;
    return health_[u].servers[s].checked ? &health_[u].servers[s] : nullptr;
  };
  Family(out, "ktlb_upstream_server_healthy", "gauge",
         "1 while the active health checks hold the server up, 0 while they hold it down.");
  each([&](size_t u, size_t s) {
    if (const ServerHealthMetrics* h = health(u, s)) {
      absl::StrAppend(out, "ktlb_upstream_server_healthy{", labels(u, s), "} ",
                      h->down.Get() != 0 ? 0 : 1, "\n");
    }
  });
  Family(out, "ktlb_upstream_server_health_changes_total", "counter",
         "Times the active health checks took the server down or brought it back up.");
  each([&](size_t u, size_t s) {
    if (const ServerHealthMetrics* h = health(u, s)) {
      absl::StrAppend(out, "ktlb_upstream_server_health_changes_total{", labels(u, s),
                      ",state=\"up\"} ", h->went_up.Get(), "\n",
                      "ktlb_upstream_server_health_changes_total{", labels(u, s),
                      ",state=\"down\"} ", h->went_down.Get(), "\n");
    }
  });
}

void MetricsRegistry::RecordConfig(bool ok, int64_t now_s,
                                   std::vector<std::pair<std::string, int64_t>> certificates) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ok) {
    ++config_.reloads_failed;
    return;
  }
  // The first config is the one started with, not a reload.
  if (config_.last_success_s != 0) ++config_.reloads_ok;
  config_.last_success_s = now_s;
  config_.certificate_not_after = std::move(certificates);
}

void MetricsRegistry::RenderConfig(std::string* out) const {
  Family(out, "ktlb_config_reloads_total", "counter",
         "Config reloads (SIGHUP or a watched file changed), by result; a failed one keeps the "
         "running config.");
  absl::StrAppend(out, "ktlb_config_reloads_total{result=\"success\"} ", config_.reloads_ok,
                  "\n", "ktlb_config_reloads_total{result=\"failure\"} ",
                  config_.reloads_failed, "\n");
  Family(out, "ktlb_config_last_reload_success_timestamp_seconds", "gauge",
         "When the running config was put in service (startup or reload), unix time.");
  absl::StrAppend(out, "ktlb_config_last_reload_success_timestamp_seconds ",
                  config_.last_success_s, "\n");
  Family(out, "ktlb_certificate_not_after_seconds", "gauge",
         "The notAfter of each certificate in the running config, unix time: alert before it "
         "comes.");
  for (const auto& [name, not_after] : config_.certificate_not_after) {
    absl::StrAppend(out, "ktlb_certificate_not_after_seconds{certificate=\"", name, "\"} ",
                    not_after, "\n");
  }
}

void MetricsRegistry::RenderHealth(std::string* out) const {
  const auto& U = labels_.upstreams;
  Family(out, "ktlb_upstream_health_changes_total", "counter",
         "Servers that active health checks took down or brought back up.");
  for (size_t i = 0; i < health_.size() && i < U.size(); ++i) {
    if (!health_[i].checked) continue;
    absl::StrAppend(out, "ktlb_upstream_health_changes_total{upstream=\"", U[i],
                    "\",state=\"up\"} ", health_[i].went_up.Get(), "\n");
    absl::StrAppend(out, "ktlb_upstream_health_changes_total{upstream=\"", U[i],
                    "\",state=\"down\"} ", health_[i].went_down.Get(), "\n");
  }
  Family(out, "ktlb_upstream_servers_healthy", "gauge",
         "Servers of an upstream that pass their active health checks now.");
  for (size_t i = 0; i < health_.size() && i < U.size(); ++i) {
    if (!health_[i].checked) continue;
    absl::StrAppend(out, "ktlb_upstream_servers_healthy{upstream=\"", U[i], "\"} ",
                    health_[i].healthy.Get(), "\n");
  }
}

void MetricsRegistry::RenderDns(std::string* out) const {
  const auto& U = labels_.upstreams;
  Family(out, "ktlb_upstream_dns_resolutions_total", "counter",
         "Host names in an upstream's servers resolved again, by result: changed (a new server "
         "list went in service), unchanged, failed (the last good addresses stay).");
  for (size_t i = 0; i < dns_.size() && i < U.size(); ++i) {
    if (!dns_[i].used) continue;
    for (const auto& [result, counter] :
         {std::pair<const char*, const Counter*>{"changed", &dns_[i].changed},
          {"unchanged", &dns_[i].unchanged},
          {"failed", &dns_[i].failed}}) {
      absl::StrAppend(out, "ktlb_upstream_dns_resolutions_total{upstream=\"", U[i],
                      "\",result=\"", result, "\"} ", counter->Get(), "\n");
    }
  }
}

}  // namespace ktlb
