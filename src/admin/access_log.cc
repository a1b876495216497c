#include "ktlb/access_log.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "ktlb/error_log.h"
#include "ktlb/ring.h"

namespace ktlb {

std::string* AccessLog::BeginLine(std::string_view time, std::string_view listener,
                                  std::string_view client_ip, uint16_t client_port,
                                  std::string_view sni) {
  std::string* out = Begin();
  if (out == nullptr) return nullptr;
  // std::string_view does not convert to Debian's absl::string_view: plain appends.
  out->append("{\"time\":\"").append(time).append("\",\"listener\":\"").append(listener);
  out->append("\",\"client\":\"").append(client_ip).push_back(':');
  out->append(std::to_string(client_port)).append("\",\"sni\":\"");
  AppendJsonEscaped(out, sni);
  out->push_back('"');
  return out;
}

void AccessLog::EndLine(std::string* out, std::string_view upstream, std::string_view server,
                        const char* error) {
  if (!upstream.empty()) out->append(",\"upstream\":\"").append(upstream).push_back('"');
  if (!server.empty()) out->append(",\"server\":\"").append(server).push_back('"');
  if (error != nullptr) out->append(",\"error\":\"").append(error).push_back('"');
  out->push_back('}');
  Commit();
}

std::string* AccessLog::Begin() {
  if (fd_ < 0) return nullptr;
  if (filling_.size() >= kMaxPending) {
    ++dropped_;
    return nullptr;
  }
  return &filling_;
}

void AccessLog::Flush(Ring& ring, uint64_t user_data) {
  if (fd_ < 0 || inflight_ || filling_.empty()) return;
  writing_.swap(filling_);
  filling_.clear();
  written_ = 0;
  io_uring_sqe* sqe = ring.Sqe();
  io_uring_prep_write(sqe, fd_, writing_.data(), static_cast<unsigned>(writing_.size()),
                      static_cast<uint64_t>(-1));  // O_APPEND: at the end
  io_uring_sqe_set_data64(sqe, user_data);
  inflight_ = true;
}

void AccessLog::OnWrite(int res) {
  inflight_ = false;
  if (res < 0) {
    // A full disk or a revoked file: the lines are lost, counted, and the
    // next turn tries again with new ones.
    if (log_ != nullptr) {
      log_->Log(ErrorLog::Level::kError, "access_log", "write failed: %s", strerror(-res));
    }
    dropped_ += 1;
  } else if (static_cast<size_t>(res) < writing_.size()) {
    // A short write: the rest goes ahead of the next turn's lines.
    filling_.insert(0, writing_, static_cast<size_t>(res), std::string::npos);
  }
  writing_.clear();
  if (writing_.capacity() > kMaxPending) std::string().swap(writing_);
}

void AccessLog::FlushBlocking() {
  if (fd_ < 0 || filling_.empty()) return;
  std::string_view rest(filling_);
  while (!rest.empty()) {
    ssize_t n = write(fd_, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    rest.remove_prefix(static_cast<size_t>(n));
  }
  filling_.clear();
}

void AppendJsonEscaped(std::string* out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (u < 0x20 || u >= 0x7f) {
      // Control bytes, and bytes >= 0x80 (a TLS SNI may carry any byte but
      // NUL): escaped one by one, so every line is valid UTF-8 JSON.
      out->append("\\u00");
      out->push_back(kHex[u >> 4]);
      out->push_back(kHex[u & 15]);
    } else {
      out->push_back(c);
    }
  }
}

}  // namespace ktlb
