#include "gtest/gtest.h"
#include "ktlb/tls.h"

namespace ktlb::tls {
namespace {

TEST(SniTable, EmptyTableMatchesNothing) {
  SniTable t;
  EXPECT_EQ(t.Match("a.example.test"), -1);
  EXPECT_EQ(t.Match(""), -1);
}

TEST(SniTable, ExactName) {
  SniTable t;
  t.Add("a.example.test", 0);
  t.Add("b.example.test", 1);
  EXPECT_EQ(t.Match("a.example.test"), 0);
  EXPECT_EQ(t.Match("b.example.test"), 1);
  EXPECT_EQ(t.Match("c.example.test"), -1);
  EXPECT_EQ(t.Match("example.test"), -1);
  EXPECT_EQ(t.Match("xa.example.test"), -1);
}

TEST(SniTable, WildcardCoversExactlyOneLabel) {
  SniTable t;
  t.Add("*.example.test", 3);
  EXPECT_EQ(t.Match("a.example.test"), 3);
  EXPECT_EQ(t.Match("www.example.test"), 3);
  EXPECT_EQ(t.Match("example.test"), -1);      // the bare suffix is not covered
  EXPECT_EQ(t.Match("a.b.example.test"), -1);  // nor two labels
  EXPECT_EQ(t.Match(".example.test"), -1);     // nor an empty label
  EXPECT_EQ(t.Match("aexample.test"), -1);
  EXPECT_EQ(t.Match("a.example.test.evil"), -1);
}

TEST(SniTable, CaseInsensitiveBothWays) {
  SniTable t;
  t.Add("A.Example.TEST", 0);
  t.Add("*.Wild.Test", 1);
  EXPECT_EQ(t.Match("a.example.test"), 0);
  EXPECT_EQ(t.Match("A.EXAMPLE.TEST"), 0);
  EXPECT_EQ(t.Match("X.wild.test"), 1);
  EXPECT_EQ(t.Match("x.WILD.test"), 1);
}

TEST(SniTable, TrailingDotIgnored) {
  SniTable t;
  t.Add("a.example.test", 0);
  t.Add("*.wild.test.", 1);
  EXPECT_EQ(t.Match("a.example.test."), 0);
  EXPECT_EQ(t.Match("x.wild.test"), 1);
  EXPECT_EQ(t.Match("x.wild.test."), 1);
  EXPECT_EQ(t.Match("."), -1);
  EXPECT_EQ(t.Match("a.example.test.."), -1);  // only one root dot is ignored
}

TEST(SniTable, ExactBeatsWildcardRegardlessOfOrder) {
  SniTable t;
  t.Add("*.example.test", 0);
  t.Add("api.example.test", 1);
  EXPECT_EQ(t.Match("api.example.test"), 1);
  EXPECT_EQ(t.Match("www.example.test"), 0);
}

TEST(SniTable, FirstAddWinsAmongEquals) {
  SniTable t;
  t.Add("a.example.test", 0);
  t.Add("A.EXAMPLE.TEST", 1);
  t.Add("*.example.test", 2);
  t.Add("*.EXAMPLE.test", 3);
  EXPECT_EQ(t.Match("a.example.test"), 0);
  EXPECT_EQ(t.Match("b.example.test"), 2);
}

TEST(SniTable, MalformedPatternsNeverMatch) {
  SniTable t;
  t.Add("", 0);
  t.Add("*", 1);
  t.Add("*.", 2);
  t.Add("w*.example.test", 3);
  t.Add("*.*.example.test", 4);
  t.Add("a.*.example.test", 5);
  EXPECT_EQ(t.Match("w1.example.test"), -1);
  EXPECT_EQ(t.Match("w*.example.test"), -1);
  EXPECT_EQ(t.Match("a.b.example.test"), -1);
  EXPECT_EQ(t.Match("*"), -1);
  EXPECT_EQ(t.Match("x"), -1);
}

}  // namespace
}  // namespace ktlb::tls
