// Everything a worker needs from one config generation, built once and then
// shared read-only by all workers: the config, loaded certificates, the
// session-ticket keys and the compiled routes.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "ktlb/client_tls.h"
#include "ktlb/config.h"
#include "ktlb/router.h"
#include "ktlb/tls.h"

namespace ktlb {

struct Snapshot {
  std::shared_ptr<const Config> config;
  std::vector<tls::CertificatePtr> certificates;  // parallel to config->certificates
  tls::TicketKeys ticket_keys;  // the ticket_keys file's, else the process's ring
  Router router;
  // Each listener's own client_auth (nullptr: none), parallel to
  // config->listeners.
  std::vector<tls::ClientAuthPtr> listener_client_auth;
  // Each upstream's TLS client context (nullptr: plain TCP), parallel to
  // config->upstreams; shared by every worker and the health prober.
  std::vector<tls::ClientTlsContextPtr> upstream_tls;

  Snapshot(std::shared_ptr<const Config> c, std::vector<tls::CertificatePtr> certs,
           const tls::TicketKeys& keys)
      : config(std::move(c)), certificates(std::move(certs)), ticket_keys(keys), router(*config) {}

  // The listener's own client_auth, nullptr when it has none.
  tls::ClientAuthPtr ListenerClientAuth(size_t listener_index) const {
    return listener_index < listener_client_auth.size() ? listener_client_auth[listener_index]
                                                        : nullptr;
  }
  // The loaded certificates of one listener, in the listener's order.
  std::vector<tls::CertificatePtr> ListenerCertificates(size_t listener_index) const;
  // A TLS server context for terminate listener `listener_index` (a worker
  // builds its own; a reload builds one first as a trial). Without
  // `kernel_ktls` OpenSSL need not offer keys nor log secrets.
  absl::StatusOr<std::unique_ptr<tls::ServerTlsContext>> NewServerTlsContext(
      size_t listener_index, bool kernel_ktls) const;
};

// Loads what `config` names (certificates; its ticket_keys file, re-read on
// every call so a reload picks up a new one). `keys` are the process's own
// rotating ticket keys (tls::TicketKeys::Generate(), once per process), used
// when the config names no file: pass the same ones on every reload, or
// outstanding tickets stop resuming.
absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(std::shared_ptr<const Config> config,
                                                              const tls::TicketKeys& keys);

// `running` with `config` in its place, sharing everything loaded (the
// certificates, ticket keys and client CAs it read): for a config that
// differs only in the servers its host names resolved to, so a DNS change
// reads no file and picks up no half-written certificate.
std::shared_ptr<const Snapshot> WithConfig(const Snapshot& running,
                                           std::shared_ptr<const Config> config);

}  // namespace ktlb
