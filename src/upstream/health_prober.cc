#include "ktlb/health_prober.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <string_view>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ktlb/sockets.h"

namespace ktlb::upstream {

namespace {

// Enough for any status line; the rest of the response is never read.
constexpr size_t kMaxProbeResponse = 4096;

uint64_t MonotonicMs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

// "HTTP/1.1 204 No Content\r\n..." -> 204; 0 while no full line is there;
// -1 when the first line is not an HTTP status line.
int StatusOf(std::string_view in) {
  const size_t eol = in.find('\n');
  if (eol == std::string_view::npos) return in.size() >= kMaxProbeResponse ? -1 : 0;
  std::string_view line = in.substr(0, eol);
  if (!line.starts_with("HTTP/1.") || line.size() < 12 || line[8] != ' ') return -1;
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return -1;
    status = status * 10 + (line[i] - '0');
  }
  return status >= 100 ? status : -1;
}

}  // namespace

struct HealthProber::Probe {
  Probe(size_t i, const SocketAddress& a, const HealthCheckConfig& c)
      : index(i), address(a), counter(c.rise, c.fall) {}
  enum class Phase { kIdle, kConnecting, kHandshaking, kSending, kReading };

  size_t index;  // the server's place in the upstream (and on the board)
  ServerHealthMetrics* metrics = nullptr;  // may be null
  SocketAddress address;
  std::string host;  // the name it was resolved from, "" for an address
  HealthCounter counter;
  Phase phase = Phase::kIdle;
  UniqueFd fd;
  uint64_t due_ms = 0;       // kIdle: when the next probe starts
  uint64_t deadline_ms = 0;  // otherwise: when this one times out
  uint64_t started_ms = 0;
  std::string out;
  size_t out_off = 0;
  std::string in;
  short events = POLLOUT;  // what the current phase waits for
  UniqueSsl ssl;            // TLS upstreams, from the connect to the end
  tls::SessionSlot session;
};

HealthProber::HealthProber(const UpstreamConfig& upstream, std::shared_ptr<HealthBoard> board,
                           UpstreamHealthMetrics* metrics,
                           std::vector<ServerHealthMetrics*> server_metrics)
    : name_(upstream.name),
      config_(upstream.health),
      board_(std::move(board)),
      metrics_(metrics),
      rng_(std::random_device{}()) {
  if (upstream.tls.enabled) {
    // The probes' own context (the prober outlives snapshots and reloads
    // restart it when the settings change).
    auto ctx = tls::ClientTlsContext::Create(upstream.tls, "");
    if (ctx.ok()) {
      tls_ = *std::move(ctx);
    } else {
      tls_error_ = std::string(ctx.status().message());
    }
  }
  for (const UpstreamServer& s : upstream.servers) {
    probes_.push_back(std::make_unique<Probe>(probes_.size(), s.address, config_));
    probes_.back()->host = s.host;
    if (probes_.size() <= server_metrics.size()) {
      probes_.back()->metrics = server_metrics[probes_.size() - 1];
      // A new prober starts from "up" (the board's start), whatever an
      // earlier one of the same server last said.
      if (probes_.back()->metrics != nullptr) probes_.back()->metrics->down.Set(0);
    }
  }
  if (metrics_ != nullptr) metrics_->healthy.Set(board_->healthy());
}

HealthProber::~HealthProber() { Stop(); }

void HealthProber::SeedDown(size_t i) {
  probes_[i]->counter.SeedDown();
  board_->Set(i, false);
  if (probes_[i]->metrics != nullptr) probes_[i]->metrics->down.Set(1);
  if (metrics_ != nullptr) metrics_->healthy.Set(board_->healthy());
}

bool HealthProber::Start() {
  wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake_.get() < 0) return false;
  const uint64_t now = MonotonicMs();
  // The first round is spread over a tenth of the interval, not fired at once.
  for (auto& p : probes_) p->due_ms = now + Jittered(config_.interval_ms) / 10;
  thread_ = std::thread([this] { Run(); });
  return true;
}

void HealthProber::Stop() {
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
  thread_.join();
}

