"""The test origin (tools/origin) on its own: the other tests trust it as a witness."""

import hashlib
import os
import select
import socket
import subprocess
import threading
import time

import harness
from harness import HttpConn, header


class OriginTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("o1", threads=2)

    def conn(self):
        return HttpConn(self.o.addr, tls=False, timeout=10)

    def raw_curl(self, *args):
        r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "30", *args],
                           capture_output=True, timeout=40)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_hello_and_name(self):
        with self.conn() as c:
            c.request("GET", "/")
            status, headers, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertEqual(body, b"hello from ktlb-origin\n")
        self.assertEqual(header(headers, "X-Origin"), ["o1"])

    def test_default_name_is_port(self):
        o = harness.Origin(self.tmp, "", threads=1)
        try:
            with HttpConn(o.addr, tls=False) as c:
                c.request("GET", "/")
                _, headers, _ = c.read_response()
            self.assertEqual(header(headers, "X-Origin"), [str(o.port)])
        finally:
            o.stop()

    def test_size_chunked_close_match_pattern(self):
        with self.conn() as c:
            for n in (0, 1, 65520, 65521, 65522, 300000):
                c.request("GET", f"/size/{n}")
                status, headers, body = c.read_response()
                self.assertEqual((status, len(body)), (200, n))
                self.assertEqual(body, harness.pattern(n))
                c.request("GET", f"/chunked/{n}")
                status, headers, body = c.read_response()
                self.assertEqual(header(headers, "Transfer-Encoding"), ["chunked"])
                self.assertEqual(body, harness.pattern(n))
        with self.conn() as c:
            c.request("GET", "/close/100000")
            status, headers, body = c.read_response()
            self.assertEqual(header(headers, "Content-Length"), [])
            self.assertEqual(body, harness.pattern(100000))
            self.assertTrue(c.eof)

    def test_large_downloads(self):
        n = 52428800
        for path in (f"/size/{n}", f"/chunked/{n}"):
            out = os.path.join(self.tmp, "dl")
            self.raw_curl("-o", out, self.o.url(path))
            self.assertEqual(os.path.getsize(out), n)
            self.assertEqual(harness.file_sha256(out), harness.pattern_sha256(n), path)

    def test_huge_size_streams(self):
        # 10 GiB is generated on the fly: the head comes at once, bytes flow.
        with self.conn() as c:
            c.request("GET", "/size/10737418240")
            status, headers = c.read_head()
            self.assertEqual(status, 200)
            self.assertEqual(header(headers, "Content-Length"), ["10737418240"])
            got = c._exactly(10 << 20)
            self.assertEqual(got, harness.pattern(10 << 20))

    def test_echo(self):
        with self.conn() as c:
            c.request("POST", "/echo", body=b"hello world")
            status, headers, body = c.read_response()
            self.assertEqual((status, body), (200, b"hello world"))
            self.assertEqual(header(headers, "Content-Length"), ["11"])
            c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual((status, body), (200, b"hello world"))
            self.assertEqual(header(headers, "Transfer-Encoding"), ["chunked"])
            c.request("GET", "/echo")
            self.assertEqual(c.read_response()[2], b"")

    def test_echo_streams_large_body(self):
        data = os.urandom(20 << 20)
        path = os.path.join(self.tmp, "up")
        with open(path, "wb") as f:
            f.write(data)
        got = self.raw_curl("--data-binary", "@" + path, self.o.url("/echo"))
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest())
        got = self.raw_curl("-T", path, "-H", "Transfer-Encoding: chunked", self.o.url("/echo"))
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest())

    def test_sha256(self):
        data = os.urandom(3 << 20)
        path = os.path.join(self.tmp, "up")
        with open(path, "wb") as f:
            f.write(data)
        want = f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()
        self.assertEqual(self.raw_curl("--data-binary", "@" + path, self.o.url("/sha256")), want)
        self.assertEqual(self.raw_curl("-T", path, "-H", "Transfer-Encoding: chunked", self.o.url("/sha256")), want)
        with self.conn() as c:
            c.request("GET", "/sha256")
            self.assertEqual(c.read_response()[2], f"{hashlib.sha256(b'').hexdigest()} 0\n".encode())

    def test_expect_100_continue(self):
        with self.conn() as c:
            c.send(b"PUT /sha256 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            status, _ = c.read_head()
            self.assertEqual(status, 100)
            c.send(b"abc")
            status, _, body = c.read_response()
            self.assertEqual(body, f"{hashlib.sha256(b'abc').hexdigest()} 3\n".encode())

    def test_headers_verbatim(self):
        with self.conn() as c:
            c.send(b"GET /headers?q=1 HTTP/1.1\r\nHost: h.test\r\nX-A:  spaced value \r\nx-b:v\r\n\r\n")
            _, _, body = c.read_response()
        self.assertEqual(body, b"GET /headers?q=1 HTTP/1.1\nHost: h.test\nX-A:  spaced value \nx-b:v\n")

    def test_status_head_and_reuse(self):
        with self.conn() as c:
            c.request("GET", "/status/204")
            self.assertEqual(c.read_response()[:1], (204,))
            c.request("GET", "/status/304")
            status, headers, _ = c.read_response()
            self.assertEqual(status, 304)
            self.assertEqual(header(headers, "Content-Length"), [])
            c.request("GET", "/status/503")
            self.assertEqual(c.read_response()[0], 503)
            c.request("HEAD", "/size/1000")
            status, headers, body = c.read_response(head_request=True)
            self.assertEqual(header(headers, "Content-Length"), ["1000"])
            c.request("GET", "/size/7")
            self.assertEqual(c.read_response()[2], harness.pattern(7))

    def test_pipelining(self):
        with self.conn() as c:
            c.send(b"GET /size/10 HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /slow/200 HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                   b"GET /size/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertEqual(c.read_response()[2], harness.pattern(10))
            self.assertEqual(c.read_response()[2], b"slow 200\n")
            self.assertEqual(c.read_response()[2], b"hi")
            self.assertEqual(c.read_response()[2], harness.pattern(5))
            self.assertIsNotNone(c.wait_closed(10))

    def test_slow_does_not_block_the_thread(self):
        # Order, not speed: the fast request is answered while the slow one is
        # still waiting for its timer.
        o = harness.Origin(self.tmp, "single", threads=1)
        try:
            with HttpConn(o.addr, tls=False) as slow, HttpConn(o.addr, tls=False) as fast:
                slow.request("GET", "/slow/3000")
                t0 = time.monotonic()
                fast.request("GET", "/")
                self.assertEqual(fast.read_response()[0], 200)
                readable, _, _ = select.select([slow.sock], [], [], 0)
                self.assertEqual(readable, [], "the slow response came before the fast one")
                self.assertEqual(slow.read_response()[2], b"slow 3000\n")
                self.assertGreater(time.monotonic() - t0, 2.5)
        finally:
            o.stop()

    def test_reset(self):
        with self.conn() as c:
            c.request("GET", "/reset")
            with self.assertRaises(ConnectionResetError):
                c.sock.recv(100)

    def test_http10(self):
        with self.conn() as c:
            c.send(b"GET /size/3 HTTP/1.0\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual(body, harness.pattern(3))
            self.assertEqual(header(headers, "Connection"), ["close"])
            self.assertIsNotNone(c.wait_closed(10))
        with self.conn() as c:
            c.send(b"GET /chunked/3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual(body, harness.pattern(3))  # close-delimited: 1.0 has no chunked

    MALFORMED = {
        "both_cl_te": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two_cl": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "obs_fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        "bare_cr": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        "bad_version": b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
        "space_before_colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "garbage": b"this is not http\r\n\r\n",
        "bad_cl": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "bad_te": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        "bad_chunk": b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    }

    def test_malformed_requests_get_400_and_close(self):
        for name, data in self.MALFORMED.items():
            with self.subTest(name), self.conn() as c:
                before = self.o.requests()
                c.send(data)
                status, headers, _ = c.read_response()
                self.assertEqual(status, 400)
                self.assertEqual(header(headers, "Connection"), ["close"])
                self.assertIsNotNone(c.wait_closed(10), "connection stayed open")
                self.assertEqual(self.o.requests(), before + 1)

    def test_huge_head_gets_431(self):
        with self.conn() as c:
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70)))
            status, _, _ = c.read_response()
            self.assertEqual(status, 431)
            self.assertIsNotNone(c.wait_closed(10))

    def test_stats_counts_requests_not_itself(self):
        a = self.o.requests()
        self.assertEqual(self.o.requests(), a)
        with self.conn() as c:
            for _ in range(3):
                c.request("GET", "/")
                c.read_response()
        self.assertEqual(self.o.requests(), a + 3)

    def test_many_concurrent_connections(self):
        errors = []

        def worker():
            try:
                with self.conn() as c:
                    for i in range(50):
                        c.request("GET", f"/size/{i * 100}")
                        if c.read_response()[2] != harness.pattern(i * 100):
                            errors.append("bad body")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_half_close_still_answered(self):
        s = socket.create_connection(("127.0.0.1", self.o.port))
        s.sendall(b"GET /size/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        s.settimeout(30)
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)
        self.assertTrue(data.endswith(harness.pattern(5)), data)


if __name__ == "__main__":
    harness.main()
