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
constexpr unsigned kRingEntries = 1024;
constexpr uint32_t kRecvBufCount = 256;       // power of two
constexpr uint32_t kRecvBufSize = 64 * 1024;  // four full TLS records
constexpr uint16_t kBufGroup = 1;
constexpr uint32_t kMaxWaitMs = 1000;
}  // namespace

Worker::Worker(size_t id, std::shared_ptr<const Snapshot> snapshot, WorkerMetrics* metrics,
               bool kernel_ktls, int access_log_fd)
    : id_(id), kernel_ktls_(kernel_ktls), snapshot_(std::move(snapshot)), metrics_(metrics) {
  access_log_.Init(access_log_fd);
}

std::string_view Worker::log_time() {
  if (log_time_at_ != now_ms_) {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    gmtime_r(&ts.tv_sec, &t);
    snprintf(log_time_, sizeof(log_time_), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
             ts.tv_nsec / 1'000'000);
    log_time_at_ = now_ms_;
  }
  return log_time_;
}

void Worker::ArmPoll(int fd, bool out, uint64_t user_data, bool* armed, int* inflight) {
  if (*armed) return;
  io_uring_sqe* sqe = ring_.Sqe();
  io_uring_prep_poll_add(sqe, fd, out ? POLLOUT : POLLIN);
  io_uring_sqe_set_data64(sqe, user_data);
  *armed = true;
  ++*inflight;
}

bool Worker::TakePipe(int* read_fd, int* write_fd) {
  if (!pipes_.empty()) {
    *read_fd = pipes_.back().first;
    *write_fd = pipes_.back().second;
    pipes_.pop_back();
    return true;
  }
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  // Larger than the 64 KiB default: fewer splice round trips per body.
  fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(SplicePipe::kPipeBytes));
  *read_fd = p[0];
  *write_fd = p[1];
  return true;
}

void Worker::ReturnPipe(int read_fd, int write_fd) {
  if (pipes_.size() < 64) {
    pipes_.emplace_back(read_fd, write_fd);
  } else {
    close(read_fd);
    close(write_fd);
  }
}

Worker::~Worker() {
  for (auto [r, w] : pipes_) {
    close(r);
    close(w);
  }
  for (Listener& l : listeners_) {
    if (l.fd >= 0) close(l.fd);
  }
  if (wake_fd_ >= 0) close(wake_fd_);
}

absl::Status Worker::Init() {
  if (absl::Status s = ring_.Init(kRingEntries); !s.ok()) return s;
  if (absl::Status s = buffers_.Init(ring_.raw(), kBufGroup, kRecvBufCount, kRecvBufSize); !s.ok()) {
    return s;
  }
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));

  const Config& cfg = config();
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const ListenerConfig& lc = cfg.listeners[i];
    Listener l;
    l.index = i;
    l.passthrough = lc.mode == ListenerMode::kPassthrough;
    auto fd = OpenListenSocket(lc.listen.storage, lc.listen.len, 4096);
    if (!fd.ok()) {
      return absl::Status(fd.status().code(), absl::StrCat("listener \"", lc.name, "\" ",
                                                           lc.listen.text, ": ", fd.status().message()));
    }
    l.fd = *fd;
    if (l.passthrough) {  // never decrypts: no TLS context
      listeners_.push_back(std::move(l));
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
    listeners_.push_back(std::move(l));
  }
  idle_.resize(cfg.upstreams.size());
  for (size_t u = 0; u < cfg.upstreams.size(); ++u) {
    idle_[u].resize(cfg.upstreams[u].servers.size());
    balancers_.emplace_back(id_);
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
  io_uring_sqe* sqe = ring_.Sqe();
  // A tunnel's sockets are read with splice(2) from the worker, which only
  // returns EAGAIN (instead of blocking, or a false EOF) on an O_NONBLOCK
  // TCP socket; io_uring's own operations do not need it.
  int flags = SOCK_CLOEXEC | (l.passthrough ? SOCK_NONBLOCK : 0);
  io_uring_prep_multishot_accept(sqe, l.fd, nullptr, nullptr, flags);
  io_uring_sqe_set_data64(
      sqe, UserData{static_cast<uint8_t>(OpKind::kAccept), 0, 0, static_cast<uint32_t>(l.index)}.Pack());
  l.accept_armed = true;
}

void Worker::ArmWake() {
  io_uring_sqe* sqe = ring_.Sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof wake_buf_, 0);
  io_uring_sqe_set_data64(sqe, UserData{static_cast<uint8_t>(OpKind::kWake), 0, 0, 0}.Pack());
}