uint64_t HealthProber::Jittered(uint64_t ms) {
  // splitmix64: per prober, so no shared generator.
  uint64_t z = (rng_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  const double f = 0.9 + 0.2 * static_cast<double>(z >> 11) / static_cast<double>(1ULL << 53);
  return static_cast<uint64_t>(static_cast<double>(ms) * f);
}

void HealthProber::Run() {
  std::vector<pollfd> fds;
  std::vector<Probe*> polled;
  for (;;) {
    uint64_t now = MonotonicMs();
    uint64_t next = now + config_.interval_ms;
    fds.assign(1, pollfd{wake_.get(), POLLIN, 0});
    polled.assign(1, nullptr);
    for (auto& up : probes_) {
      Probe& p = *up;
      if (p.phase == Probe::Phase::kIdle && p.due_ms <= now) Begin(p, now);
      if (p.phase != Probe::Phase::kIdle && p.deadline_ms <= now) {
        Finish(p, false, "timed out", now);
      }
      if (p.phase == Probe::Phase::kIdle) {
        next = std::min(next, p.due_ms);
        continue;
      }
      next = std::min(next, p.deadline_ms);
      fds.push_back(pollfd{p.fd.get(), p.events, 0});
      polled.push_back(&p);
    }
    const int timeout = static_cast<int>(next > now ? next - now : 0);
    const int n = poll(fds.data(), fds.size(), timeout);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (fds[0].revents != 0) break;  // Stop()
    now = MonotonicMs();
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents != 0) OnReady(*polled[i], fds[i].revents, now);
    }
  }
}

void HealthProber::Begin(Probe& p, uint64_t now_ms) {
  p.started_ms = now_ms;
  p.deadline_ms = now_ms + config_.timeout_ms;
  p.in.clear();
  p.out_off = 0;
  absl::StatusOr<int> fd = OpenClientSocket(p.address.storage.ss_family);
  if (!fd.ok()) {
    // Our problem (fds, memory), not the server's: try again next interval.
    p.due_ms = now_ms + Jittered(config_.interval_ms);
    return;
  }
  p.fd.reset(*fd);
  p.phase = Probe::Phase::kConnecting;
  p.events = POLLOUT;
  if (connect(p.fd.get(), reinterpret_cast<const sockaddr*>(&p.address.storage), p.address.len) ==
          0 ||
      errno == EINPROGRESS) {
    return;  // poll for POLLOUT tells
  }
  Finish(p, false, strerror(errno), now_ms);
}

void HealthProber::OnReady(Probe& p, short revents, uint64_t now_ms) {
  (void)revents;  // the socket calls below say what happened
  switch (p.phase) {
    case Probe::Phase::kConnecting: {
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(p.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) return Finish(p, false, strerror(err), now_ms);
      if (config_.type == HealthCheckType::kTcp) return Finish(p, true, "", now_ms);
      if (!tls_error_.empty()) return Finish(p, false, tls_error_, now_ms);
      p.out = "GET " + config_.path + " HTTP/1.1\r\nHost: " + p.address.text +
              "\r\nUser-Agent: ktlb-health\r\nConnection: close\r\n\r\n";
      if (tls_ != nullptr) return StartTlsProbe(p, now_ms);
      p.phase = Probe::Phase::kSending;
      [[fallthrough]];
    }
    case Probe::Phase::kSending: {
      if (p.ssl) return OnTlsReady(p, now_ms);
      const ssize_t n = send(p.fd.get(), p.out.data() + p.out_off, p.out.size() - p.out_off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        return Finish(p, false, strerror(errno), now_ms);
      }
      p.out_off += static_cast<size_t>(n);
      if (p.out_off == p.out.size()) {
        p.phase = Probe::Phase::kReading;
        p.events = POLLIN;
      }
      return;
    }
    case Probe::Phase::kReading: {
      if (p.ssl) return OnTlsReady(p, now_ms);
      char buf[1024];
      const ssize_t n = recv(p.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        return Finish(p, false, strerror(errno), now_ms);
      }
      p.in.append(buf, static_cast<size_t>(n));
      const int status = StatusOf(p.in);
      if (status == 0 && n > 0) return;  // the status line is not complete yet
      if (status == 0) return Finish(p, false, "closed without a response", now_ms);
      if (status < 0) return Finish(p, false, "not an HTTP response", now_ms);
      if (status < 400) return Finish(p, true, "", now_ms);
      return Finish(p, false, "status " + std::to_string(status), now_ms);
    }
    case Probe::Phase::kHandshaking:
      return OnTlsReady(p, now_ms);
    case Probe::Phase::kIdle: return;
  }
}

