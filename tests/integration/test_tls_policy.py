"""TLS policy per listener: tls_versions, tls_groups, tls_ciphers (TLS 1.2) and
tls_ciphersuites (TLS 1.3), seen from openssl s_client; and names OpenSSL does not
know are --check errors in FILE:LINE: key: problem form."""

import os
import re

import harness

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
ERROR_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<key>[^:]+): (?P<problem>.+)$", re.M)


class TlsPolicyTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("policy-origin")

    def config(self, **listener):
        return self.basic_config({"app": [self.o.addr]}, listener=listener or None)

    def start(self, **listener):
        return self.ktlb(self.config(**listener))

    def negotiated(self, k, *args):
        """(cipher, protocol) s_client agreed on, or None when the handshake failed."""
        rc, out = self.s_client(k.port(), "-ign_eof", *args, input=REQUEST)
        m = re.search(r"^(?:New|Reused), (TLSv1\.\d|\(NONE\)), Cipher is (\S+)", out, re.M)
        if rc != 0 or m is None or m.group(2) == "(NONE)":
            return None
        self.assertIn("hello from ktlb-origin", out)
        return m.group(2), m.group(1)

    def test_versions(self):
        k = self.start(tls_versions='["1.3"]')
        self.assertIsNone(self.negotiated(k, "-tls1_2"))
        self.assertEqual(self.negotiated(k, "-tls1_3")[1], "TLSv1.3")
        self.assertGreaterEqual(k.wait_metric("ktlb_tls_handshake_failures_total", 1, listener="public",
                                              reason="protocol_version"), 1)
        k12 = self.start(tls_versions='["1.2"]')
        self.assertIsNone(self.negotiated(k12, "-tls1_3"))
        self.assertEqual(self.negotiated(k12)[1], "TLSv1.2")  # the client's default offers both
        # The default is both.
        default = self.start()
        self.assertEqual(self.negotiated(default, "-tls1_2")[1], "TLSv1.2")
        self.assertEqual(self.negotiated(default, "-tls1_3")[1], "TLSv1.3")

    def test_groups(self):
        default = self.start()
        x448 = self.start(tls_groups='"X25519:P-256:X448"')
        for flag in ("-tls1_2", "-tls1_3"):
            with self.subTest(version=flag):
                self.assertIsNone(self.negotiated(default, flag, "-groups", "X448"),
                                  "X448 negotiated though not configured")
                self.assertIsNotNone(self.negotiated(x448, flag, "-groups", "X448"))
                self.assertIsNotNone(self.negotiated(x448, flag, "-groups", "X25519"))
        rc, out = self.s_client(x448.port(), "-tls1_3", "-groups", "X448", input=b"")
        self.assertRegex(out, r"(Server Temp Key|Negotiated TLS1\.3 group): X448")

    def test_ciphers_and_suites(self):
        k = self.start(tls_ciphers='"ECDHE-RSA-AES256-GCM-SHA384"',
                       tls_ciphersuites='"TLS_CHACHA20_POLY1305_SHA256"')
        self.assertEqual(self.negotiated(k, "-tls1_2"), ("ECDHE-RSA-AES256-GCM-SHA384", "TLSv1.2"))
        self.assertEqual(self.negotiated(k, "-tls1_3"), ("TLS_CHACHA20_POLY1305_SHA256", "TLSv1.3"))
        # A client offering only what the listener left out gets no handshake.
        self.assertIsNone(self.negotiated(k, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"))
        self.assertIsNone(self.negotiated(k, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"))
        # Today's defaults: AES-128-GCM first under server preference.
        default = self.start()
        self.assertEqual(self.negotiated(default, "-tls1_3"), ("TLS_AES_128_GCM_SHA256", "TLSv1.3"))
        self.assertEqual(self.negotiated(default, "-tls1_2"), ("ECDHE-RSA-AES128-GCM-SHA256", "TLSv1.2"))

    def check_error(self, key, value, want_key, problem_part):
        text = self.config(**{key: value})
        path = os.path.join(self.tmp, f"bad-{key}.toml")
        with open(path, "w") as f:
            f.write(text)
        line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith(f"{key} ="))
        r = self.run_ktlb("--check", "--config", path)
        self.assertNotEqual(r.returncode, 0, f"--check accepted {key} = {value}")
        m = ERROR_RE.search(r.stderr)
        self.assertIsNotNone(m, r.stderr)
        self.assertEqual((m.group("file"), int(m.group("line")), m.group("key")), (path, line, want_key),
                         r.stderr)
        self.assertIn(problem_part, m.group("problem"))

    def test_unknown_names_fail_check(self):
        self.check_error("tls_groups", '"X25519:X9999"', "listeners[0].tls_groups",
                         '"X9999" is not a group OpenSSL knows')
        # OpenSSL alone would drop the unknown name and carry on with the rest.
        self.check_error("tls_ciphers", '"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA265"',
                         "listeners[0].tls_ciphers", '"ECDHE-RSA-AES128-GCM-SHA265" matches no TLS 1.2 cipher')
        self.check_error("tls_ciphersuites", '"TLS_AES_128_GCM_SHA256:TLS_AES_128_GCM_SHA512"',
                         "listeners[0].tls_ciphersuites", '"TLS_AES_128_GCM_SHA512" is not a TLS 1.3 suite')
        self.check_error("tls_versions", '["1.3", "1.1"]', "listeners[0].tls_versions[1]",
                         'must be "1.2" or "1.3"')


if __name__ == "__main__":
    harness.main()
