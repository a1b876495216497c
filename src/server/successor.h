// Binary upgrade started by the running process itself (SIGUSR2), as
// nginx's USR2: under systemd the successor must be born inside the unit's
// cgroup, or systemd drops its notifications (MAINPID=, READY=1) and kills
// it with the unit. A `ktlb --upgrade` typed in a shell belongs to no unit.
//
//   old (SIGUSR2)  Successor::Spawn -> BINARY --config FILE --upgrade
//   new            AdoptWatchdog, UpgradeClient::TakeOver, Server::Start,
//                  MAINPID=<new>, UpgradeClient::Ready, READY=1
//   old            HandOff returns: drains, exits without STOPPING=1
//
// The unit needs NotifyAccess=all: systemd takes MAINPID= only from a
// process it accepts notifications from, and the new process is not yet
// the main one when it sends it.
#pragma once

#include <sys/types.h>

#include <string>

#include "ktlb/unique_fd.h"

namespace ktlb {

class Successor {
 public:
  // Remembers the binary's path now: once a package upgrade has replaced
  // the file, /proc/self/exe names the old, deleted one.
  explicit Successor(std::string config_path);

  // Starts `BINARY --config FILE --upgrade` with default signal handling
  // and no inherited descriptors. False (and logged) when one is still
  // starting or it could not be started.
  bool Spawn();
  // Readable when the started successor has exited; -1 when none runs.
  int fd() const { return pidfd_.get(); }
  // It exited before taking over (fd() readable): reap it and say so.
  void Reap();

 private:
  std::string binary_;
  std::string config_path_;
  pid_t pid_ = -1;
  UniqueFd pidfd_;
};

// In a successor Spawn started: the watchdog systemd armed is for the
// predecessor's PID (WATCHDOG_PID), so sd_watchdog_enabled() would say no
// here and WatchdogSec= would kill this process once it is the main one.
// Call before any thread starts (it edits the environment).
void AdoptWatchdog();

}  // namespace ktlb
