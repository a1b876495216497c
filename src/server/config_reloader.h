// Puts a new config in service while the process runs: on SIGHUP, or when a
// file the config names changes on disk (main.cc decides when).
//
// Everything that can fail is done here, on the control thread and not on a
// worker: parse, validate, load certificates and keys, build one TLS context
// per listener as a trial. Only a snapshot that got through all of it is
// handed to the workers; otherwise the running one stays and the reason is
// logged as FILE:LINE: key: problem and counted.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/server.h"
#include "ktlb/snapshot.h"
#include "ktlb/tls.h"
#include "dns_refresher.h"

namespace ktlb {

class ConfigReloader {
 public:
  // `running` is the snapshot `server` was started with; `keys` the process's
  // session-ticket keys, kept across reloads so tickets stay valid.
  ConfigReloader(std::string config_path, const tls::TicketKeys& keys, Server* server,
                 std::shared_ptr<const Snapshot> running);

  // Counts the startup config as in service (its certificates' expiry).
  void RecordStartup();
  // Reloads from disk; `trigger` names why, for the log ("SIGHUP", "file
  // change"). The outcome is logged and counted; false if refused.
  bool Reload(const char* trigger);
  // The files whose change should trigger a reload: those of the running config.
  std::vector<std::string> FilesToWatch() const { return running_->config->FilesRead(); }
  const Config& running_config() const { return *running_->config; }
  // Merges re-resolved host names into the running config. When a name's
  // address set changed, the workers get a snapshot with the new servers
  // (everything else shared with the running one), one log line per change;
  // a name that stops resolving keeps its last good addresses (logged when
  // it starts failing and when it recovers). Every answer is counted in
  // ktlb_upstream_dns_resolutions_total. True if a new snapshot went in.
  bool ApplyDnsAnswers(std::vector<DnsAnswer> answers);

 private:
  absl::StatusOr<std::shared_ptr<const Snapshot>> Build() const;
  void Record(bool ok);

  std::string config_path_;
  tls::TicketKeys keys_;
  Server* server_;
  std::shared_ptr<const Snapshot> running_;
  // "upstream host:port" of names whose last lookup failed: logged once.
  std::set<std::string> dns_failing_;
};

}  // namespace ktlb
