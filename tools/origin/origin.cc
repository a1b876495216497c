// ktlb-origin: a fast, strict HTTP/1.1 test and benchmark origin.
//
// It is the backend behind ktlb in the integration tests, the quickstart and the
// benchmarks (ktlb vs nginx vs haproxy), so it must never be the bottleneck:
// every thread runs its own edge-triggered epoll loop over its own
// SO_REUSEPORT listen socket, nothing is shared between threads except the
// per-thread request counters read by /stats, and large bodies are written
// straight from a static pattern buffer without copying.
//
//   ktlb-origin --listen 127.0.0.1:PORT [--threads N] [--name NAME]
//
// Every response carries "X-Origin: NAME" (NAME defaults to the port).
//
//   /              200 "hello from ktlb-origin\n"
//   /size/N        N bytes of the pattern (Content-Length), generated on the fly
//   /chunked/N     N bytes of the pattern, chunked
//   /close/N       N bytes of the pattern, close-delimited (no Content-Length)
//   /echo          echoes the request body as it streams in (Content-Length if the
//                  request had one, chunked otherwise)
//   /sha256        "<hex sha256 of the body> <body length>\n"
//   /headers       the request line, then every request header line verbatim
//   /status/N      status N (204 and 304 without a body)
//   /slow/MS       200 after MS milliseconds (timer, the thread keeps serving)
//   /reset         closes the connection with a TCP RST, no response
//   /stats         "requests N\n": request heads received since start, malformed
//                  ones included, /stats itself excluded (so a test can prove a
//                  refused request never reached the backend)
//
// The pattern: byte i of every generated body is kPattern[i % 65521], where
// kPattern[j] = kAlphabet[(j * 31 + j / 64) % 64]. The period is prime so that
// dropped, duplicated or reordered power-of-two-sized blocks change the hash.
//
// Requests are parsed strictly (this origin is also a witness that ktlb forwards
// clean HTTP): CRLF line ends only, no obs-fold, no bare CR, no whitespace before
// the colon, HTTP/1.0 or 1.1 only, Content-Length digits only and not mixed with
// Transfer-Encoding, only "chunked" as transfer coding. Anything else is answered
// with 400 (431 for a head over 64 KiB) and the connection is closed.
// "Expect: 100-continue" is answered with an interim 100 before the body is read.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr size_t kPatternPeriod = 65521;
constexpr size_t kMaxSlice = 256 * 1024;       // one writev of pattern bytes
constexpr size_t kMaxHead = 64 * 1024;         // request head limit -> 431
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kOutHighWater = 256 * 1024;   // stop producing above this
constexpr size_t kChunkedPiece = 32 * 1024;    // chunk size of /chunked/N
constexpr int kLingerMs = 2000;                // lingering close deadline
constexpr int kWorkBudget = 16;                // loop turns per connection per wakeup

// kPatternPeriod + kMaxSlice bytes, so any slice starting in the first period
// is contiguous.
const char* PatternBuffer() {
  static const std::unique_ptr<char[]> buf = [] {
    static constexpr char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    auto b = std::make_unique<char[]>(kPatternPeriod + kMaxSlice);
    for (size_t j = 0; j < kPatternPeriod; ++j) b[j] = kAlphabet[(j * 31 + j / 64) % 64];
    for (size_t j = kPatternPeriod; j < kPatternPeriod + kMaxSlice; ++j) {
      b[j] = b[j - kPatternPeriod];
    }
    return b;
  }();
  return buf.get();
}

uint64_t NowMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

