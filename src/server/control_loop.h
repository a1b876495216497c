// The process's control thread once the workers run: signals (through a
// signalfd), changed files (reload, debounced), a successor's takeover
// (binary upgrade) and systemd's watchdog. Nothing here is on the request
// path; a reload or a hand-off blocks only this thread.
#pragma once

#include <string>
#include <vector>

#include "config_reloader.h"
#include "dns_refresher.h"
#include "ktlb/file_watch.h"
#include "ktlb/server.h"
#include "successor.h"
#include "upgrade_handoff.h"

namespace ktlb {

// ControlLoop's result when a successor took the listening sockets.
inline constexpr int kHandedOff = 0;

// Watches `files` for changes; a directory it cannot watch is a warning
// (SIGHUP still reloads).
void WatchConfigFiles(FileWatch& watch, const std::vector<std::string>& files);

// Runs until SIGTERM/SIGINT (returns the signal) or a successor's takeover
// (returns kHandedOff). SIGHUP reloads, SIGUSR1 reopens the access log,
// SIGUSR2 starts a successor (`successor`) that takes over as an upgrade.
// `watch` was set up before the running config was read: what changed since
// is queued and reloads at once. `signal_fd` is a signalfd for SIGTERM,
// SIGINT, SIGHUP, SIGUSR1 and SIGUSR2, blocked in every thread. `dns`
// re-resolves the running config's host names; its answers are applied here.
int ControlLoop(int signal_fd, Server& server, ConfigReloader& reloader, FileWatch& watch,
                UpgradeListener& upgrade, Successor& successor, DnsRefresher& dns);

}  // namespace ktlb
