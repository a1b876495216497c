// The pure parts of session-ticket keys: the ticket_keys file format (nginx's
// 80-byte records), the in-process ring's rotation, and a worker's reader.
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "ktlb/ticket_keys.h"

namespace ktlb::tls {
namespace {

using std::chrono::hours;
using std::chrono::minutes;

std::string Record(unsigned char seed) {
  std::string r;
  for (int i = 0; i < 80; ++i) r.push_back(static_cast<char>(seed + i));
  return r;
}

TEST(ParseTicketKeyFile, SplitsRecordsAsNginxLaysThemOut) {
  absl::StatusOr<TicketKeyList> keys = ParseTicketKeyFile(Record(0) + Record(100));
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 2u);
  // 16 bytes name, then 32 HMAC secret, then 32 AES key.
  EXPECT_EQ((*keys)[0].name[0], 0);
  EXPECT_EQ((*keys)[0].name[15], 15);
  EXPECT_EQ((*keys)[0].hmac[0], 16);
  EXPECT_EQ((*keys)[0].hmac[31], 47);
  EXPECT_EQ((*keys)[0].aes[0], 48);
  EXPECT_EQ((*keys)[0].aes[31], 79);
  EXPECT_EQ((*keys)[1].name[0], 100);
  EXPECT_EQ((*keys)[1].aes[31], 179);
}

TEST(ParseTicketKeyFile, SizeMustBeAPositiveMultipleOf80) {
  for (size_t size : {0, 1, 48, 79, 81, 159, 161}) {
    absl::StatusOr<TicketKeyList> keys = ParseTicketKeyFile(std::string(size, 'x'));
    ASSERT_FALSE(keys.ok()) << size;
    EXPECT_EQ(keys.status().message(),
              "size is " + std::to_string(size) +
                  " bytes; must be a positive multiple of 80 (raw 80-byte keys as from "
                  "`openssl rand 80`, the first one encrypting)");
  }
  EXPECT_TRUE(ParseTicketKeyFile(std::string(800, 'x')).ok());
}

class TicketKeyRingTest : public ::testing::Test {
 protected:
  TicketClock::time_point t0_ = TicketClock::time_point() + hours(1000);
  TicketKeyRing ring_{t0_, TicketKeyRing::Options{}};

  TicketKeyList At(TicketClock::duration since_t0) { return *ring_.KeysAt(t0_ + since_t0).keys; }
};

TEST_F(TicketKeyRingTest, OneKeyUntilTheFirstRotation) {
  TicketKeyList first = At(minutes(0));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(At(minutes(59)).front().name, first.front().name);
  EXPECT_EQ(ring_.KeysAt(t0_).valid_until, t0_ + hours(1));
}

TEST_F(TicketKeyRingTest, RotatesHourlyAndKeepsThePreviousTwo) {
  const TicketKeyList k0 = At(minutes(0));
  const TicketKeyList k1 = At(minutes(60));
  ASSERT_EQ(k1.size(), 2u);
  EXPECT_NE(k1[0].name, k0[0].name);  // a new key encrypts
  EXPECT_EQ(k1[1].name, k0[0].name);  // the old one still decrypts
  const TicketKeyList k2 = At(minutes(120));
  ASSERT_EQ(k2.size(), 3u);
  EXPECT_EQ(k2[1].name, k1[0].name);
  EXPECT_EQ(k2[2].name, k0[0].name);
  const TicketKeyList k3 = At(minutes(180));
  ASSERT_EQ(k3.size(), 3u);  // the first key retired two hours ago: gone
  EXPECT_EQ(k3[1].name, k2[0].name);
  EXPECT_EQ(k3[2].name, k1[0].name);
}

TEST_F(TicketKeyRingTest, AfterAnIdleGapOnlyRecentKeysDecrypt) {
  const TicketKeyList k0 = At(minutes(0));
  const TicketKeyList later = At(hours(5));
  // One rotation (the ring is lazy); the key retired now still decrypts.
  ASSERT_EQ(later.size(), 2u);
  EXPECT_EQ(later[1].name, k0[0].name);
  EXPECT_EQ(ring_.KeysAt(t0_ + hours(5)).valid_until, t0_ + hours(6));
}

TEST_F(TicketKeyRingTest, ARetiredKeyExpiresBetweenLateRotations) {
  At(minutes(0));
  const TicketKeyList k1 = At(minutes(60));    // k0 retired at 60
  const TicketKeyList k2 = At(minutes(170));   // k1 retired at 170, next rotation at 230
  ASSERT_EQ(k2.size(), 3u);
  // k0 retired at 60 stops decrypting at 180, before the next rotation.
  EXPECT_EQ(ring_.KeysAt(t0_ + minutes(170)).valid_until, t0_ + minutes(180));
  const TicketKeyList k = At(minutes(185));
  ASSERT_EQ(k.size(), 2u);
  EXPECT_EQ(k[0].name, k2[0].name);
  EXPECT_EQ(k[1].name, k1[0].name);
}

TEST(TicketKeys, GenerateGivesFreshRandomRings) {
  TicketKeyReader a(TicketKeys::Generate());
  TicketKeyReader b(TicketKeys::Generate());
  const TicketClock::time_point now = TicketClock::now();
  EXPECT_NE(a.Current(now).front().name, b.Current(now).front().name);
  EXPECT_NE(a.Current(now).front().aes, b.Current(now).front().aes);
  EXPECT_EQ(a.source(), TicketKeySource::kLocal);
}

TEST(TicketKeys, CopiesShareTheRing) {
  TicketKeys keys = TicketKeys::Generate();
  TicketKeys copy = keys;
  TicketKeyReader a(keys);
  TicketKeyReader b(copy);
  const TicketClock::time_point now = TicketClock::now();
  EXPECT_EQ(a.Current(now).front().name, b.Current(now).front().name);
  // Both see the same rotation, whichever asks first.
  EXPECT_EQ(a.Current(now + hours(1)).front().name, b.Current(now + hours(1)).front().name);
  EXPECT_EQ(b.Current(now + hours(1)).size(), 2u);
}

TEST(TicketKeys, FileKeysNeverRotate) {
  absl::StatusOr<TicketKeyList> list = ParseTicketKeyFile(Record(1) + Record(2));
  ASSERT_TRUE(list.ok());
  TicketKeyReader reader(TicketKeys::FromFile(*list));
  EXPECT_EQ(reader.source(), TicketKeySource::kFile);
  const TicketKeyList& later = reader.Current(TicketClock::now() + hours(10000));
  ASSERT_EQ(later.size(), 2u);
  EXPECT_EQ(later[0].name, (*list)[0].name);
}

// LoadTicketKeys is what BuildSnapshot calls, at startup and on every reload.
class LoadTicketKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ktlb_tickets.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    config_.path = (dir_ / "ktlb.toml").string();
    config_.server.ticket_keys = (dir_ / "ticket.keys").string();
    config_.server.ticket_keys_line = 4;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& bytes) {
    std::ofstream(config_.server.ticket_keys, std::ios::binary | std::ios::trunc) << bytes;
  }
  std::string Error() {
    absl::StatusOr<TicketKeys> keys = LoadTicketKeys(config_, local_);
    return keys.ok() ? "ok" : std::string(keys.status().message());
  }

  std::filesystem::path dir_;
  Config config_;
  TicketKeys local_ = TicketKeys::Generate();
};

