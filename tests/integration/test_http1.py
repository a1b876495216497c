"""HTTP/1.1 through ktlb: keep-alive, pipelining, large bodies both ways,
HEAD/204/304, 100-continue, forwarding headers, and refusal of ambiguous or
malformed requests (request smuggling) before they reach the backend."""

import hashlib
import os
import ssl
import time

import harness
from harness import header

HELLO = b"hello from ktlb-origin\n"


class Http1Test(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("h1-origin")

    def start(self, server=None):
        return self.ktlb(self.basic_config({"app": [self.o.addr]}, server=server))

    def random_file(self, size):
        path = os.path.join(self.tmp, f"upload-{size}")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(os.urandom(size))
        return path

    # -- connection reuse and ordering --

    def test_keepalive_reuses_connection(self):
        k = self.start()
        url1, resolve = self.url(k, "/size/10")
        url2, _ = self.url(k, "/")
        r = self.curl(*resolve, "-w", "%{num_connects} %{http_code}\n", "-o", "/dev/null", url1,
                      "-o", "/dev/null", url2)
        self.assertEqual(r.stdout.decode().split("\n")[:2], ["1 200", "0 200"])

    def test_pipelining_keeps_order(self):
        k = self.start()
        with self.tls(k) as c:
            t0 = time.monotonic()
            c.send(b"GET /size/10 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                   b"GET /slow/200 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                   b"GET /size/5 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                   b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Seq: 4\r\n\r\n")
            self.assertEqual(c.read_response()[2], harness.pattern(10))
            status, _, body = c.read_response()
            self.assertEqual((status, body), (200, b"slow 200\n"))
            self.assertGreaterEqual(time.monotonic() - t0, 0.19)
            self.assertEqual(c.read_response()[2], harness.pattern(5))
            body = c.read_response()[2]
            self.assertTrue(body.startswith(b"GET /headers HTTP/1.1\n"), body)
            self.assertIn(b"X-Seq: 4\n", body)
            # Still usable afterwards.
            c.request("GET", "/")
            self.assertEqual(c.read_response()[2], HELLO)

    # -- large bodies --

    def test_large_downloads(self):
        k = self.start()
        n = 52428800
        for path in (f"/size/{n}", f"/chunked/{n}", "/close/3000000"):
            with self.subTest(path):
                size = int(path.rsplit("/", 1)[1])
                out = os.path.join(self.tmp, "download")
                url, resolve = self.url(k, path)
                r = self.curl(*resolve, "-o", out, "-w", "%{http_code}", url, timeout=120)
                self.assertEqual(r.stdout, b"200")
                self.assertEqual(os.path.getsize(out), size)
                self.assertEqual(harness.file_sha256(out), harness.pattern_sha256(size))

    def test_large_uploads(self):
        k = self.start()
        path = self.random_file(20 << 20)
        want = f"{harness.file_sha256(path)} {20 << 20}\n".encode()
        url, resolve = self.url(k, "/sha256")
        with self.subTest("chunked"):
            r = self.curl(*resolve, "-T", path, "-H", "Transfer-Encoding: chunked", url, timeout=120)
            self.assertEqual(r.stdout, want)
        with self.subTest("content-length"):
            r = self.curl(*resolve, "--data-binary", "@" + path, url, timeout=120)
            self.assertEqual(r.stdout, want)
        with self.subTest("echo both ways"):
            out = os.path.join(self.tmp, "echoed")
            url, _ = self.url(k, "/echo")
            self.curl(*resolve, "-T", path, "-o", out, url, timeout=120)
            self.assertEqual(harness.file_sha256(out), want.split()[0].decode())

    def test_expect_100_continue(self):
        k = self.start()
        with self.tls(k) as c:
            c.send(b"PUT /sha256 HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 5\r\n\r\n")
            c.sock.settimeout(30)
            status, _ = c.read_head()  # must come without the body having been sent
            self.assertEqual(status, 100)
            c.send(b"hello")
            status, _, body = c.read_response()
            self.assertEqual((status, body), (200, f"{hashlib.sha256(b'hello').hexdigest()} 5\n".encode()))
        # curl's own 100-continue dance (it sends Expect for big bodies).
        path = self.random_file(3 << 20)
        url, resolve = self.url(k, "/sha256")
        r = self.curl(*resolve, "-H", "Expect: 100-continue", "--data-binary", "@" + path, "-v", url)
        self.assertEqual(r.stdout, f"{harness.file_sha256(path)} {3 << 20}\n".encode())
        self.assertIn(b"HTTP/1.1 100", r.stderr)

    def test_http10_client_never_gets_chunked(self):
        # The backend would answer /chunked/N chunked to an HTTP/1.1 request;
        # an HTTP/1.0 client must get a plain body delimited by the close.
        k = self.start()
        url, resolve = self.url(k, "/chunked/5000")
        r = self.curl(*resolve, "--http1.0", "-D", "-", "-o", "/dev/null", "-w", "%{size_download}", url)
        out = r.stdout.decode()
        self.assertTrue(out.startswith("HTTP/1.0 200"), out)
        self.assertNotIn("transfer-encoding", out.lower())
        self.assertTrue(out.endswith("5000"), out)

    # -- bodiless responses --

    def test_head(self):
        k = self.start()
        url, resolve = self.url(k, "/size/1000")
        r = self.curl(*resolve, "-I", url)
        self.assertIn(b"content-length: 1000", r.stdout.lower())
        with self.tls(k) as c:
            c.request("HEAD", "/size/1000")
            status, headers, _ = c.read_response(head_request=True)
            self.assertEqual((status, header(headers, "Content-Length")), (200, ["1000"]))
            c.request("GET", "/size/10")  # the HEAD response carried no body bytes
            self.assertEqual(c.read_response()[2], harness.pattern(10))

    def test_204_304_keep_connection_usable(self):
        k = self.start()
        with self.tls(k) as c:
            c.request("GET", "/status/204")
            self.assertEqual(c.read_response()[:3:2], (204, b""))
            c.request("GET", "/status/304")
            self.assertEqual(c.read_response()[:3:2], (304, b""))
            c.request("GET", "/size/7")
            status, _, body = c.read_response()
            self.assertEqual((status, body), (200, harness.pattern(7)))

    # -- what the backend is told --

    def test_forwarding_headers(self):
        k = self.start()
        with self.tls(k, server_hostname="example.test") as c:
            c.send(b"GET /headers HTTP/1.1\r\n"
                   b"Host: example.test\r\n"
                   b"X-Forwarded-For: 6.6.6.6\r\n"
                   b"X-Forwarded-Proto: http\r\n"
                   b"X-Forwarded-Host: evil.test\r\n"
                   b"X-Real-IP: 6.6.6.6\r\n"
                   b"Forwarded: for=6.6.6.6;proto=http\r\n"
                   b"Connection: close, X-Foo\r\n"
                   b"X-Foo: hop\r\n"
                   b"Keep-Alive: timeout=5\r\n"
                   b"TE: trailers\r\n"
                   b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                   b"X-Keep: end-to-end\r\n\r\n")
            status, _, body = c.read_response()
        self.assertEqual(status, 200)
        lines = body.decode().split("\n")
        self.assertEqual(lines[0], "GET /headers HTTP/1.1")
        got = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                got.append((name.strip(), value.strip()))
        dump = "\n".join(lines)
        self.assertEqual(header(got, "X-Forwarded-For"), ["127.0.0.1"], dump)
        self.assertEqual(header(got, "X-Forwarded-Proto"), ["https"], dump)
        self.assertEqual(header(got, "X-Forwarded-Host"), ["example.test"], dump)
        self.assertEqual(header(got, "Host"), ["example.test"], dump)
        self.assertEqual(header(got, "X-Keep"), ["end-to-end"], dump)
        fwd = header(got, "Forwarded")
        self.assertEqual(len(fwd), 1, dump)
        self.assertNotIn(",", fwd[0], "client's Forwarded element kept")
        params = {}
        for part in fwd[0].split(";"):
            key, _, value = part.strip().partition("=")
            params[key.lower()] = value.strip('"')
        self.assertEqual(params, {"for": "127.0.0.1", "proto": "https", "host": "example.test"}, dump)
        for name in ("X-Real-IP", "X-Foo", "Keep-Alive", "TE", "Proxy-Authorization"):
            self.assertEqual(header(got, name), [], f"{name} was forwarded:\n{dump}")
        for value in header(got, "Connection"):
            self.assertNotIn("x-foo", value.lower(), dump)
        self.assertNotIn("6.6.6.6", body.decode())
        self.assertNotIn("evil.test", body.decode())

    # -- refused requests --

    SMUGGLING = [
        # (metric reason, request bytes, expected status or None for any 4xx, reaches origin)
        ("both_cl_te",
         b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n", None),
        ("duplicate_content_length",
         b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", None),
        ("obs_fold", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n", None),
        ("bare_cr", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n", None),
        ("bad_version", b"GET / HTTP/1.2\r\nHost: localhost\r\n\r\n", 505),
        ("missing_host", b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", None),
        ("bad_request", b"this is not http\r\n\r\n", None),
        ("request_line_too_long", b"GET /" + b"a" * 10240 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        ("headers_too_large",
         b"GET / HTTP/1.1\r\nHost: localhost\r\n"
         + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(64)) + b"\r\n", 431),
    ]

    def refuse(self, k, reason, data, want_status):
        before_metric = k.metric("ktlb_http_parse_errors_total", listener="public", reason=reason)
        with self.tls(k, timeout=30) as c:
            try:
                c.send(data)
            except (OSError, ssl.SSLError):
                pass  # ktlb may answer and stop reading before all of it is sent
            status, headers, _ = c.read_response()
            if want_status:
                self.assertEqual(status, want_status)
            else:
                self.assertTrue(400 <= status < 500, f"status {status}")
            self.assertIsNotNone(c.wait_closed(15), "connection not closed after a refused request")
        self.assertGreaterEqual(
            k.wait_metric("ktlb_http_parse_errors_total", before_metric + 1, listener="public", reason=reason),
            before_metric + 1, f"ktlb_http_parse_errors_total{{reason={reason}}} did not grow")

    def test_smuggling_and_malformed_requests_refused(self):
        k = self.start()
        # Warm any upstream pool so that a leak would show up as an origin request.
        self.assertEqual(self.get(k, "/")[0], 200)
        for reason, data, want in self.SMUGGLING:
            with self.subTest(reason):
                before = self.o.requests()
                self.refuse(k, reason, data, want)
                self.assertEqual(self.o.requests(), before, "the refused request reached the backend")
                # A refusal is about that request only: the next client is served.
                status, _, body = self.get(k, "/")
                self.assertEqual((status, body), (200, HELLO),
                                 f"a valid request on a new connection failed after refusing {reason}")

    def test_bad_chunk_refused(self):
        # The body is parsed as it streams, so the head may already be upstream:
        # /sha256 answers only after the body ends, so ktlb can still send the 400.
        k = self.start()
        self.refuse(k, "bad_chunk",
                    b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"zz\r\nhello\r\n0\r\n\r\n", None)
        self.assertEqual(self.get(k, "/")[2], HELLO)

    def test_requests_counted_by_class(self):
        k = self.start()
        ok = k.metric("ktlb_http_requests_total", listener="public", **{"class": "2xx"})
        nf = k.metric("ktlb_http_requests_total", listener="public", **{"class": "4xx"})
        self.assertEqual(self.get(k, "/")[0], 200)
        self.assertEqual(self.get(k, "/nope")[0], 404)
        self.assertGreaterEqual(k.wait_metric("ktlb_http_requests_total", ok + 1, listener="public",
                                              **{"class": "2xx"}), ok + 1)
        self.assertGreaterEqual(k.wait_metric("ktlb_http_requests_total", nf + 1, listener="public",
                                              **{"class": "4xx"}), nf + 1)


if __name__ == "__main__":
    harness.main()
