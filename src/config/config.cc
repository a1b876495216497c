// Lookups on a loaded Config snapshot.
//
// Linear scans on purpose: a config holds a handful of certificates and
// upstreams, lookups happen when a snapshot is wired up (not per request), and
// vectors keep the file order that error messages and "first wins" rules use.

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "ktlb/config.h"

namespace ktlb {

const CertificateConfig* Config::FindCertificate(std::string_view name) const {
  auto it = std::find_if(certificates.begin(), certificates.end(),
                         [name](const CertificateConfig& c) { return c.name == name; });
  return it == certificates.end() ? nullptr : &*it;
}

const UpstreamConfig* Config::FindUpstream(std::string_view name) const {
  auto it = std::find_if(upstreams.begin(), upstreams.end(),
                         [name](const UpstreamConfig& u) { return u.name == name; });
  return it == upstreams.end() ? nullptr : &*it;
}

const ListenerConfig* Config::FindListener(std::string_view name) const {
  auto it = std::find_if(listeners.begin(), listeners.end(),
                         [name](const ListenerConfig& l) { return l.name == name; });
  return it == listeners.end() ? nullptr : &*it;
}

std::vector<std::string> Config::FilesRead() const {
  std::vector<std::string> files{path};
  auto client_auth = [&files](const ClientAuthConfig& a) {
    if (!a.enabled) return;
    files.push_back(a.ca_path);
    if (!a.crl_path.empty()) files.push_back(a.crl_path);
  };
  for (const CertificateConfig& c : certificates) {
    files.push_back(c.cert_path);
    files.push_back(c.key_path);
    client_auth(c.client_auth);
  }
  for (const ListenerConfig& l : listeners) client_auth(l.client_auth);
  if (!server.ticket_keys.empty()) files.push_back(server.ticket_keys);
  for (const UpstreamConfig& u : upstreams) {
    for (const std::string* f : {&u.tls.ca_path, &u.tls.cert_path, &u.tls.key_path}) {
      if (!f->empty()) files.push_back(*f);
    }
  }
  return files;
}

}  // namespace ktlb
