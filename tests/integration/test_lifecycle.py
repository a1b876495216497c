"""Process lifecycle and the admin endpoint: SIGTERM drains in-flight requests,
refuses new connections and exits 0; /healthz and /metrics."""

import signal
import socket
import subprocess
import time

import harness


class LifecycleTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("life-origin")

    def start(self, **server):
        return self.ktlb(self.basic_config({"app": [self.o.addr]}, server={"workers": "2", **server}))

    def wait_exit(self, k, timeout):
        """Waits for ktlb to exit on its own; returns (exit code, seconds)."""
        t0 = time.monotonic()
        try:
            code = k.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"ktlb still running {timeout}s later\n--- log ---\n{k.log()}")
        k.stopped = True
        return code, time.monotonic() - t0

    # Deadlines below are far apart on purpose: a drain that waits for its timeout
    # (30 s) and one that ends with the last request (a few seconds) differ by far
    # more than a loaded machine can blur.

    def test_sigterm_drains_in_flight_request(self):
        k = self.start(drain_timeout_ms="30000")
        url, resolve = self.url(k, "/slow/4000")
        before = self.o.requests()
        client = subprocess.Popen(
            ["curl", "-sS", "--noproxy", "*", "--cacert", self.ca, "--max-time", "30", *resolve,
             "-w", "\n%{http_code}", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Wait until the request is at the origin, i.e. truly in flight.
            deadline = time.monotonic() + 30
            while self.o.requests() == before:
                self.assertLess(time.monotonic(), deadline, "request never reached the origin")
                time.sleep(0.02)
            k.signal(signal.SIGTERM)
            sigterm_at = time.monotonic()

            # New connections are refused soon after SIGTERM, while the request still runs.
            refused = False
            while time.monotonic() - sigterm_at < 3.0:
                try:
                    socket.create_connection(("127.0.0.1", k.port()), timeout=0.5).close()
                except ConnectionRefusedError:
                    refused = True
                    break
                except OSError:
                    pass
                time.sleep(0.05)
            self.assertTrue(refused, "listener still accepting 3 s after SIGTERM")
            self.assertIsNone(client.poll(), "the in-flight request ended before the drain check")

            out, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        self.assertEqual(client.returncode, 0, err)
        self.assertEqual(out, b"slow 4000\n\n200")

        code, took = self.wait_exit(k, 40)
        self.assertEqual(code, 0, k.log())
        self.assertLess(time.monotonic() - sigterm_at, 20.0,
                        "ktlb waited for the drain timeout although nothing was in flight")

    def test_idle_keepalive_connections_do_not_delay_exit(self):
        k = self.start(drain_timeout_ms="30000")
        with self.tls(k) as c:
            c.request("GET", "/")
            self.assertEqual(c.read_response()[0], 200)
            k.signal(signal.SIGTERM)
            code, took = self.wait_exit(k, 40)
            self.assertEqual(code, 0, k.log())
            self.assertLess(took, 15.0, "idle keep-alive connection held up shutdown")
            self.assertIsNotNone(c.wait_closed(10))

    def test_quiet_keepalive_connection_gets_one_more_request_while_draining(self):
        # The keep-alive race: a client may send its next request just as the
        # drain begins. It is answered (with Connection: close), not cut.
        k = self.start(drain_timeout_ms="30000")
        with self.tls(k) as c:
            c.request("GET", "/")
            self.assertEqual(c.read_response()[0], 200)
            k.signal(signal.SIGTERM)
            time.sleep(0.3)
            c.request("GET", "/")
            status, headers, _ = c.read_response()
            self.assertEqual(status, 200)
            self.assertEqual(harness.header(headers, "connection"), ["close"])
            self.assertIsNotNone(c.wait_closed(10))
        self.assertEqual(self.wait_exit(k, 40)[0], 0)

    def test_drain_grace_keeps_accepting_while_healthz_says_draining(self):
        k = self.start(drain_grace_ms="2000", drain_timeout_ms="10000")
        k.signal(signal.SIGTERM)
        t0 = time.monotonic()
        deadline = t0 + 5
        while k.admin_get("/healthz")[0] != 503:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        # Within the grace a new connection is still served, one request.
        with self.tls(k) as c:
            c.request("GET", "/")
            status, headers, _ = c.read_response()
            self.assertEqual(status, 200)
            self.assertEqual(harness.header(headers, "connection"), ["close"])
        self.assertLess(time.monotonic() - t0, 2.0, "too slow to test the grace")
        # After it the port refuses, and the process exits.
        code, took = self.wait_exit(k, 40)
        self.assertEqual(code, 0, k.log())
        self.assertGreaterEqual(time.monotonic() - t0, 2.0)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", k.port()), timeout=2).close()

    def test_drain_timeout_bounds_shutdown(self):
        k = self.start(drain_timeout_ms="1000")
        before = self.o.requests()
        with self.tls(k) as c:
            c.request("GET", "/slow/30000")
            deadline = time.monotonic() + 30
            while self.o.requests() == before:  # in flight: at the origin
                self.assertLess(time.monotonic(), deadline, "request never reached the origin")
                time.sleep(0.02)
            k.signal(signal.SIGTERM)
            code, took = self.wait_exit(k, 40)
            self.assertLess(took, 15.0, "drain_timeout_ms did not bound the shutdown (the request takes 30 s)")

    def test_healthz_and_metrics(self):
        k = self.start()
        status, _, body = k.admin_get("/healthz")
        self.assertEqual(status, 200)

        accepted = k.metric("ktlb_connections_accepted_total", listener="public")
        ok = k.metric("ktlb_http_requests_total", listener="public", **{"class": "2xx"})
        self.assertEqual(self.get(k, "/")[0], 200)
        self.assertGreaterEqual(k.wait_metric("ktlb_connections_accepted_total", accepted + 1, listener="public"),
                                accepted + 1)
        self.assertGreaterEqual(
            k.wait_metric("ktlb_http_requests_total", ok + 1, listener="public", **{"class": "2xx"}), ok + 1)

        status, headers, body = k.admin_get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("Content-Type", "").startswith("text/plain"), headers.get("Content-Type"))
        text = body.decode()
        self.assertIn("# TYPE ktlb_connections_accepted_total counter", text)
        self.assertIn("# TYPE ktlb_connections_active gauge", text)
        harness.parse_prometheus(text)  # every sample line is valid exposition format

        status, _, _ = k.admin_get("/no-such-page")
        self.assertEqual(status, 404)


if __name__ == "__main__":
    harness.main()
