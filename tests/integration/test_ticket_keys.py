"""Session tickets for a fleet: ktlb processes sharing one ticket_keys file (80-byte
records, as nginx's ssl_session_ticket_key) resume each other's sessions, TLS 1.2 and
1.3; a key that became second in the file still opens its tickets (and the session
gets a fresh ticket under the first key); processes with different keys do not
resume each other; a file of the wrong size is a config error. Driven by openssl
s_client -sess_out against one process and -sess_in against another."""

import os
import re

import harness

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
VERSIONS = (("1.2", "-tls1_2"), ("1.3", "-tls1_3"))
ERROR_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<key>[^:]+): (?P<problem>.+)$", re.M)


class TicketKeysTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("tickets-origin")
        cls.keys = [os.urandom(80) for _ in range(3)]

    def key_file(self, name, *keys):
        """Writes the concatenated 80-byte keys to tmp/NAME; returns NAME (the
        configs live in tmp, so the relative name resolves there)."""
        with open(os.path.join(self.tmp, name), "wb") as f:
            f.write(b"".join(keys))
        return name

    def start(self, ticket_file=None):
        server = {"ticket_keys": f'"{ticket_file}"'} if ticket_file else None
        return self.ktlb(self.basic_config({"app": [self.o.addr]}, server=server))

    def visit(self, k, flag, sess_in=None, sess_out=None, output=None):
        """One s_client connection carrying one request; True if the session was resumed.
        -ign_eof keeps it reading until ktlb closes after the response, so a TLS 1.3
        ticket (sent after the handshake) reaches -sess_out. `output`, a list, gets
        s_client's output appended."""
        args = [flag, "-ign_eof"]
        if sess_in:
            args += ["-sess_in", os.path.join(self.tmp, sess_in)]
        if sess_out:
            args += ["-sess_out", os.path.join(self.tmp, sess_out)]
        rc, out = self.s_client(k.port(), *args, input=REQUEST)
        self.assertIn("hello from ktlb-origin", out, out)
        if output is not None:
            output.append(out)
        m = re.search(r"^(New|Reused), TLSv1\.\d", out, re.M)
        self.assertIsNotNone(m, out)
        return m.group(1) == "Reused"

    @staticmethod
    def ticket_key_name(session_text):
        """The first 16 bytes of the ticket in SSL_SESSION_print output (s_client's
        "SSL-Session:" block): the name of the key that sealed it."""
        m = re.search(r"TLS session ticket:\s*\n\s*0000 - (.{47})", session_text)
        assert m, session_text
        return bytes(int(h, 16) for h in re.findall(r"[0-9a-f]{2}", m.group(1)))

    def resumptions(self, k, source):
        return k.metric("ktlb_tls_resumptions_total", listener="public", source=source)

    def test_two_processes_sharing_a_file_resume_each_other(self):
        name = self.key_file("fleet.keys", self.keys[0], self.keys[1])
        a, b = self.start(name), self.start(name)
        for version, flag in VERSIONS:
            with self.subTest(version=version):
                before = self.resumptions(b, "ticket_file")
                sess = f"a-{version}.sess"
                self.assertFalse(self.visit(a, flag, sess_out=sess))
                self.assertTrue(self.visit(b, flag, sess_in=sess), f"TLS {version}: B did not resume A's session")
                self.assertEqual(b.wait_metric("ktlb_tls_resumptions_total", before + 1, listener="public",
                                               source="ticket_file"), before + 1)
                # And the other way round, with a ticket B issued.
                sess = f"b-{version}.sess"
                self.assertFalse(self.visit(b, flag, sess_out=sess))
                self.assertTrue(self.visit(a, flag, sess_in=sess), f"TLS {version}: A did not resume B's session")
        self.assertEqual(self.resumptions(a, "ticket_local") + self.resumptions(b, "ticket_local"), 0)

    def test_a_ticket_under_the_second_key_resumes_and_is_renewed(self):
        # The fleet rotates: the key that issued the ticket becomes second, then goes.
        old = self.start(self.key_file("old.keys", self.keys[0]))
        rotated = self.start(self.key_file("rotated.keys", self.keys[1], self.keys[0]))
        newest = self.start(self.key_file("new.keys", self.keys[1]))
        for version, flag in VERSIONS:
            with self.subTest(version=version):
                sess, renewed = f"old-{version}.sess", f"renewed-{version}.sess"
                self.assertFalse(self.visit(old, flag, sess_out=sess))
                self.assertFalse(self.visit(newest, flag, sess_in=sess), "a dropped key still resumed")
                out = []
                self.assertTrue(self.visit(rotated, flag, sess_in=sess, sess_out=renewed, output=out),
                                f"TLS {version}: a ticket under the second key did not resume")
                if version == "1.2":
                    # OpenSSL's client reports no new session after a TLS 1.2 resumption
                    # (so no -sess_out file), but s_client prints the session it ends
                    # with: its fresh ticket is sealed under the file's first key.
                    self.assertEqual(self.ticket_key_name(out[0]), self.keys[1][:16], out[0])
                else:
                    # The fresh ticket is under the first key: the newest host opens it.
                    self.assertTrue(self.visit(newest, flag, sess_in=renewed),
                                    f"TLS {version}: the session was not re-issued under the first key")

    def test_processes_with_different_files_do_not_resume(self):
        a = self.start(self.key_file("a.keys", self.keys[0]))
        b = self.start(self.key_file("b.keys", self.keys[1]))
        for version, flag in VERSIONS:
            with self.subTest(version=version):
                sess = f"diff-{version}.sess"
                self.assertFalse(self.visit(a, flag, sess_out=sess))
                full = b.metric("ktlb_tls_handshakes_total", listener="public", kind="full")
                self.assertFalse(self.visit(b, flag, sess_in=sess), f"TLS {version}: resumed with another key")
                self.assertGreaterEqual(b.wait_metric("ktlb_tls_handshakes_total", full + 1, listener="public",
                                                      kind="full"), full + 1)
                # The control: the same session does resume where it was issued.
                self.assertTrue(self.visit(a, flag, sess_in=sess))
        self.assertEqual(self.resumptions(b, "ticket_file"), 0)

    def test_without_a_file_keys_are_the_process_own(self):
        a, b = self.start(), self.start()
        for version, flag in VERSIONS:
            with self.subTest(version=version):
                sess = f"local-{version}.sess"
                before = self.resumptions(a, "ticket_local")
                self.assertFalse(self.visit(a, flag, sess_out=sess))
                self.assertFalse(self.visit(b, flag, sess_in=sess), "two processes shared in-process keys")
                self.assertTrue(self.visit(a, flag, sess_in=sess))
                self.assertEqual(a.wait_metric("ktlb_tls_resumptions_total", before + 1, listener="public",
                                               source="ticket_local"), before + 1)
        self.assertEqual(self.resumptions(a, "ticket_file"), 0)

    def test_a_file_of_the_wrong_size_is_a_config_error(self):
        for size in (0, 79, 81, 200):
            with self.subTest(size=size):
                name = self.key_file(f"bad-{size}.keys", os.urandom(size))
                text = self.basic_config({"app": [self.o.addr]}, server={"ticket_keys": f'"{name}"'})
                path = os.path.join(self.tmp, f"bad-{size}.toml")
                with open(path, "w") as f:
                    f.write(text)
                want_line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("ticket_keys"))
                for args in (("--check", "--config", path), ("--config", path)):
                    r = self.run_ktlb(*args)
                    self.assertNotEqual(r.returncode, 0, r.stderr)
                    m = ERROR_RE.search(r.stderr)
                    self.assertIsNotNone(m, r.stderr)
                    self.assertEqual((m.group("file"), int(m.group("line")), m.group("key")),
                                     (path, want_line, "server.ticket_keys"), r.stderr)
                    self.assertIn(f"size is {size} bytes; must be a positive multiple of 80", m.group("problem"))
        # The same file with 80 bytes more per key is fine.
        name = self.key_file("good.keys", *self.keys)
        text = self.basic_config({"app": [self.o.addr]}, server={"ticket_keys": f'"{name}"'})
        path = os.path.join(self.tmp, "good.toml")
        with open(path, "w") as f:
            f.write(text)
        r = self.run_ktlb("--check", "--config", path)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    harness.main()
