#include "ktlb/server.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ktlb/client_hello.h"
#include "ktlb/http2.h"
#include "ktlb/http1.h"
#include "ktlb/ktls.h"
#include "ktlb/proxy_header_parser.h"
#include "ktlb/tls.h"
#include "health_monitor.h"
#include "worker.h"

namespace ktlb {

MetricsLabels BuildMetricsLabels(const Config& config) {
  MetricsLabels labels;
  for (const auto& l : config.listeners) labels.listeners.push_back(l.name);
  for (const auto& u : config.upstreams) labels.upstreams.push_back(u.name);
  for (int f = 0; f <= static_cast<int>(tls::HandshakeFailure::kOther); ++f) {
    labels.handshake_failures.push_back(
        tls::HandshakeFailureLabel(static_cast<tls::HandshakeFailure>(f)));
  }
  labels.parse_errors.push_back(nullptr);  // kNone is not an error
  for (int e = 1; e <= static_cast<int>(http1::RequestError::kBadHeader); ++e) {
    labels.parse_errors.push_back(http1::RequestErrorLabel(static_cast<http1::RequestError>(e)));
  }
  for (int f = 0; f < static_cast<int>(tls::KtlsFallback::kCount); ++f) {
    labels.ktls_fallbacks.push_back(tls::KtlsFallbackLabel(static_cast<tls::KtlsFallback>(f)));
  }
  for (int h = 0; h <= static_cast<int>(passthrough::HelloStatus::kTooLarge); ++h) {
    auto st = static_cast<passthrough::HelloStatus>(h);
    bool failure = st != passthrough::HelloStatus::kNeedMore && st != passthrough::HelloStatus::kDone;
    labels.hello_failures.push_back(failure ? passthrough::HelloStatusLabel(st) : nullptr);
  }
  for (int f = 0; f < static_cast<int>(passthrough::ProxyHeaderFailure::kCount); ++f) {
    labels.proxy_header_failures.push_back(
        passthrough::ProxyHeaderFailureLabel(static_cast<passthrough::ProxyHeaderFailure>(f)));
  }
  for (int t = 0; t < static_cast<int>(tls::TicketKeySource::kCount); ++t) {
    labels.ticket_sources.push_back(tls::TicketKeySourceLabel(static_cast<tls::TicketKeySource>(t)));
  }
  for (int c = 0; c < static_cast<int>(tls::KeyUpdateClose::kCount); ++c) {
    labels.keyupdate_closes.push_back(
        tls::KeyUpdateCloseLabel(static_cast<tls::KeyUpdateClose>(c)));
  }
  labels.h2_refusals.push_back(nullptr);  // kNone
  for (int r = 1; r < static_cast<int>(http2::Refusal::kCount); ++r) {
    labels.h2_refusals.push_back(http2::RefusalLabel(static_cast<http2::Refusal>(r)));
  }
  for (int g = 0; g < static_cast<int>(http2::Glitch::kCount); ++g) {
    labels.h2_glitches.push_back(http2::GlitchLabel(static_cast<http2::Glitch>(g)));
  }
  for (uint32_t c = 0; c < http2::kErrorCodes; ++c) {
    labels.h2_error_codes.push_back(http2::ErrorCodeLabel(c));
  }
  return labels;
}

Server::Server(std::shared_ptr<const Snapshot> snapshot) : snapshot_(std::move(snapshot)) {}

Server::~Server() { StopAndWait(); }

absl::Status Server::Start() {
  const Config& cfg = *snapshot_->config;
  size_t n = cfg.server.workers;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (n == 0) n = cpus > 0 ? static_cast<size_t>(cpus) : 1;
  metrics_ = std::make_unique<MetricsRegistry>(BuildMetricsLabels(cfg), n);

  // kTLS needs the kernel's "tls" ULP and OpenSSL 3.0's key hand-off; probe
  // once so every connection does not pay for a failing setsockopt.
  bool wants_ktls = false, requires_ktls = false;
  for (const auto& l : cfg.listeners) {
    wants_ktls |= l.ktls != KtlsMode::kOff;
    requires_ktls |= l.ktls == KtlsMode::kRequire;
  }
  bool kernel_ktls = false;
  if (wants_ktls) {
    int rc = tls::ProbeKernelKtls();
    bool handoff = tls::OpenSslSupportsKtlsHandoff();
    kernel_ktls = rc == 0 && handoff;
    if (kernel_ktls) {
      fprintf(stderr, "ktlb: kTLS available: record crypto goes to the kernel\n");
    } else {
      std::string why = rc != 0 ? absl::StrCat("the kernel has no \"tls\" ULP (", strerror(rc), ")")
                                : std::string("this OpenSSL is not 3.0.x");
      if (requires_ktls) {
        return absl::FailedPreconditionError(
            absl::StrCat("ktls = \"require\" but ", why, "; load the tls module or set ktls = \"auto\""));
      }
      fprintf(stderr, "ktlb: kTLS unavailable (%s): using userspace TLS\n", why.c_str());
    }
  }

  if (!cfg.server.access_log.empty()) {
    access_log_fd_.reset(open(cfg.server.access_log.c_str(),
                              O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640));
    if (!access_log_fd_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "access_log: cannot open \"", cfg.server.access_log, "\": ", strerror(errno)));
    }
  }
  // Probers first: workers take their boards when they build a generation.
  health_ = std::make_unique<HealthMonitor>(metrics_.get());
  health_->Update(cfg);
  for (size_t i = 0; i < n; ++i) {
    workers_.push_back(std::make_unique<Worker>(i, snapshot_, metrics_.get(), kernel_ktls,
                                                access_log_fd_.get(), health_.get(), &sockets_));
  }
  // Each worker initialises on its own thread (its ring is single-issuer) and
  // reports back before the server declares itself started.
  std::vector<std::promise<absl::Status>> ready(n);
  std::vector<std::future<absl::Status>> ready_f;
  for (auto& p : ready) ready_f.push_back(p.get_future());
  for (size_t i = 0; i < n; ++i) {
    threads_.emplace_back([this, i, &ready, cpus] {
      if (cpus > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(static_cast<int>(i % static_cast<size_t>(cpus)), &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
      }
      char name[16];
      snprintf(name, sizeof name, "ktlb-w%zu", i);
      pthread_setname_np(pthread_self(), name);
      absl::Status s = workers_[i]->Init();
      bool ok = s.ok();
      ready[i].set_value(std::move(s));
      if (ok) workers_[i]->Run();
    });
  }
  absl::Status first_error;
  for (auto& f : ready_f) {
    absl::Status s = f.get();
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  if (!first_error.ok()) {
    StopAndWait();
    return first_error;
  }
  if (cfg.server.has_admin) {
    admin_ = std::make_unique<AdminServer>(cfg.server.admin_listen, metrics_.get(), &sockets_);
    if (absl::Status s = admin_->Start(); !s.ok()) {
      StopAndWait();
      return s;
    }
  }
  if (size_t n = sockets_.CloseUntaken(); n > 0) {
    fprintf(stderr, "ktlb: %zu inherited listening socket(s) not needed by this config or worker "
            "count: closed (set net.ipv4.tcp_migrate_req = 1 so their backlog moves over)\n", n);
  }
  return absl::OkStatus();
}

void Server::Swap(std::shared_ptr<const Snapshot> snapshot) {
  if (health_) health_->Update(*snapshot->config);
  for (auto& w : workers_) w->Swap(snapshot);
}

Server::InstallResult Server::Install(std::shared_ptr<const Snapshot> snapshot) {
  std::vector<uint64_t> applied, failed;
  for (const auto& w : workers_) {
    applied.push_back(w->swaps_applied());
    failed.push_back(w->swaps_failed());
  }
  Swap(std::move(snapshot));
  // A worker applies a swap at its next loop turn, which the swap's wake-up
  // starts at once; the bound only matters for a worker stuck in a long turn.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  InstallResult r;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    r = InstallResult{};
    for (size_t i = 0; i < workers_.size(); ++i) {
      if (workers_[i]->swaps_failed() != failed[i]) {
        ++r.refused;
      } else if (workers_[i]->swaps_applied() != applied[i]) {
        ++r.applied;
      } else {
        ++r.late;
      }
    }
  } while (r.late > 0 && std::chrono::steady_clock::now() < deadline);
  return r;
}

