"""Upstream health through a real ktlb and ktlb-origin processes: active
HTTP and TCP checks take a killed server out and bring it back after a
restart on the same port, with no failed request on the way; passive
ejection stops connects to a refusing server for its backoff; with every
server down a client gets 503 and Retry-After at once."""

import subprocess
import time

import harness
from harness import Origin, free_port, header

HELLO = b"hello from ktlb-origin\n"
INTERVAL_MS = 200


class HealthTest(harness.KtlbTestCase):
    def config(self, servers, extra="", workers=2, listener=None):
        """basic_config whose upstream "app" has `servers` (addresses) and
        `extra` TOML lines."""
        first = free_port()
        text = self.basic_config({"app": [f"127.0.0.1:{first}"]}, server={"workers": str(workers)},
                                 listener=listener)
        line = f'servers = ["127.0.0.1:{first}"]'
        self.assertIn(line, text)
        listed = ", ".join(f'"{s}"' for s in servers)
        return text.replace(line, f"servers = [{listed}]\n{extra}")

    def healthy(self, k):
        return k.metric("ktlb_upstream_servers_healthy", upstream="app")

    def wait_healthy(self, k, want, timeout=10.0):
        """Seconds until the gauge reads `want`."""
        start = time.monotonic()
        while self.healthy(k) != want:
            self.assertLess(time.monotonic() - start, timeout,
                            f"servers_healthy stayed {self.healthy(k)}, wanted {want}\n{k.log()}")
            time.sleep(0.01)
        return time.monotonic() - start

    def stream(self, k, seconds, conns):
        """GETs round robin over keep-alive `conns` for `seconds`: returns
        (origins seen, failures as (status or exception text))."""
        seen, failures = [], []
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            slot = i % len(conns)
            i += 1
            try:
                conns[slot].request("GET", "/")
                status, headers, body = conns[slot].read_response()
                if (status, body) == (200, HELLO):
                    seen += header(headers, "X-Origin")
                else:
                    failures.append(status)
                    conns[slot].close()
                    conns[slot] = self.tls(k)
            except (OSError, AssertionError) as e:
                failures.append(repr(e))
                conns[slot] = self.tls(k)
        return seen, failures

    def test_http_check_kill_and_restart(self):
        a = self.origin("a")
        b = self.origin("b")
        health = (f'health = {{ path = "/stats", interval_ms = {INTERVAL_MS}, timeout_ms = 100, '
                  f"rise = 2, fall = 2 }}\n")
        k = self.ktlb(self.config([a.addr, b.addr], health))
        self.wait_healthy(k, 2)
        conns = [self.tls(k) for _ in range(4)]
        seen, failures = self.stream(k, 0.5, conns)
        self.assertEqual(failures, [])
        self.assertEqual(set(seen), {"a", "b"})

        # Kill b: requests keep flowing while the checks notice.
        b.stop()
        seen, failures = self.stream(k, 0.1, conns)
        detect = self.wait_healthy(k, 1) + 0.1
        # fall x interval (+-10% jitter), plus at most one interval of phase.
        self.assertLess(detect, (2 + 1) * INTERVAL_MS * 1.1 / 1000 + 0.3, "detection too slow")
        during, failed_during = self.stream(k, 0.2, conns)
        after, failed_after = self.stream(k, 1.0, conns)
        print(f"\n[health] down detected {detect * 1000:.0f} ms after the kill; "
              f"{len(failures) + len(failed_during)} of {len(seen) + len(during) + len(failures) + len(failed_during)} "
              f"requests failed before detection, {len(failed_after)} of {len(after)} after")
        self.assertEqual(failures + failed_during, [], "an idempotent request failed during the kill")
        self.assertEqual(failed_after, [])
        self.assertEqual(set(after), {"a"}, "a down server still got requests")
        self.assertEqual(k.metric("ktlb_upstream_health_changes_total", upstream="app", state="down"), 1)
        self.assertIn(f'ktlb: health: upstream "app" server {b.addr} is down (', k.log())

        # Restart b on the same port: back after rise x interval, then served.
        b2 = Origin(self.tmp, "b", port=b.port)
        self._test_procs.append(b2)
        back = self.wait_healthy(k, 2)
        print(f"[health] up again {back * 1000:.0f} ms after the restart")
        self.assertLess(back, (2 + 1) * INTERVAL_MS * 1.1 / 1000 + 0.3)
        self.assertEqual(k.metric("ktlb_upstream_health_changes_total", upstream="app", state="up"), 1)
        self.assertIn(f'server {b.addr} is up (2 passed checks)', k.log())
        seen, failures = self.stream(k, 0.5, conns)
        self.assertEqual(failures, [])
        self.assertIn("b", seen)
        for c in conns:
            c.close()

    def test_tcp_check_without_passive_ejection(self):
        a = self.origin("a")
        dead = f"127.0.0.1:{free_port()}"
        extra = (f'health = {{ type = "tcp", interval_ms = {INTERVAL_MS}, timeout_ms = 100, rise = 1, '
                 "fall = 1 }\neject = { consecutive_failures = 0 }\n")
        k = self.ktlb(self.config([a.addr, dead], extra))
        self.wait_healthy(k, 1)
        self.assertIn(f'server {dead} is down (1 failed check: Connection refused)', k.log())
        before = k.metric("ktlb_upstream_connect_failures_total", upstream="app")
        with self.tls(k) as c:
            for _ in range(20):
                c.request("GET", "/")
                status, headers, _ = c.read_response()
                self.assertEqual((status, header(headers, "X-Origin")), (200, ["a"]))
        # Only the active check keeps traffic off the dead server here.
        self.assertEqual(k.metric("ktlb_upstream_connect_failures_total", upstream="app"), before)

    def test_every_server_down_answers_503_at_once(self):
        a = self.origin("a")
        extra = (f'health = {{ path = "/stats", interval_ms = {INTERVAL_MS}, timeout_ms = 100, '
                 "rise = 2, fall = 1 }\n")
        k = self.ktlb(self.config([a.addr], extra))
        a.stop()
        self.wait_healthy(k, 0)
        with self.tls(k) as c:
            for _ in range(3):
                start = time.monotonic()
                c.request("GET", "/")
                status, headers, body = c.read_response()
                took = time.monotonic() - start
                self.assertEqual(status, 503, body)
                self.assertLess(took, 1.0)
                # rise x interval = 0.4 s, rounded up to whole seconds.
                self.assertEqual(header(headers, "Retry-After"), ["1"])
        print(f"\n[health] 503 with every server down in {took * 1000:.1f} ms")
        self.assertEqual(k.metric("ktlb_upstream_no_server_total", upstream="app"), 3)

    def test_every_server_down_is_503_over_http2(self):
        dead = f"127.0.0.1:{free_port()}"
        extra = (f'health = {{ type = "tcp", interval_ms = {INTERVAL_MS}, timeout_ms = 100, '
                 "rise = 1, fall = 1 }\n")
        k = self.ktlb(self.config([dead], extra, listener={"alpn": '["h2", "http/1.1"]'}))
        self.wait_healthy(k, 0)
        out = subprocess.run(
            ["curl", "-s", "--http2", "--cacert", self.ca, "-o", "/dev/null", "-D", "-",
             "-w", "%{http_version} %{http_code}", "--resolve", f"localhost:{k.port()}:127.0.0.1",
             f"https://localhost:{k.port()}/"],
            capture_output=True, text=True, timeout=30)
        self.assertTrue(out.stdout.endswith("2 503"), out.stdout + out.stderr)
        self.assertRegex(out.stdout, r"(?m)^retry-after: [1-9][0-9]*\r?$")

    def test_passive_ejection_stops_connects(self):
        a = self.origin("a")
        dead = f"127.0.0.1:{free_port()}"
        extra = "eject = { consecutive_failures = 3, base_ms = 2000, max_ms = 8000 }\n"
        # One worker: ejection is per worker, so the counts are exact.
        k = self.ktlb(self.config([a.addr, dead], extra, workers=1))
        failures = lambda: k.metric("ktlb_upstream_connect_failures_total", upstream="app")
        with self.tls(k) as c:
            def get(n):
                for _ in range(n):
                    c.request("GET", "/")
                    status, headers, _ = c.read_response()
                    # Refusals are retried on the live server: nobody sees them.
                    self.assertEqual((status, header(headers, "X-Origin")), (200, ["a"]))
            get(20)
            self.assertEqual(failures(), 3)
            self.assertEqual(k.metric("ktlb_upstream_ejections_total", upstream="app"), 1)
            ejected_at = time.monotonic()
            get(30)
            self.assertEqual(failures(), 3, "an ejected server was connected to")
            self.assertLess(time.monotonic() - ejected_at, 1.5)
            # Past base_ms it is tried again; still refusing, one failure
            # ejects it again (probation), now for twice as long.
            time.sleep(max(0.0, 2.1 - (time.monotonic() - ejected_at)))
            get(20)
            self.assertEqual(failures(), 4)
            self.assertEqual(k.metric("ktlb_upstream_ejections_total", upstream="app"), 2)
        self.assertIn(f'upstream "app" server {dead} ejected for 2000 ms', k.log())
        self.assertIn(f'upstream "app" server {dead} ejected for 4000 ms', k.log())

    def test_single_refusing_server_gets_503_after_ejection(self):
        dead = f"127.0.0.1:{free_port()}"
        extra = "eject = { consecutive_failures = 2, base_ms = 5000, max_ms = 5000 }\n"
        k = self.ktlb(self.config([dead], extra, workers=1))
        with self.tls(k) as c:
            # The attempt and its retry both fail: ejected, 502 this once.
            c.request("GET", "/")
            status, _, _ = c.read_response()
            self.assertEqual(status, 502)
        with self.tls(k) as c:
            start = time.monotonic()
            c.request("GET", "/")
            status, headers, _ = c.read_response()
            took = time.monotonic() - start
            self.assertEqual(status, 503)
            retry_after = int(header(headers, "Retry-After")[0])
            self.assertTrue(4 <= retry_after <= 5, retry_after)
            self.assertLess(took, 0.05)
        self.assertEqual(k.metric("ktlb_upstream_connect_failures_total", upstream="app"), 2)


if __name__ == "__main__":
    harness.main()
