"""Per-try timeout (an upstream's try_timeout_ms) against a backend that
accepts, reads the request and never answers: a safe request moves to
another server after the try timeout and succeeds; one that is not safe (a
POST that reached the backend, a request with a body) gets 504 after one
try; a GET on the stalling server alone is tried twice, then 504. The
failures, the retry and the timeout are counted per server."""

import socket
import threading
import time

import harness
from harness import header

HELLO = b"hello from ktlb-origin\n"
TRY_MS = 1000


class StallingBackend:
    """Accepts every connection, reads whatever comes, never answers.
    Counts the request heads it received."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", harness.free_port()))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.heads = 0
        self.lock = threading.Lock()
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    c.close()
                    return
                self.conns.append(c)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = b""
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            n = buf.count(b"\r\n\r\n")
            if n:
                with self.lock:
                    self.heads += n
                buf = buf[buf.rfind(b"\r\n\r\n") + 4:]

    def received(self):
        with self.lock:
            return self.heads

    def close(self):
        with self.lock:
            self.closed = True
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


class TryTimeoutTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.a = cls.class_origin("a")

    def setUp(self):
        super().setUp()
        self.stall = StallingBackend()
        self.addCleanup(self.stall.close)

    def config(self, servers, extra=""):
        text = self.basic_config({"app": [servers[0]]})
        line = f'servers = ["{servers[0]}"]'
        listed = ", ".join(f'"{s}"' for s in servers)
        # No passive ejection: the stalling server stays in rotation, so
        # every test meets it.
        return text.replace(line, f"servers = [{listed}]\ntry_timeout_ms = {TRY_MS}\n"
                                  "eject = { consecutive_failures = 0 }\n" + extra)

    def timed(self, k, method, path="/", body=None):
        with self.tls(k) as c:
            t0 = time.monotonic()
            c.request(method, path, body=body)
            status, headers, got = c.read_response()
            return status, headers, got, time.monotonic() - t0

    def test_idempotent_request_moves_to_another_server(self):
        k = self.ktlb(self.config([self.stall.addr, self.a.addr]))
        slow = []
        for i in range(6):
            status, headers, body, took = self.timed(k, "GET")
            self.assertEqual((status, body), (200, HELLO), f"request {i}")
            self.assertEqual(header(headers, "X-Origin"), ["a"])
            if took >= TRY_MS / 1000:
                slow.append(took)
        # Round robin sends every other request to the stalling server first.
        self.assertGreaterEqual(len(slow), 2, slow)
        for took in slow:
            self.assertLess(took, 2 * TRY_MS / 1000, slow)
        stalled = self.stall.received()
        self.assertEqual(stalled, len(slow))
        print(f"\n[try_timeout] {len(slow)} of 6 GETs met the stalling server and were served "
              f"by the other in {min(slow) * 1000:.0f}-{max(slow) * 1000:.0f} ms "
              f"(try_timeout_ms = {TRY_MS})")
        s = self.stall.addr
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="upstream_try"), stalled)
        self.assertEqual(k.metric("ktlb_upstream_server_failures_total", upstream="app", server=s,
                                  reason="try_timeout"), stalled)
        self.assertEqual(k.metric("ktlb_upstream_server_retries_total", upstream="app", server=s),
                         stalled)
        self.assertEqual(k.metric("ktlb_upstream_server_requests_total", upstream="app",
                                  server=self.a.addr), 6)
        self.assertEqual(k.metric("ktlb_upstream_server_response_seconds_count", upstream="app",
                                  server=self.a.addr), 6)
        self.assertEqual(k.metric("ktlb_upstream_server_response_seconds_count", upstream="app",
                                  server=s), 0)
        self.assertEqual(k.metric("ktlb_upstream_server_in_flight", upstream="app", server=s), 0)

    def test_request_that_is_not_safe_gets_504_after_one_try(self):
        k = self.ktlb(self.config([self.stall.addr]))
        # A POST reached the backend: it may have acted on it.
        status, _, _, took = self.timed(k, "POST")
        self.assertEqual(status, 504)
        self.assertGreaterEqual(took, TRY_MS / 1000)
        self.assertLess(took, 2 * TRY_MS / 1000 + 0.5)
        self.assertEqual(self.stall.received(), 1)
        # A body is streamed to the backend, never kept for a replay.
        status, _, _, took = self.timed(k, "PUT", body=b"x" * 1000)
        self.assertEqual(status, 504)
        self.assertEqual(self.stall.received(), 2)
        self.assertEqual(k.metric("ktlb_upstream_retries_total", upstream="app"), 0)
        # A GET is tried once more, here on the same server (the only one).
        status, _, _, took = self.timed(k, "GET")
        self.assertEqual(status, 504)
        self.assertGreaterEqual(took, 2 * TRY_MS / 1000)
        self.assertEqual(self.stall.received(), 4)
        self.assertEqual(k.metric("ktlb_upstream_server_failures_total", upstream="app",
                                  server=self.stall.addr, reason="try_timeout"), 4)
        self.assertEqual(k.metric("ktlb_upstream_retries_total", upstream="app"), 1)

    def test_a_slow_answer_within_the_try_timeout_is_kept(self):
        k = self.ktlb(self.config([self.a.addr]))
        status, _, body, took = self.timed(k, "GET", f"/slow/{TRY_MS // 4}")
        self.assertEqual(status, 200, body)
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="upstream_try"), 0)
        # The try timeout covers the wait for the head only: a body that
        # takes longer than it (the client reads it late) is not cut.
        n = 4 << 20
        with self.tls(k) as c:
            c.request("GET", f"/size/{n}")
            status, _ = c.read_head()
            time.sleep(3 * TRY_MS / 1000)
            body = c._exactly(n)
        self.assertEqual((status, len(body)), (200, n))
        self.assertEqual(body, harness.pattern(n))
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="upstream_try"), 0)


if __name__ == "__main__":
    harness.main()
