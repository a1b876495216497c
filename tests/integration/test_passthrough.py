"""Passthrough listeners: ktlb reads the ClientHello, routes on its SNI to a TLS
backend and relays the bytes without decrypting them. The backends here are ktlb
processes in terminate mode, each in front of its own origin, so a response names
the backend that decrypted it; curl verifies the backend's certificate end to end."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import harness


class PassthroughTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.oa = cls.class_origin("origin-a")
        cls.ob = cls.class_origin("origin-b")

    def backends(self):
        """Two terminating ktlbs: A (cert "site": localhost, *.example.test), B (cert "other")."""
        a = self.ktlb(self.basic_config({"app": [self.oa.addr]}, certificates=("site",)))
        b = self.ktlb(self.basic_config({"app": [self.ob.addr]}, certificates=("other",)))
        return a, b

    def passthrough(self, a, b, server=None, extra_routes="", first_route="", listener_lines=""):
        port = harness.free_port()
        admin = harness.free_port()
        server_lines = harness.server_table(**(server or {}))
        cfg = f"""
[server]
workers = 2
admin_listen = "127.0.0.1:{admin}"
{server_lines}
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
mode = "passthrough"
{listener_lines}
{first_route}
[[routes]]
listener = "edge"
sni = "*.other.test"
upstream = "b"

[[routes]]
listener = "edge"
sni = "localhost"
upstream = "a"
{extra_routes}
[[upstreams]]
name = "a"
servers = ["{a.addr()}"]

