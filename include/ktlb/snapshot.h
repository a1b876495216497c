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
  tls::TicketKeys ticket_keys;  // the ticket_keys file's, else the process's ring
  Router router;

  Snapshot(std::shared_ptr<const Config> c, std::vector<tls::CertificatePtr> certs,
           const tls::TicketKeys& keys)
      : config(std::move(c)), certificates(std::move(certs)), ticket_keys(keys), router(*config) {}

  // The loaded certificates of one listener, in the listener's order.
  std::vector<tls::CertificatePtr> ListenerCertificates(size_t listener_index) const;
};

// Loads what `config` names (certificates; its ticket_keys file, re-read on
// every call so a reload picks up a new one). `keys` are the process's own
// rotating ticket keys (tls::TicketKeys::Generate(), once per process), used
// when the config names no file: pass the same ones on every reload, or
// outstanding tickets stop resuming.
absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(std::shared_ptr<const Config> config,
                                                              const tls::TicketKeys& keys);

}  // namespace ktlb
