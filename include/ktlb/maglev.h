// Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
// a prime number of slots, filled by letting the servers take turns claiming
// their next preferred free slot. Each server's preference order is a
// permutation derived from two hashes of its identity, so every worker and
// every ktlb host builds the same table from the same server list, and
// removing one of N servers moves only about 1/N of the keys.
//
// Weights: a server of weight w claims a slot in w out of every max-weight
// turns, so its share of the table (and of the keys) is w / sum of weights.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "ktlb/balancer.h"

namespace ktlb::upstream {

class MaglevTable {
 public:
  // The paper's size for up to a few hundred servers: large enough that a
  // server's share is accurate to well under a percent.
  static constexpr uint32_t kDefaultSize = 65537;

  // `size` must be prime and larger than the number of servers.
  explicit MaglevTable(std::span<const BalancerServer> servers, uint32_t size = kDefaultSize);

  uint32_t size() const { return static_cast<uint32_t>(slots_.size()); }
  // The server for a 64-bit key hash.
  uint32_t Lookup(uint64_t hash) const { return slots_[hash % slots_.size()]; }
  uint32_t Slot(size_t i) const { return slots_[i]; }

 private:
  std::vector<uint32_t> slots_;
};

}  // namespace ktlb::upstream
