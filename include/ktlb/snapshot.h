// Everything a worker needs from one config generation, built once and then
// shared read-only by all workers: the config, loaded certificates, the
// session-ticket keys and the compiled routes.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "ktlb/config.h"
#include "ktlb/router.h"
#include "ktlb/tls.h"

namespace ktlb {

struct Snapshot {
  std::shared_ptr<const Config> config;
  std::vector<tls::CertificatePtr> certificates;  // parallel to config->certificates
  tls::TicketKeys ticket_keys;
  Router router;
  // Each listener's own client_auth (nullptr: none), parallel to
  // config->listeners.
  std::vector<tls::ClientAuthPtr> listener_client_auth;

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
};

absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(std::shared_ptr<const Config> config,
                                                              const tls::TicketKeys& keys);

}  // namespace ktlb
