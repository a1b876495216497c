#include "ktlb/snapshot.h"

namespace ktlb {

std::vector<tls::CertificatePtr> Snapshot::ListenerCertificates(size_t listener_index) const {
  std::vector<tls::CertificatePtr> out;
  for (const std::string& name : config->listeners[listener_index].certificates) {
    for (size_t i = 0; i < config->certificates.size(); ++i) {
      if (config->certificates[i].name == name) out.push_back(certificates[i]);
    }
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(std::shared_ptr<const Config> config,
                                                              const tls::TicketKeys& keys) {
  if (absl::Status st = tls::CheckTlsPolicies(*config); !st.ok()) return st;
  auto certs = tls::LoadCertificates(*config);
  if (!certs.ok()) return certs.status();
  absl::StatusOr<tls::TicketKeys> tickets = tls::LoadTicketKeys(*config, keys);
  if (!tickets.ok()) return tickets.status();
  return std::make_shared<const Snapshot>(std::move(config), *std::move(certs), *tickets);
}

}  // namespace ktlb
