#include "ktlb/privileges.h"

#include <grp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ktlb {

absl::Status DropPrivileges(uint32_t uid, uint32_t gid) {
  // Already that user (systemd's User=, or started by it): nothing to drop.
  if (geteuid() == uid && getuid() == uid && getegid() == gid && getgid() == gid) {
    return absl::OkStatus();
  }
  if (geteuid() != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("running as uid ", geteuid(), ", not root: start ktlb as root or as uid ",
                     uid, " (without user/group under systemd's User=)"));
  }
  // Groups first: once the uid is gone, changing them is no longer allowed.
  gid_t groups[1] = {static_cast<gid_t>(gid)};
  if (setgroups(1, groups) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("setgroups: ", strerror(errno)));
  }
  if (setgid(static_cast<gid_t>(gid)) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("setgid(", gid, "): ", strerror(errno)));
  }
  if (setuid(static_cast<uid_t>(uid)) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("setuid(", uid, "): ", strerror(errno)));
  }
  if (uid != 0 && setuid(0) == 0) {
    return absl::InternalError("setuid(0) still works after dropping privileges");
  }
  return absl::OkStatus();
}

}  // namespace ktlb
