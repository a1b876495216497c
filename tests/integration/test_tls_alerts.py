"""Fatal TLS errors after the handshake are answered with an alert before the
close (RFC 8446 §5.2 and §6, RFC 5246 §7.2.2).

ktlb-tlsrogue (tools/tlsrogue) makes a real handshake with ktlb, then sends one
crafted record: a flipped ciphertext byte, an oversized record, an empty alert,
a malformed KeyUpdate, a handshake message that has no place after the
handshake, an unknown content type... and prints the first alert ktlb sends
back ("alert CODE NAME"), or "closed-without-alert", or "timeout".

The expected codes are the ones nginx 1.22 and `openssl s_server -www` send
(both OpenSSL 3.0.19; the same for the two servers, measured with the same
tool). After every rogue connection a normal request on a new connection must
still be served. Control cases check the tool itself: a correct request with
"Connection: close" is answered and ended with close_notify (also when a
zero-length application_data record comes first), and a correct close_notify
ends the connection (with or without a close_notify back: nginx answers none,
s_server one).

Run by hand: KTLB_BIN=build/ktlb KTLB_ORIGIN_BIN=build/ktlb-origin
KTLB_TLSROGUE_BIN=build/ktlb-tlsrogue python3 test_tls_alerts.py
"""

import os
import subprocess

import harness

# case -> (code, name) expected after TLS 1.3 and after TLS 1.2 (None: not a TLS 1.2 case).
EXPECTED = {
    "bad-mac": ((20, "bad_record_mac"), (20, "bad_record_mac")),
    "oversized": ((22, "record_overflow"), (22, "record_overflow")),
    "oversized-plaintext": ((22, "record_overflow"), (22, "record_overflow")),
    # A record header with version 03 01 after the handshake.
    "bad-version": ((50, "decode_error"), (70, "protocol_version")),
    # OpenSSL refuses a zero-length alert or handshake record in TLS 1.3 with
    # unexpected_message (BAD_LENGTH) and an alert that is not 2 bytes in
    # TLS 1.2 the same way (INVALID_ALERT).
    "empty-alert": ((10, "unexpected_message"), (10, "unexpected_message")),
    # 18 00 00 02 00 00: longer than a KeyUpdate can be -> illegal_parameter
    # (EXCESSIVE_MESSAGE_SIZE), before the body is parsed.
    "bad-keyupdate": ((47, "illegal_parameter"), None),
    "keyupdate-empty": ((50, "decode_error"), None),
    "keyupdate-bad-value": ((47, "illegal_parameter"), None),
    "unexpected": ((10, "unexpected_message"), (10, "unexpected_message")),
    "garbage-type": ((10, "unexpected_message"), (10, "unexpected_message")),
    "garbage-inner-type": ((10, "unexpected_message"), None),
    "all-padding": ((10, "unexpected_message"), None),
}

RESPONSE = b"hello from ktlb-origin\n"


def tlsrogue_bin():
    path = os.environ.get("KTLB_TLSROGUE_BIN")
    if not path:
        # Next to ktlb in the build tree.
        path = os.path.join(os.path.dirname(harness.ktlb_bin()), "ktlb-tlsrogue")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"ktlb-tlsrogue not found at {path} (cmake --build build --target ktlb-tlsrogue)")
    return path


class TlsAlertsTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("alerts-origin")

    def rogue(self, k, case, tls12):
        """Runs ktlb-tlsrogue against k; returns (stdout line, stderr)."""
        argv = [tlsrogue_bin(), "--case", case, "--ca", self.ca, "--sni", "localhost", "--timeout-ms", "5000",
                "--verbose"]
        if tls12:
            argv.append("--tls12")
        argv.append(k.addr())
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        detail = f"$ {' '.join(argv)}\nexit {r.returncode}\nstdout: {r.stdout!r}\nstderr:\n{r.stderr}"
        self.assertEqual(r.returncode, 0, "ktlb-tlsrogue failed (a tool or handshake error):\n" + detail)
        self.assertIn("TLSv1.2" if tls12 else "TLSv1.3", r.stderr, detail)
        return r.stdout.strip(), detail

    def still_serves(self, k, tls12):
        flags = ("--tlsv1.2", "--tls-max", "1.2") if tls12 else ("--tlsv1.3",)
        status, _, body = self.get(k, "/", extra=flags)
        self.assertEqual((status, body), (200, RESPONSE), "a new connection after the rogue one was not served")

    def run_case(self, case, tls12, expect):
        k = self.ktlb(self.basic_config({"app": [self.o.addr]}))
        log_before = len(k.log())
        out, detail = self.rogue(k, case, tls12)
        detail += f"--- ktlb log during the rogue connection ---\n{k.log()[log_before:]}--- end ---"
        with self.subTest("ktlb still serves new connections"):
            self.still_serves(k, tls12)
        with self.subTest("alert"):
            expect(out, detail)

    # -- controls: the tool's own crypto, both directions --

    def control_valid(self, tls12, case="valid"):
        def expect(out, detail):
            self.assertIn("HTTP/1.1 200", detail, "no response to a correct request:\n" + detail)
            self.assertEqual(out, "alert 0 close_notify", detail)
        self.run_case(case, tls12, expect)

    def control_close_notify(self, tls12):
        def expect(out, detail):
            self.assertIn(out, ("alert 0 close_notify", "closed-without-alert"),
                          "a close_notify must end the connection:\n" + detail)
        self.run_case("close-notify", tls12, expect)

    def test_t13_valid(self):
        self.control_valid(False)

    def test_t12_valid(self):
        self.control_valid(True)

    # A zero-length application_data record is legal (RFC 8446 §5.1): the GET
    # right behind it must be served as usual.
    def test_t13_empty_appdata(self):
        self.control_valid(False, "empty-appdata")

    def test_t12_empty_appdata(self):
        self.control_valid(True, "empty-appdata")

    def test_t13_close_notify(self):
        self.control_close_notify(False)

    def test_t12_close_notify(self):
        self.control_close_notify(True)


def _alert_test(case, tls12, code, name):
    def test(self):
        def expect(out, detail):
            self.assertEqual(out, f"alert {code} {name}",
                             f"case {case} ({'TLS 1.2' if tls12 else 'TLS 1.3'}): expected alert {code} {name} "
                             f"before the close, got {out!r}\n{detail}")
        self.run_case(case, tls12, expect)
    test.__doc__ = f"{case}, {'TLS 1.2' if tls12 else 'TLS 1.3'}: alert {code} {name}"
    return test


for _case, (_t13, _t12) in EXPECTED.items():
    _id = _case.replace("-", "_")
    setattr(TlsAlertsTest, f"test_t13_{_id}", _alert_test(_case, False, *_t13))
    if _t12 is not None:
        setattr(TlsAlertsTest, f"test_t12_{_id}", _alert_test(_case, True, *_t12))


if __name__ == "__main__":
    harness.main()