TEST_F(LoadTicketKeysTest, WithoutAFileTheProcessRingIsUsed) {
  config_.server.ticket_keys.clear();
  absl::StatusOr<TicketKeys> keys = LoadTicketKeys(config_, local_);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->source(), TicketKeySource::kLocal);
  const TicketClock::time_point now = TicketClock::now();
  // The same ring, not a new one: a reload keeps outstanding tickets valid.
  EXPECT_EQ(TicketKeyReader(*keys).Current(now).front().name,
            TicketKeyReader(local_).Current(now).front().name);
}

TEST_F(LoadTicketKeysTest, TheFileIsReadEachTime) {
  Write(Record(1));
  absl::StatusOr<TicketKeys> first = LoadTicketKeys(config_, local_);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->source(), TicketKeySource::kFile);
  Write(Record(2) + Record(1));  // an operator prepends a new key and reloads
  absl::StatusOr<TicketKeys> second = LoadTicketKeys(config_, local_);
  ASSERT_TRUE(second.ok()) << second.status();
  const TicketClock::time_point now = TicketClock::now();
  const TicketKeyList& before = TicketKeyReader(*first).Current(now);
  TicketKeyReader after_reader(*second);
  const TicketKeyList& after = after_reader.Current(now);
  ASSERT_EQ(before.size(), 1u);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].name[0], 2);
  EXPECT_EQ(after[1].name, before[0].name);
}

TEST_F(LoadTicketKeysTest, ErrorsPointAtTheConfigLine) {
  const std::string at = config_.path + ":4: server.ticket_keys: ";
  Write(Record(1) + "\n");
  EXPECT_EQ(Error(), at + config_.server.ticket_keys +
                         ": size is 81 bytes; must be a positive multiple of 80 (raw 80-byte keys "
                         "as from `openssl rand 80`, the first one encrypting)");
  std::filesystem::remove(config_.server.ticket_keys);
  EXPECT_EQ(Error(), at + "cannot read " + config_.server.ticket_keys + ": No such file or directory");
}

TEST(TicketKeys, SourceLabels) {
  EXPECT_STREQ(TicketKeySourceLabel(TicketKeySource::kFile), "ticket_file");
  EXPECT_STREQ(TicketKeySourceLabel(TicketKeySource::kLocal), "ticket_local");
}

}  // namespace
}  // namespace ktlb::tls
