// The process's listening sockets by address, for a binary upgrade: the
// running process lists them to hand them to its successor (SCM_RIGHTS), and
// the successor's workers take the inherited ones instead of binding new
// sockets. A socket handed over keeps its accept queue, so no connection
// that reached the old process's backlog is lost.
//
// Workers register and take under one lock, only when listeners open or
// close (startup, reload), never per connection.
#pragma once

#include <atomic>
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
  // A duplicate of every registered socket, for the successor (dup'd under
  // the lock, so a worker closing one meanwhile cannot make the number
  // name something else).
  std::vector<std::pair<std::string, UniqueFd>> List() const;

  // --- both ---
  // True while another process holds these sockets too (a hand-off under
  // way, or not yet confirmed): then closing a listener must not
  // shutdown() it, which would stop it for the other process as well.
  void SetShared(bool shared) { shared_.store(shared, std::memory_order_relaxed); }
  bool shared() const { return shared_.load(std::memory_order_relaxed); }

  // --- the successor ---
  void Inherit(const std::string& address, UniqueFd fd);
  // An inherited socket for `address`, or an empty fd: then bind a new one.
  UniqueFd Take(const std::string& address);
  // Inherited sockets no worker took (the predecessor ran more workers);
  // closed, so they leave the reuseport group once the predecessor closes
  // its copies. Returns how many.
  size_t CloseUntaken();

 private:
  std::atomic<bool> shared_{false};
  mutable std::mutex mu_;
  std::map<int, std::string> registered_;  // fd -> address
  std::multimap<std::string, UniqueFd> inherited_;
};

}  // namespace ktlb
