// ktlb: flags, signals, startup.
//
//   ktlb --config FILE          run in the foreground, log to stderr
//   ktlb --check --config FILE  validate and exit 0, or print FILE:LINE: key: problem
//
// SIGTERM / SIGINT drain in-flight requests and exit 0.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "ktlb/config.h"
#include "ktlb/fd_limit.h"
#include "ktlb/server.h"
#include "ktlb/snapshot.h"
#include "ktlb/tls.h"

namespace {

void Usage() {
  fprintf(stderr,
          "usage: ktlb --config FILE\n"
          "       ktlb --check --config FILE\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--check") {
      check = true;
    } else if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
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

  // Large body buffers are recycled per connection; keep glibc from handing
  // them back to the kernel (mmap/munmap and page faults on every response).
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);

  // Signals are taken synchronously by this thread; workers never see them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Two descriptors per proxied connection (four while splicing): the
  // usual soft limit of 1024 would cap ktlb at a few hundred connections.
  ktlb::FdLimit fds = ktlb::RaiseFdLimit();
  if (fds.soft < 65536) {
    fprintf(stderr, "ktlb: warning: open-file limit is %llu (raise the hard RLIMIT_NOFILE, "
            "e.g. LimitNOFILE=1048576 in the systemd unit; see tools/sysctl-tuning.sh)\n",
            static_cast<unsigned long long>(fds.soft));
  }

  ktlb::Server server(*snapshot);
  if (absl::Status s = server.Start(); !s.ok()) {
    fprintf(stderr, "ktlb: startup failed: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  const ktlb::Config& cfg = *(*snapshot)->config;
  for (const auto& l : cfg.listeners) {
    fprintf(stderr, "ktlb: listener \"%s\" on %s (%zu workers)\n", l.name.c_str(),
            l.listen.text.c_str(), server.worker_count());
  }
  if (cfg.server.has_admin) {
    fprintf(stderr, "ktlb: admin on http://%s/metrics\n", cfg.server.admin_listen.text.c_str());
  }

  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      fprintf(stderr, "ktlb: SIGHUP: config reload is not supported by this version; ignoring\n");
      continue;
    }
    fprintf(stderr, "ktlb: %s: draining\n", strsignal(sig));
    break;
  }
  server.StopAndWait();
  fprintf(stderr, "ktlb: stopped\n");
  return 0;
}
