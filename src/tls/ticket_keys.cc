// Session-ticket key material: the ticket_keys file format, the in-process
// rotating ring, and the per-worker reader (see ticket_keys.h).
#include "ktlb/ticket_keys.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ktlb/read_file.h"

namespace ktlb::tls {

static_assert(sizeof(TicketKey::name) + sizeof(TicketKey::hmac) + sizeof(TicketKey::aes) ==
                  TicketKey::kSize,
              "nginx's 80-byte record: 16 name + 32 HMAC + 32 AES");

namespace {

// A fleet's file holds a handful of keys; the cap only stops a mistaken path
// (a log file, a disk image) from being read into memory.
constexpr size_t kMaxTicketKeyFileBytes = 1000 * TicketKey::kSize;

}  // namespace

TicketKey TicketKey::FromBytes(const unsigned char (&bytes)[kSize]) {
  TicketKey key;
  std::memcpy(key.name.data(), bytes, key.name.size());
  std::memcpy(key.hmac.data(), bytes + key.name.size(), key.hmac.size());
  std::memcpy(key.aes.data(), bytes + key.name.size() + key.hmac.size(), key.aes.size());
  return key;
}

TicketKey TicketKey::Random() {
  unsigned char bytes[kSize];
  // Predictable ticket keys would let anyone decrypt resumed sessions, and
  // there is nothing sensible to fall back to: stop instead. RAND_bytes only
  // fails when the OS entropy source itself is broken.
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    std::fputs("ktlb: RAND_bytes failed; cannot create session ticket keys\n", stderr);
    std::abort();
  }
  TicketKey key = FromBytes(bytes);
  OPENSSL_cleanse(bytes, sizeof(bytes));
  return key;
}

const char* TicketKeySourceLabel(TicketKeySource source) {
  switch (source) {
    case TicketKeySource::kFile: return "ticket_file";
    case TicketKeySource::kLocal: return "ticket_local";
    case TicketKeySource::kCount: break;
  }
  return "unknown";
}

absl::StatusOr<TicketKeyList> ParseTicketKeyFile(std::string_view bytes) {
  if (bytes.empty() || bytes.size() % TicketKey::kSize != 0) {
    // The usual mistakes: a hex or base64 dump instead of raw bytes, or a
    // trailing newline from an editor.
    return absl::InvalidArgumentError(absl::StrCat(
        "size is ", bytes.size(), " bytes; must be a positive multiple of ", TicketKey::kSize,
        " (raw 80-byte keys as from `openssl rand 80`, the first one encrypting)"));
  }
  TicketKeyList keys;
  keys.reserve(bytes.size() / TicketKey::kSize);
  for (size_t at = 0; at < bytes.size(); at += TicketKey::kSize) {
    unsigned char record[TicketKey::kSize];
    std::memcpy(record, bytes.data() + at, sizeof(record));
    keys.push_back(TicketKey::FromBytes(record));
    OPENSSL_cleanse(record, sizeof(record));
  }
  return keys;
}

TicketKeyRing::TicketKeyRing(TicketClock::time_point now, Options options)
    : options_(options), next_rotation_(now + options.period) {
  entries_.push_back({TicketKey::Random(), {}});
  Publish();
}

TicketKeyRing::Keys TicketKeyRing::KeysAt(TicketClock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (now < published_.valid_until) return published_;
  if (now >= next_rotation_) {
    entries_.front().retired = now;
    entries_.insert(entries_.begin(), {TicketKey::Random(), {}});
    next_rotation_ = now + options_.period;
  }
  // A retired key decrypts for keep_retired periods after it stopped
  // encrypting: a ticket issued just before a rotation lives that long.
  const TicketClock::duration keep = options_.period * static_cast<int64_t>(options_.keep_retired);
  entries_.erase(std::remove_if(entries_.begin() + 1, entries_.end(),
                                [&](const Entry& e) { return now - e.retired >= keep; }),
                 entries_.end());
  Publish();
  return published_;
}

void TicketKeyRing::Publish() {
  auto keys = std::make_shared<TicketKeyList>();
  TicketClock::time_point until = next_rotation_;
  const TicketClock::duration keep = options_.period * static_cast<int64_t>(options_.keep_retired);
  for (size_t i = 0; i < entries_.size(); ++i) {
    keys->push_back(entries_[i].key);
    if (i > 0) until = std::min(until, entries_[i].retired + keep);
  }
  published_ = {std::move(keys), until};
}

TicketKeys TicketKeys::Generate() {
  TicketKeys keys;
  keys.source_ = TicketKeySource::kLocal;
  keys.ring_ = std::make_shared<TicketKeyRing>(TicketClock::now(), TicketKeyRing::Options{});
  return keys;
}

TicketKeys TicketKeys::FromFile(TicketKeyList list) {
  TicketKeys keys;
  keys.source_ = TicketKeySource::kFile;
  keys.fixed_ = std::make_shared<const TicketKeyList>(std::move(list));
  return keys;
}

TicketKeyReader::TicketKeyReader(TicketKeys keys) : keys_(std::move(keys)) {
  if (keys_.fixed_ != nullptr) cached_ = {keys_.fixed_, TicketClock::time_point::max()};
}

const TicketKeyList& TicketKeyReader::Current(TicketClock::time_point now) {
  if (now >= cached_.valid_until || cached_.keys == nullptr) cached_ = keys_.ring_->KeysAt(now);
  return *cached_.keys;
}

absl::StatusOr<TicketKeys> LoadTicketKeys(const Config& config, const TicketKeys& local) {
  const ServerConfig& server = config.server;
  if (server.ticket_keys.empty()) return local;
  auto fail = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.path, ":", std::max<uint32_t>(server.ticket_keys_line, 1),
        ": server.ticket_keys: ", problem));
  };
  absl::StatusOr<std::string> bytes = ReadSmallFile(server.ticket_keys, kMaxTicketKeyFileBytes);
  if (!bytes.ok()) return fail(bytes.status().message());
  absl::StatusOr<TicketKeyList> keys = ParseTicketKeyFile(*bytes);
  OPENSSL_cleanse(bytes->data(), bytes->size());
  if (!keys.ok()) return fail(absl::StrCat(server.ticket_keys, ": ", keys.status().message()));
  return TicketKeys::FromFile(*std::move(keys));
}

}  // namespace ktlb::tls
