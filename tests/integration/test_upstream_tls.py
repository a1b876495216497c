"""Upstream TLS: ktlb speaks TLS to backends (the TLS transport's client role).

The backend is nginx with ssl, under a private CA made here (not the test PKI
that ktlb's listener uses), so only `tls.ca` can make it trusted. Covers: h1
and h2 clients, keep-alive reuse of the TLS connection, refusal (502, counted
as upstream_tls_verify) with the wrong CA or the wrong name, the client
certificate, session resumption on a new connection, a 1 MiB body both ways
by sha256, active health probes over TLS, and --check on a bad CA file."""

import hashlib
import os
import subprocess
import sys
import time
import unittest

import harness

NGINX = "/usr/sbin/nginx"
BIG = 1024 * 1024 + 7


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_backend_pki(d):
    """A private CA and, signed by it: app.crt (DNS:app.internal only),
    ip.crt (IP:127.0.0.1), client.crt (clientAuth, CN=ktlb-upstream)."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name = dn\n[dn]\n"
                "[ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n"
                "[app]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
                "subjectAltName = DNS:app.internal\n"
                "[ip]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n"
                "subjectAltName = IP:127.0.0.1\n"
                "[client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n")
    ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    openssl("genpkey", *ec, "-out", "backend-ca.key", cwd=d)
    openssl("req", "-new", "-x509", "-key", "backend-ca.key", "-subj", "/CN=backend test CA",
            "-days", "30", "-config", "ext.cnf", "-extensions", "ca", "-out", "backend-ca.crt", cwd=d)
    for name, cn in (("app", "app.internal"), ("ip", "127.0.0.1"), ("client", "ktlb-upstream")):
        openssl("genpkey", *ec, "-out", f"{name}.key", cwd=d)
        openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-config", "ext.cnf",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "backend-ca.crt", "-CAkey", "backend-ca.key",
                "-CAcreateserial", "-days", "30", "-extfile", "ext.cnf", "-extensions", name,
                "-out", f"{name}.crt", cwd=d)


def wait_listening(addr, proc, log_path, what):
    deadline = time.monotonic() + harness.START_TIMEOUT
    while not harness.port_accepts(addr):
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{f.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {addr}")
        time.sleep(0.02)


class UpstreamTlsTest(harness.KtlbTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pki = os.path.join(cls.tmp, "backend-pki")
        make_backend_pki(cls.pki)
        p = lambda f: os.path.join(cls.pki, f)  # noqa: E731
        cls.origin_ = cls.class_origin("o")
        www = os.path.join(cls.tmp, "www")
        os.makedirs(www)
        cls.big = os.urandom(BIG)
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.write(cls.big)
        with open(os.path.join(www, "healthz"), "w") as f:
            f.write("ok\n")
        cls.addr = {k: f"127.0.0.1:{harness.free_port()}" for k in ("app", "ip", "mtls")}
        # What each request saw of its TLS connection, for the assertions:
        # the connection serial, requests on it, session reuse, SNI, ALPN.
        info = ('return 200 "conn=$connection n=$connection_requests reused=$ssl_session_reused '
                'sni=$ssl_server_name alpn=$ssl_alpn_protocol proto=$ssl_protocol\\n";')
        common = ("ssl_certificate_key @KEY@; ssl_certificate @CRT@; "
                  f"ssl_protocols TLSv1.2 TLSv1.3; root {www}; "
                  f"location = /info {{ {info} }} "
                  f"location = /echo {{ proxy_pass http://{cls.origin_.addr}; proxy_http_version 1.1; }} "
                  f"location = /sha256 {{ proxy_pass http://{cls.origin_.addr}; proxy_http_version 1.1; }} ")
        servers = [
            f"server {{ listen {cls.addr['app']} ssl; " + common.replace("@KEY@", p("app.key")).replace("@CRT@", p("app.crt")) + "}",
            f"server {{ listen {cls.addr['ip']} ssl; " + common.replace("@KEY@", p("ip.key")).replace("@CRT@", p("ip.crt")) + "}",
            # Requires a client certificate from the backend CA.
            f"server {{ listen {cls.addr['mtls']} ssl; ssl_verify_client on; "
            f"ssl_client_certificate {p('backend-ca.crt')}; "
            + common.replace("@KEY@", p("app.key")).replace("@CRT@", p("app.crt"))
            + 'location = /who { return 200 "client=$ssl_client_s_dn verify=$ssl_client_verify\\n"; } }',
        ]
        prefix = os.path.join(cls.tmp, "nginx")
        os.makedirs(os.path.join(prefix, "logs"))
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                # One process: killed by PID, it leaves no orphaned worker.
                "master_process off;\nworker_processes 1;\n"
                f"pid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log info;\n"
                "events { worker_connections 256; }\n"
                "http {\n    access_log off;\n    keepalive_timeout 120s;\n"
                f"    client_body_temp_path {prefix}/client_body;\n    proxy_temp_path {prefix}/proxy;\n"
                f"    fastcgi_temp_path {prefix}/fastcgi;\n    uwsgi_temp_path {prefix}/uwsgi;\n"
                f"    scgi_temp_path {prefix}/scgi;\n    client_max_body_size 16m;\n"
                "    proxy_request_buffering off;\n    proxy_buffering off;\n"
                + "\n".join("    " + s for s in servers) + "\n}\n")
        log = os.path.join(cls.tmp, "nginx.log")
        cls.nginx_log = log
        with open(log, "ab") as lf:
            cls.nginx = subprocess.Popen([NGINX, "-p", prefix + "/", "-c", conf, "-g", "daemon off;"],
                                         stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT)
        harness._ALL_PROCS.append(cls.nginx)
        for addr in cls.addr.values():
            wait_listening(addr, cls.nginx, log, "nginx")

    @classmethod
    def tearDownClass(cls):
        harness._kill(cls.nginx)
        super().tearDownClass()

    # -- helpers --

    def tls_table(self, **keys):
        """tls = { ... } with the backend CA unless `ca` is given (None: omitted)."""
        keys.setdefault("ca", os.path.join(self.pki, "backend-ca.crt"))
        parts = []
        for k, v in keys.items():
            if v is None:
                continue
            parts.append(f"{k} = {'true' if v is True else 'false' if v is False else chr(34) + v + chr(34)}")
        return "tls = { " + ", ".join(parts) + " }\n"

    def tls_ktlb(self, backend="app", extra="", **tls):
        config = self.basic_config({"b": [self.addr[backend]]}, listener={"alpn": '["h2", "http/1.1"]'})
        # Refusals count as server failures; several in a row must not eject it.
        return self.ktlb(config + "eject = { consecutive_failures = 0 }\n" + self.tls_table(**tls) + extra)

    def info(self, k, path="/info", extra=()):
        status, _, body = self.get(k, path, extra=extra)
        return status, body.decode(errors="replace")

    def failures(self, k, stage):
        return k.metric("ktlb_upstream_tls_failures_total", upstream="b", stage=stage) or 0

    def handshakes(self, k, kind):
        return k.metric("ktlb_upstream_tls_handshakes_total", upstream="b", kind=kind) or 0

    # -- tests --

    def test_h1_and_h2_clients_through_tls(self):
        k = self.tls_ktlb(sni="app.internal")
        status, body = self.info(k)
        self.assertEqual(status, 200, body)
        self.assertIn("sni=app.internal", body)
        self.assertIn("alpn=http/1.1", body)
        status, body = self.info(k, extra=("--http2",))
        self.assertEqual(status, 200, body)
        self.assertIn("sni=app.internal", body)
        self.assertGreaterEqual(self.handshakes(k, "full"), 1)
        self.assertEqual(self.failures(k, "upstream_tls_verify"), 0)

    def test_keepalive_reuses_the_tls_connection(self):
        k = self.tls_ktlb(sni="app.internal")
        conns = set()
        with self.tls(k) as c:
            for i in range(5):
                c.request("GET", "/info")
                status, _, body = c.read_response()
                self.assertEqual(status, 200, body)
                text = body.decode()
                conns.add(text.split()[0])
                self.assertIn(f"n={i + 1} ", text)  # the backend counts requests on one connection
        self.assertEqual(len(conns), 1, conns)
        self.assertEqual(self.handshakes(k, "full") + self.handshakes(k, "resumed"), 1)

    def test_wrong_ca_is_refused_and_counted(self):
        k = self.tls_ktlb(sni="app.internal", ca=self.ca)  # the listener's test CA, not the backend's
        status, body = self.info(k)
        self.assertEqual(status, 502, body)
        self.assertGreaterEqual(self.failures(k, "upstream_tls_verify"), 1)
        self.assertIn("upstream_tls_verify", k.log())
        # Per server too: no request byte left, so the reason is the handshake.
        self.assertGreaterEqual(k.metric("ktlb_upstream_server_failures_total", reason="tls"), 1)

    def test_wrong_name_is_refused(self):
        # SNI and the name checked: a name the certificate does not carry.
        k = self.tls_ktlb(sni="wrong.internal")
        status, body = self.info(k)
        self.assertEqual(status, 502, body)
        self.assertGreaterEqual(self.failures(k, "upstream_tls_verify"), 1)
        # No sni: the server's host is checked, here 127.0.0.1, an IP the
        # app certificate does not list ...
        k2 = self.tls_ktlb()
        status, body = self.info(k2)
        self.assertEqual(status, 502, body)
        self.assertGreaterEqual(self.failures(k2, "upstream_tls_verify"), 1)
        # ... and that one does (an IP SAN), with no SNI sent for it.
        k3 = self.tls_ktlb(backend="ip")
        status, body = self.info(k3)
        self.assertEqual(status, 200, body)
        self.assertIn("sni= ", body)
        # verify = false takes anything (the operator's choice).
        k4 = self.tls_ktlb(sni="wrong.internal", ca=None, verify=False)
        status, body = self.info(k4)
        self.assertEqual(status, 200, body)

    def test_client_certificate(self):
        k = self.tls_ktlb(backend="mtls", sni="app.internal",
                          cert=os.path.join(self.pki, "client.crt"), key=os.path.join(self.pki, "client.key"))
        status, body = self.info(k, "/who")
        self.assertEqual(status, 200, body)
        self.assertIn("CN=ktlb-upstream", body)
        self.assertIn("verify=SUCCESS", body)
        # Without one, this backend refuses (nginx answers 400 "No required
        # SSL certificate was sent").
        k2 = self.tls_ktlb(backend="mtls", sni="app.internal")
        status, body = self.info(k2, "/who")
        self.assertEqual(status, 400, body)
        self.assertIn("No required SSL certificate", body)

    def test_session_resumption_on_a_new_connection(self):
        # No pooling: every request opens a new upstream TLS connection.
        k = self.tls_ktlb(sni="app.internal", extra="max_idle_per_server = 0\n")
        reused = []
        for _ in range(4):
            status, body = self.info(k)
            self.assertEqual(status, 200, body)
            reused.append("reused=r" in body)
        self.assertFalse(reused[0])
        self.assertTrue(any(reused[1:]), reused)
        self.assertGreaterEqual(self.handshakes(k, "resumed"), 1)
        self.assertEqual(self.handshakes(k, "full") + self.handshakes(k, "resumed"), 4)

    def test_one_mib_bodies_intact(self):
        k = self.tls_ktlb(sni="app.internal")
        want = hashlib.sha256(self.big).hexdigest()
        for proto in ((), ("--http2",)):
            status, _, body = self.get(k, "/big.bin", extra=proto)
            self.assertEqual(status, 200)
            self.assertEqual(len(body), BIG)
            self.assertEqual(hashlib.sha256(body).hexdigest(), want, proto)
            # The request direction: the body goes through TLS to nginx, then
            # the origin hashes it.
            path = os.path.join(self.tmp, "upload.bin")
            with open(path, "wb") as f:
                f.write(self.big)
            status, _, body = self.get(k, "/sha256", extra=(*proto, "--data-binary", f"@{path}"))
            self.assertEqual(status, 200, body)
            self.assertEqual(body.decode().split()[0], want, proto)

    def test_health_probes_use_tls(self):
        health = 'health = { path = "/healthz", interval_ms = 100, timeout_ms = 100, rise = 1, fall = 1 }\n'
        k = self.tls_ktlb(sni="app.internal", extra=health)
        k.wait_metric("ktlb_upstream_servers_healthy", 1, upstream="b")
        status, _ = self.info(k)
        self.assertEqual(status, 200)
        # With the wrong CA the probes fail too: the server goes down, and
        # requests get 503 at once instead of a handshake each.
        k2 = self.tls_ktlb(sni="app.internal", ca=self.ca, extra=health)
        k2.wait_metric("ktlb_upstream_health_changes_total", 1, upstream="b", state="down")
        self.assertIn("server certificate refused", k2.log())
        status, _ = self.info(k2)
        self.assertEqual(status, 503)

    def test_check_reports_a_bad_ca_file(self):
        bad = os.path.join(self.tmp, "not-a-ca.crt")
        with open(bad, "w") as f:
            f.write("not a certificate\n")
        config = self.basic_config({"b": [self.addr["app"]]}) + self.tls_table(ca=bad)
        path = os.path.join(self.tmp, "bad-ca.toml")
        with open(path, "w") as f:
            f.write(config)
        line = config.splitlines().index(self.tls_table(ca=bad).strip()) + 1
        r = self.run_ktlb("--check", "--config", path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{path}:{line}: upstreams[0].tls.ca: cannot load CA certificates", r.stderr)


if __name__ == "__main__":
    harness.main()
