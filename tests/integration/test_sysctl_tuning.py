"""tools/sysctl-tuning.sh: the report runs anywhere, the sysctl.d file it writes holds
only real keys, and it never writes a value worse than the host already has."""

import os
import subprocess
import tempfile
import unittest

import harness

SCRIPT = os.path.join(harness.SOURCE_DIR, "tools", "sysctl-tuning.sh")


def sysctl(key):
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().split()


class SysctlTuningTest(unittest.TestCase):
    def run_script(self, *args):
        return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60)

    def test_check_reports_every_setting(self):
        r = self.run_script("--check")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [l.split() for l in r.stdout.splitlines()[1:] if l.startswith(("net.", "fs.", "kernel."))]
        self.assertGreaterEqual(len(rows), 10, r.stdout)
        for row in rows:
            self.assertIn(row[-1], ("ok", "differs", "kernel"), row)  # "skip: not in this kernel"
        self.assertIn("somaxconn", r.stdout)
        self.assertIn("tls module:", r.stdout)

    def test_written_file_is_valid_and_never_worse(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "90-ktlb.conf")
            r = self.run_script("--write", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            kinds = {}
            values = {}
            with open(path) as f:
                kind = None
                for line in f:
                    line = line.strip()
                    if line.startswith("#"):
                        if line.endswith(("(min)", "(max)", "(exact)")):
                            kind = line.rsplit("(", 1)[1][:-1]
                        continue
                    if not line:
                        continue
                    key, _, value = line.partition(" = ")
                    self.assertTrue(key and value, line)
                    kinds[key], values[key] = kind, value.split()
        self.assertIn("net.core.somaxconn", values)
        for key, want in values.items():
            if not os.path.exists("/proc/sys/" + key.replace(".", "/")):
                continue  # e.g. kernel.io_uring_disabled before Linux 6.6
            cur = sysctl(key)
            self.assertEqual(len(cur), len(want), key)
            for c, w in zip(cur, want):
                if kinds[key] == "min":
                    self.assertGreaterEqual(int(w), int(c), f"{key}: would lower {c} to {w}")
                elif kinds[key] == "max":
                    self.assertLessEqual(int(w), int(c), f"{key}: would raise {c} to {w}")

    def test_unknown_argument_is_refused(self):
        r = self.run_script("--frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown argument", r.stderr)


if __name__ == "__main__":
    unittest.main()
