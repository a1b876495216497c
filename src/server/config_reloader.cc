#include "config_reloader.h"

#include <cstdio>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktlb/server_names.h"

namespace ktlb {

namespace {

// [server] settings the running process cannot take over: they are read once
// at startup. A reload that changes them still applies the rest and says so.
void WarnAboutRestartOnly(const Config& old_cfg, const Config& new_cfg) {
  auto warn = [&](const char* key) {
    fprintf(stderr, "ktlb: reload: %s: server.%s changed; it takes effect at the next restart\n",
            new_cfg.path.c_str(), key);
  };
  if (old_cfg.server.workers != new_cfg.server.workers) warn("workers");
  if (old_cfg.server.has_admin != new_cfg.server.has_admin ||
      old_cfg.server.admin_listen.text != new_cfg.server.admin_listen.text) {
    warn("admin_listen");
  }
  if (old_cfg.server.access_log != new_cfg.server.access_log) warn("access_log");
  if (old_cfg.server.user != new_cfg.server.user) warn("user");
  if (old_cfg.server.group != new_cfg.server.group) warn("group");
}

}  // namespace

ConfigReloader::ConfigReloader(std::string config_path, const tls::TicketKeys& keys,
                               Server* server, std::shared_ptr<const Snapshot> running)
    : config_path_(std::move(config_path)), keys_(keys), server_(server),
      running_(std::move(running)) {}

void ConfigReloader::RecordStartup() { Record(true); }

void ConfigReloader::Record(bool ok) {
  std::vector<std::pair<std::string, int64_t>> certs;
  if (ok) {
    for (const tls::CertificatePtr& c : running_->certificates) {
      certs.emplace_back(c->name, c->not_after);
    }
  }
  server_->mutable_metrics().RecordConfig(ok, static_cast<int64_t>(time(nullptr)),
                                          std::move(certs));
}

absl::StatusOr<std::shared_ptr<const Snapshot>> ConfigReloader::Build() const {
  auto loaded = LoadConfigFile(config_path_);
  if (!loaded.ok()) return loaded.status();
  // Host names are resolved here, on the control thread (a reload waits for
  // DNS, the workers do not). One that does not resolve keeps the running
  // config's answer when it has one.
  std::vector<std::string> notes;
  auto config = ResolveServerNames(*loaded, running_->config.get(), ResolveHost, &notes);
  if (!config.ok()) return config.status();
  for (const std::string& n : notes) fprintf(stderr, "ktlb: reload: %s\n", n.c_str());
  auto snapshot = BuildSnapshot(*config, keys_);
  if (!snapshot.ok()) return snapshot.status();
  // What a worker would build, built once here: a TLS setting OpenSSL
  // refuses fails the reload instead of leaving workers on different configs.
  const Config& cfg = *(*snapshot)->config;
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    if (cfg.listeners[i].mode != ListenerMode::kTerminate) continue;
    auto ctx = (*snapshot)->NewServerTlsContext(i, /*kernel_ktls=*/false);
    if (!ctx.ok()) {
      return absl::Status(ctx.status().code(),
                          absl::StrCat(cfg.path, ": listener \"", cfg.listeners[i].name,
                                       "\": ", ctx.status().message()));
    }
  }
  return snapshot;
}

