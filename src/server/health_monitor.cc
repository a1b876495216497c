#include "health_monitor.h"

#include <sys/stat.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace ktlb {

namespace {

// Which version of a file the prober's TLS context read: a CA or client
// certificate renewed in place (same path) must restart the prober, or it
// probes with the old one until every server looks down.
std::string FileVersion(const std::string& path) {
  struct stat st;
  if (path.empty() || stat(path.c_str(), &st) != 0) return "-";
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec);
}

}  // namespace

std::string HealthMonitor::KeyOf(const UpstreamConfig& u) {
  const HealthCheckConfig& h = u.health;
  std::string key = absl::StrCat(static_cast<int>(h.type), " ", h.path, " ", h.interval_ms, " ",
                                 h.timeout_ms, " ", h.rise, " ", h.fall);
  for (const UpstreamServer& s : u.servers) absl::StrAppend(&key, " ", s.address.text);
  // Probes use the upstream's TLS settings: a change restarts the prober.
  const UpstreamTlsConfig& t = u.tls;
  if (t.enabled) {
    absl::StrAppend(&key, " tls ", t.ca_path, " ", t.sni, " ", t.verify, " ", t.cert_path, " ",
                    t.key_path, " ", FileVersion(t.ca_path), " ", FileVersion(t.cert_path), " ",
                    FileVersion(t.key_path));
  }
  return key;
}

void HealthMonitor::Update(const Config& config) {
  std::map<std::string, Entry, std::less<>> next;
  std::map<std::string, Entry, std::less<>> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old.swap(by_name_);
  }
  for (const UpstreamConfig& u : config.upstreams) {
    if (!u.health.enabled) continue;
    std::string key = KeyOf(u);
    auto it = old.find(u.name);
    if (it != old.end() && it->second.key == key) {
      next.emplace(u.name, std::move(it->second));
      old.erase(it);
      continue;
    }
    Entry e;
    e.key = std::move(key);
    for (const UpstreamServer& s : u.servers) e.servers.push_back(s.address.text);
    e.board = std::make_shared<upstream::HealthBoard>(u.servers.size(),
                                                      u.health.rise * u.health.interval_ms);
    std::vector<ServerHealthMetrics*> server_metrics;
    for (const UpstreamServer& s : u.servers) {
      server_metrics.push_back(metrics_ != nullptr ? &metrics_->ServerHealth(u.name, s.address.text)
                                                   : nullptr);
    }
    // A changed upstream: its old prober stops before the new one starts,
    // so the health metrics of the name have one writer at a time.
    if (it != old.end()) it->second.prober->Stop();
    e.prober = std::make_unique<upstream::HealthProber>(
        u, e.board, metrics_ != nullptr ? &metrics_->UpstreamHealth(u.name) : nullptr,
        std::move(server_metrics));
    if (it != old.end()) {
      // Servers that stay (a host name's answer grew, a weight changed)
      // keep being down rather than taking traffic until their first probe.
      const Entry& before = it->second;
      for (size_t i = 0; i < e.servers.size(); ++i) {
        for (size_t j = 0; j < before.servers.size(); ++j) {
          if (before.servers[j] == e.servers[i] && !before.board->up(j)) e.prober->SeedDown(i);
        }
      }
      old.erase(it);
    }
    if (!e.prober->Start()) {
      fprintf(stderr, "ktlb: health: upstream \"%s\": cannot start its prober\n", u.name.c_str());
      continue;
    }
    next.emplace(u.name, std::move(e));
  }
  for (auto& [name, e] : old) e.prober->Stop();
  std::lock_guard<std::mutex> lock(mu_);
  by_name_.swap(next);
}

std::shared_ptr<const upstream::HealthBoard> HealthMonitor::Board(
    const UpstreamConfig& upstream) const {
  if (!upstream.health.enabled) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_name_.find(upstream.name);
  if (it == by_name_.end() || it->second.key != KeyOf(upstream)) return nullptr;
  return it->second.board;
}

void HealthMonitor::StopAll() {
  std::map<std::string, Entry, std::less<>> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old.swap(by_name_);
  }
  for (auto& [name, e] : old) e.prober->Stop();
}

}  // namespace ktlb
