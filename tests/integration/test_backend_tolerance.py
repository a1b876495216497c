"""Backend tolerance: be strict with clients, tolerant with backends.

Real, untuned backends that nginx serves happily must work through ktlb too:
busybox httpd running a CGI script that ends its head lines with a bare LF,
and `python3 -m http.server` (HTTP/1.0, close-delimited bodies). A raw-socket
backend produces the remaining shapes (no reason phrase, duplicate identical
Content-Length, "Content-Length: 5, 5") and the ones that would desync the
client connection (Content-Length with Transfer-Encoding, differing
Content-Lengths, bad chunk framing), which ktlb refuses with a 502.

Each shape is also fetched through nginx (a plain-HTTP reverse proxy in front
of the same backend) and ktlb's status and body must equal nginx's."""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time

import harness

BUSYBOX = "/bin/busybox"
NGINX = "/usr/sbin/nginx"

# path -> raw response bytes the RawBackend sends (then it closes).
SHAPES = {
    "/no-reason": b"HTTP/1.1 200\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    "/no-reason-201": b"HTTP/1.1 201\r\nContent-Length: 5\r\n\r\nhello",
    "/dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "/cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    "/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 5\nX-Shape: lf\n\nhello",
    "/mixed-lf": b"HTTP/1.1 200 OK\r\nContent-Length: 5\nX-Shape: mixed\r\n\nhello",
    "/http10-close": b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nuntil close\n",
    # Refused: each would let ktlb and the client disagree on the framing.
    "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n\r\n",
    "/cl-differ": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/cl-list-differ": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
}
ACCEPTED = ["/no-reason", "/no-reason-201", "/dup-cl", "/cl-list", "/bare-lf", "/mixed-lf",
            "/http10-close"]
REFUSED_HEAD = ["/cl-te", "/cl-differ", "/cl-list-differ"]

CGI_BODY = "cgi body line 1\nline 2\n"
CGI_SCRIPT = (
    "#!/bin/sh\n"
    "# Bare LF only, as many CGI scripts write their head.\n"
    "printf 'Content-Type: text/plain\\n'\n"
    "printf 'X-Cgi: busybox\\n'\n"
    "printf '\\n'\n"
    f"printf '{CGI_BODY.replace(chr(10), chr(92) + 'n')}'\n"
)


