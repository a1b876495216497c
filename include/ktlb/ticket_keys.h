// Session-ticket keys: what seals and opens the stateless tickets that let a
// client resume on any worker and, with a shared ticket_keys file, on any
// host of a fleet.
//
// Two sources, one shape (a list whose first key encrypts and whose every key
// decrypts):
//   - a ticket_keys file, read when a snapshot is built (so a reload re-reads
//     it) and fixed for that snapshot's life;
//   - the process's own ring (TicketKeys::Generate), rotated every hour with
//     the previous two keys still decrypting. A reload must hand the same
//     TicketKeys to the new snapshot, or every outstanding ticket is lost.
//
// Thread model: a TicketKeys is copied into every snapshot and read by every
// worker; copies share the ring. Workers read through a TicketKeyReader of
// their own, which takes the ring's lock only when a rotation is due (once an
// hour), never per handshake.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ktlb/config.h"

namespace ktlb::tls {

// One key, laid out as nginx's 80-byte ssl_session_ticket_key file: the name
// a ticket carries in the clear, then the HMAC-SHA256 secret, then the
// AES-256-CBC key.
struct TicketKey {
  static constexpr size_t kSize = 80;
  std::array<unsigned char, 16> name{};
  std::array<unsigned char, 32> hmac{};
  std::array<unsigned char, 32> aes{};

  static TicketKey FromBytes(const unsigned char (&bytes)[kSize]);
  static TicketKey Random();  // aborts if the OS entropy source is broken
};

// [0] encrypts, every key decrypts.
using TicketKeyList = std::vector<TicketKey>;

// Where the key that opened a resumed session's ticket came from; a metric
// label each (TicketKeySourceLabel).
enum class TicketKeySource : uint8_t { kFile, kLocal, kCount };
const char* TicketKeySourceLabel(TicketKeySource source);

// The records of a ticket_keys file: a positive multiple of 80 bytes, in
// file order. Pure; errors say what is wrong with the size.
absl::StatusOr<TicketKeyList> ParseTicketKeyFile(std::string_view bytes);

using TicketClock = std::chrono::steady_clock;

// The process's own keys: a new one every `period`, a retired one still
// decrypting for `keep_retired` periods after it stopped encrypting. Time is
// passed in, so rotation is testable without waiting; the ring rotates lazily
// when asked for its keys at or after the next rotation time.
class TicketKeyRing {
 public:
  struct Options {
    TicketClock::duration period = std::chrono::hours(1);
    size_t keep_retired = 2;
  };
  // The keys in effect and until when they stay so: a reader may use `keys`
  // without asking again before `valid_until`.
  struct Keys {
    std::shared_ptr<const TicketKeyList> keys;
    TicketClock::time_point valid_until;
  };

  TicketKeyRing(TicketClock::time_point now, Options options);
  Keys KeysAt(TicketClock::time_point now);  // thread-safe

 private:
  struct Entry {
    TicketKey key;
    TicketClock::time_point retired;  // when it stopped encrypting (current: unused)
  };
  void Publish();  // mu_ held

  const Options options_;
  std::mutex mu_;
  std::vector<Entry> entries_;  // [0] current, then retired ones, newest first
  TicketClock::time_point next_rotation_;
  Keys published_;
};

// What a snapshot's TLS contexts seal and open tickets with. Cheap to copy;
// copies share the ring.
class TicketKeys {
 public:
  // A fresh in-process ring, rotating hourly. Once per process: every
  // snapshot (and every reload) should be given the same one.
  static TicketKeys Generate();
  // A ticket_keys file's keys: fixed for the life of the snapshot.
  static TicketKeys FromFile(TicketKeyList keys);

  TicketKeySource source() const { return source_; }

 private:
  friend class TicketKeyReader;
  TicketKeys() = default;

  TicketKeySource source_ = TicketKeySource::kLocal;
  std::shared_ptr<const TicketKeyList> fixed_;  // set for a file's keys
  std::shared_ptr<TicketKeyRing> ring_;         // set for a rotating ring
};

// One worker's view of a TicketKeys. Not thread-safe: one per worker (per
// TLS context).
class TicketKeyReader {
 public:
  explicit TicketKeyReader(TicketKeys keys);
  const TicketKeyList& Current(TicketClock::time_point now);
  TicketKeySource source() const { return keys_.source(); }

 private:
  TicketKeys keys_;
  TicketKeyRing::Keys cached_;
};

// The ticket keys a snapshot of `config` uses: its [server] ticket_keys file
// when it names one (errors read "FILE:LINE: server.ticket_keys: ..."),
// otherwise `local`, the process's ring.
absl::StatusOr<TicketKeys> LoadTicketKeys(const Config& config, const TicketKeys& local);

}  // namespace ktlb::tls