void Worker::Run() {
  now_ms_ = NowMs();
  for (Listener& l : listeners_) ArmAccept(l);
  ArmWake();
  for (;;) {
    if (stop_requested_.load(std::memory_order_acquire) && !draining_) BeginDrain();
    if (draining_ && clients_.live() == 0 && tunnels_.live() == 0) break;
    if (draining_ && now_ms_ >= drain_deadline_ms_) {
      fprintf(stderr, "ktlb: worker %zu: drain timeout, closing %zu connections\n", id_,
              clients_.live() + tunnels_.live());
      CountTimeout(TimeoutKind::kDrain);
      // What the deadline cuts still gets its access log line.
      clients_.ForEachSlot([](ClientConnection* c) { c->LogIfPending("drain_timeout"); });
      tunnels_.ForEachSlot([](TunnelConnection* t) { t->LogIfOpen("drain_timeout"); });
      break;
    }

    ring_.SubmitAndWait(NextWaitMs());
    now_ms_ = NowMs();
    metrics_->loop_turns.Inc();

    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring_.raw(), head, cqe) {
      HandleCompletion(cqe);
      ++seen;
    }
    io_uring_cq_advance(ring_.raw(), seen);

    ExpireTimers();
    FlushPending();
    access_log_.Flush(ring_, UserData{static_cast<uint8_t>(OpKind::kAccessLog), 0, 0, 0}.Pack());
    if (!deferred_recvs_.empty()) {
      std::vector<uint64_t> retry;
      retry.swap(deferred_recvs_);
      for (uint64_t ud : retry) {
        UserData d = UserData::Unpack(ud);
        if (d.kind == static_cast<uint8_t>(OpKind::kClient)) {
          if (ClientConnection* c = clients_.Get(d.index, d.gen)) c->RetryRecv();
        } else if (d.kind == static_cast<uint8_t>(OpKind::kTunnel)) {
          if (TunnelConnection* t = tunnels_.Get(d.index, d.gen)) {
            t->RetryRecv(static_cast<TunnelOp>(d.op));
          }
        } else if (UpstreamConnection* u = upstreams_.Get(d.index, d.gen)) {
          u->RetryRecv();
        }
      }
    }
  }
  // The log write in flight reads our buffer: wait for it, then write the rest.
  while (access_log_.inflight()) {
    ring_.SubmitAndWait(100);
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring_.raw(), head, cqe) {
      if (UserData::Unpack(io_uring_cqe_get_data64(cqe)).kind ==
          static_cast<uint8_t>(OpKind::kAccessLog)) {
        access_log_.OnWrite(cqe->res);
      }
      ++seen;
    }
    io_uring_cq_advance(ring_.raw(), seen);
  }
  access_log_.FlushBlocking();
  // Whatever is left after the drain deadline is cut; the process exits next.
  for (Listener& l : listeners_) {
    if (l.fd >= 0) {
      close(l.fd);
      l.fd = -1;
    }
  }
}

void Worker::FlushPending() {
  // Flushing may schedule more (a flush can finish an exchange that queues a
  // close_notify); loop until quiet.
  while (!pending_flushes_.empty()) {
    flush_scratch_.clear();
    flush_scratch_.swap(pending_flushes_);
    for (uint64_t ud : flush_scratch_) {
      UserData d = UserData::Unpack(ud);
      if (ClientConnection* c = clients_.Get(d.index, d.gen)) c->OnScheduledFlush();
    }
  }
}

uint32_t Worker::NextWaitMs() const {
  if (!deferred_recvs_.empty()) return 1;
  uint64_t next = UINT64_MAX;
  for (const DeadlineQueue& q : timers_) next = std::min(next, q.NextDeadline());
  if (draining_) next = std::min(next, drain_deadline_ms_);
  if (next == UINT64_MAX) return kMaxWaitMs;
  if (next <= now_ms_) return 0;
  return static_cast<uint32_t>(std::min<uint64_t>(next - now_ms_, kMaxWaitMs));
}

void Worker::ExpireTimers() {
  for (uint8_t k = 0; k < kTimerKinds; ++k) {
    while (DeadlineNode* n = timers_[k].PopExpired(now_ms_)) {
      n->target->OnDeadline(k);
    }
  }
}

