// Running as an unprivileged user once the listening sockets are bound.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace ktlb {

// Sets the supplementary groups to just `gid`, then the gid, then the uid,
// for every thread of the process (glibc applies set*id to all threads), and
// checks that root cannot be regained. Nothing to do when the process
// already runs as uid/gid; otherwise root only. An error leaves the
// process as it was where it can.
absl::Status DropPrivileges(uint32_t uid, uint32_t gid);

}  // namespace ktlb
