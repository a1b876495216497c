#include <string>
#include <thread>
#include <vector>

#include <openssl/bio.h>

#include "gtest/gtest.h"
#include "ktlb/openssl_ptr.h"
#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

TEST(BufferBio, ReadConsumesInput) {
  std::string out;
  BioIo io{.in = "hello world", .out = &out};
  UniqueBio bio(NewBufferBio(&io));
  ASSERT_NE(bio, nullptr);

  char buf[5];
  ASSERT_EQ(BIO_read(bio.get(), buf, sizeof(buf)), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_EQ(io.in, " world");  // the caller sees what is left
  EXPECT_EQ(BIO_pending(bio.get()), 6);

  char rest[64];
  ASSERT_EQ(BIO_read(bio.get(), rest, sizeof(rest)), 6);
  EXPECT_EQ(std::string(rest, 6), " world");
  EXPECT_TRUE(io.in.empty());
}

TEST(BufferBio, EmptyInputAsksForRetryUntilEof) {
  std::string out;
  BioIo io{.out = &out};
  UniqueBio bio(NewBufferBio(&io));
  char buf[8];
  EXPECT_EQ(BIO_read(bio.get(), buf, sizeof(buf)), -1);
  EXPECT_TRUE(BIO_should_retry(bio.get()));
  EXPECT_TRUE(BIO_should_read(bio.get()));
  EXPECT_FALSE(BIO_eof(bio.get()));

  io.in = "x";
  ASSERT_EQ(BIO_read(bio.get(), buf, sizeof(buf)), 1);
  EXPECT_FALSE(BIO_should_retry(bio.get()));  // a good read clears the flags

  io.in_eof = true;
  EXPECT_EQ(BIO_read(bio.get(), buf, sizeof(buf)), 0);
  EXPECT_FALSE(BIO_should_retry(bio.get()));
  EXPECT_TRUE(BIO_eof(bio.get()));
}

TEST(BufferBio, EofOnlyAfterInputIsDrained) {
  std::string out;
  BioIo io{.in = "ab", .in_eof = true, .out = &out};
  UniqueBio bio(NewBufferBio(&io));
  EXPECT_FALSE(BIO_eof(bio.get()));
  char buf[8];
  EXPECT_EQ(BIO_read(bio.get(), buf, sizeof(buf)), 2);
  EXPECT_TRUE(BIO_eof(bio.get()));
}

TEST(BufferBio, WritesAppendAndNeverRetry) {
  std::string out = "queued:";
  BioIo io{.out = &out};
  UniqueBio bio(NewBufferBio(&io));
  EXPECT_EQ(BIO_write(bio.get(), "abc", 3), 3);
  EXPECT_EQ(BIO_write(bio.get(), "de", 2), 2);
  EXPECT_FALSE(BIO_should_retry(bio.get()));
  EXPECT_EQ(out, "queued:abcde");
  EXPECT_EQ(BIO_wpending(bio.get()), 0);
}

TEST(BufferBio, FlushAlwaysSucceeds) {
  std::string out;
  BioIo io{.out = &out};
  UniqueBio bio(NewBufferBio(&io));
  EXPECT_EQ(BIO_write(bio.get(), "abc", 3), 3);
  // KTLS.md: a flush that fails or retries silently disables kTLS TX.
  EXPECT_EQ(BIO_flush(bio.get()), 1);
  EXPECT_FALSE(BIO_should_retry(bio.get()));
}

TEST(BufferBio, UnknownAndKtlsControlsAreUnsupported) {
  std::string out;
  BioIo io{.out = &out};
  UniqueBio bio(NewBufferBio(&io));
  for (int cmd : {72, 73, 74, 75, 76, BIO_CTRL_RESET, BIO_CTRL_INFO, 9999}) {
    EXPECT_EQ(BIO_ctrl(bio.get(), cmd, 0, nullptr), 0) << cmd;
  }
  EXPECT_EQ(BIO_get_ktls_send(bio.get()), 0);
  EXPECT_EQ(BIO_get_ktls_recv(bio.get()), 0);
}

TEST(BufferBio, DupIsRefused) {
  std::string out;
  BioIo io{.in = "data", .out = &out};
  UniqueBio bio(NewBufferBio(&io));
  UniqueBio dup(BIO_dup_chain(bio.get()));
  EXPECT_EQ(dup, nullptr);
  EXPECT_EQ(io.in, "data");
}

TEST(BufferBio, PushedUnderAFilterStillWorks) {
  std::string out;
  BioIo io{.in = "abc", .out = &out};
  UniqueBio chain(BIO_push(BIO_new(BIO_f_buffer()), NewBufferBio(&io)));
  EXPECT_EQ(BIO_write(chain.get(), "xyz", 3), 3);
  EXPECT_EQ(BIO_flush(chain.get()), 1);
  EXPECT_EQ(out, "xyz");
  char buf[8];
  EXPECT_EQ(BIO_read(chain.get(), buf, sizeof(buf)), 3);
}

TEST(BufferBio, OneMethodSharedAcrossThreads) {
  // The BIO_METHOD is created once no matter which worker asks first.
  std::vector<int> types(8, -1);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < types.size(); ++i) {
    threads.emplace_back([&types, i] {
      BioIo io;
      UniqueBio bio(NewBufferBio(&io));
      types[i] = bio != nullptr ? BIO_method_type(bio.get()) : -1;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int type : types) {
    EXPECT_EQ(type, types[0]);
    EXPECT_NE(type & BIO_TYPE_SOURCE_SINK, 0);
  }
}

TEST(BufferBio, NullIoIsRejected) { EXPECT_EQ(NewBufferBio(nullptr), nullptr); }

}  // namespace
}  // namespace ktlb::tls
