#include "worker.h"

#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ktlb/sockets.h"
#include "ktlb/splice_pipe.h"

namespace ktlb {

namespace {
constexpr uint32_t kMaxWaitMs = 1000;
}  // namespace

Worker::Worker(size_t id, std::shared_ptr<const Snapshot> snapshot, MetricsRegistry* registry,
               bool kernel_ktls, int access_log_fd, const HealthMonitor* health,
               ListenSockets* sockets)
    : id_(id),
      kernel_ktls_(kernel_ktls),
      initial_(std::move(snapshot)),
      registry_(registry),
      health_(health),
      metrics_(&registry->worker(id)),
      sockets_(sockets) {
  access_log_.Init(access_log_fd, &error_log_);
}

std::string_view Worker::log_time() {
  if (log_time_at_ != now_ms()) {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    gmtime_r(&ts.tv_sec, &t);
    snprintf(log_time_, sizeof(log_time_), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
             ts.tv_nsec / 1'000'000);
    log_time_at_ = now_ms();
  }
  return log_time_;
}

Worker::~Worker() = default;

absl::Status Worker::Init() {
  // 256 buffers of 64 KiB (four full TLS records) in the receive ring.
  if (absl::Status s = loop_.Init(Loop::Options{}); !s.ok()) return s;
  handle_ = loop_.AddHandler(this);
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));

  auto gen = BuildGeneration(std::move(initial_));
  if (!gen.ok()) return gen.status();
  if (absl::Status st = MatchListeners(**gen); !st.ok()) return st;
  generations_.push_back(*std::move(gen));
  current_ = generations_.back().get();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Generation>> Worker::BuildGeneration(
    std::shared_ptr<const Snapshot> snapshot) {
  auto gen = std::make_unique<Generation>(std::move(snapshot));
  const Config& cfg = gen->config();
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const ListenerConfig& lc = cfg.listeners[i];
    gen->listener_metrics_.push_back(&registry_->Listener(id_, lc.name));
    if (lc.mode == ListenerMode::kPassthrough) {  // never decrypts: no TLS context
      gen->tls_.push_back(nullptr);
      continue;
    }
    auto ctx = gen->snapshot().NewServerTlsContext(i, kernel_ktls_);
    if (!ctx.ok()) return ctx.status();
    gen->tls_.push_back(*std::move(ctx));
  }
  upstream::Cluster::Limits limits;
  limits.connect_timeout_ms = cfg.server.timeouts.upstream_connect_ms;
  limits.response_timeout_ms = cfg.server.timeouts.upstream_response_ms;
  for (const UpstreamConfig& uc : cfg.upstreams) {
    limits.max_idle_per_server = uc.max_idle_per_server;
    gen->clusters_.push_back(std::make_unique<upstream::Cluster>(
        uc, limits, id_, &loop_, &error_log_, &registry_->Upstream(id_, uc.name),
        metrics_->timeouts.data(), health_ != nullptr ? health_->Board(uc) : nullptr));
    std::vector<ServerMetrics*> server_metrics;
    for (const UpstreamServer& us : uc.servers) {
      server_metrics.push_back(&registry_->Server(id_, uc.name, us.address.text));
    }
    gen->clusters_.back()->SetServerMetrics(std::move(server_metrics));
    // Upstream TLS: the snapshot's context, parallel to cfg.upstreams.
    const size_t u = static_cast<size_t>(&uc - cfg.upstreams.data());
    if (u < gen->snapshot().upstream_tls.size() && gen->snapshot().upstream_tls[u] != nullptr) {
      gen->clusters_.back()->SetTls(gen->snapshot().upstream_tls[u], kernel_ktls_);
    }
    // A server ejected a moment ago is still failing: a reload, or a host
    // name's new address set, must not hand it a fresh set of attempts.
    if (current_ != nullptr) {
      for (const auto& old : current_->clusters()) {
        if (old->name() == uc.name) gen->clusters_.back()->InheritFrom(*old);
      }
    }
  }
  return gen;
}

