"""Every timeout fires, answers or closes as an operator expects, and is
counted in ktlb_timeouts_total{kind}: request header (slow head -> 408),
keep-alive (idle connection closed), upstream connect (backend that never
completes the TCP handshake -> 504). Handshake and upstream response timeouts
are covered in test_tls.py and test_upstream.py."""

import select
import socket
import time

import harness


class BlackholeServer:
    """A listening socket that never accepts, with its backlog filled, so
    further connects stay in SYN-SENT until the client gives up."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(self.sock.getsockname())
            except BlockingIOError:
                pass
            self.fillers.append(s)
        # The first filler's handshake completes (it fills the accept queue);
        # the others' SYNs are dropped from then on.
        _, ready, _ = select.select([], self.fillers[:1], [], 30)
        assert ready, "the backlog filler did not connect"

    def close(self):
        for s in self.fillers:
            s.close()
        self.sock.close()


class TimeoutTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("t")

    def test_request_header_timeout_answers_408(self):
        k = self.ktlb(self.basic_config({"app": [self.o.addr]},
                                        server={"request_header_timeout_ms": "500"}))
        before = k.metric("ktlb_timeouts_total", kind="request_header")
        before_origin = self.o.requests()
        with harness.HttpConn(k.addr(), cafile=self.ca) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # never finished
            t0 = time.monotonic()
            status, _, _ = c.read_response()
            self.assertEqual(status, 408)
            self.assertLess(time.monotonic() - t0, 15)
            self.assertIsNotNone(c.wait_closed(15))
        self.assertGreaterEqual(k.wait_metric("ktlb_timeouts_total", before + 1, kind="request_header"),
                                before + 1)
        self.assertEqual(self.o.requests(), before_origin, "a partial head reached the backend")

    def test_keepalive_timeout_closes_idle_connection(self):
        k = self.ktlb(self.basic_config({"app": [self.o.addr]}, server={"keepalive_timeout_ms": "500"}))
        before = k.metric("ktlb_timeouts_total", kind="keepalive")
        with harness.HttpConn(k.addr(), cafile=self.ca) as c:
            c.request("GET", "/size/10")
            self.assertEqual(c.read_response()[0], 200)
            t0 = time.monotonic()
            self.assertIsNotNone(c.wait_closed(15), "idle keep-alive connection was not closed")
            self.assertGreater(time.monotonic() - t0, 0.3)
        self.assertGreaterEqual(k.wait_metric("ktlb_timeouts_total", before + 1, kind="keepalive"), before + 1)

    def test_busy_connection_is_not_cut_by_keepalive_timeout(self):
        # Idle 0.3 s at a time, 2.4 s in all, against a 1.5 s keep-alive timeout:
        # the margin (1.2 s per gap) absorbs a loaded machine's scheduling delays.
        k = self.ktlb(self.basic_config({"app": [self.o.addr]}, server={"keepalive_timeout_ms": "1500"}))
        with harness.HttpConn(k.addr(), cafile=self.ca) as c:
            for _ in range(8):
                c.request("GET", "/size/10")
                self.assertEqual(c.read_response()[0], 200)
                time.sleep(0.3)

    def test_upstream_connect_timeout_answers_504(self):
        hole = BlackholeServer()
        try:
            k = self.ktlb(self.basic_config({"app": [hole.addr]},
                                            server={"upstream_connect_timeout_ms": "500"}))
            before = k.metric("ktlb_timeouts_total", kind="upstream_connect")
            t0 = time.monotonic()
            status, _, body = self.get(k, "/")
            self.assertEqual(status, 504, body)
            self.assertLess(time.monotonic() - t0, 15)
            self.assertGreaterEqual(
                k.wait_metric("ktlb_timeouts_total", before + 1, kind="upstream_connect"), before + 1)
            self.assertGreaterEqual(k.metric("ktlb_upstream_timeouts_total", upstream="app"), 1)
        finally:
            hole.close()


if __name__ == "__main__":
    harness.main()