class RawBackend:
    """Answers each connection with SHAPES[path] and closes it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    @staticmethod
    def serve(c):
        with c:
            c.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    got = c.recv(65536)
                    if not got:
                        return
                    data += got
                path = data.split(b" ", 2)[1].decode()
                c.sendall(SHAPES.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
                c.shutdown(socket.SHUT_WR)
                # Let the peer read everything before the close.
                while c.recv(65536):
                    pass
            except OSError:
                pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def wait_listening(addr, proc, log_path, what):
    deadline = time.monotonic() + harness.START_TIMEOUT
    while not harness.port_accepts(addr):
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{f.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {addr}")
        time.sleep(0.02)


class BackendToleranceTest(harness.KtlbTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.procs = []
        try:
            cls._start_backends()
        except Exception:
            cls._stop_backends()
            raise

    @classmethod
    def tearDownClass(cls):
        cls._stop_backends()
        super().tearDownClass()

    @classmethod
    def _stop_backends(cls):
        for p in cls.procs:
            harness._kill(p)  # by PID
        if getattr(cls, "raw", None) is not None:
            cls.raw.close()

    @classmethod
    def _spawn(cls, argv, name, addr, **kw):
        log = os.path.join(cls.tmp, f"{name}.log")
        p = harness._spawn(argv, log, **kw)
        cls.procs.append(p)
        wait_listening(addr, p, log, name)
        return p

    @classmethod
    def _start_backends(cls):
        # busybox httpd with a bare-LF CGI.
        www = os.path.join(cls.tmp, "www")
        os.makedirs(os.path.join(www, "cgi-bin"))
        cgi = os.path.join(www, "cgi-bin", "x.cgi")
        with open(cgi, "w") as f:
            f.write(CGI_SCRIPT)
        os.chmod(cgi, 0o755)
        cls.busybox_addr = f"127.0.0.1:{harness.free_port()}"
        cls._spawn([BUSYBOX, "httpd", "-f", "-p", cls.busybox_addr, "-h", www], "busybox", cls.busybox_addr)

        # python3 -m http.server serving a file of a few hundred KB.
        files = os.path.join(cls.tmp, "files")
        os.makedirs(files)
        cls.big = os.urandom(300 * 1024 + 17)
        with open(os.path.join(files, "big.bin"), "wb") as f:
            f.write(cls.big)
        port = harness.free_port()
        cls.pyhttp_addr = f"127.0.0.1:{port}"
        cls._spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", files, str(port)],
                   "pyhttp", cls.pyhttp_addr)

        cls.raw = RawBackend()
        cls.raw_addr = cls.raw.addr

        # nginx in front of the same three backends, one port each.
        prefix = os.path.join(cls.tmp, "nginx")
        os.makedirs(os.path.join(prefix, "logs"))
        cls.nginx = {}
        servers = []
        for name, backend in (("busybox", cls.busybox_addr), ("pyhttp", cls.pyhttp_addr), ("raw", cls.raw_addr)):
            cls.nginx[name] = f"127.0.0.1:{harness.free_port()}"
            servers.append(f"    server {{ listen {cls.nginx[name]}; location / {{ proxy_pass http://{backend}; }} }}")
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                # One process: killed by PID, it leaves no orphaned worker.
                "master_process off;\n"
                "worker_processes 1;\n"
                f"pid {prefix}/nginx.pid;\n"
                f"error_log {prefix}/logs/error.log info;\n"
                "events { worker_connections 64; }\n"
                "http {\n"
                "    access_log off;\n"
                f"    client_body_temp_path {prefix}/client_body;\n"
                f"    proxy_temp_path {prefix}/proxy;\n"
                f"    fastcgi_temp_path {prefix}/fastcgi;\n"
                f"    uwsgi_temp_path {prefix}/uwsgi;\n"
                f"    scgi_temp_path {prefix}/scgi;\n"
                + "\n".join(servers) + "\n}\n")
        cls.nginx_error_log = os.path.join(prefix, "logs", "error.log")
        cls._spawn([NGINX, "-p", prefix + "/", "-c", conf, "-g", "daemon off;"], "nginx",
                   cls.nginx["raw"])
        for addr in cls.nginx.values():
            wait_listening(addr, cls.procs[-1], os.path.join(cls.tmp, "nginx.log"), "nginx")

    # -- helpers --

    def ktlb_for(self, backend_addr):
        # Refused responses count as server failures; the refusal tests send
        # several in a row and must not get the server ejected (503).
        config = self.basic_config({"b": [backend_addr]}, listener={"alpn": '["h2", "http/1.1"]'})
        return self.ktlb(config + "eject = { consecutive_failures = 0 }\n")

    def via_nginx(self, name, path):
        """(status, headers, body) from nginx for `path`."""
        r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-D", "-", "-o", "-",
                            f"http://{self.nginx[name]}{path}"], capture_output=True, timeout=20)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
        return status, lines, body

    def via_ktlb(self, k, path, http2=False):
        status, headers, body = self.get(k, path, extra=["--http2"] if http2 else ["--http1.1"])
        return status, headers, body

    def raw_head(self, k, path):
        """The response head bytes exactly as ktlb sends them to an HTTP/1.1 client."""
        with self.tls(k) as c:
            c.request("GET", path)
            while b"\r\n\r\n" not in c.buf and c._fill():
                pass
            return c.buf.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"

    def assert_clean_head(self, head, path):
        """CRLF line ends only, an HTTP/1.1 status line with a reason phrase,
        at most one Content-Length."""
        self.assertNotIn(b"\n", head.replace(b"\r\n", b""), path)
        self.assertNotIn(b"\r", head.replace(b"\r\n", b""), path)
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        self.assertEqual(parts[0], b"HTTP/1.1", status_line)
        self.assertEqual(len(parts), 3, status_line)
        self.assertTrue(parts[2].strip(), f"no reason phrase in {status_line!r}")
        cls = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        self.assertLessEqual(len(cls), 1, head)
        for l in cls:
            self.assertTrue(l.split(b":", 1)[1].strip().isdigit(), head)

    # -- tests --

    def test_busybox_cgi_with_bare_lf_head(self):
        k = self.ktlb_for(self.busybox_addr)
        ng_status, ng_lines, ng_body = self.via_nginx("busybox", "/cgi-bin/x.cgi")
        self.assertEqual((ng_status, ng_body), (200, CGI_BODY.encode()), ng_lines)
        for http2 in (False, True):
            status, headers, body = self.via_ktlb(k, "/cgi-bin/x.cgi", http2=http2)
            self.assertEqual((status, body), (ng_status, ng_body), f"http2={http2}")
            self.assertEqual(headers.get("x-cgi"), "busybox")
            self.assertEqual(headers.get("content-type"), "text/plain")
        self.assert_clean_head(self.raw_head(k, "/cgi-bin/x.cgi"), "/cgi-bin/x.cgi")

    def test_python_http_server_http10_close_delimited(self):
        k = self.ktlb_for(self.pyhttp_addr)
        want = hashlib.sha256(self.big).hexdigest()
        ng_status, _, ng_body = self.via_nginx("pyhttp", "/big.bin")
        self.assertEqual(ng_status, 200)
        self.assertEqual(hashlib.sha256(ng_body).hexdigest(), want)
        for http2 in (False, True):
            status, _, body = self.via_ktlb(k, "/big.bin", http2=http2)
            self.assertEqual(status, 200, f"http2={http2}")
            self.assertEqual(len(body), len(self.big), f"http2={http2}")
            self.assertEqual(hashlib.sha256(body).hexdigest(), want, f"http2={http2}")
        # A missing file: python's 404 has a body too, close-delimited or not.
        ng = self.via_nginx("pyhttp", "/nope")
        got = self.via_ktlb(k, "/nope")
        self.assertEqual((got[0], got[2]), (ng[0], ng[2]))
        self.assert_clean_head(self.raw_head(k, "/big.bin"), "/big.bin")

    def test_tolerated_shapes_match_nginx(self):
        k = self.ktlb_for(self.raw_addr)
        for path in ACCEPTED:
            with self.subTest(path=path):
                ng_status, ng_lines, ng_body = self.via_nginx("raw", path)
                for http2 in (False, True):
                    status, _, body = self.via_ktlb(k, path, http2=http2)
                    self.assertEqual((status, body), (ng_status, ng_body), f"http2={http2} nginx: {ng_lines}")
                self.assertIn(status, (200, 201))
                self.assert_clean_head(self.raw_head(k, path), path)
        # The standard reason phrase, as nginx sends it.
        self.assertTrue(self.raw_head(k, "/no-reason").startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(self.raw_head(k, "/no-reason-201").startswith(b"HTTP/1.1 201 Created\r\n"))

    def test_desyncing_heads_are_refused(self):
        k = self.ktlb_for(self.raw_addr)
        for path in REFUSED_HEAD:
            with self.subTest(path=path):
                # nginx 1.22 forwards these (it picks one of the framings);
                # ktlb refuses them: the client must never have to guess.
                ng_status, _, ng_body = self.via_nginx("raw", path)
                for http2 in (False, True):
                    status, _, _ = self.via_ktlb(k, path, http2=http2)
                    self.assertEqual(status, 502, f"http2={http2}")
                print(f"\n[tolerance] {path}: ktlb 502, nginx {ng_status} {ng_body!r}", file=sys.stderr)
                # The client connection stays usable: the next request on it
                # gets the right answer, or the connection was closed cleanly.
                with self.tls(k) as c:
                    c.request("GET", path)
                    status, _, _ = c.read_response()
                    self.assertEqual(status, 502)
                    try:
                        c.request("GET", "/dup-cl")
                        status, _, body = c.read_response()
                        self.assertEqual((status, body), (200, b"hello"))
                    except (AssertionError, OSError):
                        self.assertTrue(c.eof or c.wait_closed(5) is not None)

    def test_bad_chunk_framing_is_refused(self):
        k = self.ktlb_for(self.raw_addr)
        ng = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-o", "/dev/null",
                             "-w", "%{http_code}", f"http://{self.nginx['raw']}/bad-chunk"],
                            capture_output=True, timeout=20)
        print(f"\n[tolerance] /bad-chunk: nginx status {ng.stdout.decode()!r} curl rc {ng.returncode}",
              file=sys.stderr)
        self.assertNotEqual(ng.returncode, 0)  # nginx cuts the body short too
        # Like nginx, ktlb closes the client connection. The head may already
        # be on its way (ktlb streams), so the client sees nothing, a 502 or
        # a body cut short; never the bytes after the bad framing as a response.
        with self.tls(k) as c:
            c.request("GET", "/bad-chunk")
            while c._fill():
                pass
            self.assertTrue(c.eof)
            if c.buf:
                self.assertTrue(c.buf.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 200 ")), c.buf)
                self.assertEqual(c.buf.count(b"HTTP/"), 1, c.buf)
        url, resolve = self.url(k, "/bad-chunk")
        for proto in ("--http1.1", "--http2"):
            r = self.curl(*resolve, proto, "-o", "/dev/null", "-w", "%{http_code}", url, check=False)
            self.assertTrue(r.returncode != 0 or r.stdout == b"502", (proto, r.returncode, r.stdout))
        # ktlb is still fine.
        status, _, body = self.via_ktlb(k, "/dup-cl")
        self.assertEqual((status, body), (200, b"hello"))


if __name__ == "__main__":
    harness.main()
