// UniqueFd: sole ownership of one file descriptor.
//
// A UniqueFd closes the descriptor it holds when it is destroyed, reset or
// assigned over, so every early return releases it exactly once. It is
// move-only: a descriptor has one owner at a time, and moving transfers that
// ownership (the source is left empty, holding -1). release() hands the
// descriptor back to the caller, who then owns it (for example to give it to
// the kernel through io_uring, which closes it on its own path).
//
// Errors from close(2) are ignored. In particular EINTR is never retried: on
// Linux close() has already released the descriptor when it reports EINTR,
// and a second close() could close an unrelated descriptor that another
// thread opened in between and got the same number. There is nothing useful
// a destructor could do with EIO either; code that must know whether data
// reached the disk calls fsync(2) before letting go of the descriptor.
//
// Not thread-safe (like any value type); a UniqueFd may move between threads.
#pragma once

#include <unistd.h>

#include <utility>

namespace ktlb {

class UniqueFd {
 public:
  // Empty: owns nothing.
  UniqueFd() noexcept = default;
  // Takes ownership of `fd`; a negative value means empty.
  explicit UniqueFd(int fd) noexcept : fd_(fd < 0 ? -1 : fd) {}

  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }

  ~UniqueFd() { reset(); }

  // The descriptor, still owned by this object; -1 when empty.
  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }

  // Gives up ownership without closing: the caller now owns the returned
  // descriptor (-1 when empty). Discarding the result would leak it.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

  // Closes the current descriptor (if any) and takes ownership of `fd`.
  // Resetting to the descriptor already held is a no-op rather than a close
  // followed by holding a dead (and soon reused) number.
  void reset(int fd = -1) noexcept {
    if (fd < 0) fd = -1;
    if (fd == fd_) return;
    const int old = std::exchange(fd_, fd);
    if (old >= 0) ::close(old);  // errors ignored: see the header comment
  }

  friend void swap(UniqueFd& a, UniqueFd& b) noexcept { std::swap(a.fd_, b.fd_); }

 private:
  int fd_ = -1;
};

}  // namespace ktlb
