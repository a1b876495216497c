#include "ktlb/file_watch.h"

#include <limits.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ktlb {

namespace {

// What a rename, a symlink swap, a new file or a finished write looks like.
// IN_MODIFY alone is left out: a file being written is seen when it is
// closed, not half-way.
constexpr uint32_t kEvents =
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB;

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseOf(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

absl::Status FileWatch::Watch(const std::vector<std::string>& files) {
  // One inotify instance for the process's life: a directory watched before
  // and after keeps its watch, so a change made while a reload was reading
  // the files is still queued afterwards and triggers the next one.
  if (!fd_) fd_.reset(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd_) return absl::InternalError(absl::StrCat("inotify_init1: ", strerror(errno)));

  std::map<std::string, std::set<std::string>> names_by_dir;
  for (const std::string& file : files) {
    std::string dir = DirOf(file);
    names_by_dir[dir].insert(BaseOf(file));
    // A link swapped in the same directory ("site.crt -> ..data/site.crt",
    // where "..data" itself is the link that changes) shows up as an
    // event on the link's first component.
    char target[PATH_MAX];
    ssize_t n = readlink(file.c_str(), target, sizeof target - 1);
    if (n > 0 && target[0] != '/') {
      std::string t(target, static_cast<size_t>(n));
      names_by_dir[dir].insert(t.substr(0, t.find('/')));
    }
    // The directory the file really lives in (certbot: live/ links into
    // archive/): a rewrite in place there is a change too.
    char real[PATH_MAX];
    if (realpath(file.c_str(), real) != nullptr && std::string(real) != file) {
      names_by_dir[DirOf(real)].insert(BaseOf(real));
    }
  }
  absl::Status first_error;
  std::map<int, std::set<std::string>> names_by_wd;
  for (const auto& [dir, names] : names_by_dir) {
    // The same directory gives the same watch descriptor again.
    int wd = inotify_add_watch(fd_.get(), dir.c_str(), kEvents);
    if (wd < 0) {
      if (first_error.ok()) {
        first_error = absl::FailedPreconditionError(
            absl::StrCat("cannot watch ", dir, ": ", strerror(errno)));
      }
      continue;
    }
    // Two paths can name one directory ("." and "./"): one watch.
    names_by_wd[wd].insert(names.begin(), names.end());
  }
  for (const auto& [wd, names] : names_by_wd_) {
    if (!names_by_wd.count(wd)) inotify_rm_watch(fd_.get(), wd);
  }
  names_by_wd_ = std::move(names_by_wd);
  return first_error;
}

bool FileWatch::TakeChanges() {
  if (!fd_) return false;
  bool changed = false;
  alignas(inotify_event) char buf[16 * 1024];
  for (;;) {
    ssize_t n = read(fd_.get(), buf, sizeof buf);
    if (n <= 0) break;  // EAGAIN: drained
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
      if (ev->mask & IN_Q_OVERFLOW) {
        changed = true;  // events were lost: assume the worst
        continue;
      }
      auto it = names_by_wd_.find(ev->wd);
      if (it == names_by_wd_.end() || ev->len == 0) continue;
      if (it->second.count(std::string(ev->name))) changed = true;
    }
  }
  return changed;
}

}  // namespace ktlb
