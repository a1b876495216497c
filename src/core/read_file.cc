#include "ktlb/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  // errno words rather than BIO_new_file's queue: operators know "Permission
  // denied", and the message names exactly which path failed.
  auto io_error = [&](int err) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", path, ": ", std::generic_category().message(err)));
  };
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return io_error(errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return io_error(errno);
  if (S_ISDIR(st.st_mode)) return io_error(EISDIR);

  std::string data;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(errno);
    }
    if (n == 0) break;
    if (data.size() + static_cast<size_t>(n) > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
    }
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

}  // namespace ktlb