void HealthProber::StartTlsProbe(Probe& p, uint64_t now_ms) {
  BIO* bio = BIO_new_socket(p.fd.get(), BIO_NOCLOSE);
  if (bio != nullptr) {
    std::string_view host =
        p.host.empty() ? tls::HostOfAddress(p.address.text) : std::string_view(p.host);
    p.ssl = tls_->NewSsl(bio, host, &p.session, false);
  }
  if (!p.ssl) {
    ERR_clear_error();
    return Finish(p, false, "cannot create an SSL object", now_ms);
  }
  p.phase = Probe::Phase::kHandshaking;
  OnTlsReady(p, now_ms);
}

// One step of a TLS probe on a non-blocking socket: OpenSSL says which way
// it waits (SSL_ERROR_WANT_READ / WRITE), which becomes the poll event.
void HealthProber::OnTlsReady(Probe& p, uint64_t now_ms) {
  SSL* ssl = p.ssl.get();
  for (;;) {
    int r = 1;
    switch (p.phase) {
      case Probe::Phase::kHandshaking:
        r = SSL_connect(ssl);
        if (r == 1) {
          p.phase = Probe::Phase::kSending;
          continue;
        }
        break;
      case Probe::Phase::kSending:
        r = SSL_write(ssl, p.out.data() + p.out_off, static_cast<int>(p.out.size() - p.out_off));
        if (r > 0) {
          p.out_off += static_cast<size_t>(r);
          if (p.out_off == p.out.size()) p.phase = Probe::Phase::kReading;
          continue;
        }
        break;
      case Probe::Phase::kReading: {
        char buf[1024];
        r = SSL_read(ssl, buf, sizeof buf);
        if (r > 0) {
          p.in.append(buf, static_cast<size_t>(r));
          const int status = StatusOf(p.in);
          if (status == 0) continue;
          if (status < 0) return Finish(p, false, "not an HTTP response", now_ms);
          if (status < 400) return Finish(p, true, "", now_ms);
          return Finish(p, false, "status " + std::to_string(status), now_ms);
        }
        break;
      }
      default:
        return;
    }
    const int err = SSL_get_error(ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      p.events = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      return;
    }
    std::string why = "TLS: ";
    const long verify = SSL_get_verify_result(ssl);
    if (p.phase == Probe::Phase::kHandshaking && verify != X509_V_OK) {
      why += "server certificate refused: ";
      why += X509_verify_cert_error_string(verify);
    } else if (err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL) {
      why += p.phase == Probe::Phase::kReading ? "closed without a response" : "connection closed";
    } else {
      char reason[160];
      ERR_error_string_n(ERR_peek_error(), reason, sizeof reason);
      why += reason;
    }
    ERR_clear_error();
    return Finish(p, false, why, now_ms);
  }
}

void HealthProber::Finish(Probe& p, bool passed, const std::string& why, uint64_t now_ms) {
  // A probe that passed ends a good session: mark it shut down, or
  // SSL_free makes it not resumable and every probe does a full handshake.
  if (passed && p.ssl) SSL_set_shutdown(p.ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  p.ssl.reset();  // before the socket it writes to
  p.fd.reset();
  p.phase = Probe::Phase::kIdle;
  // Interval from start to start; a probe that took its whole timeout does
  // not push the next one later.
  p.due_ms = std::max(p.started_ms + Jittered(config_.interval_ms), now_ms + 1);
  if (!p.counter.Record(passed)) return;
  const bool up = !p.counter.down();
  board_->Set(p.index, up);
  if (metrics_ != nullptr) {
    (up ? metrics_->went_up : metrics_->went_down).Inc();
    metrics_->healthy.Set(board_->healthy());
  }
  if (p.metrics != nullptr) {
    (up ? p.metrics->went_up : p.metrics->went_down).Inc();
    p.metrics->down.Set(up ? 0 : 1);
  }
  // Logged once per change, never per probe: at most one line per server
  // per rise (or fall) x interval.
  if (up) {
    fprintf(stderr, "ktlb: health: upstream \"%s\" server %s is up (%u passed checks)\n",
            name_.c_str(), p.address.text.c_str(), p.counter.streak());
  } else {
    fprintf(stderr, "ktlb: health: upstream \"%s\" server %s is down (%u failed check%s: %s)\n",
            name_.c_str(), p.address.text.c_str(), p.counter.streak(),
            p.counter.streak() == 1 ? "" : "s", why.c_str());
  }
}

}  // namespace ktlb::upstream
