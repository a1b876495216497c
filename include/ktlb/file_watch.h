// Notices when any of a set of files changes on disk, the way certificate
// tools change them: written in place, replaced by rename (certbot's deploy
// hooks, `mv new.crt site.crt`), or switched by a symlink swap (certbot's
// live/ links, Kubernetes' `..data` link in a mounted secret).
//
// inotify watches the *directories*, not the files: a watch on a file
// follows the old inode after a rename and never sees the new one. Only
// events on the watched names (and on the first component of a relative
// symlink they point through) count, so an access log written next to the
// config does not trigger reloads.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

class FileWatch {
 public:
  // Replaces the watched set with `files` (paths as the config names them).
  // Events already queued for directories still watched are kept. A
  // directory that cannot be watched is an error; the others are watched.
  absl::Status Watch(const std::vector<std::string>& files);
  // Pollable (POLLIN) when events are waiting; -1 before the first Watch.
  int fd() const { return fd_.get(); }
  // Reads every waiting event without blocking; true if one of them touched
  // a watched name.
  bool TakeChanges();

 private:
  UniqueFd fd_;
  std::map<int, std::set<std::string>> names_by_wd_;  // watch -> names that count
};

}  // namespace ktlb