[[upstreams]]
name = "b"
servers = ["{b.addr()}"]
"""
        return self.ktlb(cfg)

    def haproxy_backend(self):
        """haproxy terminating TLS behind a PROXY v2 header (accept-proxy), answering
        with the client address the header gave it."""
        port = harness.free_port()
        pem = os.path.join(self.tmp, "site.pem")
        with open(pem, "w") as f:
            f.write(open(os.path.join(self.certs, "site.crt")).read())
            f.write(open(os.path.join(self.certs, "site.key")).read())
        cfg = os.path.join(self.tmp, f"haproxy-{port}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""
global
  maxconn 100
defaults
  mode http
  timeout connect 30s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port} accept-proxy ssl crt {pem}
  http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port]"
""")
        proc = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.kill(), proc.wait()))
        deadline = time.monotonic() + harness.START_TIMEOUT
        while not harness.port_accepts(f"127.0.0.1:{port}"):
            self.assertLess(time.monotonic(), deadline, "haproxy did not start")
            time.sleep(0.05)
        return port

    def curl(self, p, name, path, *extra):
        port = p.port("edge")
        return subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--cacert", self.ca, "--max-time", "30",
             "--resolve", f"{name}:{port}:127.0.0.1", "-D", "-", *extra,
             f"https://{name}:{port}{path}"],
            capture_output=True, timeout=60)

    def test_routes_on_sni_and_relays_both_ways(self):
        a, b = self.backends()
        p = self.passthrough(a, b)
        r = self.curl(p, "localhost", "/")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"x-origin: origin-a", r.stdout.lower())
        r = self.curl(p, "api.other.test", "/")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"x-origin: origin-b", r.stdout.lower())

        # 4 MiB each way through the relay, checked end to end.
        n = 4 << 20
        r = self.curl(p, "localhost", f"/size/{n}", "-o", os.path.join(self.tmp, "down.bin"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(harness.file_sha256(os.path.join(self.tmp, "down.bin")),
                         harness.pattern_sha256(n))
        up = os.path.join(self.tmp, "up.bin")
        with open(up, "wb") as f:
            f.write(os.urandom(n))
        with open(up, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        r = self.curl(p, "x.other.test", "/sha256", "-H", "Expect:", "--data-binary", f"@{up}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"{want} {n}".encode(), r.stdout)

        m = p.metrics()
        self.assertGreaterEqual(harness.metric_value(m, "ktlb_passthrough_bytes_down_total", listener="edge"), n)
        self.assertGreaterEqual(harness.metric_value(m, "ktlb_passthrough_bytes_up_total", listener="edge"), n)
        self.assertEqual(harness.metric_value(m, "ktlb_upstream_requests_total", upstream="a"), 2)
        self.assertEqual(harness.metric_value(m, "ktlb_upstream_requests_total", upstream="b"), 2)
        # Nothing was decrypted on the passthrough side.
        self.assertEqual(harness.metric_value(m, "ktlb_tls_handshakes_total", listener="edge", kind="full"), 0)

    def test_keep_alive_and_resumption_pass_through(self):
        a, b = self.backends()
        p = self.passthrough(a, b)
        port = p.port("edge")
        # Two requests on one connection, then a resumed session: the TLS state is the
        # backend's, ktlb only relays.
        r = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--cacert", self.ca, "--max-time", "30",
             "--resolve", f"localhost:{port}:127.0.0.1", "-w", "%{num_connects}\n",
             "-o", "/dev/null", f"https://localhost:{port}/", "-o", "/dev/null",
             f"https://localhost:{port}/size/10"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), [b"1", b"0"])
        self.assertEqual(a.metric("ktlb_http_requests_total", listener="public", **{"class": "2xx"}), 2)

    def test_unknown_sni_and_no_sni_are_closed(self):
        a, b = self.backends()
        p = self.passthrough(a, b)
        a0 = a.metric("ktlb_connections_accepted_total", listener="public")
        r = self.curl(p, "example.test", "/")  # a name no route matches
        self.assertNotEqual(r.returncode, 0)
        # No SNI at all (an IP address): no route either.
        port = p.port("edge")
        r = subprocess.run(["curl", "-sS", "-k", "--max-time", "10", f"https://127.0.0.1:{port}/"],
                           capture_output=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertGreaterEqual(p.wait_metric("ktlb_passthrough_no_route_total", 2, listener="edge"), 2)
        self.assertEqual(a.metric("ktlb_connections_accepted_total", listener="public"), a0)

    def test_routes_on_offered_alpn(self):
        a, b = self.backends()
        extra = '\n[[routes]]\nlistener = "edge"\nupstream = "a"\n'
        # Before the SNI routes: clients offering h2 go to b whatever their SNI.
        p = self.passthrough(a, b, extra_routes=extra, first_route=(
            '[[routes]]\nlistener = "edge"\nalpn = "h2"\nupstream = "b"\n'))
        # localhost's SNI route leads to a, but offering h2 wins first (b's certificate
        # does not name localhost: -k, the routing is what is tested).
        r = self.curl(p, "localhost", "/", "--http2", "-k")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"x-origin: origin-b", r.stdout.lower())
        r = self.curl(p, "localhost", "/", "--http1.1")  # offers only http/1.1
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"x-origin: origin-a", r.stdout.lower())

    def test_catch_all_route(self):
        a, b = self.backends()
        extra = '\n[[routes]]\nlistener = "edge"\nupstream = "a"\n'
        p = self.passthrough(a, b, extra_routes=extra)
        port = p.port("edge")
        r = subprocess.run(["curl", "-sS", "--cacert", self.ca, "--max-time", "10", "-D", "-",
                            f"https://127.0.0.1:{port}/"], capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)  # the site cert names IP:127.0.0.1
        self.assertIn(b"x-origin: origin-a", r.stdout.lower())

    def test_unknown_sni_reject_beats_a_catch_all_route(self):
        a, b = self.backends()
        catch_all = '\n[[routes]]\nlistener = "edge"\nupstream = "a"\n'
        p = self.passthrough(a, b, extra_routes=catch_all, listener_lines='unknown_sni = "reject"')
        accepted = a.metric("ktlb_connections_accepted_total", listener="public")
        r = self.curl(p, "example.test", "/")  # only the catch-all would take it
        self.assertNotEqual(r.returncode, 0, r.stdout)
        port = p.port("edge")
        r = subprocess.run(["curl", "-sS", "-k", "--max-time", "10", f"https://127.0.0.1:{port}/"],
                           capture_output=True, timeout=30)  # no SNI at all
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertGreaterEqual(p.wait_metric("ktlb_tls_handshake_failures_total", 2, listener="edge",
                                              reason="unknown_sni"), 2)
        self.assertEqual(p.metric("ktlb_passthrough_no_route_total", listener="edge"), 0)
        self.assertEqual(a.metric("ktlb_connections_accepted_total", listener="public"), accepted)
        # Names an sni route matches still pass.
        for name, origin in (("localhost", b"origin-a"), ("x.other.test", b"origin-b")):
            r = self.curl(p, name, "/")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(b"x-origin: " + origin, r.stdout.lower())

    def test_unknown_sni_default_lets_the_catch_all_take_it(self):
        a, b = self.backends()
        catch_all = '\n[[routes]]\nlistener = "edge"\nupstream = "a"\n'
        p = self.passthrough(a, b, extra_routes=catch_all, listener_lines='unknown_sni = "default"')
        r = self.curl(p, "example.test", "/")  # no sni route: the catch-all takes it
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"x-origin: origin-a", r.stdout.lower())
        self.assertEqual(p.metric("ktlb_tls_handshake_failures_total", listener="edge", reason="unknown_sni"), 0)

    def test_not_tls_is_closed_and_counted(self):
        a, b = self.backends()
        p = self.passthrough(a, b)
        accepted = [k.metric("ktlb_connections_accepted_total", listener="public") for k in (a, b)]
        with socket.create_connection(("127.0.0.1", p.port("edge")), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            self.assertIsNotNone(harness.wait_closed(s, 5))
        self.assertGreaterEqual(p.wait_metric("ktlb_passthrough_hello_failures_total", 1, listener="edge", reason="not_tls"), 1)
        # An alert record, and a ClientHello too short for its own fixed fields.
        for junk in (b"\x15\x03\x01\x00\x02\x02\x28", b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03"):
            with socket.create_connection(("127.0.0.1", p.port("edge")), timeout=5) as s:
                s.sendall(junk)
                self.assertIsNotNone(harness.wait_closed(s, 5), junk)
        self.assertGreaterEqual(p.wait_metric("ktlb_passthrough_hello_failures_total", 1, listener="edge", reason="malformed"), 1)
        self.assertEqual([k.metric("ktlb_connections_accepted_total", listener="public") for k in (a, b)],
                         accepted)

    def test_hello_timeout(self):
        a, b = self.backends()
        p = self.passthrough(a, b, server={"handshake_timeout_ms": "300"})
        with socket.create_connection(("127.0.0.1", p.port("edge")), timeout=5) as s:
            s.sendall(b"\x16\x03\x01")  # the start of a record, then silence
            t0 = time.monotonic()
            self.assertIsNotNone(harness.wait_closed(s, 15))
            self.assertLess(time.monotonic() - t0, 10)
        self.assertGreaterEqual(p.wait_metric("ktlb_timeouts_total", 1, kind="handshake"), 1)

    def test_backend_down(self):
        a, b = self.backends()
        p = self.passthrough(a, b)
        a.stop()
        r = self.curl(p, "localhost", "/")
        self.assertNotEqual(r.returncode, 0)
        self.assertGreaterEqual(p.wait_metric("ktlb_upstream_connect_failures_total", 1, upstream="a"), 1)
        # The other route still works.
        r = self.curl(p, "www.other.test", "/")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_idle_timeout_closes_relay(self):
        a, b = self.backends()
        p = self.passthrough(a, b, server={"tunnel_idle_timeout_ms": "500"})
        port = p.port("edge")
        # openssl s_client stays connected, idle, after the handshake.
        proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
             "-CAfile", self.ca, "-verify_return_error"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # stdin stays open: s_client would end the connection at its EOF.
            t0 = time.monotonic()
            proc.wait(timeout=30)
            out = proc.stdout.read()
        except subprocess.TimeoutExpired:
            self.fail("the idle relay was not closed")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdin.close()
        self.assertIn(b"Verify return code: 0", out)
        self.assertLess(time.monotonic() - t0, 20)
        self.assertGreaterEqual(p.wait_metric("ktlb_timeouts_total", 1, kind="tunnel_idle"), 1)

    def test_sigterm_waits_for_relays_then_exits(self):
        a, b = self.backends()
        # The download runs ~1 s (2 MiB at 2 MB/s); the drain lets it finish.
        p = self.passthrough(a, b, server={"drain_timeout_ms": "30000"})
        port = p.port("edge")
        # A slow download in flight survives the drain start and completes.
        out = os.path.join(self.tmp, "drain.bin")
        n = 2 << 20
        client = subprocess.Popen(
            ["curl", "-sS", "--noproxy", "*", "--cacert", self.ca, "--max-time", "30",
             "--limit-rate", "2M", "--resolve", f"localhost:{port}:127.0.0.1", "-o", out,
             f"https://localhost:{port}/size/{n}"], stderr=subprocess.PIPE)
        self.assertGreaterEqual(p.wait_metric("ktlb_passthrough_bytes_down_total", 100000, listener="edge"), 100000)
        p.signal(15)
        self.assertEqual(client.wait(timeout=60), 0, client.stderr.read())
        self.assertEqual(harness.file_sha256(out), harness.pattern_sha256(n))
        self.assertEqual(p.proc.wait(timeout=40), 0)
        p.stopped = True

    def test_proxy_protocol_v2_tells_the_backend_the_client(self):
        if shutil.which("haproxy") is None:
            self.skipTest("haproxy not installed")
        hp = self.haproxy_backend()
        port = harness.free_port()
        admin = harness.free_port()
        p = self.ktlb(f"""
[server]
admin_listen = "127.0.0.1:{admin}"
{harness.server_table()}
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
mode = "passthrough"
[[routes]]
listener = "edge"
upstream = "hp"
[[upstreams]]
name = "hp"
servers = ["127.0.0.1:{hp}"]
proxy_protocol = "v2"
""")
        r = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--cacert", self.ca, "--max-time", "10",
             "--resolve", f"localhost:{port}:127.0.0.1", "-w", "\nlocal_port=%{local_port}",
             f"https://localhost:{port}/"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        body, local = r.stdout.rsplit("\n", 1)
        local_port = local.split("=")[1]
        # haproxy saw the curl client's address, not ktlb's, and the address curl dialled.
        self.assertEqual(body.strip(), f"src=127.0.0.1:{local_port} dst=127.0.0.1:{port}")

    def test_access_log_has_one_line_per_tunnel(self):
        a, b = self.backends()
        log = os.path.join(self.tmp, "tunnels.log")
        p = self.passthrough(a, b, server={"access_log": f'"{log}"'})
        # A client that reads everything up to the backend's close before it closes:
        # both directions end with a FIN, so the line has no "error". (curl closes
        # right after the body; when the backend's close_notify is in its socket by
        # then, unread, its close is a reset, and the line says "reset", rightly.)
        with harness.HttpConn(p.addr("edge"), cafile=self.ca) as c:
            c.request("GET", "/size/5000", headers=[("Connection", "close")])
            status, _, body = c.read_response()
            self.assertEqual((status, body), (200, harness.pattern(5000)))
            self.assertIsNotNone(c.wait_closed(30), "the backend did not close after Connection: close")
        self.curl(p, "nothing.example.test", "/")  # no route
        p.stop()
        with open(log) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        self.assertEqual(len(lines), 2, lines)
        ok = next(l for l in lines if l["sni"] == "localhost")
        self.assertTrue(ok["passthrough"])
        self.assertEqual(ok["upstream"], "a")
        self.assertEqual(ok["server"], a.addr())
        self.assertGreater(ok["bytes_down"], 5000)  # TLS records carrying the response
        self.assertGreater(ok["bytes_up"], 400)     # ClientHello, second flight, request
        self.assertNotIn("error", ok)
        refused = next(l for l in lines if l["sni"] == "nothing.example.test")
        self.assertEqual(refused["error"], "no_route")
        self.assertNotIn("upstream", refused)


if __name__ == "__main__":
    harness.main()