void Worker::HandleCompletion(io_uring_cqe* cqe) {
  UserData d = UserData::Unpack(io_uring_cqe_get_data64(cqe));
  switch (static_cast<OpKind>(d.kind)) {
    case OpKind::kAccept: {
      for (Listener& l : listeners_) {
        if (l.index == d.index) OnAccept(l, cqe->res, cqe->flags);
      }
      return;
    }
    case OpKind::kAccessLog:
      access_log_.OnWrite(cqe->res);
      return;
    case OpKind::kWake:
      // op 0 is the eventfd read; other ops are cancellations we ignore.
      if (d.op == 0 && !stop_requested_.load(std::memory_order_acquire)) ArmWake();
      return;
    case OpKind::kClient: {
      ClientConnection* c = clients_.Get(d.index, d.gen);
      if (c == nullptr) return;
      switch (static_cast<ConnOp>(d.op)) {
        case ConnOp::kRecv: c->OnRecv(cqe->res, cqe->flags); break;
        case ConnOp::kSend: c->OnSend(cqe->res); break;
        case ConnOp::kRecvMsg: c->OnRecvMsg(cqe->res); break;
        case ConnOp::kRecvExact: c->OnRecvExact(cqe->res); break;
        case ConnOp::kPollIn:
        case ConnOp::kPollOut: c->OnSplicePoll(d.op, cqe->res); break;
        default: break;
      }
      return;
    }
    case OpKind::kTunnel: {
      TunnelConnection* t = tunnels_.Get(d.index, d.gen);
      if (t == nullptr) return;
      switch (static_cast<TunnelOp>(d.op)) {
        case TunnelOp::kRecv: t->OnRecv(cqe->res, cqe->flags); break;
        case TunnelOp::kConnect: t->OnConnect(cqe->res); break;
        case TunnelOp::kSend: t->OnSend(cqe->res); break;
        case TunnelOp::kClientIn:
        case TunnelOp::kClientOut:
        case TunnelOp::kBackendIn:
        case TunnelOp::kBackendOut: t->OnPoll(static_cast<TunnelOp>(d.op), cqe->res); break;
        case TunnelOp::kUpRecv:
        case TunnelOp::kDownRecv:
          t->OnCopyRecv(static_cast<TunnelOp>(d.op), cqe->res, cqe->flags);
          break;
        case TunnelOp::kUpSend:
        case TunnelOp::kDownSend: t->OnCopySend(static_cast<TunnelOp>(d.op), cqe->res); break;
      }
      return;
    }
    case OpKind::kUpstream: {
      UpstreamConnection* u = upstreams_.Get(d.index, d.gen);
      if (u == nullptr) return;
      switch (static_cast<ConnOp>(d.op)) {
        case ConnOp::kRecv: u->OnRecv(cqe->res, cqe->flags); break;
        case ConnOp::kSend: u->OnSend(cqe->res); break;
        case ConnOp::kConnect: u->OnConnect(cqe->res); break;
        case ConnOp::kPollIn:
        case ConnOp::kPollOut: u->OnSplicePoll(d.op, cqe->res); break;
        default: break;
      }
      return;
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
      fprintf(stderr, "ktlb: tcp: accept on %s failed: %s\n",
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
  ClientConnection* c = clients_.Acquire();
  c->Start(this, l.index, res, peer, *l.tls);
}

void Worker::BeginDrain() {
  draining_ = true;
  drain_deadline_ms_ = now_ms_ + config().server.timeouts.drain_ms;
  for (Listener& l : listeners_) {
    if (l.accept_armed) {
      io_uring_sqe* sqe = ring_.Sqe();
      io_uring_prep_cancel64(sqe, UserData{static_cast<uint8_t>(OpKind::kAccept), 0, 0,
                                           static_cast<uint32_t>(l.index)}.Pack(), 0);
      io_uring_sqe_set_data64(sqe, UserData{static_cast<uint8_t>(OpKind::kWake), 1, 0, 0}.Pack());
    }
    // shutdown() takes a listening socket out of the reuseport group at once
    // (a pending io_uring accept would otherwise keep it listening until the
    // ring goes away); connections still in its backlog are reset.
    if (l.fd >= 0) {
      shutdown(l.fd, SHUT_RDWR);
      close(l.fd);
      l.fd = -1;
    }
  }
  clients_.ForEachSlot([](ClientConnection* c) { c->Drain(); });
  tunnels_.ForEachSlot([](TunnelConnection* t) { t->Drain(); });
  for (auto& per_upstream : idle_) {
    for (auto& per_server : per_upstream) {
      std::vector<UpstreamConnection*> conns;
      conns.swap(per_server);
      for (UpstreamConnection* u : conns) u->CloseIdle();
    }
  }
}

void Worker::ReleaseClient(ClientConnection* c) { clients_.Release(c); }

void Worker::ReleaseTunnel(TunnelConnection* t) { tunnels_.Release(t); }

UpstreamConnection* Worker::AcquireUpstream() { return upstreams_.Acquire(); }

void Worker::ReleaseUpstream(UpstreamConnection* u) { upstreams_.Release(u); }

UpstreamConnection* Worker::TakeIdleUpstream(size_t upstream, size_t server) {
  auto& list = idle_[upstream][server];
  if (list.empty()) return nullptr;
  UpstreamConnection* u = list.back();
  list.pop_back();
  return u;
}

bool Worker::ParkIdleUpstream(UpstreamConnection* u) {
  if (draining_) return false;
  auto& list = idle_[u->upstream()][u->server()];
  if (list.size() >= config().upstreams[u->upstream()].max_idle_per_server) return false;
  list.push_back(u);
  return true;
}

void Worker::ForgetIdleUpstream(UpstreamConnection* u) {
  auto& list = idle_[u->upstream()][u->server()];
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] == u) {
      list.erase(list.begin() + static_cast<long>(i));
      return;
    }
  }
}

}  // namespace ktlb
