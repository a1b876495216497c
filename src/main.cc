// ktlb: flags, signals, startup; then the control loop (server/control_loop.h).
//
//   ktlb --config FILE          run in the foreground, log to stderr
//   ktlb --check --config FILE  validate and exit 0, or print FILE:LINE: key: problem
//   ktlb --version
//   ktlb --config FILE --upgrade  take over the listening sockets of the ktlb
//                               running FILE, then that one drains and exits
//
// SIGTERM / SIGINT drain in-flight requests and exit 0. SIGHUP reloads the
// config, and so does a change on disk of the config or of a file it names
// (debounced). SIGUSR1 reopens the access log. SIGUSR2 starts the binary
// now at this one's path with --upgrade (a binary upgrade under systemd).
#include <malloc.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <nghttp2/nghttp2ver.h>
#include <openssl/opensslv.h>
#include <systemd/sd-daemon.h>

#include "ktlb/config.h"
#include "ktlb/fd_limit.h"
#include "ktlb/file_watch.h"
#include "ktlb/privileges.h"
#include "ktlb/server.h"
#include "ktlb/server_names.h"
#include "ktlb/snapshot.h"
#include "ktlb/sockmap.h"
#include "ktlb/tls.h"
#include "ktlb/unique_fd.h"
#include "server/config_reloader.h"
#include "server/control_loop.h"
#include "server/successor.h"
#include "server/upgrade_handoff.h"

namespace {

void Usage() {
  fprintf(stderr,
          "usage: ktlb --config FILE\n"
          "       ktlb --check --config FILE\n"
          "       ktlb --config FILE --upgrade\n"
          "       ktlb --version\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool check = false, upgrade = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--check") {
      check = true;
    } else if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (a == "--upgrade") {
      upgrade = true;
    } else if (a == "--version") {
      printf("ktlb %s (%s, nghttp2 %s)\n", KTLB_VERSION, OPENSSL_VERSION_TEXT,
             NGHTTP2_VERSION);
      return 0;
    } else if (a == "--help" || a == "-h") {
      Usage();
      return 0;
    } else {
      fprintf(stderr, "ktlb: unknown argument %s\n", a.c_str());
      Usage();
      return 2;
    }
  }
  if (config_path.empty()) {
    Usage();
    return 2;
  }

  auto config = ktlb::LoadConfigFile(config_path);
  if (!config.ok()) {
    fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  // Watched from before the files are read: a certificate renewed while
  // ktlb starts is not missed.
  ktlb::FileWatch watch;
  if (!check) ktlb::WatchConfigFiles(watch, (*config)->FilesRead());
  // Certificates are part of validation: a key that does not match its
  // certificate must fail --check too.
  // In-process session-ticket keys (used without [server] ticket_keys): one
  // ring for the process, so every snapshot built later must get this one.
  const ktlb::tls::TicketKeys ticket_keys = ktlb::tls::TicketKeys::Generate();
  auto snapshot = ktlb::BuildSnapshot(*config, ticket_keys);
  if (!snapshot.ok()) {
    // Certificate errors already read "FILE:LINE: certificates[i].key: ...".
    fprintf(stderr, "%s\n", std::string(snapshot.status().message()).c_str());
    return 1;
  }
  if (check) {
    fprintf(stderr, "%s: ok\n", config_path.c_str());
    return 0;
  }
  // Host names in upstreams' servers: resolved now, before anything
  // listens (--check stops above and never asks DNS). A name that does not
  // resolve stops the start with FILE:LINE, as nginx does.
  if (ktlb::HasServerNames(**config)) {
    auto resolved = ktlb::ResolveServerNames(*config, nullptr, ktlb::ResolveHost, nullptr);
    if (!resolved.ok()) {
      fprintf(stderr, "%s\n", std::string(resolved.status().message()).c_str());
      return 1;
    }
    snapshot = ktlb::WithConfig(**snapshot, *resolved);
  }

  // Large body buffers are recycled per connection; keep glibc from handing
  // them back to the kernel (mmap/munmap and page faults on every response).
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);

  // Before any thread: the environment is edited.
  if (upgrade) ktlb::AdoptWatchdog();
  // The binary's path, read before a package upgrade can replace it.
  ktlb::Successor successor(config_path);

