// RequestHasher: the client address, a header or a cookie, as hash_key says;
// nothing found means no key (the balancer spreads such requests).

#include "ktlb/request_hash.h"

#include <gtest/gtest.h>

namespace ktlb::upstream {
namespace {

HashKeyConfig Spec(HashKeyKind kind, const char* name = "") {
  HashKeyConfig c;
  c.kind = kind;
  c.name = name;
  return c;
}

TEST(StableHashTest, FixedAcrossRunsAndSeeds) {
  // Pinned: a change would re-home every maglev key of a fleet on upgrade.
  EXPECT_EQ(StableHash64("10.0.0.1:80"), StableHash64("10.0.0.1:80"));
  EXPECT_NE(StableHash64("10.0.0.1:80"), StableHash64("10.0.0.2:80"));
  EXPECT_NE(StableHash64("x", 1), StableHash64("x", 2));
  EXPECT_EQ(StableHash64(""), StableHash64("", 0));
  EXPECT_EQ(StableHash64("user-1"), 0xeae63ea76bcbee84ULL);
}

TEST(RequestHasherTest, ClientIp) {
  HashKeyConfig spec = Spec(HashKeyKind::kClientIp);
  RequestHasher h(spec);
  EXPECT_FALSE(h.wants_headers());
  h.ClientIp("192.0.2.7");
  h.Header("x-user", "alice");
  ASSERT_TRUE(h.found());
  EXPECT_EQ(h.hash(), StableHash64("192.0.2.7"));
}

TEST(RequestHasherTest, HeaderFirstValueCaseInsensitiveName) {
  HashKeyConfig spec = Spec(HashKeyKind::kHeader, "x-user");
  RequestHasher h(spec);
  EXPECT_TRUE(h.wants_headers());
  h.ClientIp("192.0.2.7");
  h.Header("Host", "example.test");
  h.Header("X-User", " alice ");
  h.Header("x-user", "bob");
  ASSERT_TRUE(h.found());
  EXPECT_EQ(h.hash(), StableHash64("alice"));

  RequestHasher missing(spec);
  missing.ClientIp("192.0.2.7");
  missing.Header("X-Users", "alice");
  EXPECT_FALSE(missing.found());
}

TEST(RequestHasherTest, CookieAmongOthersAndAcrossCrumbs) {
  HashKeyConfig spec = Spec(HashKeyKind::kCookie, "sid");
  RequestHasher h(spec);
  h.Header("Cookie", "theme=dark; xsid=1; sid=abc123; other=2");
  ASSERT_TRUE(h.found());
  EXPECT_EQ(h.hash(), StableHash64("abc123"));

  // HTTP/2 splits cookies into one field per pair.
  RequestHasher crumbs(spec);
  crumbs.Header("cookie", "theme=dark");
  crumbs.Header("cookie", "sid=\"abc123\"");
  ASSERT_TRUE(crumbs.found());
  EXPECT_EQ(crumbs.hash(), StableHash64("abc123"));

  RequestHasher wrong_case(spec);
  wrong_case.Header("Cookie", "SID=abc123");  // cookie names are case-sensitive
  EXPECT_FALSE(wrong_case.found());
  RequestHasher not_cookie(spec);
  not_cookie.Header("Set-Cookie", "sid=abc123");
  EXPECT_FALSE(not_cookie.found());
}

}  // namespace
}  // namespace ktlb::upstream
