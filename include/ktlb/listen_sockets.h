// The process's listening sockets by address, for a binary upgrade: the
// running process lists them to hand them to its successor (SCM_RIGHTS), and
// the successor's workers take the inherited ones instead of binding new
// sockets. A socket handed over keeps its accept queue, so no connection
// that reached the old process's backlog is lost.
//
// Workers register and take under one lock, only when listeners open or
// close (startup, reload), never per connection.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ktlb/unique_fd.h"

namespace ktlb {

class ListenSockets {
 public:
  // --- the running process ---
  // `fd` listens on `address` (a worker owns it; this only lists it).
  void Register(const std::string& address, int fd);
  void Unregister(int fd);
  // Every registered socket, for the successor.
  std::vector<std::pair<std::string, int>> List() const;

  // --- the successor ---
  void Inherit(const std::string& address, UniqueFd fd);
  // An inherited socket for `address`, or an empty fd: then bind a new one.
  UniqueFd Take(const std::string& address);
  // Inherited sockets no worker took (the predecessor ran more workers);
  // closed, so they leave the reuseport group once the predecessor closes
  // its copies. Returns how many.
  size_t CloseUntaken();

 private:
  mutable std::mutex mu_;
  std::map<int, std::string> registered_;  // fd -> address
  std::multimap<std::string, UniqueFd> inherited_;
};

}  // namespace ktlb