absl::Status Worker::MatchListeners(const Generation& gen) {
  const Config& cfg = gen.config();
  // A listener is kept (its socket and backlog too) when the new config has
  // one of the same name, address and mode.
  std::vector<Listener*> kept(cfg.listeners.size(), nullptr);
  std::vector<std::unique_ptr<Listener>> opened;
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const ListenerConfig& lc = cfg.listeners[i];
    const bool passthrough = lc.mode == ListenerMode::kPassthrough;
    for (auto& l : listeners_) {
      if (current_ != nullptr && l->fd && l->passthrough == passthrough) {
        const ListenerConfig& old = current_->config().listeners[l->index];
        if (old.name == lc.name && old.listen.text == lc.listen.text) kept[i] = l.get();
      }
    }
    if (kept[i] != nullptr) continue;
    auto lp = std::make_unique<Listener>();
    // A predecessor's socket (binary upgrade) comes with its backlog.
    if (sockets_ != nullptr) lp->fd = sockets_->Take(lc.listen.text);
    if (!lp->fd) {
      auto fd = OpenListenSocket(lc.listen.storage, lc.listen.len, 4096);
      if (!fd.ok()) {
        return absl::Status(fd.status().code(),
                            absl::StrCat("listener \"", lc.name, "\" ", lc.listen.text, ": ",
                                         fd.status().message()));
      }
      lp->fd.reset(*fd);
    }
    lp->worker = this;
    lp->index = i;
    lp->address = lc.listen.text;
    lp->passthrough = passthrough;
    opened.push_back(std::move(lp));
  }
  // Nothing can fail from here on.
  std::vector<std::unique_ptr<Listener>> next;
  for (auto& l : listeners_) {
    bool keep = false;
    for (size_t i = 0; i < kept.size(); ++i) {
      if (kept[i] == l.get()) {
        l->index = i;
        keep = true;
      }
    }
    if (keep) {
      next.push_back(std::move(l));
    } else {
      CloseListener(std::move(l));  // its connections finish on their own generation
    }
  }
  const bool running = current_ != nullptr;
  for (auto& l : opened) {
    if (sockets_ != nullptr) sockets_->Register(l->address, l->fd.get());
    l->handle = loop_.AddHandler(l.get());
    if (running) ArmAccept(*l);
    next.push_back(std::move(l));
  }
  listeners_.swap(next);
  return absl::OkStatus();
}

void Worker::CloseListener(std::unique_ptr<Listener> lp) {
  Listener& l = *lp;
  if (l.accept_armed) loop_.Cancel(loop_.Tag(l.handle, 0));
  if (sockets_ != nullptr && l.fd) sockets_->Unregister(l.fd.get());
  // shutdown() takes a listening socket out of the reuseport group at once
  // (a pending io_uring accept would otherwise keep it listening until the
  // ring goes away); connections still in its backlog are reset. Not when
  // handed off: the socket is the successor's now, backlog and all.
  const bool shared = handed_off_.load(std::memory_order_relaxed) ||
                      (sockets_ != nullptr && sockets_->shared());
  if (l.fd && !shared) shutdown(l.fd.get(), SHUT_RDWR);
  l.fd.reset();
  if (l.accept_armed) {
    closing_listeners_.push_back(std::move(lp));
  } else {
    loop_.RemoveHandler(l.handle);
  }
}

void Worker::Swap(std::shared_ptr<const Snapshot> snapshot) {
  {
    std::lock_guard<std::mutex> lock(swap_mu_);
    pending_ = std::move(snapshot);
  }
  swap_pending_.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t n = write(wake_fd_.get(), &one, sizeof one);
  (void)n;
}

