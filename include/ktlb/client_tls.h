// The client role of TLS: one context per [[upstreams]] entry with `tls`,
// built with the config snapshot (so a bad CA or key fails --check and a
// reload keeps the running snapshot) and shared read-only by every worker
// and the health prober. Each SSL it makes carries its own name check and
// SNI (per server), and may resume a session the caller kept.
//
// Sessions: OpenSSL's internal client cache is off; a session reaches the
// caller through a SessionSlot set on the SSL (one slot per server per
// worker, like nginx's proxy_ssl_session_reuse), which owns it afterwards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "ktlb/config.h"
#include "ktlb/openssl_ptr.h"

namespace ktlb::tls {

using UniqueSslSession = std::unique_ptr<SSL_SESSION, OpenSslDeleter<SSL_SESSION, SSL_SESSION_free>>;

// The last resumable session a server gave this worker. Must outlive every
// SSL it is set on that may still receive a ticket.
struct SessionSlot {
  UniqueSslSession session;
  uint64_t stored = 0;  // sessions the server handed over into this slot
};

class ClientTlsContext {
 public:
  // Loads the CA, client certificate and key. Errors read
  // "FILE:LINE: upstreams[0].tls.ca: <what is wrong>" (config_path may be "").
  static absl::StatusOr<std::shared_ptr<const ClientTlsContext>> Create(
      const UpstreamTlsConfig& config, std::string_view config_path);
  ~ClientTlsContext();

  // A client SSL on `bio` (ownership passes; freed on failure) for the server
  // at `server_host` (a name or an IP literal, no port, no brackets):
  // verification checks `sni` when set, else the host; SNI goes out only
  // when `sni` is set and is a name. Resumes `slot`'s session if it has one,
  // and stores the server's next one there. `offer_ktls`: let OpenSSL hand
  // keys to the BIO (the kernel has kTLS and the config allows it).
  UniqueSsl NewSsl(BIO* bio, std::string_view server_host, SessionSlot* slot,
                   bool offer_ktls) const;

  const UpstreamTlsConfig& config() const { return config_; }

 private:
  ClientTlsContext() = default;
  UpstreamTlsConfig config_;
  UniqueSslCtx ctx_;
};
using ClientTlsContextPtr = std::shared_ptr<const ClientTlsContext>;

// "127.0.0.1:9443" -> "127.0.0.1", "[::1]:443" -> "::1", "app:80" -> "app".
std::string_view HostOfAddress(std::string_view address_text);

}  // namespace ktlb::tls
