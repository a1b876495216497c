// The access log: one JSON object per line per request, written by each
// worker without ever blocking it. Lines collect in a buffer during a loop
// turn; at its end the buffer goes to the file in one io_uring write (buffered
// file writes run in io_uring's own threads), while the next turn fills the
// other buffer. A disk that cannot keep up loses lines, counted, rather than
// stalling the proxy.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ktlb {

class ErrorLog;
class Ring;

class AccessLog {
 public:
  // What one buffer may hold before lines are dropped.
  static constexpr size_t kMaxPending = 4 << 20;

  // `fd` opened O_APPEND by the server, shared by every worker (O_APPEND
  // makes each write land whole at the end). -1: logging is off.
  // Write failures are reported to `log` (rate-limited), if given.
  void Init(int fd, ErrorLog* log = nullptr) {
    fd_ = fd;
    log_ = log;
  }
  bool enabled() const { return fd_ >= 0; }

  // The buffer to append one line to (without the newline); Commit() ends it.
  // Returns nullptr when the line must be dropped.
  std::string* Begin();
  void Commit() { filling_.push_back('\n'); }

  // The members every line starts with: {"time":..,"listener":..,
  // "client":"ip:port","sni":..  (no trailing comma). nullptr: dropped.
  std::string* BeginLine(std::string_view time, std::string_view listener,
                         std::string_view client_ip, uint16_t client_port, std::string_view sni);
  // The members every line ends with (upstream, server and error when
  // known, each may be empty / null), the closing brace, and Commit().
  void EndLine(std::string* line, std::string_view upstream, std::string_view server,
               const char* error);

  // End of a loop turn: start writing what collected, unless a write is
  // still in flight (it goes next time).
  void Flush(Ring& ring, uint64_t user_data);
  void OnWrite(int res);
  // At exit: write what is left, blocking (the worker is done serving).
  void FlushBlocking();
  uint64_t dropped() const { return dropped_; }
  bool inflight() const { return inflight_; }

 private:
  int fd_ = -1;
  ErrorLog* log_ = nullptr;
  std::string filling_;
  std::string writing_;
  size_t written_ = 0;  // of writing_
  bool inflight_ = false;
  uint64_t dropped_ = 0;
};

// Appends `s` as the contents of a JSON string (no quotes): ", \, control
// bytes and bytes >= 0x80 escaped (as \u00XX), printable ASCII as it is.
void AppendJsonEscaped(std::string* out, std::string_view s);

}  // namespace ktlb
