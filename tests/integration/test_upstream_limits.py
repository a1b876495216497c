"""Upstream connection limits through a real ktlb and ktlb-origin:
max_conns_per_server caps the connections one worker holds to a server,
the excess waits in the cluster's queue and goes out as connections free
up, and after queue_timeout_ms the waiting requests get 503 with
Retry-After instead of hanging."""

import subprocess
import threading
import time

import harness
from h2raw import H2Raw, rst_frame
from harness import free_port, header, split_addr

SLOW_MS = 500
LONG_MS = 4000  # outlasts queue_timeout_ms = 100 by far, even on a loaded host (ASan)


class UpstreamLimitsTest(harness.KtlbTestCase):
    def config(self, server, extra):
        text = self.basic_config({"app": [server]}, listener={"alpn": '["h2", "http/1.1"]'})
        line = f'servers = ["{server}"]'
        self.assertIn(line, text)
        return text.replace(line, f"{line}\n{extra}")

    def backend_conns(self, origin):
        """Established TCP connections to the origin's port (ktlb's side)."""
        _, port = split_addr(origin.addr)
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                             capture_output=True, text=True, timeout=5)
        return len([l for l in out.stdout.splitlines() if l.strip()])

    def concurrent(self, k, origin, n, path):
        """n GETs of `path` at once, each on its own TLS connection. Returns
        ([(status, headers, seconds)], most backend connections seen)."""
        results = [None] * n
        conns = [self.tls(k) for _ in range(n)]
        start = threading.Barrier(n + 1)

        def one(i):
            start.wait()
            t0 = time.monotonic()
            try:
                conns[i].request("GET", path)
                status, headers, _ = conns[i].read_response()
                results[i] = (status, headers, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - reported by the caller
                results[i] = (repr(e), [], time.monotonic() - t0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        start.wait()
        most = 0
        while any(t.is_alive() for t in threads):
            most = max(most, self.backend_conns(origin))
            time.sleep(0.01)
        for t in threads:
            t.join()
        for c in conns:
            c.close()
        return results, most

    def test_excess_waits_and_all_succeed(self):
        a = self.origin("a")
        k = self.ktlb(self.config(a.addr, "max_conns_per_server = 2\nqueue_timeout_ms = 10000\n"))
        t0 = time.monotonic()
        results, most = self.concurrent(k, a, 6, f"/slow/{SLOW_MS}")
        took = time.monotonic() - t0
        print(f"\n[limits] 6 x /slow/{SLOW_MS} over 2 connections: {took:.2f} s, "
              f"at most {most} backend connections")
        self.assertEqual([r[0] for r in results], [200] * 6, results)
        self.assertLessEqual(most, 2)
        # Three waves of two: the cap held (unlimited, it takes one wave).
        self.assertGreaterEqual(took, 3 * SLOW_MS / 1000 - 0.1)
        self.assertEqual(k.metric("ktlb_upstream_queued_total", upstream="app"), 4)
        self.assertEqual(k.metric("ktlb_upstream_queue_timeouts_total", upstream="app"), 0)
        self.assertEqual(k.metric("ktlb_upstream_in_flight", upstream="app"), 0)

    def test_short_queue_timeout_answers_503(self):
        a = self.origin("a")
        k = self.ktlb(self.config(a.addr, "max_conns_per_server = 2\nqueue_timeout_ms = 100\n"))
        results, most = self.concurrent(k, a, 6, f"/slow/{LONG_MS}")
        statuses = sorted(r[0] for r in results)
        self.assertEqual(statuses, [200, 200, 503, 503, 503, 503], results)
        self.assertLessEqual(most, 2)
        for status, headers, seconds in results:
            if status == 503:
                self.assertEqual(header(headers, "Retry-After"), ["1"])
                # queue_timeout_ms, not the slow response.
                self.assertLess(seconds, LONG_MS / 2000)
        self.assertEqual(k.metric("ktlb_upstream_queued_total", upstream="app"), 4)
        self.assertEqual(k.metric("ktlb_upstream_queue_timeouts_total", upstream="app"), 4)
        # The connections are free again: a new request goes through.
        with self.tls(k) as c:
            c.request("GET", "/")
            status, _, _ = c.read_response()
            self.assertEqual(status, 200)

    def test_stream_reset_while_queued_leaves_the_queue(self):
        # HTTP/2: a stream reset by the client is abandoned at once (an
        # HTTP/1.1 client that closes is only noticed on the next write).
        a = self.origin("a")
        k = self.ktlb(self.config(a.addr, "max_conns_per_server = 1\nqueue_timeout_ms = 10000\n"))
        with H2Raw(k.addr(), self.ca) as c:
            c.request(1, f"/slow/{SLOW_MS}")
            k.wait_metric("ktlb_upstream_in_flight", 1, upstream="app")
            c.request(3, "/")
            k.wait_metric("ktlb_upstream_queued_total", 1, upstream="app")
            c.send(rst_frame(3))
            self.assertEqual(c.response(1).status, 200)
            # The abandoned request never reached the backend; a new one does.
            time.sleep(0.1)
            self.assertEqual(a.requests(), 1)
            c.request(5, "/")
            self.assertEqual(c.response(5).status, 200)
        self.assertEqual(a.requests(), 2)
        self.assertEqual(k.metric("ktlb_upstream_queue_timeouts_total", upstream="app"), 0)

    def test_queue_timeout_over_http2(self):
        a = self.origin("a")
        k = self.ktlb(self.config(a.addr, "max_conns_per_server = 1\nqueue_timeout_ms = 100\n"))
        with H2Raw(k.addr(), self.ca) as c:
            c.request(1, f"/slow/{LONG_MS}")
            k.wait_metric("ktlb_upstream_in_flight", 1, upstream="app")
            t0 = time.monotonic()
            c.request(3, "/")
            r = c.response(3)
            self.assertEqual(r.status, 503)
            self.assertEqual(r.header("retry-after"), "1")
            self.assertLess(time.monotonic() - t0, LONG_MS / 2000)
            self.assertEqual(c.response(1).status, 200)
        self.assertEqual(k.metric("ktlb_upstream_queue_timeouts_total", upstream="app"), 1)

    def test_retry_budget_refuses_the_excess(self):
        # Round robin over a refusing server and a slow one: every request
        # sent to the refusing one is retried on the slow one, where the
        # retry stays in flight. With 8 requests in flight the budget is
        # max(3, 0.2 x 8) = 3 retries: the fourth refused one gets its 502.
        a = self.origin("a")
        dead = f"127.0.0.1:{free_port()}"
        text = self.basic_config({"app": [dead]})
        line = f'servers = ["{dead}"]'
        text = text.replace(line, f'servers = ["{dead}", "{a.addr}"]\n'
                                  "eject = { consecutive_failures = 0 }\nretry_budget = 0.2\n")
        k = self.ktlb(text)
        results, _ = self.concurrent(k, a, 8, f"/slow/{SLOW_MS}")
        statuses = sorted(r[0] for r in results)
        self.assertEqual(statuses, [200] * 7 + [502], results)
        self.assertEqual(k.metric("ktlb_upstream_retries_total", upstream="app"), 3)
        self.assertEqual(k.metric("ktlb_upstream_retries_budget_exhausted_total", upstream="app"), 1)

if __name__ == "__main__":
    harness.main()
