#include "ktlb/access_log.h"

#include <gtest/gtest.h>

#include <string>

namespace ktlb {
namespace {

TEST(AccessLogJson, EscapesWhatWouldBreakALine) {
  std::string out;
  AppendJsonEscaped(&out, std::string("a\"b\\c\n\x01\x7f", 8));
  EXPECT_EQ(out, "a\\\"b\\\\c\\u000a\\u0001\\u007f");
  out.clear();
  // An SNI may carry any byte but NUL: never raw bytes >= 0x80 (not UTF-8).
  AppendJsonEscaped(&out, "caf\xe9.test");
  EXPECT_EQ(out, "caf\\u00e9.test");
  out.clear();
  AppendJsonEscaped(&out, "/path?q=1&x=%20");
  EXPECT_EQ(out, "/path?q=1&x=%20");
}

}  // namespace
}  // namespace ktlb
