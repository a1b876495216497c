#include "ktlb/maglev.h"

#include <algorithm>

#include "ktlb/request_hash.h"

namespace ktlb::upstream {

namespace {
constexpr uint32_t kEmpty = UINT32_MAX;
// Two independent hashes of the identity: the paper's offset and skip.
constexpr uint64_t kOffsetSeed = 0x6d61676c65764f66ULL;
constexpr uint64_t kSkipSeed = 0x6d61676c6576536bULL;
}  // namespace

MaglevTable::MaglevTable(std::span<const BalancerServer> servers, uint32_t size)
    : slots_(size, kEmpty) {
  const size_t n = servers.size();
  if (n == 0) return;
  std::vector<uint64_t> offset(n), skip(n), next(n, 0);
  std::vector<uint32_t> credit(n, 0);
  uint32_t max_weight = 1;
  for (size_t i = 0; i < n; ++i) {
    offset[i] = StableHash64(servers[i].identity, kOffsetSeed) % size;
    skip[i] = StableHash64(servers[i].identity, kSkipSeed) % (size - 1) + 1;
    max_weight = std::max(max_weight, servers[i].weight);
  }
  size_t filled = 0;
  while (true) {
    for (size_t i = 0; i < n; ++i) {
      credit[i] += servers[i].weight;
      if (credit[i] < max_weight) continue;
      credit[i] -= max_weight;
      // size is prime and skip in [1, size), so the sequence visits every
      // slot within `size` steps: a free one is always found.
      uint64_t c;
      do {
        c = (offset[i] + next[i] * skip[i]) % size;
        ++next[i];
      } while (slots_[c] != kEmpty);
      slots_[c] = static_cast<uint32_t>(i);
      if (++filled == size) return;
    }
  }
}

}  // namespace ktlb::upstream
