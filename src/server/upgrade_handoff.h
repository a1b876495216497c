// Binary upgrade without dropping a connection: the running ktlb hands its
// listening sockets to a new ktlb process (SCM_RIGHTS over a unix socket),
// then stops accepting and drains. The sockets stay open throughout, with
// their backlogs, so no connection is refused or reset on the way.
//
//   running:  UpgradeListener, named after the config file's real path
//   new:      ktlb --config FILE --upgrade
//               UpgradeClient::TakeOver  -> gets every listening socket
//               Server::Start            -> workers accept on them
//               UpgradeClient::Ready     -> the old process drains and
//                                           releases the name
//               UpgradeListener::Open    -> ready for the next upgrade
//
// The name is in the abstract namespace (no file to clean up); only root or
// the same user may connect (SO_PEERCRED), as the sockets are worth having.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "ktlb/listen_sockets.h"
#include "ktlb/unique_fd.h"

namespace ktlb {

// "@ktlb-upgrade-<hash of the config's real path>", as `ss -xl` shows it.
std::string UpgradeSocketName(const std::string& config_path);

class UpgradeListener {
 public:
  // Fails if another process holds the name (a second ktlb on this config).
  absl::Status Open(const std::string& config_path);
  // Pollable for a successor's connection; -1 when not open.
  int fd() const { return fd_.get(); }
  // Hands a connected successor every socket in `sockets` and waits (bounded)
  // until it serves. True: it does, the name is released and the caller
  // should drain. False: it went away or took too long; keep serving.
  // `sockets` are marked shared from the first one sent until the
  // successor has them all and serves, or has failed (then not shared).
  bool HandOff(ListenSockets* sockets);

 private:
  UniqueFd fd_;
};

class UpgradeClient {
 public:
  // Connects to the running process (root or our own user only) and takes
  // its listening sockets into `into` (Server::listen_sockets(), before
  // Start), marked shared: until Ready() they must not be shut down here.
  absl::Status TakeOver(const std::string& config_path, ListenSockets* into);
  // Tells the predecessor that this process serves; returns once it has
  // released the upgrade name (so UpgradeListener::Open can take it), and
  // the sockets are this process's alone.
  absl::Status Ready(ListenSockets* sockets);

 private:
  UniqueFd conn_;
};

}  // namespace ktlb
