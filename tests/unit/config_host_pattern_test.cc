#include "ktlb/host_pattern.h"

#include <gtest/gtest.h>

namespace ktlb {
namespace {

TEST(HostPatternTest, Classify) {
  EXPECT_EQ(ClassifyHostPattern(""), HostPatternKind::kAny);
  EXPECT_EQ(ClassifyHostPattern("api.example.test"), HostPatternKind::kExact);
  EXPECT_EQ(ClassifyHostPattern("api.example.test."), HostPatternKind::kExact);
  EXPECT_EQ(ClassifyHostPattern("localhost"), HostPatternKind::kExact);
  EXPECT_EQ(ClassifyHostPattern("*.example.test"), HostPatternKind::kWildcard);
  EXPECT_EQ(ClassifyHostPattern("*.example.test."), HostPatternKind::kWildcard);
  EXPECT_EQ(ClassifyHostPattern("*.test"), HostPatternKind::kWildcard);
  EXPECT_EQ(ClassifyHostPattern("."), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("*"), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("*."), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("*.."), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("*.*.example.test"), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("*.example.*"), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("w*.example.test"), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("a.*.example.test"), HostPatternKind::kInvalid);
  EXPECT_EQ(ClassifyHostPattern("**.example.test"), HostPatternKind::kInvalid);
}

TEST(HostPatternTest, EmptyPatternMatchesAnything) {
  EXPECT_TRUE(HostPatternMatches("", "a.example.test"));
  EXPECT_TRUE(HostPatternMatches("", ""));
  EXPECT_TRUE(HostPatternMatches("", "*"));
}

TEST(HostPatternTest, Exact) {
  EXPECT_TRUE(HostPatternMatches("api.example.test", "api.example.test"));
  EXPECT_FALSE(HostPatternMatches("api.example.test", "www.example.test"));
  EXPECT_FALSE(HostPatternMatches("api.example.test", "xapi.example.test"));
  EXPECT_FALSE(HostPatternMatches("api.example.test", "api.example.test.evil"));
  EXPECT_FALSE(HostPatternMatches("api.example.test", "example.test"));
  EXPECT_FALSE(HostPatternMatches("api.example.test", ""));
  EXPECT_FALSE(HostPatternMatches("api.example.test", "."));
}

TEST(HostPatternTest, CaseInsensitiveBothWays) {
  EXPECT_TRUE(HostPatternMatches("api.example.test", "API.Example.TEST"));
  EXPECT_TRUE(HostPatternMatches("API.EXAMPLE.TEST", "api.example.test"));
  EXPECT_TRUE(HostPatternMatches("*.Example.Test", "WWW.example.test"));
  // ASCII only: bytes >= 0x80 compare as they are, whatever the locale.
  EXPECT_TRUE(HostPatternMatches("\xc3\xa9.test", "\xc3\xa9.test"));
  EXPECT_FALSE(HostPatternMatches("\xc3\xa9.test", "\xc3\x89.test"));
}

TEST(HostPatternTest, OneTrailingRootDotIgnoredOnEitherSide) {
  EXPECT_TRUE(HostPatternMatches("api.example.test", "api.example.test."));
  EXPECT_TRUE(HostPatternMatches("api.example.test.", "api.example.test"));
  EXPECT_TRUE(HostPatternMatches("api.example.test.", "api.example.test."));
  EXPECT_TRUE(HostPatternMatches("*.example.test.", "a.example.test"));
  EXPECT_TRUE(HostPatternMatches("*.example.test", "a.example.test."));
  EXPECT_FALSE(HostPatternMatches("api.example.test", "api.example.test.."));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "a.example.test.."));
}

TEST(HostPatternTest, WildcardCoversExactlyOneNonEmptyLabel) {
  EXPECT_TRUE(HostPatternMatches("*.example.test", "a.example.test"));
  EXPECT_TRUE(HostPatternMatches("*.example.test", "www-1.example.test"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "example.test"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "a.b.example.test"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", ".example.test"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "aexample.test"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "a.example.test.evil"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "a.xexample.test"));
  EXPECT_FALSE(HostPatternMatches("*.example.test", ""));
  EXPECT_FALSE(HostPatternMatches("*.example.test", "."));
}

TEST(HostPatternTest, MalformedPatternsNeverMatch) {
  for (const char* pattern : {".", "*", "*.", "*.*.example.test", "w*.example.test",
                              "a.*.example.test", "**.example.test"}) {
    SCOPED_TRACE(pattern);
    // Not even the pattern's own text, nor a name it could plausibly mean.
    EXPECT_FALSE(HostPatternMatches(pattern, pattern));
    EXPECT_FALSE(HostPatternMatches(pattern, "w1.example.test"));
    EXPECT_FALSE(HostPatternMatches(pattern, "a.b.example.test"));
    EXPECT_FALSE(HostPatternMatches(pattern, "x"));
    EXPECT_FALSE(HostPatternMatches(pattern, ""));
  }
}

}  // namespace
}  // namespace ktlb
