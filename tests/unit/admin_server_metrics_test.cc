// Per-server upstream metrics: each worker's counters summed at render, the
// latency histogram in Prometheus form (cumulative buckets, _sum, _count),
// the ejected gauge read from the workers' deadlines, and the prober's
// per-server health.

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ktlb/deadline_queue.h"
#include "ktlb/metrics.h"

namespace ktlb {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kA = "upstream=\"app\",server=\"127.0.0.1:9001\"";
constexpr const char* kB = "upstream=\"app\",server=\"127.0.0.1:9002\"";

TEST(ServerMetricsTest, WorkersAreSummedPerServer) {
  MetricsRegistry r(MetricsLabels{}, 2);
  ServerMetrics& a0 = r.Server(0, "app", "127.0.0.1:9001");
  ServerMetrics& a1 = r.Server(1, "app", "127.0.0.1:9001");
  ServerMetrics& b1 = r.Server(1, "app", "127.0.0.1:9002");
  EXPECT_EQ(&a0, &r.Server(0, "app", "127.0.0.1:9001"));  // same slot again
  EXPECT_NE(&a0, &a1);
  a0.requests.Inc(3);
  a1.requests.Inc(4);
  b1.requests.Inc();
  a0.in_flight.Inc(2);
  a1.failures[static_cast<size_t>(ServerFailure::kConnect)].Inc();
  a0.failures[static_cast<size_t>(ServerFailure::k5xx)].Inc(2);
  b1.failures[static_cast<size_t>(ServerFailure::kTryTimeout)].Inc();
  a1.retries.Inc();
  b1.queue_waits.Inc(5);
  a0.ejections.Inc();
  const std::string out = r.Render();
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_requests_total{") + kA + "} 7\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_requests_total{") + kB + "} 1\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_in_flight{") + kA + "} 2\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_failures_total{") + kA +
                             ",reason=\"connect\"} 1\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_failures_total{") + kA +
                             ",reason=\"5xx\"} 2\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_failures_total{") + kB +
                             ",reason=\"try_timeout\"} 1\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_retries_total{") + kA + "} 1\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_queue_waits_total{") + kB + "} 5\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_ejections_total{") + kA + "} 1\n"));
  EXPECT_THAT(out, HasSubstr("# TYPE ktlb_upstream_server_in_flight gauge\n"));
}

TEST(ServerMetricsTest, LatencyHistogramIsCumulativeWithSumAndCount) {
  MetricsRegistry r(MetricsLabels{}, 2);
  r.Server(0, "app", "127.0.0.1:9001").latency.Observe(100);       // <= 0.00025
  r.Server(1, "app", "127.0.0.1:9001").latency.Observe(250);       // <= 0.00025 (inclusive)
  r.Server(0, "app", "127.0.0.1:9001").latency.Observe(3'000);     // <= 0.005
  r.Server(1, "app", "127.0.0.1:9001").latency.Observe(60'000'000);  // +Inf only
  const std::string out = r.Render();
  const std::string b = std::string("ktlb_upstream_server_response_seconds_bucket{") + kA;
  EXPECT_THAT(out, HasSubstr("# TYPE ktlb_upstream_server_response_seconds histogram\n"));
  EXPECT_THAT(out, HasSubstr(b + ",le=\"0.00025\"} 2\n"));
  EXPECT_THAT(out, HasSubstr(b + ",le=\"0.0025\"} 2\n"));
  EXPECT_THAT(out, HasSubstr(b + ",le=\"0.005\"} 3\n"));
  EXPECT_THAT(out, HasSubstr(b + ",le=\"10\"} 3\n"));
  EXPECT_THAT(out, HasSubstr(b + ",le=\"+Inf\"} 4\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_response_seconds_sum{") + kA +
                             "} 60.003350\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_response_seconds_count{") + kA +
                             "} 4\n"));
}

TEST(ServerMetricsTest, EjectedCountsWorkersWhoseEjectionHoldsNow) {
  MetricsRegistry r(MetricsLabels{}, 3);
  const uint64_t now = NowMs();
  r.Server(0, "app", "127.0.0.1:9001").ejected_until_ms.Set(now + 60'000);
  r.Server(1, "app", "127.0.0.1:9001").ejected_until_ms.Set(now > 1 ? now - 1 : 0);  // over
  r.Server(2, "app", "127.0.0.1:9001").ejected_until_ms.Set(now + 60'000);
  EXPECT_THAT(r.Render(),
              HasSubstr(std::string("ktlb_upstream_server_ejected{") + kA + "} 2\n"));
}

TEST(ServerMetricsTest, HealthOnlyForCheckedUpstreams) {
  MetricsRegistry r(MetricsLabels{}, 1);
  r.Server(0, "app", "127.0.0.1:9001");
  r.Server(0, "app", "127.0.0.1:9002");
  ServerHealthMetrics& h = r.ServerHealth("app", "127.0.0.1:9002");
  // No prober registered the upstream yet: no health series.
  EXPECT_THAT(r.Render(), Not(HasSubstr("ktlb_upstream_server_healthy{")));
  r.UpstreamHealth("app");
  h.went_down.Inc();
  h.down.Set(1);
  std::string out = r.Render();
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_healthy{") + kB + "} 0\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_health_changes_total{") + kB +
                             ",state=\"down\"} 1\n"));
  EXPECT_THAT(out, Not(HasSubstr(std::string("ktlb_upstream_server_healthy{") + kA)));
  h.went_up.Inc();
  h.down.Set(0);
  out = r.Render();
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_healthy{") + kB + "} 1\n"));
  EXPECT_THAT(out, HasSubstr(std::string("ktlb_upstream_server_health_changes_total{") + kB +
                             ",state=\"up\"} 1\n"));
}

}  // namespace
}  // namespace ktlb
