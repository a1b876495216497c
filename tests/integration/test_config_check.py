"""Config validation: `ktlb --check` names FILE:LINE: key: problem and exits
non-zero; a bad config never gets as far as listening."""

import os
import re
import time

import harness

ERROR_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<key>[^:]+): (?P<problem>.+)$", re.M)


def line_of(text, needle, after=0):
    """1-based line number of the first line containing `needle` (past line `after`)."""
    for i, line in enumerate(text.splitlines(), 1):
        if i > after and needle in line:
            return i
    raise AssertionError(f"{needle!r} not in config")


class ConfigCheckTest(harness.KtlbTestCase):
    def good(self):
        return self.basic_config({"app": [f"127.0.0.1:{harness.free_port()}"]})

    def write(self, text, name="bad.toml"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check_error(self, text, key_part, line=None, lines=None, problem_part=None):
        """Runs --check on `text`; asserts one FILE:LINE: key: problem line."""
        path = self.write(text)
        r = self.run_ktlb("--check", "--config", path)
        self.assertNotEqual(r.returncode, 0, f"--check accepted:\n{text}")
        m = ERROR_RE.search(r.stderr)
        self.assertIsNotNone(m, f"no 'FILE:LINE: key: problem' line in stderr:\n{r.stderr}")
        self.assertTrue(os.path.samefile(os.path.join(self.tmp, m.group("file")), path),
                        f"error names {m.group('file')!r}, not {path!r}")
        got_line = int(m.group("line"))
        if line is not None:
            self.assertEqual(got_line, line, f"wrong line in {m.group(0)!r}\n--- config ---\n{text}")
        if lines is not None:
            self.assertIn(got_line, lines, f"wrong line in {m.group(0)!r}\n--- config ---\n{text}")
        self.assertIn(key_part, m.group("key"), m.group(0))
        if problem_part:
            self.assertIn(problem_part, m.group("problem"), m.group(0))
        return m

    def test_good_config_passes(self):
        r = self.run_ktlb("--check", "--config", self.write(self.good(), "good.toml"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_unknown_key(self):
        text = self.good().replace("[server]\n", "[server]\nbogus_key = 1\n")
        self.check_error(text, "bogus_key", line=line_of(text, "bogus_key"))

    def test_unknown_key_in_listener(self):
        text = self.good().replace('mode = "terminate"', 'mode = "terminate"\nlisten_backlog = 5')
        self.check_error(text, "listen_backlog", line=line_of(text, "listen_backlog"))

    def test_bad_mode(self):
        text = self.good().replace('mode = "terminate"', 'mode = "bogus"')
        self.check_error(text, "mode", line=line_of(text, 'mode = "bogus"'))

    def test_wrong_type(self):
        text = self.good().replace("workers = 1", 'workers = "two"')
        self.check_error(text, "workers", line=line_of(text, "workers ="))

    def test_bad_server_weight_and_hash_key(self):
        port = harness.free_port()
        good = self.good()
        servers = next(l for l in good.splitlines() if l.startswith("servers = "))
        text = good.replace(servers, f'servers = [{{ address = "127.0.0.1:{port}", weight = 0 }}]')
        self.check_error(text, "upstreams[0].servers[0].weight", line=line_of(text, "weight = 0"),
                         problem_part="between 1 and 256")
        text = good.replace(servers, servers + '\nhash_key = "header:X-User"')
        self.check_error(text, "upstreams[0].hash_key", line=line_of(text, "hash_key"),
                         problem_part='only used with balance = "maglev"')
        text = good.replace(servers, servers + '\nbalance = "maglev"\nhash_key = "ip"')
        self.check_error(text, "upstreams[0].hash_key", line=line_of(text, "hash_key"),
                         problem_part='"client_ip", "header:NAME" or "cookie:NAME"')
        text = good.replace(servers, servers + '\nbalance = "random"')
        self.check_error(text, "upstreams[0].balance", line=line_of(text, "balance"),
                         problem_part='"round_robin", "least_conn", "p2c" or "maglev"')

    def test_route_to_missing_upstream(self):
        text = self.good().replace('upstream = "app"', 'upstream = "nope"')
        m = self.check_error(text, "upstream", line=line_of(text, 'upstream = "nope"'))
        self.assertIn("nope", m.group("problem"))

    def test_key_not_matching_certificate(self):
        text = self.good().replace(os.path.join(self.certs, "site.key"), os.path.join(self.certs, "mismatch.key"))
        # The first [[certificates]] table is "site": any line of it will do.
        start = line_of(text, "[[certificates]]")
        end = line_of(text, "mismatch.key")
        self.check_error(text, "certificates", lines=range(start, end + 1), problem_part="does not match")

    def test_missing_certificate_file(self):
        missing = os.path.join(self.certs, "nope.crt")
        text = self.good().replace(os.path.join(self.certs, "site.crt"), missing)
        self.check_error(text, "cert", line=line_of(text, "nope.crt"))

    def test_run_with_bad_config_exits_without_listening(self):
        text = self.good().replace('upstream = "app"', 'upstream = "nope"')
        k = self.ktlb(text, wait=False)
        port = k.port()
        deadline = time.monotonic() + harness.START_TIMEOUT
        while k.running():
            self.assertFalse(harness.port_accepts(("127.0.0.1", port), timeout=0.2),
                             "ktlb listened although its config is invalid")
            self.assertLess(time.monotonic(), deadline, "ktlb kept running with an invalid config")
            time.sleep(0.02)
        k.stopped = True
        self.assertNotEqual(k.proc.returncode, 0)
        self.assertFalse(harness.port_accepts(("127.0.0.1", port), timeout=0.2))
        m = ERROR_RE.search(k.log())
        self.assertIsNotNone(m, f"no FILE:LINE error in the log:\n{k.log()}")
        self.assertEqual(int(m.group("line")), line_of(text, 'upstream = "nope"'))


if __name__ == "__main__":
    harness.main()