  // Signals are taken by this thread through a signalfd; blocked before the
  // workers start, so they inherit the mask and never see one.
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2}) sigaddset(&set, sig);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  ktlb::UniqueFd signal_fd(signalfd(-1, &set, SFD_CLOEXEC));
  if (!signal_fd) {
    fprintf(stderr, "ktlb: signalfd: %s\n", strerror(errno));
    return 1;
  }

  // Two descriptors per proxied connection (four while splicing): the
  // usual soft limit of 1024 would cap ktlb at a few hundred connections.
  ktlb::FdLimit fds = ktlb::RaiseFdLimit();
  if (fds.soft < 65536) {
    fprintf(stderr, "ktlb: warning: open-file limit is %llu (raise the hard RLIMIT_NOFILE, "
            "e.g. LimitNOFILE=1048576 in the systemd unit; see tools/sysctl-tuning.sh)\n",
            static_cast<unsigned long long>(fds.soft));
  }

  // Passthrough in the kernel: loaded once for the process, here, before the
  // workers start and before root is dropped.
  const ktlb::Config& startup_cfg = *(*snapshot)->config;
  if (startup_cfg.server.passthrough_forwarding != ktlb::PassthroughForwarding::kSplice) {
    auto sockmap = ktlb::passthrough::Sockmap::Load();
    if (sockmap.ok()) {
      ktlb::passthrough::SetProcessSockmap(std::move(*sockmap));
      fprintf(stderr, "ktlb: passthrough relays forward by sockmap (BPF)\n");
    } else if (startup_cfg.server.passthrough_forwarding ==
               ktlb::PassthroughForwarding::kSockmap) {
      fprintf(stderr, "ktlb: passthrough_forwarding = \"sockmap\": %s\n",
              std::string(sockmap.status().message()).c_str());
      return 1;
    } else {
      fprintf(stderr, "ktlb: passthrough relays splice: BPF sockmap unavailable (%s)\n",
              std::string(sockmap.status().message()).c_str());
    }
  }

  ktlb::Server server(*snapshot);
  ktlb::UpgradeClient predecessor;
  if (upgrade) {
    if (absl::Status s = predecessor.TakeOver(config_path, &server.listen_sockets()); !s.ok()) {
      fprintf(stderr, "ktlb: --upgrade: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  if (absl::Status s = server.Start(); !s.ok()) {
    fprintf(stderr, "ktlb: startup failed: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  const ktlb::Config& cfg = *(*snapshot)->config;
  // Bound and set up: root is no longer needed. Keys must stay readable by
  // this user for reloads (README: a group-readable key directory). Before
  // an upgrade's Ready(): after it the old process is gone.
  if (!cfg.server.user.empty()) {
    if (absl::Status s = ktlb::DropPrivileges(cfg.server.uid, cfg.server.gid); !s.ok()) {
      fprintf(stderr, "ktlb: cannot run as user \"%s\": %s\n", cfg.server.user.c_str(),
              std::string(s.message()).c_str());
      server.StopAndWait();  // inherited sockets are shared: not shut down
      return 1;
    }
    fprintf(stderr, "ktlb: running as user %s (uid %u, gid %u)\n", cfg.server.user.c_str(),
            cfg.server.uid, cfg.server.gid);
  }
  if (upgrade) {
    // Serving on the inherited sockets: the old process may stop accepting.
    if (absl::Status s = predecessor.Ready(&server.listen_sockets()); !s.ok()) {
      // The old process serves on; leave it the sockets untouched.
      fprintf(stderr, "ktlb: --upgrade: %s; exiting\n", std::string(s.message()).c_str());
      server.StopAndWait(/*handed_off=*/true);
      return 1;
    }
    // Under systemd this process becomes the unit's main one now, before
    // the old one can finish draining: the unit would stop (and kill us)
    // if its main process exited first. systemd reads notifications before
    // child exits, and a drain takes far longer than this datagram. Not
    // before Ready(): a successor failing in between would take the unit
    // down, old process included. Needs NotifyAccess=all; a no-op without
    // NOTIFY_SOCKET.
    sd_notifyf(0, "MAINPID=%d", static_cast<int>(getpid()));
    fprintf(stderr, "ktlb: --upgrade: took over the listening sockets; the old process drains\n");
  }
  ktlb::UpgradeListener upgrade_listener;
  if (absl::Status s = upgrade_listener.Open(config_path); !s.ok()) {
    fprintf(stderr, "ktlb: WARNING: binary upgrade unavailable: %s\n",
            std::string(s.message()).c_str());
  }
  for (const auto& l : cfg.listeners) {
    fprintf(stderr, "ktlb: listener \"%s\" on %s (%zu workers)\n", l.name.c_str(),
            l.listen.text.c_str(), server.worker_count());
  }
  if (cfg.server.has_admin) {
    fprintf(stderr, "ktlb: admin on http://%s/metrics\n", cfg.server.admin_listen.text.c_str());
  }

  ktlb::ConfigReloader reloader(config_path, ticket_keys, &server, *snapshot);
  reloader.RecordStartup();
  sd_notify(0, "READY=1\nSTATUS=serving");
  ktlb::DnsRefresher dns;
  if (absl::Status s = dns.Start(); !s.ok()) {
    fprintf(stderr, "ktlb: WARNING: host names in servers are not re-resolved: %s\n",
            std::string(s.message()).c_str());
  }
  dns.Track(reloader.running_config());
  int sig = ktlb::ControlLoop(signal_fd.get(), server, reloader, watch, upgrade_listener,
                              successor, dns);
  dns.Stop();
  const char* why = sig == ktlb::kHandedOff ? "handed off to a new process" : strsignal(sig);
  // After a hand-off the unit lives on in the successor: STOPPING=1 from
  // here would stop it (the unit accepts every process's notifications).
  if (sig != ktlb::kHandedOff) sd_notifyf(0, "STOPPING=1\nSTATUS=draining (%s)", why);
  fprintf(stderr, "ktlb: %s: draining\n", why);
  server.StopAndWait(sig == ktlb::kHandedOff);
  fprintf(stderr, "ktlb: stopped\n");
  return 0;
}
