"""TLS termination: versions, SNI certificate selection, unknown SNI policy,
plain HTTP on the TLS port, session resumption across workers, handshake timeout."""

import os
import re
import socket

import harness

SITE_NAMES = {"localhost", "example.test", "*.example.test", "127.0.0.1"}
OTHER_NAMES = {"other.test", "*.other.test"}
HTTP_CLOSE = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


class TlsTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("tls-origin")

    def start(self, server=None, listener=None, certificates=("site", "other")):
        return self.ktlb(self.basic_config({"app": [self.o.addr]}, server=server, listener=listener,
                                           certificates=certificates))

    def curl_version(self, k, *flags):
        url, resolve = self.url(k, "/")
        r = self.curl(*resolve, "-v", *flags, url)
        m = re.search(r"SSL connection using (TLSv1\.\d)", r.stderr.decode(errors="replace"))
        self.assertIsNotNone(m, r.stderr)
        return m.group(1), r.stdout

    def test_tls12_and_tls13(self):
        k = self.start()
        full = k.metric("ktlb_tls_handshakes_total", listener="public", kind="full")
        self.assertEqual(self.curl_version(k, "--tlsv1.2", "--tls-max", "1.2"),
                         ("TLSv1.2", b"hello from ktlb-origin\n"))
        self.assertEqual(self.curl_version(k, "--tlsv1.3"), ("TLSv1.3", b"hello from ktlb-origin\n"))
        self.assertGreaterEqual(k.wait_metric("ktlb_tls_handshakes_total", full + 2, listener="public", kind="full"),
                                full + 2)

    def test_tls11_refused(self):
        k = self.start()
        # SECLEVEL=0 so that the client really offers TLS 1.1 (OpenSSL 3 refuses it by default).
        rc, out = self.s_client(k.port(), "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("Cipher is (NONE)", out)
        # And the listener is fine afterwards.
        self.assertEqual(self.curl_version(k)[1], b"hello from ktlb-origin\n")

    def test_sni_selects_certificate(self):
        k = self.start()
        port = k.port()
        for name in ("localhost", "example.test", "a.example.test"):
            subject, sans = self.served_cert(port, name)
            self.assertEqual(set(sans), SITE_NAMES, f"SNI {name}: {subject}")
        for name in ("other.test", "x.other.test"):
            subject, sans = self.served_cert(port, name)
            self.assertEqual(set(sans), OTHER_NAMES, f"SNI {name}: {subject}")
        # The whole chain is served: curl verifies against the root alone.
        for host in ("x.other.test", "a.example.test"):
            status, _, body = self.get(k, "/", host=host)
            self.assertEqual((status, body), (200, b"hello from ktlb-origin\n"))

    def test_unknown_sni_default_serves_first_certificate(self):
        k = self.start(listener={"unknown_sni": '"default"'})
        _, sans = self.served_cert(k.port(), "unknown.test")
        self.assertEqual(set(sans), SITE_NAMES)
        _, sans = self.served_cert(k.port(), None)  # no SNI at all
        self.assertEqual(set(sans), SITE_NAMES)
        k.stop()
        k2 = self.start(listener={"unknown_sni": '"default"'}, certificates=("other", "site"))
        _, sans = self.served_cert(k2.port(), "unknown.test")
        self.assertEqual(set(sans), OTHER_NAMES)

    def test_unknown_sni_reject(self):
        k = self.start(listener={"unknown_sni": '"reject"'})
        before = k.metric("ktlb_tls_handshake_failures_total", listener="public", reason="unknown_sni")
        rc, out = self.s_client(k.port(), servername="unknown.test")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("Cipher is (NONE)", out)
        self.assertTrue("unrecognized name" in out or "alert number 112" in out, out)
        self.assertGreaterEqual(
            k.wait_metric("ktlb_tls_handshake_failures_total", before + 1, listener="public", reason="unknown_sni"),
            before + 1)
        # Known names still work on a rejecting listener.
        _, sans = self.served_cert(k.port(), "x.other.test")
        self.assertEqual(set(sans), OTHER_NAMES)
        self.assertEqual(self.get(k, "/", host="example.test")[0], 200)

    def test_plain_http_on_tls_port(self):
        k = self.start()
        before = k.metric("ktlb_tls_handshake_failures_total", listener="public", reason="plain_http")
        with socket.create_connection(("127.0.0.1", k.port()), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            took = harness.wait_closed(s, 10.0)
        self.assertIsNotNone(took, "plain HTTP connection was not closed within 10 s")
        self.assertGreaterEqual(
            k.wait_metric("ktlb_tls_handshake_failures_total", before + 1, listener="public", reason="plain_http"),
            before + 1)

    def resume(self, k, version_flag, rounds):
        """A full handshake, then `rounds` resumptions, each from the last session."""
        sess = os.path.join(self.tmp, f"sess{version_flag}-0.pem")
        rc, out = self.s_client(k.port(), version_flag, "-sess_out", sess, "-ign_eof", input=HTTP_CLOSE)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"(?m)^New, TLSv1\.[23]")
        self.assertIn("HTTP/1.1 200", out)
        for i in range(1, rounds + 1):
            nxt = os.path.join(self.tmp, f"sess{version_flag}-{i}.pem")
            rc, out = self.s_client(k.port(), version_flag, "-sess_in", sess, "-sess_out", nxt, "-ign_eof",
                                    input=HTTP_CLOSE)
            self.assertEqual(rc, 0, out)
            m = re.search(r"(?m)^(New|Reused), (TLSv1\.[23])", out)
            self.assertIsNotNone(m, out)
            self.assertEqual(m.group(1), "Reused", f"round {i} not resumed:\n{out}")
            self.assertIn("HTTP/1.1 200", out)
            if os.path.exists(nxt) and os.path.getsize(nxt):
                sess = nxt

    def test_session_resumption_across_workers(self):
        k = self.start(server={"workers": "2"})
        for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            with self.subTest(version):
                before = k.metric("ktlb_tls_handshakes_total", listener="public", kind="resumed")
                # Ten reconnects spread over both workers (SO_REUSEPORT hashes the
                # client port): every one must resume, whichever worker it lands on.
                self.resume(k, flag, 10)
                self.assertGreaterEqual(
                    k.wait_metric("ktlb_tls_handshakes_total", before + 10, listener="public", kind="resumed"),
                    before + 10)

    def test_handshake_timeout(self):
        k = self.start(server={"handshake_timeout_ms": "500"})
        before = k.metric("ktlb_timeouts_total", kind="handshake")
        with socket.create_connection(("127.0.0.1", k.port()), timeout=5) as s:
            took = harness.wait_closed(s, 15.0)
        self.assertIsNotNone(took, "silent connection still open after 15 s")
        self.assertGreater(took, 0.3, "closed before the handshake timeout")
        self.assertLess(took, 10.0)
        self.assertGreaterEqual(k.wait_metric("ktlb_timeouts_total", before + 1, kind="handshake"), before + 1)
        # A real handshake is unaffected.
        self.assertEqual(self.curl_version(k)[1], b"hello from ktlb-origin\n")


if __name__ == "__main__":
    harness.main()
