"""Upstreams: round robin, backend down (502), response timeout (504), retry of
an idempotent request on another server after a reset, and routing on SNI, Host
and path prefix."""

import socket
import struct
import threading
import time

import harness
from harness import header

HELLO = b"hello from ktlb-origin\n"


class ResettingServer:
    """Accepts TCP connections and resets each one at once (SO_LINGER 0)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class UpstreamTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.a = cls.class_origin("a")
        cls.b = cls.class_origin("b")

    def x_origin(self, k, path="/", host="localhost"):
        status, headers, _ = self.get(k, path, host=host)
        return status, headers.get("x-origin")

    def test_round_robin_alternates(self):
        k = self.ktlb(self.basic_config({"app": [self.a.addr, self.b.addr]}))
        # A new client connection per request.
        seen = [self.x_origin(k)[1] for _ in range(6)]
        self.assertEqual(set(seen), {"a", "b"}, seen)
        for x, y in zip(seen, seen[1:]):
            self.assertNotEqual(x, y, f"round robin did not alternate: {seen}")
        # Requests on one keep-alive client connection are balanced too.
        with self.tls(k) as c:
            seen = []
            for _ in range(6):
                c.request("GET", "/")
                status, headers, body = c.read_response()
                self.assertEqual((status, body), (200, HELLO))
                seen += header(headers, "X-Origin")
        for x, y in zip(seen, seen[1:]):
            self.assertNotEqual(x, y, f"round robin did not alternate on one connection: {seen}")

    def test_backend_down_gives_502(self):
        down = f"127.0.0.1:{harness.free_port()}"  # nothing listens there
        k = self.ktlb(self.basic_config({"down": [down]}))
        fails = k.metric("ktlb_upstream_connect_failures_total", upstream="down")
        five = k.metric("ktlb_http_requests_total", listener="public", **{"class": "5xx"})
        status, _, body = self.get(k, "/")
        self.assertEqual(status, 502)
        self.assertLess(len(body), 1024, "502 body should be short")
        self.assertGreaterEqual(k.wait_metric("ktlb_upstream_connect_failures_total", fails + 1, upstream="down"),
                                fails + 1)
        self.assertGreaterEqual(
            k.wait_metric("ktlb_http_requests_total", five + 1, listener="public", **{"class": "5xx"}), five + 1)

    def test_upstream_response_timeout_gives_504(self):
        k = self.ktlb(self.basic_config({"app": [self.a.addr]}, server={"upstream_response_timeout_ms": "500"}))
        before = k.metric("ktlb_timeouts_total", kind="upstream_response")
        t0 = time.monotonic()
        status, _, _ = self.get(k, "/slow/10000")
        took = time.monotonic() - t0
        self.assertEqual(status, 504)
        self.assertLess(took, 8.0, "the 504 should come after ~500 ms, not after the backend answered (10 s)")
        self.assertGreaterEqual(k.wait_metric("ktlb_timeouts_total", before + 1, kind="upstream_response"), before + 1)
        # Fast requests are unaffected.
        self.assertEqual(self.get(k, "/slow/100")[0], 200)

    def test_idempotent_request_retried_after_reset(self):
        bad = ResettingServer()
        try:
            k = self.ktlb(self.basic_config({"flaky": [bad.addr, self.a.addr]}))
            retries = k.metric("ktlb_upstream_retries_total")
            for i in range(4):
                status, headers, body = self.get(k, "/")
                self.assertEqual((status, body), (200, HELLO), f"request {i}")
                self.assertEqual(headers.get("x-origin"), "a")
            self.assertGreaterEqual(bad.accepted, 1, "ktlb never tried the resetting server")
            self.assertGreaterEqual(k.wait_metric("ktlb_upstream_retries_total", retries + 1), retries + 1)
        finally:
            bad.close()

    def test_routes_on_sni_host_and_path(self):
        config = self.basic_config(
            {"a": [self.a.addr], "b": [self.b.addr]},
            routes=[
                {"sni": "*.other.test", "upstream": "b"},
                {"host": "api.example.test", "upstream": "b"},
                {"path_prefix": "/size/", "upstream": "b"},
                {"upstream": "a"},
            ])
        k = self.ktlb(config)
        self.assertEqual(self.x_origin(k, "/", host="example.test"), (200, "a"))
        self.assertEqual(self.x_origin(k, "/headers", host="example.test"), (200, "a"))
        self.assertEqual(self.x_origin(k, "/", host="api.example.test"), (200, "b"))
        self.assertEqual(self.x_origin(k, "/size/3", host="example.test"), (200, "b"))
        self.assertEqual(self.x_origin(k, "/", host="x.other.test"), (200, "b"))
        self.assertEqual(self.x_origin(k, "/", host="other.test"), (200, "a"))  # "*." needs a label
        # Host matching ignores case and the port; the route is chosen per request.
        with self.tls(k, server_hostname="www.example.test") as c:
            c.request("GET", "/", host=f"API.Example.Test:{k.port()}")
            status, headers, _ = c.read_response()
            self.assertEqual((status, header(headers, "X-Origin")), (200, ["b"]))
            c.request("GET", "/", host="www.example.test")
            status, headers, _ = c.read_response()
            self.assertEqual((status, header(headers, "X-Origin")), (200, ["a"]))


if __name__ == "__main__":
    harness.main()
