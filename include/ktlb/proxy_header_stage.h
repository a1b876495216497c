// The PROXY header stage of a connection on an accept_proxy listener, shared
// by both kinds of connection that read one (terminate: through the TLS
// transport's preamble; passthrough: in the relay, ahead of the ClientHello).
// It runs the pure parser (proxy_header_parser.h) on what the connection has
// received so far and does what both must do with the answer: count and log
// a refused header once, and say what stands in for the socket's addresses.
#pragma once

#include <sys/socket.h>

#include <string_view>

#include "ktlb/error_log.h"
#include "ktlb/metrics.h"
#include "ktlb/proxy_header_parser.h"

namespace ktlb::passthrough {

class ProxyHeaderStage {
 public:
  // A new connection. `enabled`: its listener's accept_proxy (when false the
  // stage is never pending). `socket_peer`: the balancer, for log lines.
  // Failures count in metrics->proxy_header_failures and go to `log`.
  void Start(bool enabled, ListenerMetrics* metrics, ErrorLog* log,
             const sockaddr_storage& socket_peer);
  bool pending() const { return pending_; }

  // `bytes`: everything received so far, from the first byte. kDone: the
  // header was result.consumed bytes and, when result.has_addresses, its
  // source is the client and its destination the address the client
  // connected to. kFailed: already counted and logged; close the connection.
  // Either ends the stage.
  ProxyHeaderResult Feed(std::string_view bytes);

  // The connection ends while the header is pending: counted as a timeout
  // when `timed_out`, as truncated when some bytes came; a connection that
  // closed without sending anything (a port probe) is not a failure.
  void Abandon(bool timed_out);

 private:
  void Count(ProxyHeaderFailure why, const char* error);

  bool pending_ = false;
  bool received_ = false;
  ListenerMetrics* metrics_ = nullptr;
  ErrorLog* log_ = nullptr;
  sockaddr_storage socket_peer_{};
};

}  // namespace ktlb::passthrough
