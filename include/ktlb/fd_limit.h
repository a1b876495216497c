// The process's open-file limit: every connection costs ktlb two descriptors
// (client and upstream) and a splice two more (its pipe), so the common
// default soft limit of 1024 caps a proxy at a few hundred connections.
#pragma once

#include <cstdint>

namespace ktlb {

struct FdLimit {
  uint64_t soft = 0;  // after raising
  uint64_t hard = 0;
  bool raised = false;
};

// Raises the soft RLIMIT_NOFILE to the hard limit (what HAProxy does for its
// maxconn and nginx's worker_rlimit_nofile asks for). Never lowers it.
FdLimit RaiseFdLimit();

}  // namespace ktlb
