#include "ktlb/listen_sockets.h"

#include <fcntl.h>

namespace ktlb {

void ListenSockets::Register(const std::string& address, int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  registered_[fd] = address;
}

void ListenSockets::Unregister(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  registered_.erase(fd);
}

std::vector<std::pair<std::string, UniqueFd>> ListenSockets::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, UniqueFd>> out;
  for (const auto& [fd, address] : registered_) {
    UniqueFd copy(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (copy) out.emplace_back(address, std::move(copy));
  }
  return out;
}

void ListenSockets::Inherit(const std::string& address, UniqueFd fd) {
  std::lock_guard<std::mutex> lock(mu_);
  inherited_.emplace(address, std::move(fd));
}

UniqueFd ListenSockets::Take(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = inherited_.find(address);
  if (it == inherited_.end()) return UniqueFd();
  UniqueFd fd = std::move(it->second);
  inherited_.erase(it);
  return fd;
}

size_t ListenSockets::CloseUntaken() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = inherited_.size();
  inherited_.clear();
  return n;
}

}  // namespace ktlb
