"""PROXY protocol in: listeners with accept_proxy = true behind an L4 balancer.

Real haproxy in TCP mode sits in front of ktlb with send-proxy-v2 and send-proxy
(v1). The client (curl) binds 127.0.0.2, haproxy connects to ktlb from
127.0.0.1: only the header can tell ktlb the client was 127.0.0.2, so every
check below fails if ktlb used the socket's peer. Terminate listeners must put
that address in X-Forwarded-For, Forwarded and the access log; passthrough
listeners in their upstream's own PROXY v2 header (read here by haproxy with
accept-proxy). Connections without a header, or with a broken or late one, are
closed and counted in ktlb_proxy_header_failures_total{listener,reason}."""

import json
import os
import socket
import ssl
import struct
import subprocess
import time

import harness

HAPROXY = "/usr/sbin/haproxy"
CLIENT_IP = "127.0.0.2"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxyProtocolTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("origin")

    def setUp(self):
        super().setUp()
        if not os.access(HAPROXY, os.X_OK):
            self.skipTest("haproxy not installed (tools/setup.sh installs it)")

    # -- processes --

    def haproxy(self, body):
        """haproxy -db with `body` after a global/defaults preamble; killed by PID
        at cleanup. Returns its frontend port (bind it on {port})."""
        port = harness.free_port()
        cfg = os.path.join(self.tmp, f"haproxy-{port}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""
global
  maxconn 100
defaults
  timeout connect 30s
  timeout client 60s
  timeout server 60s
{body.format(port=port)}
""")
        log = open(os.path.join(self.tmp, f"haproxy-{port}.log"), "ab")
        proc = subprocess.Popen([HAPROXY, "-f", cfg, "-db"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def stop():
            if proc.poll() is None:
                os.kill(proc.pid, 9)
            proc.wait(timeout=10)
        self.addCleanup(stop)
        deadline = time.monotonic() + harness.START_TIMEOUT
        while not harness.port_accepts(f"127.0.0.1:{port}"):
            self.assertIsNone(proc.poll(), f"haproxy exited with {proc.returncode}")
            self.assertLess(time.monotonic(), deadline, "haproxy did not start")
            time.sleep(0.05)
        return port

    def balancer(self, ktlb_addr, send_proxy):
        """haproxy in TCP mode in front of ktlb: `send_proxy` is "send-proxy-v2"
        or "send-proxy" (v1)."""
        return self.haproxy(f"""
frontend fe
  mode tcp
  bind 127.0.0.1:{{port}}
  default_backend be
backend be
  mode tcp
  server ktlb {ktlb_addr} {send_proxy}
""")

    def terminate_ktlb(self, **server):
        log = os.path.join(self.tmp, f"access-{harness.free_port()}.log")
        server.setdefault("access_log", f'"{log}"')
        k = self.ktlb(self.basic_config({"app": [self.o.addr]}, certificates=("site",),
                                        listener={"accept_proxy": "true",
                                                  "alpn": '["h2", "http/1.1"]'},
                                        server=server))
        return k, log

    def curl_via(self, port, path="/headers", *extra):
        """curl from CLIENT_IP to https://localhost:PORT; (stdout text, curl's local port)."""
        r = self.curl("--interface", CLIENT_IP, "--resolve", f"localhost:{port}:127.0.0.1",
                      "-w", "\n@local_port=%{local_port}", *extra, f"https://localhost:{port}{path}")
        body, _, local = r.stdout.decode().rpartition("\n@local_port=")
        return body, int(local)

    @staticmethod
    def echoed_headers(body):
        """{name lowercased: [values]} of the origin's /headers answer."""
        out = {}
        for line in body.split("\n")[1:]:
            if line:
                name, _, value = line.partition(":")
                out.setdefault(name.strip().lower(), []).append(value.strip())
        return out

    @staticmethod
    def read_log(path):
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]

    # -- terminate --

    def check_terminate_behind(self, send_proxy):
        k, log = self.terminate_ktlb()
        front = self.balancer(k.addr(), send_proxy)
        body, client_port = self.curl_via(front)
        h = self.echoed_headers(body)
        self.assertEqual(h.get("x-forwarded-for"), [CLIENT_IP], body)
        self.assertEqual(len(h.get("forwarded", [])), 1, body)
        self.assertTrue(h["forwarded"][0].startswith(f"for={CLIENT_IP};proto=https;"), body)
        # HTTP/2 takes the client's address at the handshake's end: the header's.
        body2, _ = self.curl_via(front, "/headers", "--http2")
        self.assertEqual(self.echoed_headers(body2).get("x-forwarded-for"), [CLIENT_IP], body2)
        self.assertEqual(k.metric("ktlb_proxy_header_failures_total"), 0)
        k.stop()
        lines = self.read_log(log)
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0]["client"], f"{CLIENT_IP}:{client_port}")
        self.assertTrue(lines[1]["client"].startswith(CLIENT_IP + ":"), lines)

    def test_terminate_behind_haproxy_send_proxy_v2(self):
        self.check_terminate_behind("send-proxy-v2")

    def test_terminate_behind_haproxy_send_proxy_v1(self):
        self.check_terminate_behind("send-proxy")

    def proxied_get(self, k, *pieces, path="/headers"):
        """A GET over TLS on a connection that starts with `pieces` (a PROXY
        header, in as many segments); (response head text, body text)."""
        raw = socket.create_connection(("127.0.0.1", k.port()), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, p in enumerate(pieces):
            if i:
                time.sleep(0.05)  # separate segments, separate receives
            raw.sendall(p)
        ctx = ssl.create_default_context(cafile=self.ca)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while True:
                try:
                    data = s.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not data:
                    break
                response += data
        head, _, body = response.decode().partition("\r\n\r\n")
        self.assertTrue(head.startswith("HTTP/1.1 200 "), head)
        return head, body

    def test_header_split_across_segments_and_unknown_keeps_socket_address(self):
        k, _ = self.terminate_ktlb()

        def request(*pieces):
            return self.echoed_headers(self.proxied_get(k, *pieces)[1])

        v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n"
        self.assertEqual(request(v1[:9], v1[9:30], v1[30:])["x-forwarded-for"], ["203.0.113.7"])
        v6 = b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n"
        h = request(v6)
        self.assertEqual(h["x-forwarded-for"], ["2001:db8::7"])
        self.assertEqual(h["forwarded"][0].split(";")[0], 'for="[2001:db8::7]"')
        v2 = (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) +
              socket.inet_aton("198.51.100.9") + socket.inet_aton("127.0.0.1") +
              struct.pack("!HH", 5555, 443))
        self.assertEqual(request(v2[:5], v2[5:17], v2[17:])["x-forwarded-for"], ["198.51.100.9"])
        # UNKNOWN (v1) and LOCAL (v2): the socket's own address stands.
        self.assertEqual(request(b"PROXY UNKNOWN\r\n")["x-forwarded-for"], ["127.0.0.1"])
        local = V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
        self.assertEqual(request(local)["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(k.metric("ktlb_proxy_header_failures_total"), 0)

    def test_maglev_client_ip_hashes_the_header_address(self):
        """Every connection comes from 127.0.0.1; only the header's address can
        keep each client on one server and spread the clients over the three."""
        origins = [self.origin(n) for n in ("a", "b", "c")]
        text = self.basic_config({"app": [o.addr for o in origins]}, certificates=("site",),
                                 listener={"accept_proxy": "true"})
        text = text.replace('servers = [', 'balance = "maglev"\nhash_key = "client_ip"\nservers = [')
        k = self.ktlb(text)
        placed = {}
        for n in range(1, 13):
            for port in (1000, 2000):  # a client's connections differ in their port
                head, _ = self.proxied_get(
                    k, f"PROXY TCP4 203.0.113.{n} 127.0.0.1 {port + n} 443\r\n".encode(), path="/")
                origin = [l.split(":", 1)[1].strip() for l in head.split("\r\n")
                          if l.lower().startswith("x-origin:")]
                placed.setdefault(n, set()).update(origin)
        self.assertTrue(all(len(s) == 1 for s in placed.values()), placed)
        self.assertGreater(len(set().union(*placed.values())), 1, placed)

    def assert_closed(self, addr, payload, tls=False):
        """Connects, sends `payload` (or starts TLS), and expects ktlb to close."""
        raw = socket.create_connection(harness.split_addr(addr), timeout=30)
        try:
            if tls:
                ctx = ssl.create_default_context(cafile=self.ca)
                with self.assertRaises((ssl.SSLError, OSError)):
                    ctx.wrap_socket(raw, server_hostname="localhost")
                return
            if payload:
                raw.sendall(payload)
            self.assertIsNotNone(harness.wait_closed(raw, 30), f"not closed after {payload!r}")
        finally:
            raw.close()

    def test_terminate_refuses_missing_and_broken_headers(self):
        k, _ = self.terminate_ktlb()
        # A TLS client that reaches the port directly.
        self.assert_closed(k.addr(), None, tls=True)
        self.assertEqual(k.wait_metric("ktlb_proxy_header_failures_total", 1, listener="public",
                                       reason="missing"), 1)
        self.assert_closed(k.addr(), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(k.wait_metric("ktlb_proxy_header_failures_total", 2, listener="public",
                                       reason="missing"), 2)
        self.assert_closed(k.addr(), b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n\x16\x03\x01")
        self.assertEqual(k.wait_metric("ktlb_proxy_header_failures_total", 1, listener="public",
                                       reason="invalid_v1"), 1)
        self.assert_closed(k.addr(), V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]))  # version 3
        self.assertEqual(k.wait_metric("ktlb_proxy_header_failures_total", 1, listener="public",
                                       reason="invalid_v2"), 1)
        # Part of a header, then FIN.
        raw = socket.create_connection(harness.split_addr(k.addr()), timeout=30)
        raw.sendall(b"PROXY TCP4 1.2.3.4 ")
        raw.shutdown(socket.SHUT_WR)
        self.assertIsNotNone(harness.wait_closed(raw, 30))
        raw.close()
        self.assertGreaterEqual(k.wait_metric("ktlb_proxy_header_failures_total", 1,
                                              listener="public", reason="truncated"), 1)
        # A port probe (connect, close) is not a failure.
        before = k.metric("ktlb_proxy_header_failures_total")
        socket.create_connection(harness.split_addr(k.addr()), timeout=5).close()
        time.sleep(0.2)
        self.assertEqual(k.metric("ktlb_proxy_header_failures_total"), before)
        # TLS never began: none of this is a handshake failure.
        self.assertEqual(k.metric("ktlb_tls_handshake_failures_total", listener="public"), 0)

    def test_header_late_is_closed_at_the_handshake_timeout(self):
        k, _ = self.terminate_ktlb(handshake_timeout_ms="500")
        raw = socket.create_connection(harness.split_addr(k.addr()), timeout=30)
        raw.sendall(b"PROXY TCP4 1.2.3.4")
        took = harness.wait_closed(raw, 30)
        raw.close()
        self.assertIsNotNone(took)
        self.assertEqual(k.wait_metric("ktlb_proxy_header_failures_total", 1, listener="public",
                                       reason="timeout"), 1)
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="handshake"), 1)

    # -- passthrough --

    def tls_backend_reporting_proxy_source(self):
        """haproxy terminating TLS behind accept-proxy, answering with the client
        address the PROXY header gave it."""
        pem = os.path.join(self.tmp, "site.pem")
        with open(pem, "w") as f:
            for part in ("site.crt", "site.key"):
                with open(os.path.join(self.certs, part)) as src:
                    f.write(src.read())
        return self.haproxy(f"""
frontend fe
  mode http
  bind 127.0.0.1:{{port}} accept-proxy ssl crt {pem}
  http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port]"
""")

    def passthrough_ktlb(self, backend_port, **server):
        port = harness.free_port()
        admin = harness.free_port()
        return self.ktlb(f"""
[server]
workers = 2
admin_listen = "127.0.0.1:{admin}"
{harness.server_table(**server)}
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
mode = "passthrough"
accept_proxy = true

[[routes]]
listener = "edge"
upstream = "hp"

[[upstreams]]
name = "hp"
servers = ["127.0.0.1:{backend_port}"]
proxy_protocol = "v2"
""")

    def test_passthrough_behind_haproxy_passes_the_client_on(self):
        backend = self.tls_backend_reporting_proxy_source()
        log = os.path.join(self.tmp, "tunnels.log")
        p = self.passthrough_ktlb(backend, access_log=f'"{log}"')
        clients = []
        for send_proxy in ("send-proxy-v2", "send-proxy"):
            with self.subTest(send_proxy):
                front = self.balancer(p.addr("edge"), send_proxy)
                body, client_port = self.curl_via(front, "/")
                # The backend's PROXY header names curl (not haproxy, not ktlb) and
                # the address curl dialled (haproxy's frontend).
                self.assertEqual(body.strip(),
                                 f"src={CLIENT_IP}:{client_port} dst=127.0.0.1:{front}")
                clients.append(f"{CLIENT_IP}:{client_port}")
        self.assertEqual(p.metric("ktlb_proxy_header_failures_total"), 0)
        p.stop()
        self.assertEqual(sorted(l["client"] for l in self.read_log(log)), sorted(clients))

    def test_passthrough_refuses_missing_and_broken_headers(self):
        backend = self.tls_backend_reporting_proxy_source()
        p = self.passthrough_ktlb(backend, handshake_timeout_ms="500")
        edge = p.addr("edge")
        self.assert_closed(edge, None, tls=True)
        self.assertEqual(p.wait_metric("ktlb_proxy_header_failures_total", 1, listener="edge",
                                       reason="missing"), 1)
        self.assert_closed(edge, b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n")
        self.assertEqual(p.wait_metric("ktlb_proxy_header_failures_total", 1, listener="edge",
                                       reason="invalid_v1"), 1)
        self.assert_closed(edge, V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + b"\0" * 12)
        self.assertEqual(p.wait_metric("ktlb_proxy_header_failures_total", 1, listener="edge",
                                       reason="invalid_v2"), 1)
        self.assert_closed(edge, V2_SIGNATURE)  # and nothing more: the deadline
        self.assertEqual(p.wait_metric("ktlb_proxy_header_failures_total", 1, listener="edge",
                                       reason="timeout"), 1)
        self.assertEqual(p.metric("ktlb_passthrough_hello_failures_total", listener="edge"), 0)


if __name__ == "__main__":
    harness.main()