bool IsTchar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool ParseU64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// Does a comma-separated header value contain `token` (case-insensitively)?
bool HasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = Trim(value.substr(0, comma));
    if (IEquals(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

const char* Reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

void AppendU64(std::string* out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

void AppendHex(std::string* out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, 16);
  out->append(buf, r.ptr);
}

// A growable byte buffer with a read and a write position; never zero-fills.
class ByteBuffer {
 public:
  const char* data() const { return buf_.get() + rpos_; }
  size_t size() const { return wpos_ - rpos_; }
  bool empty() const { return rpos_ == wpos_; }
  void Consume(size_t n) {
    rpos_ += n;
    if (rpos_ == wpos_) rpos_ = wpos_ = 0;
  }
  // Room for at least n more bytes at WritePtr().
  char* Reserve(size_t n) {
    if (cap_ - wpos_ >= n) return buf_.get() + wpos_;
    size_t used = size();
    if (rpos_ > 0 && cap_ - used >= n) {
      std::memmove(buf_.get(), buf_.get() + rpos_, used);
    } else {
      size_t ncap = std::max(cap_ * 2, used + n);
      auto nb = std::make_unique_for_overwrite<char[]>(ncap);
      if (used) std::memcpy(nb.get(), buf_.get() + rpos_, used);
      buf_ = std::move(nb);
      cap_ = ncap;
    }
    rpos_ = 0;
    wpos_ = used;
    return buf_.get() + wpos_;
  }
  void Commit(size_t n) { wpos_ += n; }
  void Release() {  // an idle connection holds no buffer
    if (empty() && buf_) {
      buf_.reset();
      cap_ = rpos_ = wpos_ = 0;
    }
  }

 private:
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0, rpos_ = 0, wpos_ = 0;
};

struct EvpMdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

enum class Handler { kHello, kSize, kChunked, kClose, kEcho, kSha256, kHeaders, kStatus,
                     kSlow, kReset, kStats, kNotFound };
enum class BodyFraming { kNone, kLength, kChunked };
enum class Gen { kNone, kPlain, kChunked };
enum class State { kHead, kBody, kWaitTimer, kRespond, kLinger, kDead };
enum class ChunkState { kSize, kExt, kSizeLf, kData, kDataCr, kDataLf, kTrailer, kTrailerLf,
                        kDone };

struct Conn {
  int fd = -1;
  uint64_t id = 0;
  bool readable = true;   // edge-triggered readiness we have not exhausted yet
  bool writable = true;
  bool peer_eof = false;
  // epoll reported the peer's FIN (EPOLLRDHUP) or a hang-up: a short read no
  // longer means the socket is drained, the EOF may still be waiting behind the
  // data, and no further edge will announce it.
  bool rdhup = false;
  bool close_after = false;  // close once the current response is flushed
  bool queued = false;       // in the worker's ready list
  State state = State::kHead;
  uint64_t timer_seq = 0;    // only the newest armed timer counts

  ByteBuffer in;
  size_t head_scan = 0;  // bytes of `in` already searched for the end of head

  std::string out;
  size_t out_off = 0;
  Gen gen = Gen::kNone;
  uint64_t gen_left = 0;
  uint64_t gen_pos = 0;

  // Current request.
  Handler handler = Handler::kHello;
  uint64_t arg = 0;
  bool is_head = false;
  bool http10 = false;
  bool keep_alive = true;
  BodyFraming body = BodyFraming::kNone;
  uint64_t body_left = 0;  // kLength: bytes left; kChunked: bytes left in this chunk
  uint64_t body_total = 0;
  ChunkState chunk = ChunkState::kSize;
  int chunk_digits = 0;
  size_t trailer_line = 0;
  bool echo_chunked = false;
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxFree> sha;
  std::string pending_body;  // /headers: prepared body

  size_t pending() const { return out.size() - out_off; }
  bool HasOutput() const { return pending() > 0 || gen != Gen::kNone; }
};

struct Timer {
  uint64_t deadline;
  int fd;
  uint64_t id;
  uint64_t seq;
  bool operator>(const Timer& o) const { return deadline > o.deadline; }
};

struct alignas(64) Counter {
  std::atomic<uint64_t> requests{0};
};

struct Shared {
  std::string name;
  std::vector<Counter> counters;
};

class Worker {
 public:
  Worker(const Shared* shared, Counter* counter, int listen_fd)
      : shared_(shared), counter_(counter), listen_fd_(listen_fd) {}

  void Run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) Die("epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenTag;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, listen_fd_, &ev) < 0) Die("epoll_ctl listen");
    std::vector<epoll_event> events(256);
    for (;;) {
      int timeout = -1;
      if (!ready_.empty()) {
        timeout = 0;
      } else if (!timers_.empty()) {
        uint64_t now = NowMs();
        timeout = timers_.top().deadline <= now
                      ? 0
                      : static_cast<int>(std::min<uint64_t>(timers_.top().deadline - now, 60000));
      }
      int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        Die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        const epoll_event& e = events[i];
        if (e.data.u64 == kListenTag) {
          Accept();
          continue;
        }
        Conn* c = Lookup(static_cast<int>(e.data.u64 & 0xffffffff), e.data.u64 >> 32);
        if (!c) continue;
        if (e.events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) c->readable = true;
        if (e.events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) c->rdhup = true;
        if (e.events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->writable = true;
        Drive(c);
      }
      RunTimers();
      RunReady();
      graveyard_.clear();
    }
  }

 private:
  static constexpr uint64_t kListenTag = ~uint64_t{0};

  [[noreturn]] static void Die(const char* what) {
    std::fprintf(stderr, "ktlb-origin: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
  }

  Conn* Lookup(int fd, uint64_t id_low) {
    if (fd < 0 || static_cast<size_t>(fd) >= conns_.size()) return nullptr;
    Conn* c = conns_[fd].get();
    if (!c || (c->id & 0xffffffff) != id_low) return nullptr;
    return c;
  }

  void Accept() {
    for (int i = 0; i < 128; ++i) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno == EMFILE || errno == ENFILE) {
          std::fprintf(stderr, "ktlb-origin: accept: %s\n", std::strerror(errno));
        }
        return;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      if (static_cast<size_t>(fd) >= conns_.size()) conns_.resize(fd + 64);
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      c->id = ++next_id_;
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
      ev.data.u64 = (static_cast<uint64_t>(c->id & 0xffffffff) << 32) | static_cast<uint32_t>(fd);
      if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        continue;
      }
      Conn* raw = c.get();
      conns_[fd] = std::move(c);
      Drive(raw);
    }
  }

  // The object stays alive (in graveyard_) until the end of this loop turn, so
  // callers up the stack may still look at c->state.
  void Destroy(Conn* c) {
    if (c->state == State::kDead) return;
    int fd = c->fd;
    c->state = State::kDead;
    close(fd);  // also removes it from the epoll set
    graveyard_.push_back(std::move(conns_[fd]));
  }

  void Reset(Conn* c) {
    linger lg{1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    Destroy(c);
  }

  void ArmTimer(Conn* c, uint64_t ms) {
    timers_.push(Timer{NowMs() + ms, c->fd, c->id, ++c->timer_seq});
  }

  void RunTimers() {
    uint64_t now = NowMs();
    while (!timers_.empty() && timers_.top().deadline <= now) {
      Timer t = timers_.top();
      timers_.pop();
      Conn* c = (t.fd >= 0 && static_cast<size_t>(t.fd) < conns_.size()) ? conns_[t.fd].get()
                                                                          : nullptr;
      if (!c || c->id != t.id || c->timer_seq != t.seq) continue;
      if (c->state == State::kWaitTimer) {
        std::string body = "slow ";
        AppendU64(&body, c->arg);
        body += '\n';
        Respond(c, 200, "text/plain", body);
        Drive(c);
      } else if (c->state == State::kLinger) {
        Destroy(c);
      }
    }
  }

  void RunReady() {
    std::vector<std::pair<int, uint64_t>> batch;
    batch.swap(ready_);
    for (auto [fd, id] : batch) {
      Conn* c = conns_[fd].get();
      if (!c || c->id != id) continue;
      c->queued = false;
      Drive(c);
    }
  }

  // Runs a connection until it can make no more progress (or its budget for this
  // wakeup is spent, in which case it goes to the ready list).
  void Drive(Conn* c) {
    for (int turn = 0; turn < kWorkBudget; ++turn) {
      bool progress = Process(c);
      if (c->state == State::kDead) return;
      if (c->HasOutput() && c->writable) {
        int r = Flush(c);
        if (r < 0) {
          Destroy(c);
          return;
        }
        if (r > 0) progress = true;
      }
      if (c->state == State::kRespond && c->close_after && !c->HasOutput()) {
        StartLinger(c);
        progress = true;
      }
      if (WantsRead(c) && c->readable) {
        int r = Read(c);
        if (r < 0) {
          Destroy(c);
          return;
        }
        if (r > 0) progress = true;
      }
      if (c->state == State::kLinger && c->peer_eof) {
        Destroy(c);
        return;
      }
      if (!progress) {
        if (c->state == State::kHead && c->in.empty() && !c->HasOutput()) {
          // Idle keep-alive connection: give its buffers back, so that many
          // idle benchmark connections cost little memory.
          c->in.Release();
          if (c->out.capacity() > 4096) std::string().swap(c->out);
        }
        return;
      }
    }
    if (!c->queued) {
      c->queued = true;
      ready_.emplace_back(c->fd, c->id);
    }
  }

  bool WantsRead(const Conn* c) const {
    if (c->peer_eof) return false;
    switch (c->state) {
      case State::kHead: return c->in.size() <= kMaxHead;
      case State::kBody: return c->in.empty() && c->pending() < kOutHighWater;
      case State::kLinger: return true;
      default: return false;
    }
  }

  // 1: read bytes or EOF, 0: would block, -1: error.
  int Read(Conn* c) {
    if (c->state == State::kLinger) {
      char sink[16384];
      ssize_t n = recv(c->fd, sink, sizeof(sink), 0);
      if (n > 0) return 1;
      if (n == 0) {
        c->peer_eof = true;
        return 1;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->readable = false;
        return 0;
      }
      return errno == EINTR ? 1 : -1;
    }
    char* p = c->in.Reserve(kReadChunk);
    ssize_t n = recv(c->fd, p, kReadChunk, 0);
    if (n > 0) {
      c->in.Commit(static_cast<size_t>(n));
      // A short read drained the socket: edge-triggered epoll reports the next
      // arrival (data or FIN), so skip the recv that would only say EAGAIN.
      // Not when the FIN came with the same edge as the data (a client that
      // writes and shuts down at once): then only the next recv sees the EOF.
      if (static_cast<size_t>(n) < kReadChunk && !c->rdhup) c->readable = false;
      return 1;
    }
    if (n == 0) {
      c->peer_eof = true;
      return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      c->readable = false;
      return 0;
    }
    return errno == EINTR ? 1 : -1;
  }

  // 1: wrote something, 0: blocked, -1: error.
  int Flush(Conn* c) {
    const char* pattern = PatternBuffer();
    bool wrote = false;
    int rounds = 0;
    for (;;) {
      if (c->gen == Gen::kChunked && c->pending() < kChunkedPiece) {
        if (c->out_off > 0) {
          c->out.erase(0, c->out_off);
          c->out_off = 0;
        }
        if (c->gen_left > 0) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(c->gen_left, kChunkedPiece));
          AppendHex(&c->out, n);
          c->out += "\r\n";
          c->out.append(pattern + c->gen_pos % kPatternPeriod, n);
          c->out += "\r\n";
          c->gen_pos += n;
          c->gen_left -= n;
        }
        if (c->gen_left == 0) {
          c->out += "0\r\n\r\n";
          c->gen = Gen::kNone;
        }
      }
      iovec iov[2];
      int iovcnt = 0;
      size_t head_len = c->pending();
      if (head_len) iov[iovcnt++] = {c->out.data() + c->out_off, head_len};
      size_t slice = 0;
      if (c->gen == Gen::kPlain) {
        slice = static_cast<size_t>(std::min<uint64_t>(c->gen_left, kMaxSlice));
        if (slice) {
          iov[iovcnt++] = {const_cast<char*>(pattern + c->gen_pos % kPatternPeriod), slice};
        }
      }
      if (iovcnt == 0) {
        if (c->gen == Gen::kPlain && c->gen_left == 0) c->gen = Gen::kNone;
        break;
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<size_t>(iovcnt);
      ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          c->writable = false;
          return wrote ? 1 : 0;
        }
        return -1;
      }
      wrote = true;
      size_t w = static_cast<size_t>(n);
      size_t from_head = std::min(w, head_len);
      c->out_off += from_head;
      if (c->out_off == c->out.size()) {
        c->out.clear();
        c->out_off = 0;
      }
      w -= from_head;
      if (w) {
        c->gen_pos += w;
        c->gen_left -= w;
      }
      if (c->gen == Gen::kPlain && c->gen_left == 0) c->gen = Gen::kNone;
      if (static_cast<size_t>(n) < head_len + slice) {
        // Short write: the socket buffer is full.
        c->writable = false;
        return 1;
      }
      if (!c->HasOutput() || ++rounds >= 4) break;  // bounded: be fair to others
    }
    return wrote ? 1 : 0;
  }

  void StartLinger(Conn* c) {
    c->state = State::kLinger;
    shutdown(c->fd, SHUT_WR);
    c->in.Consume(c->in.size());
    ArmTimer(c, kLingerMs);
  }

  // Runs the protocol over buffered input. Returns true on progress.
  bool Process(Conn* c) {
    bool progress = false;
    for (;;) {
      switch (c->state) {
        case State::kHead: {
          if (c->pending() >= kOutHighWater) return progress;
          int r = ParseHead(c);
          if (r == 0) {
            if (c->peer_eof) {
              // EOF between requests, or in the middle of a head.
              if (c->in.empty()) {
                if (!c->HasOutput()) {
                  Destroy(c);
                  return true;
                }
                c->close_after = true;
                c->state = State::kRespond;
                return true;
              }
              CountRequest();
              Error(c, 400, "incomplete request head\n");
              return true;
            }
            return progress;
          }
          progress = true;
          continue;
        }
        case State::kBody: {
          if (c->in.empty()) {
            if (c->peer_eof) {
              // Body cut short: nothing sensible to answer.
              if (c->HasOutput()) {
                c->close_after = true;
                c->state = State::kRespond;
                c->gen = Gen::kNone;
                return true;
              }
              Destroy(c);
              return true;
            }
            return progress;
          }
          if (c->handler == Handler::kEcho && c->pending() >= kOutHighWater) return progress;
          if (!ConsumeBody(c)) return true;  // error response queued
          progress = true;
          continue;
        }
        case State::kWaitTimer:
          return progress;
        case State::kRespond: {
          if (c->gen != Gen::kNone) return progress;
          if (c->close_after) return progress;  // Drive() starts the linger once flushed
          c->state = State::kHead;
          progress = true;
          continue;
        }
        case State::kLinger:
        case State::kDead:
          return progress;
      }
    }
  }

  void CountRequest() { counter_->requests.fetch_add(1, std::memory_order_relaxed); }

  // Queues an error response and closes the connection afterwards.
  void Error(Conn* c, int status, std::string_view body) {
    c->is_head = false;
    c->keep_alive = false;
    c->gen = Gen::kNone;
    Respond(c, status, "text/plain", body);
  }

  void AppendHead(Conn* c, int status, std::string_view content_type) {
    std::string& o = c->out;
    o += c->http10 ? "HTTP/1.0 " : "HTTP/1.1 ";
    AppendU64(&o, static_cast<uint64_t>(status));
    o += ' ';
    o += Reason(status);
    o += "\r\nServer: ktlb-origin\r\nX-Origin: ";
    o += shared_->name;
    o += "\r\n";
    if (!content_type.empty()) {
      o += "Content-Type: ";
      o += content_type;
      o += "\r\n";
    }
    if (!c->keep_alive) {
      o += "Connection: close\r\n";
    } else if (c->http10) {
      o += "Connection: keep-alive\r\n";
    }
  }

  // A complete response with an in-memory body.
  void Respond(Conn* c, int status, std::string_view content_type, std::string_view body) {
    bool no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
    AppendHead(c, status, no_body ? std::string_view() : content_type);
    if (!no_body) {
      c->out += "Content-Length: ";
      AppendU64(&c->out, body.size());
      c->out += "\r\n";
    }
    c->out += "\r\n";
    if (!no_body && !c->is_head) c->out += body;
    Finish(c);
  }

  // A response whose body is generated from the pattern.
  void RespondGenerated(Conn* c, Gen kind, uint64_t n) {
    if (kind == Gen::kChunked && c->http10) {
      c->keep_alive = false;  // HTTP/1.0 has no chunked: fall back to close-delimited
      kind = Gen::kNone;
    }
    if (kind == Gen::kNone) c->keep_alive = false;  // close-delimited
    AppendHead(c, 200, "application/octet-stream");
    if (kind == Gen::kPlain) {
      c->out += "Content-Length: ";
      AppendU64(&c->out, n);
      c->out += "\r\n";
    } else if (kind == Gen::kChunked) {
      c->out += "Transfer-Encoding: chunked\r\n";
    }
    c->out += "\r\n";
    if (!c->is_head) {
      c->gen = kind == Gen::kChunked ? Gen::kChunked : Gen::kPlain;
      c->gen_left = n;
      c->gen_pos = 0;
      if (c->gen == Gen::kPlain && n == 0) c->gen = Gen::kNone;
    }
    Finish(c);
  }

  void Finish(Conn* c) {
    c->state = State::kRespond;
    if (!c->keep_alive) c->close_after = true;
  }

  // 0: need more bytes; 1: a request was taken (state changed).
  int ParseHead(Conn* c) {
    // Tolerate empty lines before a request line (RFC 9112 section 2.2).
    while (c->in.size() >= 2 && c->in.data()[0] == '\r' && c->in.data()[1] == '\n') {
      c->in.Consume(2);
      c->head_scan = 0;
    }
    std::string_view buf(c->in.data(), c->in.size());
    size_t from = c->head_scan >= 3 ? c->head_scan - 3 : 0;
    size_t end = buf.find("\r\n\r\n", from);
    if (end == std::string_view::npos) {
      c->head_scan = buf.size();
      if (buf.size() > kMaxHead) {
        CountRequest();
        Error(c, 431, "request head too large\n");
        return 1;
      }
      return 0;
    }
    c->head_scan = 0;
    size_t head_len = end + 4;
    if (head_len > kMaxHead) {
      CountRequest();
      Error(c, 431, "request head too large\n");
      return 1;
    }
    std::string_view head = buf.substr(0, end + 2);  // every line ends with CRLF
    const char* err = StartRequest(c, head);
    c->in.Consume(head_len);
    if (err) Error(c, 400, err);
    return 1;
  }

  // Parses a head (lines with CRLF, without the final empty line) and starts the
  // request. Returns an error text for a 400, or nullptr.
  const char* StartRequest(Conn* c, std::string_view head) {
    // Reset per-request state.
    c->is_head = false;
    c->http10 = false;
    c->keep_alive = true;
    c->body = BodyFraming::kNone;
    c->body_left = c->body_total = 0;
    c->sha.reset();
    c->pending_body.clear();
    c->gen = Gen::kNone;

    for (size_t i = 0; i < head.size(); ++i) {
      char ch = head[i];
      if (ch == '\r' && (i + 1 >= head.size() || head[i + 1] != '\n')) {
        CountRequest();
        return "bare CR\n";
      }
      if (ch == '\n' && (i == 0 || head[i - 1] != '\r')) {
        CountRequest();
        return "bare LF\n";
      }
      if (ch == '\0') {
        CountRequest();
        return "NUL in head\n";
      }
    }

    size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    std::string_view rest = head.substr(eol + 2);

    // Request line: method SP target SP version.
    size_t sp1 = line.find(' ');
    size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
      CountRequest();
      return "bad request line\n";
    }
    std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (method.empty() || !std::all_of(method.begin(), method.end(),
                                       [](char ch) { return IsTchar(static_cast<unsigned char>(ch)); })) {
      CountRequest();
      return "bad method\n";
    }
    if (target.empty() || !std::all_of(target.begin(), target.end(), [](char ch) {
          return static_cast<unsigned char>(ch) > 0x20 && ch != 0x7f;
        })) {
      CountRequest();
      return "bad target\n";
    }
    if (version == "HTTP/1.1") {
      c->http10 = false;
    } else if (version == "HTTP/1.0") {
      c->http10 = true;
      c->keep_alive = false;
    } else {
      CountRequest();
      return "bad version\n";
    }
    c->is_head = method == "HEAD";

    // Route.
    std::string_view path = target.substr(0, target.find('?'));
    bool want_headers = false;
    c->arg = 0;
    auto with_arg = [&](std::string_view prefix, Handler h) {
      if (path.size() <= prefix.size() || path.substr(0, prefix.size()) != prefix) return false;
      c->handler = ParseU64(path.substr(prefix.size()), &c->arg) ? h : Handler::kNotFound;
      return true;
    };
    if (path == "/") {
      c->handler = Handler::kHello;
    } else if (with_arg("/size/", Handler::kSize) || with_arg("/chunked/", Handler::kChunked) ||
               with_arg("/close/", Handler::kClose) || with_arg("/status/", Handler::kStatus) ||
               with_arg("/slow/", Handler::kSlow)) {
    } else if (path == "/echo") {
      c->handler = Handler::kEcho;
    } else if (path == "/sha256") {
      c->handler = Handler::kSha256;
    } else if (path == "/headers") {
      c->handler = Handler::kHeaders;
      want_headers = true;
    } else if (path == "/reset") {
      c->handler = Handler::kReset;
    } else if (path == "/stats") {
      c->handler = Handler::kStats;
    } else {
      c->handler = Handler::kNotFound;
    }
    if (c->handler != Handler::kStats) CountRequest();
    if (want_headers) {
      c->pending_body.assign(line);
      c->pending_body += '\n';
    }

    // Headers.
    bool have_cl = false, have_te = false, expect_continue = false;
    uint64_t cl = 0;
    while (!rest.empty()) {
      eol = rest.find("\r\n");
      std::string_view h = rest.substr(0, eol);
      rest.remove_prefix(eol + 2);
      if (h.empty()) return "empty header line\n";
      if (h[0] == ' ' || h[0] == '\t') return "obs-fold\n";
      size_t colon = h.find(':');
      if (colon == std::string_view::npos || colon == 0) return "bad header line\n";
      std::string_view name = h.substr(0, colon);
      for (char ch : name) {
        if (!IsTchar(static_cast<unsigned char>(ch))) return "bad header name\n";
      }
      std::string_view value = Trim(h.substr(colon + 1));
      for (char ch : value) {
        unsigned char u = static_cast<unsigned char>(ch);
        if ((u < 0x20 && u != '\t') || u == 0x7f) return "bad header value\n";
      }
      if (want_headers) {
        c->pending_body += h;
        c->pending_body += '\n';
      }
      if (IEquals(name, "content-length")) {
        uint64_t v;
        if (!ParseU64(value, &v)) return "bad content-length\n";
        if (have_cl && v != cl) return "conflicting content-length\n";
        have_cl = true;
        cl = v;
      } else if (IEquals(name, "transfer-encoding")) {
        if (have_te || !IEquals(value, "chunked")) return "unsupported transfer-encoding\n";
        have_te = true;
      } else if (IEquals(name, "connection")) {
        if (HasToken(value, "close")) c->keep_alive = false;
        if (c->http10 && HasToken(value, "keep-alive")) c->keep_alive = true;
      } else if (IEquals(name, "expect")) {
        if (IEquals(value, "100-continue")) expect_continue = true;
      }
    }
    if (have_cl && have_te) return "both content-length and transfer-encoding\n";
    if (have_te && c->http10) return "chunked request in HTTP/1.0\n";
    if (have_te) {
      c->body = BodyFraming::kChunked;
      c->chunk = ChunkState::kSize;
      c->chunk_digits = 0;
      c->body_left = 0;
    } else if (have_cl && cl > 0) {
      c->body = BodyFraming::kLength;
      c->body_left = cl;
    }

    if (c->handler == Handler::kReset) {
      Reset(c);
      return nullptr;
    }
    if (expect_continue && !c->http10 && c->body != BodyFraming::kNone) {
      c->out += "HTTP/1.1 100 Continue\r\n\r\n";
    }
    if (c->handler == Handler::kSha256) {
      c->sha.reset(EVP_MD_CTX_new());
      if (!c->sha || EVP_DigestInit_ex(c->sha.get(), EVP_sha256(), nullptr) != 1) {
        return "sha256 unavailable\n";
      }
    }
    if (c->handler == Handler::kEcho) {
      // The response streams while the body arrives: its head goes out now.
      c->echo_chunked = c->body == BodyFraming::kChunked && !c->http10;
      AppendHead(c, 200, "application/octet-stream");
      if (c->echo_chunked) {
        c->out += "Transfer-Encoding: chunked\r\n\r\n";
      } else {
        c->out += "Content-Length: ";
        AppendU64(&c->out, c->body == BodyFraming::kLength ? cl : 0);
        c->out += "\r\n\r\n";
      }
    }
    if (c->body == BodyFraming::kNone) {
      BodyDone(c);
    } else {
      c->state = State::kBody;
    }
    return nullptr;
  }

  void Sink(Conn* c, const char* p, size_t n) {
    c->body_total += n;
    switch (c->handler) {
      case Handler::kEcho:
        if (c->is_head) break;
        if (c->echo_chunked) {
          AppendHex(&c->out, n);
          c->out += "\r\n";
          c->out.append(p, n);
          c->out += "\r\n";
        } else {
          c->out.append(p, n);
        }
        break;
      case Handler::kSha256:
        EVP_DigestUpdate(c->sha.get(), p, n);
        break;
      default:
        break;
    }
  }

  // Consumes body bytes from `in`. Returns false after queuing an error response.
  bool ConsumeBody(Conn* c) {
    const char* p = c->in.data();
    size_t n = c->in.size();
    size_t i = 0;
    if (c->body == BodyFraming::kLength) {
      size_t take = static_cast<size_t>(std::min<uint64_t>(n, c->body_left));
      if (c->handler == Handler::kEcho) take = std::min(take, kOutHighWater);
      Sink(c, p, take);
      c->body_left -= take;
      c->in.Consume(take);
      if (c->body_left == 0) BodyDone(c);
      return true;
    }
    // Chunked decoding.
    while (i < n && c->chunk != ChunkState::kDone) {
      char ch = p[i];
      switch (c->chunk) {
        case ChunkState::kSize: {
          int d = -1;
          if (ch >= '0' && ch <= '9') d = ch - '0';
          else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
          else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10;
          if (d >= 0) {
            if (++c->chunk_digits > 15) return ChunkError(c, i);
            c->body_left = c->body_left * 16 + static_cast<uint64_t>(d);
            ++i;
          } else if (c->chunk_digits > 0 && (ch == ';' || ch == ' ' || ch == '\t')) {
            c->chunk = ChunkState::kExt;
            ++i;
          } else if (c->chunk_digits > 0 && ch == '\r') {
            c->chunk = ChunkState::kSizeLf;
            ++i;
          } else {
            return ChunkError(c, i);
          }
          break;
        }
        case ChunkState::kExt:
          if (ch == '\r') c->chunk = ChunkState::kSizeLf;
          else if (ch == '\n' || (static_cast<unsigned char>(ch) < 0x20 && ch != '\t'))
            return ChunkError(c, i);
          ++i;
          break;
        case ChunkState::kSizeLf:
          if (ch != '\n') return ChunkError(c, i);
          ++i;
          c->chunk_digits = 0;
          if (c->body_left == 0) {
            c->chunk = ChunkState::kTrailer;
            c->trailer_line = 0;
          } else {
            c->chunk = ChunkState::kData;
          }
          break;
        case ChunkState::kData: {
          size_t take = static_cast<size_t>(std::min<uint64_t>(n - i, c->body_left));
          if (c->handler == Handler::kEcho) take = std::min(take, kOutHighWater);
          Sink(c, p + i, take);
          i += take;
          c->body_left -= take;
          if (c->body_left == 0) c->chunk = ChunkState::kDataCr;
          if (c->handler == Handler::kEcho && c->pending() >= kOutHighWater) {
            c->in.Consume(i);
            return true;
          }
          break;
        }
        case ChunkState::kDataCr:
          if (ch != '\r') return ChunkError(c, i);
          c->chunk = ChunkState::kDataLf;
          ++i;
          break;
        case ChunkState::kDataLf:
          if (ch != '\n') return ChunkError(c, i);
          c->chunk = ChunkState::kSize;
          ++i;
          break;
        case ChunkState::kTrailer:
          // Trailer lines are skipped; an empty line ends the message.
          if (ch == '\r') {
            c->chunk = ChunkState::kTrailerLf;
          } else if (ch == '\n' || ++c->trailer_line > kMaxHead) {
            return ChunkError(c, i);
          }
          ++i;
          break;
        case ChunkState::kTrailerLf:
          if (ch != '\n') return ChunkError(c, i);
          ++i;
          if (c->trailer_line == 0) {
            c->chunk = ChunkState::kDone;
          } else {
            c->trailer_line = 0;
            c->chunk = ChunkState::kTrailer;
          }
          break;
        case ChunkState::kDone:
          break;
      }
    }
    c->in.Consume(i);
    if (c->chunk == ChunkState::kDone) BodyDone(c);
    return true;
  }

  bool ChunkError(Conn* c, size_t at) {
    c->in.Consume(at);
    if (c->handler == Handler::kEcho) {
      // The response is already under way: all we can do is cut it.
      c->keep_alive = false;
      c->close_after = true;
      c->state = State::kRespond;
      return false;
    }
    Error(c, 400, "bad chunk\n");
    return false;
  }

  void BodyDone(Conn* c) {
    switch (c->handler) {
      case Handler::kHello:
        Respond(c, 200, "text/plain", "hello from ktlb-origin\n");
        break;
      case Handler::kSize:
        RespondGenerated(c, Gen::kPlain, c->arg);
        break;
      case Handler::kChunked:
        RespondGenerated(c, Gen::kChunked, c->arg);
        break;
      case Handler::kClose:
        RespondGenerated(c, Gen::kNone, c->arg);
        break;
      case Handler::kEcho:
        if (c->echo_chunked && !c->is_head) c->out += "0\r\n\r\n";
        Finish(c);
        break;
      case Handler::kSha256: {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        EVP_DigestFinal_ex(c->sha.get(), md, &len);
        c->sha.reset();
        static constexpr char kHex[] = "0123456789abcdef";
        std::string body;
        for (unsigned int k = 0; k < len; ++k) {
          body += kHex[md[k] >> 4];
          body += kHex[md[k] & 15];
        }
        body += ' ';
        AppendU64(&body, c->body_total);
        body += '\n';
        Respond(c, 200, "text/plain", body);
        break;
      }
      case Handler::kHeaders: {
        std::string body = std::move(c->pending_body);
        c->pending_body.clear();
        Respond(c, 200, "text/plain", body);
        break;
      }
      case Handler::kStatus: {
        if (c->arg < 200 || c->arg > 599) {
          Respond(c, 400, "text/plain", "status must be 200..599\n");
          break;
        }
        std::string body = "status ";
        AppendU64(&body, c->arg);
        body += '\n';
        Respond(c, static_cast<int>(c->arg), "text/plain", body);
        break;
      }
      case Handler::kSlow:
        c->state = State::kWaitTimer;
        ArmTimer(c, c->arg);
        break;
      case Handler::kStats: {
        uint64_t total = 0;
        for (const Counter& k : shared_->counters) total += k.requests.load(std::memory_order_relaxed);
        std::string body = "requests ";
        AppendU64(&body, total);
        body += '\n';
        Respond(c, 200, "text/plain", body);
        break;
      }
      case Handler::kReset:
        break;
      case Handler::kNotFound:
        Respond(c, 404, "text/plain", "not found\n");
        break;
    }
  }

  const Shared* shared_;
  Counter* counter_;
  int listen_fd_;
  int ep_ = -1;
  uint64_t next_id_ = 0;
  std::vector<std::unique_ptr<Conn>> conns_;  // indexed by fd
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  std::vector<std::pair<int, uint64_t>> ready_;
  std::vector<std::unique_ptr<Conn>> graveyard_;
};

