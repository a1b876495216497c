#include "ktlb/router.h"

#include <gtest/gtest.h>

namespace ktlb {
namespace {

TEST(SniPatternTest, ExactAndWildcard) {
  EXPECT_TRUE(SniPatternMatches("", "anything"));
  EXPECT_TRUE(SniPatternMatches("api.example.test", "API.example.test"));
  EXPECT_TRUE(SniPatternMatches("api.example.test", "api.example.test."));
  EXPECT_FALSE(SniPatternMatches("api.example.test", "www.example.test"));
  EXPECT_TRUE(SniPatternMatches("*.example.test", "a.example.test"));
  EXPECT_FALSE(SniPatternMatches("*.example.test", "example.test"));
  EXPECT_FALSE(SniPatternMatches("*.example.test", "a.b.example.test"));
  EXPECT_FALSE(SniPatternMatches("*.example.test", ".example.test"));
  EXPECT_FALSE(SniPatternMatches("*.example.test", ""));
}

TEST(HostTest, StripsPort) {
  EXPECT_EQ(HostWithoutPort("example.test:8443"), "example.test");
  EXPECT_EQ(HostWithoutPort("example.test."), "example.test");
  EXPECT_EQ(HostWithoutPort("[::1]:8443"), "[::1]");
  EXPECT_EQ(HostWithoutPort("example.test"), "example.test");
}

Config TwoListeners() {
  Config c;
  c.listeners.resize(2);
  c.listeners[0].name = "public";
  c.listeners[1].name = "internal";
  c.upstreams.resize(3);
  c.upstreams[0].name = "api";
  c.upstreams[1].name = "web";
  c.upstreams[2].name = "other";
  c.routes = {
      {"public", "", "api.example.test", "/v1/", "api", ""},
      {"public", "*.other.test", "", "", "other", ""},
      {"public", "", "", "", "web", ""},
      {"internal", "", "", "/admin/", "other", ""},
  };
  return c;
}

TEST(RouterTest, RoutesSniIgnoresCatchAllRoutes) {
  Config c = TwoListeners();
  Router r(c);
  // Listener 0 has a catch-all, which Match takes for any name ...
  EXPECT_EQ(r.Match(0, "unknown.test", "", "/"), 1);
  // ... but only a route with an sni matcher counts as routing the name.
  EXPECT_TRUE(r.RoutesSni(0, "a.other.test"));
  EXPECT_TRUE(r.RoutesSni(0, "A.OTHER.test"));
  EXPECT_FALSE(r.RoutesSni(0, "unknown.test"));
  EXPECT_FALSE(r.RoutesSni(0, ""));
  EXPECT_FALSE(r.RoutesSni(1, "a.other.test"));
  EXPECT_FALSE(r.RoutesSni(7, "a.other.test"));
}

TEST(RouterTest, FirstMatchWinsInFileOrder) {
  Config c = TwoListeners();
  Router r(c);
  EXPECT_EQ(r.Match(0, "api.example.test", "api.example.test", "/v1/users"), 0);
  EXPECT_EQ(r.Match(0, "api.example.test", "API.example.test:8443", "/v1/users"), 0);
  // upstream indices: api 0, web 1, other 2
  EXPECT_EQ(r.Match(0, "api.example.test", "api.example.test", "/v2/users"), 1);
  EXPECT_EQ(r.Match(0, "x.other.test", "api.example.test", "/v1/"), 0);
  EXPECT_EQ(r.Match(0, "x.other.test", "x.other.test", "/"), 2);
  EXPECT_EQ(r.Match(0, "", "whatever", "/"), 1);
  EXPECT_EQ(r.Match(1, "", "whatever", "/admin/x"), 2);
  EXPECT_EQ(r.Match(1, "", "whatever", "/"), -1);
  EXPECT_EQ(r.Match(7, "", "", "/"), -1);
}

TEST(RouterTest, AlpnMatchesWhatTheClientOffers) {
  Config c;
  c.listeners.resize(1);
  c.listeners[0].name = "edge";
  c.upstreams.resize(2);
  c.upstreams[0].name = "h2";
  c.upstreams[1].name = "h1";
  c.routes = {
      {"edge", "*.example.test", "", "", "h2", "h2"},
      {"edge", "", "", "", "h1", ""},
  };
  Router r(c);
  const std::string h2_and_h1("\x02h2\x08http/1.1", 12);
  const std::string h1_only("\x08http/1.1", 9);
  EXPECT_EQ(r.Match(0, "a.example.test", "", "", h2_and_h1), 0);
  EXPECT_EQ(r.Match(0, "a.example.test", "", "", h1_only), 1);
  EXPECT_EQ(r.Match(0, "a.example.test", "", ""), 1);  // no ALPN offered
  EXPECT_EQ(r.Match(0, "other.test", "", "", h2_and_h1), 1);
}

TEST(AlpnListTest, ExactNamesAndBadLengths) {
  const std::string list("\x02h2\x08http/1.1", 12);
  EXPECT_TRUE(AlpnListOffers(list, "h2"));
  EXPECT_TRUE(AlpnListOffers(list, "http/1.1"));
  EXPECT_FALSE(AlpnListOffers(list, "H2"));   // byte strings, case-sensitive
  EXPECT_FALSE(AlpnListOffers(list, "http"));
  EXPECT_FALSE(AlpnListOffers("", "h2"));
  EXPECT_FALSE(AlpnListOffers(std::string("\x09h2", 3), "h2"));  // length past the end
}

}  // namespace
}  // namespace ktlb