absl::Status Server::ReopenAccessLog() {
  const std::string& path = snapshot_->config->server.access_log;
  if (!access_log_fd_) return absl::OkStatus();
  UniqueFd fresh(open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640));
  if (!fresh) {
    return absl::FailedPreconditionError(
        absl::StrCat("access_log: cannot open \"", path, "\": ", strerror(errno)));
  }
  // dup3 swaps the file under the same descriptor number atomically: a
  // worker's write in flight lands in the old file or the new, never nowhere.
  if (dup3(fresh.get(), access_log_fd_.get(), O_CLOEXEC) < 0) {
    return absl::InternalError(absl::StrCat("access_log: dup3: ", strerror(errno)));
  }
  return absl::OkStatus();
}

bool Server::WorkersTurned() {
  turns_seen_.resize(workers_.size(), UINT64_MAX);
  bool all = true;
  for (size_t i = 0; i < workers_.size(); ++i) {
    uint64_t turns = metrics_->worker(i).loop_turns.Get();
    all &= turns != turns_seen_[i];
    turns_seen_[i] = turns;
  }
  return all;
}

uint64_t Server::swaps_applied() const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += w->swaps_applied();
  return n;
}

uint64_t Server::swaps_failed() const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += w->swaps_failed();
  return n;
}

void Server::StopAndWait(bool handed_off) {
  // Health checks of an L4 balancer (ECMP, IPVS, NLB) see the host going
  // before its connections are cut: /healthz answers 503 through the drain.
  // After a hand-off the host stays in service: the successor answers on the
  // admin socket from now on.
  if (admin_ && handed_off) admin_->Stop();
  if (admin_) admin_->SetDraining();
  for (auto& w : workers_) w->Stop(handed_off);
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
  access_log_fd_.reset();
  if (admin_) admin_->Stop();
  if (health_) health_->StopAll();
}

}  // namespace ktlb
