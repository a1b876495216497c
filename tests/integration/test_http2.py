"""HTTP/2 for clients (ALPN h2): negotiation, streams to upstream, bodies both
ways by sha256, trailers, h2load, the access log, and the lifecycle."""

import json
import os
import socket
import subprocess
import threading
import time

import h2raw
import harness
from h2raw import H2Raw

H2 = {"alpn": '["h2", "http/1.1"]'}


class TrailerBackend:
    """A one-request-per-connection HTTP/1.1 backend that keeps the raw request
    it got and answers with a chunked body followed by trailers."""

    RESPONSE = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n"
                b"Grpc-Status: 0\r\nX-Checksum: abc\r\n\r\n")

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.requests = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            c.settimeout(10)
            try:
                while b"\r\n\r\n" not in data:
                    data += c.recv(65536)
                head = data.split(b"\r\n\r\n", 1)[0].lower()
                if b"transfer-encoding: chunked" in head:
                    while not data.endswith(b"\r\n\r\n") or data.count(b"\r\n0\r\n") == 0:
                        more = c.recv(65536)
                        if not more:
                            break
                        data += more
                self.requests.append(data)
                c.sendall(self.RESPONSE)
            except OSError:
                pass
            c.close()

    def close(self):
        self.sock.close()


class Http2Test(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("o", threads=2)

    def h2_ktlb(self, server=None, upstreams=None, **kw):
        return self.ktlb(self.basic_config(upstreams or {"app": [self.o.addr]}, listener=H2,
                                           server=server, **kw))

    def raw(self, k, **kw):
        return H2Raw(k.addr(), self.ca, **kw)

    def curl2(self, k, path, *args, **kw):
        url, resolve = self.url(k, path)
        return self.curl("--http2", *resolve, *args, url, **kw)

    # -- negotiation and forwarding --

    def test_h2_negotiated_and_forwarding_headers(self):
        k = self.h2_ktlb()
        r = self.curl2(k, "/headers", "-v", "-H", "X-Forwarded-For: 6.6.6.6")
        err = r.stderr.decode()
        self.assertIn("ALPN: server accepted h2", err)
        self.assertIn("< HTTP/2 200", err)
        echoed = r.stdout.decode()
        self.assertTrue(echoed.startswith("GET /headers HTTP/1.1\n"), echoed)
        self.assertIn("\nHost: localhost:%d\n" % k.port(), echoed)
        self.assertIn("\nX-Forwarded-For: 127.0.0.1\n", echoed)
        self.assertIn("\nX-Forwarded-Proto: https\n", echoed)
        self.assertNotIn("6.6.6.6", echoed)  # the client's copy is stripped
        self.assertEqual(k.metric("ktlb_h2_connections_total", listener="public"), 1)

    def test_listener_preference_and_http1_default(self):
        # A listener without alpn speaks HTTP/1.1 only, even to an h2 client.
        k = self.ktlb(self.basic_config({"app": [self.o.addr]}))
        r = self.curl2(k, "/", "-v")
        self.assertIn("< HTTP/1.1 200", r.stderr.decode())
        # ["http/1.1", "h2"]: the listener's order wins.
        k2 = self.ktlb(self.basic_config({"app": [self.o.addr]},
                                         listener={"alpn": '["http/1.1", "h2"]'}))
        r = self.curl2(k2, "/", "-v")
        self.assertIn("< HTTP/1.1 200", r.stderr.decode())

    # -- bodies --

    def test_download_and_upload_by_sha256(self):
        k = self.h2_ktlb()
        n = 20 * 1000 * 1000
        out = os.path.join(self.tmp, "h2-download")
        self.curl2(k, "/size/%d" % n, "-o", out)
        self.assertEqual(harness.file_sha256(out), harness.pattern_sha256(n))
        up = os.path.join(self.tmp, "h2-upload")
        with open(up, "wb") as f:
            f.write(os.urandom(10 * 1000 * 1000))
        want = harness.file_sha256(up)
        # With content-length, and without (sent chunked to the backend).
        r = self.curl2(k, "/sha256", "--data-binary", "@" + up)
        self.assertEqual(r.stdout.decode().split()[0], want)
        r = self.curl2(k, "/sha256", "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + up)
        self.assertEqual(r.stdout.decode().split()[0], want)
        # A chunked response becomes plain DATA.
        r = self.curl2(k, "/chunked/300000", "-o", out)
        self.assertEqual(harness.file_sha256(out), harness.pattern_sha256(300000))

    def test_no_content_head_and_close_delimited(self):
        k = self.h2_ktlb()
        with self.raw(k) as c:
            c.request(1, "/status/204")
            c.request(3, "/size/100", method="HEAD")
            c.request(5, "/close/5000")  # the backend closes: the h2 connection stays
            c.request(7, "/size/10")
            r = c.response(1)
            self.assertEqual((r.status, bytes(r.body)), (204, b""))
            r = c.response(3)
            self.assertEqual((r.status, r.header("content-length"), bytes(r.body)), (200, "100", b""))
            r = c.response(5)
            self.assertEqual((r.status, bytes(r.body)), (200, harness.pattern(5000)))
            self.assertIsNone(r.header("connection"))
            r = c.response(7)
            self.assertEqual(bytes(r.body), harness.pattern(10))
            self.assertIsNone(c.goaway)

    def test_trailers_both_ways(self):
        backend = TrailerBackend()
        try:
            k = self.h2_ktlb(upstreams={"app": [backend.addr]})
            with self.raw(k) as c:
                c.request(1, "/grpc", method="POST", end_stream=False)
                c.send(h2raw.frame(h2raw.DATA, 0, 1, b"payload"))
                c.send(c.headers_frame(1, [("x-req-trailer", "yes")], end_stream=True))
                r = c.response(1)
                self.assertEqual(r.status, 200)
                self.assertEqual(bytes(r.body), b"hello world")
                self.assertEqual(dict(r.trailers), {"grpc-status": "0", "x-checksum": "abc"})
                self.assertIsNone(r.header("transfer-encoding"))
            req = backend.requests[0]
            self.assertIn(b"Transfer-Encoding: chunked\r\n", req)
            self.assertTrue(req.endswith(b"7\r\npayload\r\n0\r\nx-req-trailer: yes\r\n\r\n"), req)
        finally:
            backend.close()

    # -- load --

    def test_h2load_all_succeed(self):
        k = self.h2_ktlb()
        url = "https://127.0.0.1:%d/" % k.port()
        for args in (["-n", "20000", "-c", "10", "-m", "16"], ["-n", "20000", "-c", "4", "-m", "100"]):
            r = subprocess.run(["h2load", *args, url], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("20000 succeeded, 0 failed, 0 errored, 0 timeout", r.stdout, r.stdout)
            self.assertIn("20000 2xx", r.stdout)
        self.assertGreaterEqual(k.metric("ktlb_h2_streams_total", listener="public"), 40000)

    def test_concurrent_streams_use_concurrent_upstream_connections(self):
        k = self.h2_ktlb()
        with self.raw(k) as c:
            start = time.monotonic()
            for i in range(4):
                c.request(1 + 2 * i, "/slow/1000")
            for i in range(4):
                self.assertEqual(c.response(1 + 2 * i).status, 200)
            # Four one-second responses in parallel, not in a row.
            self.assertLess(time.monotonic() - start, 3.5)

    # -- lifecycle --

    def test_access_log_line_per_stream(self):
        log = os.path.join(self.tmp, "access-h2.log")
        k = self.h2_ktlb(server={"access_log": '"%s"' % log})
        with self.raw(k) as c:
            c.request(1, "/size/3")
            c.request(3, "/nothing-here?x=1")
            c.response(1)
            c.response(3)
        k.stop()
        with open(log) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(len(lines), 2, lines)
        by_target = {line["target"]: line for line in lines}
        self.assertEqual(by_target["/size/3"]["version"], "2")
        self.assertEqual(by_target["/size/3"]["status"], 200)
        self.assertEqual(by_target["/size/3"]["bytes"], 3)
        self.assertEqual(by_target["/nothing-here?x=1"]["method"], "GET")

    def test_idle_timeout_sends_goaway(self):
        k = self.h2_ktlb(server={"keepalive_timeout_ms": "500"})
        with self.raw(k) as c:
            c.request(1, "/")
            c.response(1)
            self.assertEqual(c.wait_goaway(timeout=10), (1, h2raw.NO_ERROR))
            c.wait_closed(timeout=10)

    def test_graceful_goaway_on_sigterm(self):
        k = self.h2_ktlb(server={"drain_timeout_ms": "10000"})
        with self.raw(k) as c:
            c.request(1, "/slow/1500")
            # The stream is in flight upstream (a condition, not a sleep).
            self.assertGreaterEqual(k.wait_metric("ktlb_upstream_requests_total", 1, upstream="app"), 1)
            k.signal(15)
            # Two steps (RFC 9113 6.8): a notice that admits streams already
            # on their way, then, a second later, the real last stream id.
            self.assertEqual(c.wait_goaway(timeout=10), (0x7FFFFFFF, h2raw.NO_ERROR))
            c.request(3, "/")  # sent after the notice, before the final GOAWAY
            self.assertEqual(c.wait_goaway(timeout=10, count=2), (3, h2raw.NO_ERROR))
            self.assertEqual(c.response(3, timeout=20).status, 200)
            r = c.response(1, timeout=20)
            self.assertEqual((r.status, r.reset), (200, None))
            c.wait_closed(timeout=20)
        k.proc.wait(timeout=30)
        self.assertEqual(k.proc.returncode, 0)
        k.stopped = True

    def test_upstream_failure_is_a_502_stream(self):
        dead = "127.0.0.1:%d" % harness.free_port()
        k = self.h2_ktlb(upstreams={"app": [dead]})
        with self.raw(k) as c:
            c.request(1, "/")
            r = c.response(1)
            self.assertEqual(r.status, 502)
            c.request(3, "/")  # the connection carries on
            self.assertEqual(c.response(3).status, 502)


if __name__ == "__main__":
    harness.main()
