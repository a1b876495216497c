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

absl::StatusOr<std::unique_ptr<tls::ServerTlsContext>> Snapshot::NewServerTlsContext(
    size_t listener_index, bool kernel_ktls) const {
  ListenerConfig effective = config->listeners[listener_index];
  if (!kernel_ktls) effective.ktls = KtlsMode::kOff;
  return tls::ServerTlsContext::Create(effective, ListenerCertificates(listener_index),
                                       ticket_keys, ListenerClientAuth(listener_index));
}

absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(std::shared_ptr<const Config> config,
                                                              const tls::TicketKeys& keys) {
  if (absl::Status st = tls::CheckTlsPolicies(*config); !st.ok()) return st;
  auto certs = tls::LoadCertificates(*config);
  if (!certs.ok()) return certs.status();
  absl::StatusOr<tls::TicketKeys> tickets = tls::LoadTicketKeys(*config, keys);
  if (!tickets.ok()) return tickets.status();
  std::vector<tls::ClientAuthPtr> listener_auth;
  for (const ListenerConfig& l : config->listeners) {
    auto auth = tls::LoadClientAuth(l.client_auth, config->path);
    if (!auth.ok()) return auth.status();
    listener_auth.push_back(*std::move(auth));
  }
  std::vector<tls::ClientTlsContextPtr> upstream_tls;
  for (const UpstreamConfig& u : config->upstreams) {
    if (!u.tls.enabled) {
      upstream_tls.push_back(nullptr);
      continue;
    }
    auto ctx = tls::ClientTlsContext::Create(u.tls, config->path);
    if (!ctx.ok()) return ctx.status();
    upstream_tls.push_back(*std::move(ctx));
  }
  auto snapshot = std::make_shared<Snapshot>(std::move(config), *std::move(certs), *tickets);
  snapshot->listener_client_auth = std::move(listener_auth);
  snapshot->upstream_tls = std::move(upstream_tls);
  return std::shared_ptr<const Snapshot>(std::move(snapshot));
}

std::shared_ptr<const Snapshot> WithConfig(const Snapshot& running,
                                           std::shared_ptr<const Config> config) {
  auto snapshot =
      std::make_shared<Snapshot>(std::move(config), running.certificates, running.ticket_keys);
  // Every loaded field but the config and the router built from it: a field
  // left out here silently disappears at startup and on each DNS change
  // (upstream TLS did: requests went out in plaintext).
  snapshot->listener_client_auth = running.listener_client_auth;
  snapshot->upstream_tls = running.upstream_tls;
  return snapshot;
}

}  // namespace ktlb