bool ConfigReloader::Reload(const char* trigger) {
  auto snapshot = Build();
  if (!snapshot.ok()) {
    fprintf(stderr, "ktlb: reload (%s) failed, keeping the running config: %s\n", trigger,
            std::string(snapshot.status().message()).c_str());
    Record(false);
    return false;
  }
  Server::InstallResult r = server_->Install(*snapshot);
  if (r.refused > 0 && r.applied + r.late == 0) {
    fprintf(stderr, "ktlb: reload (%s) failed, keeping the running config: every worker refused "
            "it (the worker log above says why)\n", trigger);
    Record(false);
    return false;
  }
  WarnAboutRestartOnly(*running_->config, *(*snapshot)->config);
  // From here the new config serves, on some workers at least: watch its
  // files and report its certificates.
  running_ = *std::move(snapshot);
  if (r.refused > 0) {
    fprintf(stderr, "ktlb: reload (%s) half done: %zu of %zu workers refused the new config (the "
            "worker log above says why) and keep the old one; fix it and reload\n", trigger,
            r.refused, r.refused + r.applied + r.late);
    Record(false);
    return false;
  }
  if (r.late > 0) {
    fprintf(stderr, "ktlb: reload (%s): %zu worker(s) busy for 10 s take the new config at their "
            "next turn\n", trigger, r.late);
  }
  fprintf(stderr, "ktlb: reload (%s): config %s in service\n", trigger, config_path_.c_str());
  Record(true);
  return true;
}

namespace {

std::string AddressList(const std::vector<SocketAddress>& addresses) {
  return absl::StrJoin(addresses, ", ", [](std::string* out, const SocketAddress& a) {
    out->append(a.text);
  });
}

}  // namespace

bool ConfigReloader::ApplyDnsAnswers(std::vector<DnsAnswer> answers) {
  std::shared_ptr<Config> next;  // a copy of the running config, once something changed
  for (DnsAnswer& a : answers) {
    const Config& cfg = next ? *next : *running_->config;
    const UpstreamConfig* u = cfg.FindUpstream(a.upstream);
    const ServerEntry* entry = nullptr;
    if (u != nullptr) {
      for (const ServerEntry& e : u->server_entries) {
        if (e.host == a.host && e.port == a.port) entry = &e;
      }
    }
    if (entry == nullptr) continue;  // asked for a config reloaded since
    UpstreamDnsMetrics& m = server_->mutable_metrics().UpstreamDns(a.upstream);
    const std::string name = absl::StrCat(a.host, ":", a.port);
    const std::string id = absl::StrCat(a.upstream, " ", name);
    if (!a.addresses.ok()) {
      m.failed.Inc();
      if (dns_failing_.insert(id).second) {
        fprintf(stderr, "ktlb: dns: upstream \"%s\": cannot resolve \"%s\" (%s): keeping %s\n",
                a.upstream.c_str(), a.host.c_str(), std::string(a.addresses.status().message()).c_str(),
                AddressList(entry->addresses).c_str());
      }
      continue;
    }
    if (dns_failing_.erase(id) > 0) {
      fprintf(stderr, "ktlb: dns: upstream \"%s\": \"%s\" resolves again\n", a.upstream.c_str(),
              a.host.c_str());
    }
    NormalizeAddresses(&*a.addresses);
    if (SameAddresses(entry->addresses, *a.addresses)) {
      m.unchanged.Inc();
      continue;
    }
    const std::string before = AddressList(entry->addresses);
    if (!next) next = std::make_shared<Config>(*running_->config);
    for (UpstreamConfig& nu : next->upstreams) {
      if (nu.name == a.upstream) MergeAnswer(&nu, a.host, a.port, *a.addresses);
    }
    m.changed.Inc();
    fprintf(stderr, "ktlb: dns: upstream \"%s\": %s is now %s (was %s)\n", a.upstream.c_str(),
            name.c_str(), AddressList(*a.addresses).c_str(), before.c_str());
  }
  if (!next) return false;
  std::shared_ptr<const Snapshot> snapshot = WithConfig(*running_, std::move(next));
  Server::InstallResult r = server_->Install(snapshot);
  if (r.refused > 0 && r.applied + r.late == 0) {
    // Nothing but the servers differ, so this is unexpected; the answers
    // come again at the next interval.
    fprintf(stderr, "ktlb: dns: every worker refused the new server list (the worker log above "
            "says why); keeping the running one\n");
    return false;
  }
  running_ = std::move(snapshot);
  return true;
}

}  // namespace ktlb
