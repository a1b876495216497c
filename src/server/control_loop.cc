#include "control_loop.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <systemd/sd-daemon.h>

namespace ktlb {

namespace {

// Files usually change in bursts (certbot writes a key, a cert and a chain
// and swaps links): wait this long after the last event, then reload once.
constexpr int kDebounceMs = 200;

// systemd (Type=notify) learns of each state change; without NOTIFY_SOCKET
// in the environment these are no-ops.
bool Reload(ConfigReloader& reloader, const char* trigger) {
  sd_notify(0, "RELOADING=1");
  bool ok = reloader.Reload(trigger);
  sd_notifyf(0, "READY=1\nSTATUS=%s", ok ? "config reloaded" : "reload failed; running config kept");
  return ok;
}

}  // namespace

void WatchConfigFiles(FileWatch& watch, const std::vector<std::string>& files) {
  if (absl::Status s = watch.Watch(files); !s.ok()) {
    fprintf(stderr, "ktlb: warning: %s: changes there need a SIGHUP\n",
            std::string(s.message()).c_str());
  }
}

int ControlLoop(int signal_fd, Server& server, ConfigReloader& reloader, FileWatch& watch,
                UpgradeListener& upgrade, Successor& successor, DnsRefresher& dns) {
  using Clock = std::chrono::steady_clock;
  // A change reloads once the files have been quiet for kDebounceMs; each
  // further change pushes it back.
  std::optional<Clock::time_point> reload_at;
  if (watch.TakeChanges()) reload_at = Clock::now();
  // WatchdogSec=: ping at half the interval, and only while every worker
  // still turns its loop, so a wedged worker gets the process restarted.
  uint64_t watchdog_us = 0;
  if (sd_watchdog_enabled(0, &watchdog_us) <= 0) watchdog_us = 0;
  const auto watchdog_every = std::chrono::microseconds(watchdog_us / 2);
  auto next_ping = Clock::now();
  for (;;) {
    Clock::time_point now = Clock::now();
    if (reload_at && now >= *reload_at) {
      reload_at.reset();
      Reload(reloader, "file change");
      WatchConfigFiles(watch, reloader.FilesToWatch());  // it may name other files
      dns.Track(reloader.running_config());
      continue;
    }
    if (watchdog_us > 0 && now >= next_ping) {
      if (server.WorkersTurned()) sd_notify(0, "WATCHDOG=1");
      next_ping = now + watchdog_every;
    }
    int timeout = -1;
    auto wake_at = [&](Clock::time_point t) {
      auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
      int v = static_cast<int>(std::max<int64_t>(ms, 0));
      timeout = timeout < 0 ? v : std::min(timeout, v);
    };
    if (reload_at) wake_at(*reload_at);
    if (watchdog_us > 0) wake_at(next_ping);
    // An fd of -1 is skipped by poll.
    pollfd fds[5] = {{signal_fd, POLLIN, 0},
                     {watch.fd(), POLLIN, 0},
                     {upgrade.fd(), POLLIN, 0},
                     {successor.fd(), POLLIN, 0},
                     {dns.fd(), POLLIN, 0}};
    if (poll(fds, 5, timeout) < 0) {
      if (errno != EINTR) {
        fprintf(stderr, "ktlb: poll: %s\n", strerror(errno));
        usleep(100 * 1000);
      }
      continue;
    }
    if ((fds[2].revents & POLLIN) && upgrade.HandOff(&server.listen_sockets())) return kHandedOff;
    if (fds[3].revents & POLLIN) successor.Reap();
    if (fds[4].revents & POLLIN) reloader.ApplyDnsAnswers(dns.TakeAnswers());
    if ((fds[1].revents & POLLIN) && watch.TakeChanges()) {
      reload_at = Clock::now() + std::chrono::milliseconds(kDebounceMs);
    }
    if (!(fds[0].revents & POLLIN)) continue;
    signalfd_siginfo si;
    if (read(signal_fd, &si, sizeof si) != sizeof si) continue;
    switch (si.ssi_signo) {
      case SIGHUP:
        reload_at.reset();  // this reload reads the changed files too
        Reload(reloader, "SIGHUP");
        WatchConfigFiles(watch, reloader.FilesToWatch());
        dns.Track(reloader.running_config());
        break;
      case SIGUSR1:
        if (absl::Status s = server.ReopenAccessLog(); !s.ok()) {
          fprintf(stderr, "ktlb: SIGUSR1: %s\n", std::string(s.message()).c_str());
        } else {
          fprintf(stderr, "ktlb: SIGUSR1: access log reopened\n");
        }
        break;
      case SIGUSR2:
        if (upgrade.fd() < 0) {
          fprintf(stderr, "ktlb: SIGUSR2: binary upgrade unavailable (no upgrade socket)\n");
        } else {
          successor.Spawn();
        }
        break;
      default:
        return static_cast<int>(si.ssi_signo);
    }
  }
}

}  // namespace ktlb
