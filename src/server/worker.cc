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

Worker::Worker(size_t id, std::shared_ptr<const Snapshot> snapshot, WorkerMetrics* metrics,
               bool kernel_ktls, int access_log_fd)
    : id_(id), kernel_ktls_(kernel_ktls), snapshot_(std::move(snapshot)), metrics_(metrics) {
  access_log_.Init(access_log_fd);
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

Worker::~Worker() {
  for (auto& l : listeners_) {
    if (l->fd >= 0) close(l->fd);
  }
  if (wake_fd_ >= 0) close(wake_fd_);
}

absl::Status Worker::Init() {
  // 256 buffers of 64 KiB (four full TLS records) in the receive ring.
  if (absl::Status s = loop_.Init(Loop::Options{}); !s.ok()) return s;
  handle_ = loop_.AddHandler(this);
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));

  const Config& cfg = config();
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const ListenerConfig& lc = cfg.listeners[i];
    auto lp = std::make_unique<Listener>();
    Listener& l = *lp;
    l.worker = this;
    l.handle = loop_.AddHandler(&l);
    l.index = i;
    l.passthrough = lc.mode == ListenerMode::kPassthrough;
    auto fd = OpenListenSocket(lc.listen.storage, lc.listen.len, 4096);
    if (!fd.ok()) {
      return absl::Status(fd.status().code(), absl::StrCat("listener \"", lc.name, "\" ",
                                                           lc.listen.text, ": ", fd.status().message()));
    }
    l.fd = *fd;
    if (l.passthrough) {  // never decrypts: no TLS context
      listeners_.push_back(std::move(lp));
      continue;
    }
    // Without kernel support OpenSSL need not offer keys nor log secrets.
    ListenerConfig effective = lc;
    if (!kernel_ktls_) effective.ktls = KtlsMode::kOff;
    auto ctx = tls::ServerTlsContext::Create(effective, snapshot_->ListenerCertificates(i),
                                             snapshot_->ticket_keys);
    if (!ctx.ok()) {
      close(l.fd);
      return ctx.status();
    }
    l.tls = *std::move(ctx);
    listeners_.push_back(std::move(lp));
  }
  upstream::Cluster::Limits limits;
  limits.connect_timeout_ms = cfg.server.timeouts.upstream_connect_ms;
  limits.response_timeout_ms = cfg.server.timeouts.upstream_response_ms;
  for (size_t u = 0; u < cfg.upstreams.size(); ++u) {
    limits.max_idle_per_server = cfg.upstreams[u].max_idle_per_server;
    clusters_.push_back(std::make_unique<upstream::Cluster>(
        cfg.upstreams[u], limits, id_, &loop_, &error_log_, &metrics_->upstreams[u],
        metrics_->timeouts.data()));
  }
  return absl::OkStatus();
}

void Worker::Stop() {
  stop_requested_.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t n = write(wake_fd_, &one, sizeof one);
  (void)n;
}

void Worker::ArmAccept(Listener& l) {
  io_uring_sqe* sqe = loop_.Sqe();
  // A tunnel's sockets are read with splice(2) from the worker, which only
  // returns EAGAIN (instead of blocking, or a false EOF) on an O_NONBLOCK
  // TCP socket; io_uring's own operations do not need it.
  int flags = SOCK_CLOEXEC | (l.passthrough ? SOCK_NONBLOCK : 0);
  io_uring_prep_multishot_accept(sqe, l.fd, nullptr, nullptr, flags);
  io_uring_sqe_set_data64(sqe, loop_.Tag(l.handle, 0));
  l.accept_armed = true;
}

void Worker::ArmWake() {
  io_uring_sqe* sqe = loop_.Sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof wake_buf_, 0);
  io_uring_sqe_set_data64(sqe, loop_.Tag(handle_, kWakeRead));
}

void Worker::OnCompletion(uint8_t op, int res, uint32_t flags) {
  (void)flags;
  if (op == kAccessLogWrite) return access_log_.OnWrite(res);
  if (op == kWakeRead && !stop_requested_.load(std::memory_order_acquire)) ArmWake();
}

void Worker::Run() {
  for (auto& l : listeners_) ArmAccept(*l);
  ArmWake();
  for (;;) {
    if (stop_requested_.load(std::memory_order_acquire) && !draining_) BeginDrain();
    if (draining_ && clients_.live() == 0 && tunnels_.live() == 0) break;
    if (draining_ && now_ms() >= drain_deadline_ms_) {
      error_log_.Log(ErrorLog::Level::kWarn, "worker", "%zu: drain timeout, closing %zu connections",
                     id_, clients_.live() + tunnels_.live());
      CountTimeout(TimeoutKind::kDrain);
      // What the deadline cuts still gets its access log line.
      clients_.ForEachSlot([](Http1Connection* c) { c->LogIfPending("drain_timeout"); });
      tunnels_.ForEachSlot([](TunnelConnection* t) { t->LogIfOpen("drain_timeout"); });
      break;
    }
    uint32_t wait = kMaxWaitMs;
    if (draining_) {
      wait = static_cast<uint32_t>(std::min<uint64_t>(
          wait, drain_deadline_ms_ > now_ms() ? drain_deadline_ms_ - now_ms() : 0));
    }
    loop_.Turn(wait);
    metrics_->loop_turns.Inc();
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
  for (auto& l : listeners_) {
    if (l->fd >= 0) {
      close(l->fd);
      l->fd = -1;
    }
  }
}

void Worker::OnAccept(Listener& l, int res, uint32_t flags) {
  if (!(flags & IORING_CQE_F_MORE)) {
    l.accept_armed = false;
    if (!draining_ && l.fd >= 0) ArmAccept(l);
  }
  if (res < 0) {
    if (res != -ECANCELED) {
      error_log_.Log(ErrorLog::Level::kWarn, "tcp", "accept on %s failed: %s",
                     config().listeners[l.index].listen.text.c_str(), strerror(-res));
    }
    return;
  }
  if (draining_) {
    close(res);
    return;
  }
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  getpeername(res, reinterpret_cast<sockaddr*>(&peer), &plen);
  ListenerMetrics& lm = metrics_->listeners[l.index];
  lm.accepted.Inc();
  lm.active.Inc();
  if (l.passthrough) {
    tunnels_.Acquire()->Start(this, l.index, res, peer);
    return;
  }
  Http1Connection* c = clients_.Acquire();
  c->Start(this, l.index, res, peer, *l.tls);
}

void Worker::BeginDrain() {
  draining_ = true;
  drain_deadline_ms_ = now_ms() + config().server.timeouts.drain_ms;
  for (auto& lp : listeners_) {
    Listener& l = *lp;
    if (l.accept_armed) loop_.Cancel(loop_.Tag(l.handle, 0));
    // shutdown() takes a listening socket out of the reuseport group at once
    // (a pending io_uring accept would otherwise keep it listening until the
    // ring goes away); connections still in its backlog are reset.
    if (l.fd >= 0) {
      shutdown(l.fd, SHUT_RDWR);
      close(l.fd);
      l.fd = -1;
    }
  }
  clients_.ForEachSlot([](Http1Connection* c) { c->Drain(); });
  tunnels_.ForEachSlot([](TunnelConnection* t) { t->Drain(); });
  for (auto& c : clusters_) c->Drain();
}

void Worker::ReleaseClient(Http1Connection* c) { clients_.Release(c); }

void Worker::ReleaseTunnel(TunnelConnection* t) { tunnels_.Release(t); }

}  // namespace ktlb
