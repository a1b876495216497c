"""mTLS: client_auth on listeners and certificates (SNI picks the policy),
require/optional, CRLs, the handshake-failure reasons, the X-Client-Cert-*
fields the backend gets (and the client cannot spoof), require_client_cert
routes (403) over HTTP/1.1 and HTTP/2, and config errors."""

import os
import re
import subprocess

import harness
from harness import header

# The good client certificate's SANs as ktlb reports them (certificate order).
ALICE_SAN = "DNS:alice.test,URI:spiffe://ktlb.test/alice,email:alice@ktlb.test,IP:10.1.2.3"
ALICE_SUBJECT = "CN=alice,O=ktlb test clients"

CA_CNF = """\
[ca]
default_ca = cadef

[cadef]
database = index.txt
new_certs_dir = newcerts
serial = serial
crlnumber = crlnumber
default_md = sha256
default_days = 365
default_crl_days = 30
policy = pol
unique_subject = no
copy_extensions = none

[pol]
organizationName = optional
commonName = supplied

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth

[v3_alice]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:alice.test, URI:spiffe://ktlb.test/alice, email:alice@ktlb.test, IP:10.1.2.3
"""


def _run(argv, cwd):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


class Ca:
    """A self-signed client CA run with `openssl ca` (so it can revoke and
    publish a CRL), in its own directory."""

    def __init__(self, root, name, cn):
        self.dir = os.path.join(root, name)
        os.makedirs(os.path.join(self.dir, "newcerts"))
        with open(os.path.join(self.dir, "ca.cnf"), "w") as f:
            f.write(CA_CNF)
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(self.dir, "crlnumber"), "w") as f:
            f.write("1000\n")
        self.key = os.path.join(self.dir, "ca.key")
        self.crt = os.path.join(self.dir, "ca.crt")
        _run(["openssl", "genpkey", "-quiet", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", self.key], self.dir)
        _run(["openssl", "req", "-new", "-x509", "-key", self.key, "-subj", f"/O=ktlb test/CN={cn}",
              "-days", "3650", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", self.crt], self.dir)

    def issue(self, name, cn, section="v3_client", start=None, end=None):
        """(cert path, key path) of a new client certificate."""
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        crt = os.path.join(self.dir, f"{name}.crt")
        _run(["openssl", "genpkey", "-quiet", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", key], self.dir)
        _run(["openssl", "req", "-new", "-key", key, "-subj", f"/O=ktlb test clients/CN={cn}", "-out", csr],
             self.dir)
        argv = ["openssl", "ca", "-batch", "-notext", "-config", "ca.cnf", "-keyfile", self.key, "-cert",
                self.crt, "-extfile", "ca.cnf", "-extensions", section, "-in", csr, "-out", crt]
        if start:
            argv += ["-startdate", start, "-enddate", end]
        _run(argv, self.dir)
        return crt, key

    def revoke(self, crt):
        _run(["openssl", "ca", "-config", "ca.cnf", "-keyfile", self.key, "-cert", self.crt, "-revoke", crt],
             self.dir)

    def crl(self):
        path = os.path.join(self.dir, "ca.crl")
        _run(["openssl", "ca", "-config", "ca.cnf", "-keyfile", self.key, "-cert", self.crt, "-gencrl",
              "-out", path], self.dir)
        return path


def fingerprint(crt):
    out = _run(["openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256"], None)
    return out.strip().split("=", 1)[1].replace(":", "").lower()


def echoed_headers(body):
    """[(name, value)] of the origin's /headers answer (request line dropped)."""
    got = []
    for line in body.decode().split("\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            got.append((name.strip(), value.strip()))
    return got


class MtlsTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("mtls-origin")
        pki = os.path.join(cls.tmp, "pki")
        cls.clients = Ca(pki, "clients", "ktlb test client CA")
        cls.partner = Ca(pki, "partner", "ktlb test partner CA")
        cls.alice = cls.clients.issue("alice", "alice", section="v3_alice")
        cls.expired = cls.clients.issue("expired", "expired", start="20200101000000Z", end="20210101000000Z")
        cls.revoked = cls.clients.issue("revoked", "revoked")
        cls.clients.revoke(cls.revoked[0])
        cls.crl = cls.clients.crl()
        cls.bob = cls.partner.issue("bob", "bob")

    # -- helpers --

    def start(self, client_auth=None, routes=None, cert_auth=None, alpn=None):
        """ktlb with certificates site + other; `client_auth` on the listener and
        `cert_auth` on certificate "other" are TOML inline tables."""
        listener = {}
        if client_auth:
            listener["client_auth"] = client_auth
        if alpn:
            listener["alpn"] = alpn
        text = self.basic_config({"app": [self.o.addr]}, listener=listener, routes=routes)
        if cert_auth:
            text = text.replace(f'key = "{os.path.join(self.certs, "other.key")}"\n',
                                f'key = "{os.path.join(self.certs, "other.key")}"\nclient_auth = {cert_auth}\n')
            self.assertIn("client_auth = " + cert_auth, text)
        if routes:
            text = text.replace('require_client_cert = "true"', "require_client_cert = true")
        return self.ktlb(text)

    def auth(self, mode="require", ca=None, crl=None):
        s = f'{{ ca = "{ca or self.clients.crt}", mode = "{mode}"'
        if crl:
            s += f', crl = "{crl}"'
        return s + " }"

    def cert_args(self, pair):
        return ["--cert", pair[0], "--key", pair[1]] if pair else []

    def fetch(self, k, path="/headers", cert=None, host="localhost", extra=(), check=True):
        url, resolve = self.url(k, path, host=host)
        return self.curl(*resolve, *self.cert_args(cert), *extra, "-w", "\n%{http_code}", url, check=check)

    def status_and_body(self, r):
        body, _, status = r.stdout.rpartition(b"\n")
        return int(status), body

    def failures(self, k, reason):
        return k.metric("ktlb_tls_handshake_failures_total", listener="public", reason=reason)

    def assert_refused(self, k, reason, cert=None, host="localhost"):
        before = self.failures(k, reason)
        r = self.fetch(k, cert=cert, host=host, check=False)
        self.assertNotEqual(r.returncode, 0, f"curl got through: {r.stdout!r}")
        self.assertGreaterEqual(k.wait_metric("ktlb_tls_handshake_failures_total", before + 1, listener="public",
                                              reason=reason), before + 1, r.stderr)

    # -- the identity the backend gets --

    def test_verified_identity_reaches_backend_and_spoofs_are_stripped(self):
        k = self.start(self.auth(crl=self.crl))
        spoof = ["-H", "X-Client-Cert-Subject: CN=mallory", "-H", "X-Client-Cert-Verified: SUCCESS",
                 "-H", "X_Client_Cert_Fingerprint: 00", "-H", "x-client-cert-san: DNS:evil.test",
                 "-H", "X-Client-Cert-Chain: evil"]
        status, body = self.status_and_body(self.fetch(k, cert=self.alice, extra=spoof))
        self.assertEqual(status, 200, body)
        got = echoed_headers(body)
        dump = body.decode()
        self.assertEqual(header(got, "X-Client-Cert-Verified"), ["SUCCESS"], dump)
        self.assertEqual(header(got, "X-Client-Cert-Subject"), [ALICE_SUBJECT], dump)
        self.assertEqual(header(got, "X-Client-Cert-SAN"), [ALICE_SAN], dump)
        self.assertEqual(header(got, "X-Client-Cert-Fingerprint"), [fingerprint(self.alice[0])], dump)
        self.assertEqual(header(got, "X_Client_Cert_Fingerprint"), [], dump)
        self.assertEqual(header(got, "X-Client-Cert-Chain"), [], dump)
        self.assertNotIn("mallory", dump)
        self.assertNotIn("evil", dump)

    def test_spoofed_fields_stripped_on_listener_without_client_auth(self):
        k = self.start()
        with self.tls(k) as c:
            c.send(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Client-Cert-Verified: SUCCESS\r\n"
                   b"X-Client-Cert-Subject: CN=mallory\r\nConnection: close\r\n\r\n")
            status, _, body = c.read_response()
        self.assertEqual(status, 200)
        self.assertNotIn(b"X-Client-Cert", body)
        self.assertNotIn(b"mallory", body)

    # -- handshake failures --

    def test_missing_certificate_with_require(self):
        k = self.start(self.auth())
        self.assert_refused(k, "client_cert_missing")
        # The CA's name is in the CertificateRequest.
        rc, out = self.s_client(k.port(), "-tls1_2")
        self.assertIn("Acceptable client certificate CA names", out)
        self.assertIn("CN = ktlb test client CA", out)

    def test_wrong_ca_expired_and_revoked_are_rejected(self):
        k = self.start(self.auth(crl=self.crl))
        for name, cert in (("wrong CA", self.bob), ("expired", self.expired), ("revoked", self.revoked)):
            with self.subTest(name):
                self.assert_refused(k, "client_cert_rejected", cert=cert)
        # Without the CRL the revoked certificate is fine.
        k.stop()
        k2 = self.start(self.auth())
        self.assertEqual(self.status_and_body(self.fetch(k2, cert=self.revoked))[0], 200)

    def test_optional_without_certificate(self):
        k = self.start(self.auth(mode="optional"))
        status, body = self.status_and_body(self.fetch(k))
        self.assertEqual(status, 200)
        got = echoed_headers(body)
        self.assertEqual(header(got, "X-Client-Cert-Verified"), ["NONE"], body)
        self.assertEqual(header(got, "X-Client-Cert-Subject"), [], body)
        # A certificate that is sent is still verified.
        self.assert_refused(k, "client_cert_rejected", cert=self.bob)

    # -- routes --

    def test_require_client_cert_route(self):
        routes = [{"path_prefix": "/headers", "require_client_cert": "true", "upstream": "app"},
                  {"upstream": "app"}]
        k = self.start(self.auth(mode="optional"), routes=routes)
        before = self.o.requests()
        status, body = self.status_and_body(self.fetch(k, "/headers"))
        self.assertEqual((status, body), (403, b"403 Forbidden\n"))
        self.assertEqual(self.o.requests(), before, "the 403 reached the backend")
        self.assertEqual(self.status_and_body(self.fetch(k, "/"))[0], 200)
        status, body = self.status_and_body(self.fetch(k, "/headers", cert=self.alice))
        self.assertEqual(status, 200)
        self.assertEqual(header(echoed_headers(body), "X-Client-Cert-Verified"), ["SUCCESS"])
        # Keep-alive survives the 403.
        with self.tls(k) as c:
            c.request("GET", "/headers")
            self.assertEqual(c.read_response()[0], 403)
            c.request("GET", "/")
            self.assertEqual(c.read_response()[0], 200)

    # -- per-certificate policy --

    def test_certificate_client_auth_overrides_listener_by_sni(self):
        partner = self.auth(ca=self.partner.crt)
        k = self.start(self.auth(mode="optional"), cert_auth=partner)
        # SNI localhost: the listener's optional policy.
        status, body = self.status_and_body(self.fetch(k))
        self.assertEqual(status, 200)
        self.assertEqual(header(echoed_headers(body), "X-Client-Cert-Verified"), ["NONE"])
        status, body = self.status_and_body(self.fetch(k, cert=self.alice))
        self.assertEqual(header(echoed_headers(body), "X-Client-Cert-Subject"), [ALICE_SUBJECT])
        # SNI other.test: the certificate's own, requiring a partner certificate.
        self.assert_refused(k, "client_cert_missing", host="other.test")
        self.assert_refused(k, "client_cert_rejected", cert=self.alice, host="other.test")
        status, body = self.status_and_body(self.fetch(k, cert=self.bob, host="other.test"))
        self.assertEqual(status, 200)
        self.assertEqual(header(echoed_headers(body), "X-Client-Cert-Subject"), ["CN=bob,O=ktlb test clients"])
        # Each CertificateRequest names its own CA.
        _, out = self.s_client(k.port(), "-tls1_2", servername="other.test")
        self.assertIn("CN = ktlb test partner CA", out)
        self.assertNotIn("CN = ktlb test client CA", out)
        _, out = self.s_client(k.port(), "-tls1_2", servername="localhost")
        self.assertIn("CN = ktlb test client CA", out)
        self.assertNotIn("CN = ktlb test partner CA", out)

    def test_session_from_public_name_does_not_open_mtls_name(self):
        k = self.start(self.auth(mode="optional"), cert_auth=self.auth(ca=self.partner.crt))
        req = b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"
        for flag in ("-tls1_2", "-tls1_3"):
            with self.subTest(flag):
                sess = os.path.join(self.tmp, f"public{flag}.pem")
                rc, out = self.s_client(k.port(), flag, "-sess_out", sess, "-ign_eof", input=req,
                                        servername="localhost")
                self.assertEqual(rc, 0, out)
                self.assertIn("HTTP/1.1 200", out)
                before = self.failures(k, "client_cert_rejected")
                _, out = self.s_client(k.port(), flag, "-sess_in", sess, "-ign_eof", input=req,
                                       servername="other.test")
                if flag == "-tls1_3":
                    # TLS 1.3 takes the new name: other.test's policy, which a
                    # session without a partner certificate must not satisfy.
                    self.assertNotIn("HTTP/1.1 200", out)
                    self.assertGreaterEqual(
                        k.wait_metric("ktlb_tls_handshake_failures_total", before + 1, listener="public",
                                      reason="client_cert_rejected"), before + 1, out)
                else:
                    # TLS 1.2 resumes the session's name (OpenSSL keeps SNI in
                    # the session): the connection is localhost's, as a fresh
                    # one with SNI localhost would be, and never other.test's.
                    self.assertIn("subject=O = ktlb test, CN = localhost", out)
                    self.assertIn("Reused, TLSv1.2", out)
                # The same name resumes.
                rc, out = self.s_client(k.port(), flag, "-sess_in", sess, "-ign_eof", input=req,
                                        servername="localhost")
                self.assertEqual(rc, 0, out)
                self.assertIn("HTTP/1.1 200", out)

    def test_resumed_session_keeps_the_identity(self):
        k = self.start(self.auth())
        req = b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        cert = ["-cert", self.alice[0], "-key", self.alice[1]]
        for flag in ("-tls1_2", "-tls1_3"):
            with self.subTest(flag):
                sess = os.path.join(self.tmp, f"alice{flag}.pem")
                rc, out = self.s_client(k.port(), flag, *cert, "-sess_out", sess, "-ign_eof", input=req)
                self.assertEqual(rc, 0, out)
                self.assertIn("X-Client-Cert-Subject: " + ALICE_SUBJECT, out)
                rc, out = self.s_client(k.port(), flag, *cert, "-sess_in", sess, "-ign_eof", input=req)
                self.assertEqual(rc, 0, out)
                self.assertRegex(out, r"(?m)^Reused, TLSv1\.[23]")
                self.assertIn("X-Client-Cert-Verified: SUCCESS", out)
                self.assertIn("X-Client-Cert-Subject: " + ALICE_SUBJECT, out)
                self.assertIn("X-Client-Cert-Fingerprint: " + fingerprint(self.alice[0]), out)

    # -- HTTP/2 --

    def test_http2_headers_and_403(self):
        routes = [{"path_prefix": "/headers", "require_client_cert": "true", "upstream": "app"},
                  {"upstream": "app"}]
        k = self.start(self.auth(mode="optional"), routes=routes, alpn='["h2", "http/1.1"]')
        r = self.fetch(k, cert=self.alice, extra=["--http2", "-v", "-H", "X-Client-Cert-Subject: CN=mallory"])
        self.assertIn("ALPN: server accepted h2", r.stderr.decode())
        status, body = self.status_and_body(r)
        self.assertEqual(status, 200)
        got = echoed_headers(body)
        self.assertEqual(header(got, "X-Client-Cert-Verified"), ["SUCCESS"], body)
        self.assertEqual(header(got, "X-Client-Cert-Subject"), [ALICE_SUBJECT], body)
        self.assertEqual(header(got, "X-Client-Cert-SAN"), [ALICE_SAN], body)
        self.assertEqual(header(got, "X-Client-Cert-Fingerprint"), [fingerprint(self.alice[0])], body)
        before = self.o.requests()
        status, body = self.status_and_body(self.fetch(k, extra=["--http2"]))
        self.assertEqual((status, body), (403, b"403 Forbidden\n"))
        self.assertEqual(self.o.requests(), before)
        status, body = self.status_and_body(self.fetch(k, "/", extra=["--http2"]))
        self.assertEqual(status, 200)

    # -- config errors --

    def check_error(self, text, key_part, problem_part):
        path = os.path.join(self.tmp, "bad.toml")
        with open(path, "w") as f:
            f.write(text)
        r = self.run_ktlb("--check", "--config", path)
        self.assertNotEqual(r.returncode, 0, f"--check accepted:\n{text}")
        m = re.search(r"^(.+?):(\d+): ([^:]+): (.+)$", r.stderr, re.M)
        self.assertIsNotNone(m, r.stderr)
        self.assertEqual(m.group(1), path, r.stderr)
        self.assertIn(key_part, m.group(3), r.stderr)
        self.assertIn(problem_part, m.group(4), r.stderr)
        line = int(m.group(2))
        return text.splitlines()[line - 1]

    def config(self, client_auth=None, routes=None):
        text = self.basic_config({"app": [self.o.addr]}, routes=routes,
                                 listener={"client_auth": client_auth} if client_auth else None)
        return text.replace('require_client_cert = "true"', "require_client_cert = true")

    def test_config_errors(self):
        missing = os.path.join(self.tmp, "nope.crt")
        line = self.check_error(self.config(f'{{ ca = "{missing}" }}'), "listeners[0].client_auth.ca", "nope.crt")
        self.assertIn("client_auth", line)
        self.check_error(self.config(f'{{ ca = "{self.clients.crt}", mode = "sometimes" }}'),
                         "listeners[0].client_auth.mode", '"require" or "optional"')
        self.check_error(self.config('{ mode = "require" }'), "listeners[0].client_auth.ca", "missing")
        self.check_error(self.config(f'{{ ca = "{self.clients.crt}", crl = "{missing}" }}'),
                         "listeners[0].client_auth.crl", "nope.crt")
        # Readable, but not a CA certificate: found when the snapshot is built.
        line = self.check_error(self.config(f'{{ ca = "{self.clients.key}" }}'),
                                "listeners[0].client_auth.ca", "no PEM certificate")
        self.assertIn("client_auth", line)
        line = self.check_error(self.config(f'{{ ca = "{self.clients.crt}", crl = "{self.clients.crt}" }}'),
                                "listeners[0].client_auth.crl", "no PEM CRL")
        self.assertIn("crl", line)
        routes = [{"require_client_cert": "true", "upstream": "app"}]
        self.check_error(self.config(routes=routes), "routes[0].require_client_cert",
                         "asks for no client certificate")
        # And a good one passes.
        path = os.path.join(self.tmp, "good.toml")
        with open(path, "w") as f:
            f.write(self.config(self.auth(crl=self.crl), routes=routes))
        r = self.run_ktlb("--check", "--config", path)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    harness.main()
