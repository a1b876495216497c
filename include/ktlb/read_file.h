// Reads a whole small file (a certificate, a key, a ticket key file) at
// startup or reload, never on the connection path.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace ktlb {

// The file's bytes. Errors (InvalidArgument) read "cannot read PATH: <errno
// text>", or "PATH is larger than N bytes" past `max_bytes`, so a mistaken
// /dev/zero cannot eat memory.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);

}  // namespace ktlb