void Worker::ApplyPendingSwap() {
  if (!swap_pending_.exchange(false, std::memory_order_acquire) || draining_) return;
  std::shared_ptr<const Snapshot> snapshot;
  {
    std::lock_guard<std::mutex> lock(swap_mu_);
    snapshot.swap(pending_);
  }
  if (!snapshot) return;
  auto gen = BuildGeneration(std::move(snapshot));
  absl::Status st = gen.ok() ? MatchListeners(**gen) : gen.status();
  if (!st.ok()) {
    error_log_.Log(ErrorLog::Level::kError, "config", "worker %zu keeps its config: %s", id_,
                   std::string(st.message()).c_str());
    swaps_failed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Parked upstream connections of the old generation are not reused.
  for (size_t u = 0; u < current_->config().upstreams.size(); ++u) current_->cluster(u)->Drain();
  generations_.push_back(*std::move(gen));
  current_ = generations_.back().get();
  swaps_applied_.fetch_add(1, std::memory_order_relaxed);
  housekeeping_due_ = true;
}

void Worker::Housekeeping() {
  housekeeping_due_ = false;
  PruneGenerations();
  for (size_t i = 0; i < closing_listeners_.size();) {
    if (closing_listeners_[i]->accept_armed) {
      ++i;
      continue;
    }
    loop_.RemoveHandler(closing_listeners_[i]->handle);
    closing_listeners_.erase(closing_listeners_.begin() + static_cast<long>(i));
  }
}

void Worker::PruneGenerations() {
  for (size_t i = 0; i + 1 < generations_.size();) {
    Generation& g = *generations_[i];
    bool busy = g.refs() > 0;
    for (size_t u = 0; !busy && u < g.config().upstreams.size(); ++u) {
      busy = g.cluster(u)->live() > 0;  // connections still closing
    }
    if (busy) {
      ++i;
    } else {
      generations_.erase(generations_.begin() + static_cast<long>(i));
    }
  }
}

void Worker::Stop(bool handed_off) {
  if (handed_off) handed_off_.store(true, std::memory_order_relaxed);
  stop_requested_.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t n = write(wake_fd_.get(), &one, sizeof one);
  (void)n;
}

void Worker::ArmAccept(Listener& l) {
  io_uring_sqe* sqe = loop_.Sqe();
  // A tunnel's sockets are read with splice(2) from the worker, which only
  // returns EAGAIN (instead of blocking, or a false EOF) on an O_NONBLOCK
  // TCP socket; io_uring's own operations do not need it.
  int flags = SOCK_CLOEXEC | (l.passthrough ? SOCK_NONBLOCK : 0);
  io_uring_prep_multishot_accept(sqe, l.fd.get(), nullptr, nullptr, flags);
  io_uring_sqe_set_data64(sqe, loop_.Tag(l.handle, 0));
  l.accept_armed = true;
}

void Worker::ArmWake() {
  io_uring_sqe* sqe = loop_.Sqe();
  io_uring_prep_read(sqe, wake_fd_.get(), &wake_buf_, sizeof wake_buf_, 0);
  io_uring_sqe_set_data64(sqe, loop_.Tag(handle_, kWakeRead));
}

void Worker::OnCompletion(uint8_t op, int res, uint32_t flags) {
  (void)flags;
  if (op == kAccessLogWrite) return access_log_.OnWrite(res);
  if (op != kWakeRead) return;
  ApplyPendingSwap();
  if (!stop_requested_.load(std::memory_order_acquire)) ArmWake();
}

void Worker::Run() {
  for (auto& l : listeners_) ArmAccept(*l);
  ArmWake();
  for (;;) {
    if (stop_requested_.load(std::memory_order_acquire) && !draining_) BeginDrain();
    if (draining_ && !listeners_.empty() && now_ms() >= close_listeners_at_ms_) CloseListeners();
    if (draining_ && listeners_.empty() && clients_.live() == 0 && tunnels_.live() == 0) break;
    if (draining_ && now_ms() >= drain_deadline_ms_) {
      error_log_.Log(ErrorLog::Level::kWarn, "worker", "%zu: drain timeout, closing %zu connections",
                     id_, clients_.live() + tunnels_.live());
      CountTimeout(TimeoutKind::kDrain);
      // What the deadline cuts still gets its access log line.
      clients_.ForEachSlot([](Http1Connection* c) { c->LogIfPending("drain_timeout"); });
      tunnels_.ForEachSlot([](Tunnel* t) { t->LogIfOpen("drain_timeout"); });
      break;
    }
    uint32_t wait = kMaxWaitMs;
    if (draining_) {
      uint64_t until = listeners_.empty() ? drain_deadline_ms_ : close_listeners_at_ms_;
      wait = static_cast<uint32_t>(
          std::min<uint64_t>(wait, until > now_ms() ? until - now_ms() : 0));
    }
    loop_.Turn(wait);
    metrics_->loop_turns.Inc();
    if (housekeeping_due_ || (generations_.size() > 1 && metrics_->loop_turns.Get() % 64 == 0)) {
      Housekeeping();  // also catches an old cluster's last connection closing late
    }
    metrics_->log_lines.Set(error_log_.lines_total());
    metrics_->log_lines_suppressed.Set(error_log_.lines_suppressed());
    access_log_.Flush(loop_.ring(), loop_.Tag(handle_, kAccessLogWrite));
  }
  // The log write in flight reads our buffer: wait for it, then write the rest.
  const uint64_t log_tag = loop_.Tag(handle_, kAccessLogWrite);
  while (access_log_.inflight()) {
    loop_.DrainCompletions(100, [&](uint64_t tag, int res) {
      if (tag == log_tag) access_log_.OnWrite(res);
    });
  }
  access_log_.FlushBlocking();
  // Whatever is left after the drain deadline is cut; the process exits next.
  for (auto& l : listeners_) l->fd.reset();
  loop_.Stop();
}

void Worker::OnAccept(Listener& l, int res, uint32_t flags) {
  if (!(flags & IORING_CQE_F_MORE)) {
    l.accept_armed = false;
    // Open: serving, or draining's grace. Not a socket that stopped
    // listening (EINVAL: shut down elsewhere): that would spin.
    if (l.fd && res != -EINVAL && res != -ENOTSOCK) ArmAccept(l);
    if (!l.fd) housekeeping_due_ = true;  // a closed listener's accept ended
  }
  if (res < 0) {
    if (res != -ECANCELED) {
      error_log_.Log(ErrorLog::Level::kWarn, "tcp", "accept on %s failed: %s", l.address.c_str(),
                     strerror(-res));
      // EMFILE/ENFILE and the like: the multishot accept ended; it is armed
      // again above, and the failure is rate-limited in the log.
    }
    return;
  }
  // Closed on the way out unless a connection takes it: a socket accepted
  // just before its listener closed is not served. After a hand-off the
  // client connected to a socket the successor serves too: it is served
  // here rather than dropped. During draining's grace the listener is still
  // open: served (in drain mode: one request, or a GOAWAY'd h2 connection).
  UniqueFd accepted(res);
  if (!l.fd && !handed_off_.load(std::memory_order_relaxed)) return;
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  getpeername(res, reinterpret_cast<sockaddr*>(&peer), &plen);
  Generation* gen = current_;
  ListenerMetrics& lm = gen->listener_metrics(l.index);
  lm.accepted.Inc();
  lm.active.Inc();
  gen->Ref();
  if (l.passthrough) {
    Tunnel* t = tunnels_.Acquire();
    t->gen = gen;
    t->Start(this, passthrough::RelayContext{&gen->config(), &gen->router(), l.index, &lm,
                                             gen->clusters()},
             accepted.release(), peer);
    return;
  }
  clients_.Acquire()->Start(this, gen, l.index, accepted.release(), peer);
}

void Worker::BeginDrain() {
  draining_ = true;
  // The grace keeps accepting while /healthz already says 503, so that an L4
  // balancer's health checks move new connections elsewhere before the port
  // refuses them (HAProxy's "grace"). Not after a hand-off: the successor
  // accepts on these sockets already.
  uint32_t grace = handed_off_.load(std::memory_order_relaxed) ? 0 : config().server.drain_grace_ms;
  close_listeners_at_ms_ = now_ms() + grace;
  drain_deadline_ms_ = close_listeners_at_ms_ + config().server.timeouts.drain_ms;
  if (grace == 0) CloseListeners();
  clients_.ForEachSlot([](Http1Connection* c) { c->Drain(); });
  tunnels_.ForEachSlot([](Tunnel* t) { t->Drain(); });
  for (auto& g : generations_) {
    for (size_t u = 0; u < g->config().upstreams.size(); ++u) g->cluster(u)->Drain();
  }
}

void Worker::CloseListeners() {
  std::vector<std::unique_ptr<Listener>> all;
  all.swap(listeners_);
  for (auto& l : all) CloseListener(std::move(l));
}

void Worker::ReleaseClient(Http1Connection* c, Generation* gen) {
  clients_.Release(c);
  gen->Unref();
  if (gen != current_ && gen->refs() == 0) housekeeping_due_ = true;
}

void Worker::OnRelayReleased(passthrough::Relay* relay) {
  Tunnel* t = static_cast<Tunnel*>(relay);
  Generation* gen = t->gen;
  tunnels_.Release(t);
  gen->Unref();
  if (gen != current_ && gen->refs() == 0) housekeeping_due_ = true;
}

}  // namespace ktlb