[[noreturn]] void Usage(const char* msg) {
  if (msg) std::fprintf(stderr, "ktlb-origin: %s\n", msg);
  std::fprintf(stderr,
               "usage: ktlb-origin --listen HOST:PORT [--threads N] [--name NAME]\n"
               "  HOST is an IPv4 address or [IPv6]; PORT 0 picks a free port.\n");
  std::exit(2);
}

bool ParseListen(std::string_view text, sockaddr_storage* ss, socklen_t* len) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return false;
  std::string host(text.substr(0, colon));
  uint64_t port;
  if (!ParseU64(text.substr(colon + 1), &port) || port > 65535) return false;
  std::memset(ss, 0, sizeof(*ss));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    auto* a = reinterpret_cast<sockaddr_in6*>(ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) != 1) return false;
    *len = sizeof(*a);
    return true;
  }
  if (host == "localhost") host = "127.0.0.1";
  auto* a = reinterpret_cast<sockaddr_in*>(ss);
  a->sin_family = AF_INET;
  a->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) != 1) return false;
  *len = sizeof(*a);
  return true;
}

int OpenListener(const sockaddr_storage& ss, socklen_t len) {
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) < 0 || listen(fd, 4096) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen_text;
  std::string name;
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage("missing value");
      return argv[++i];
    };
    if (a == "--listen") {
      listen_text = value();
    } else if (a == "--threads") {
      std::string v = value();
      uint64_t t;
      if (!ParseU64(v, &t) || t < 1 || t > 1024) Usage("--threads must be 1..1024");
      threads = static_cast<int>(t);
    } else if (a == "--name") {
      name = value();
      for (char ch : name) {
        if (static_cast<unsigned char>(ch) < 0x21 || ch == 0x7f) Usage("bad --name");
      }
    } else if (a == "--help" || a == "-h") {
      Usage(nullptr);
    } else {
      Usage("unknown argument");
    }
  }
  if (listen_text.empty()) Usage("--listen is required");

  sockaddr_storage ss;
  socklen_t len;
  if (!ParseListen(listen_text, &ss, &len)) Usage("bad --listen address");

  signal(SIGPIPE, SIG_IGN);
  PatternBuffer();

  std::vector<int> fds;
  for (int t = 0; t < threads; ++t) {
    int fd = OpenListener(ss, len);
    if (fd < 0) {
      std::fprintf(stderr, "ktlb-origin: listen %s: %s\n", listen_text.c_str(),
                   std::strerror(errno));
      return 1;
    }
    if (t == 0) {
      // Port 0: the other threads join the port the first one got.
      sockaddr_storage bound;
      socklen_t blen = sizeof(bound);
      getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
      ss = bound;
      len = blen;
    }
    fds.push_back(fd);
  }
  uint16_t port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  Shared shared;
  shared.name = name.empty() ? std::to_string(port) : name;
  shared.counters = std::vector<Counter>(static_cast<size_t>(threads));
  std::printf("ktlb-origin listening on port %u with %d thread(s), name %s\n", port, threads,
              shared.name.c_str());
  std::fflush(stdout);

  std::vector<std::thread> workers;
  std::vector<std::unique_ptr<Worker>> objs;
  for (int t = 0; t < threads; ++t) {
    objs.push_back(std::make_unique<Worker>(&shared, &shared.counters[t], fds[t]));
  }
  for (int t = 1; t < threads; ++t) workers.emplace_back([w = objs[t].get()] { w->Run(); });
  objs[0]->Run();
  for (auto& w : workers) w.join();
  return 0;
}
