"""ktlb as a service: systemd's notify protocol (READY, RELOADING, STOPPING,
WATCHDOG) spoken to a socket the test holds, the unit file systemd accepts,
and the privilege drop to `user`/`group` after binding."""

import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import time

import harness


class NotifySocket:
    """The datagram socket systemd would give a Type=notify service."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []

    def wait_for(self, key, timeout=30):
        """Reads datagrams until one holds the line `key` (e.g. "READY=1");
        returns every message read so far."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.messages):
                if key in m.splitlines():
                    seen = self.messages[:i + 1]
                    self.messages = self.messages[i + 1:]
                    return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key} from ktlb; got {self.messages}")
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


class ServiceTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("svc-origin")

    def start_with_env(self, text, env):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return self.ktlb(text)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def test_notify_protocol(self):
        n = NotifySocket(os.path.join(self.tmp, "notify.sock"))
        try:
            # WATCHDOG_USEC: ping every 0.5 s while the workers turn.
            k = self.start_with_env(self.basic_config({"app": [self.o.addr]}),
                                    {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "1000000"})
            n.wait_for("READY=1")
            # Ready means serving: the listener answers at once.
            url, resolve = self.url(k)
            r = subprocess.run(["curl", "-sS", "--cacert", self.ca, *resolve, "-o", "/dev/null",
                                "-w", "%{http_code}", url], capture_output=True, text=True)
            self.assertEqual(r.stdout, "200", r.stderr)
            n.wait_for("WATCHDOG=1")
            n.wait_for("WATCHDOG=1")
            k.signal(signal.SIGHUP)
            seen = n.wait_for("RELOADING=1")
            after = n.wait_for("READY=1")
            self.assertTrue(any("STATUS=config reloaded" in m for m in after), after)
            k.signal(signal.SIGTERM)
            seen = n.wait_for("STOPPING=1")
            self.assertTrue(any("STATUS=draining" in m for m in seen), seen)
            k.stop()
        finally:
            n.close()

    def test_unit_file_is_one_systemd_accepts(self):
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze not installed")
        with open(os.path.join(harness.SOURCE_DIR, "configs", "ktlb.service")) as f:
            unit = f.read()
        self.assertIn("Type=notify", unit)
        self.assertIn("LimitNOFILE=", unit)
        self.assertIn("CAP_NET_BIND_SERVICE", unit)
        path = os.path.join(self.tmp, "ktlb.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/local/bin/ktlb", harness.ktlb_bin()))
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn(os.path.basename(path), r.stderr)

    def test_drops_to_user_and_group_after_binding(self):
        if os.getuid() != 0:
            self.skipTest("needs root to drop privileges")
        user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        k = self.ktlb(self.basic_config({"app": [self.o.addr]},
                                        server={"user": f'"{user}"', "group": f'"{group}"',
                                                "workers": "2"}))
        # The drop follows the bind: the port accepts a moment before it.
        deadline = time.monotonic() + 10
        while f"running as user {user}" not in k.log():
            self.assertLess(time.monotonic(), deadline, k.log())
            time.sleep(0.02)
        # Every thread (workers, probers, admin) runs as the user, not root.
        for tid in os.listdir(f"/proc/{k.pid}/task"):
            with open(f"/proc/{k.pid}/task/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            self.assertEqual(status["Uid"].split(), [str(uid)] * 4, tid)
            self.assertEqual(status["Gid"].split(), [str(gid)] * 4, tid)
            self.assertEqual(status["Groups"].split(), [str(gid)], tid)
        url, resolve = self.url(k)
        r = subprocess.run(["curl", "-sS", "--cacert", self.ca, *resolve, "-o", "/dev/null",
                            "-w", "%{http_code}", url], capture_output=True, text=True)
        self.assertEqual(r.stdout, "200", r.stderr)
        k.stop()

    def test_unknown_user_or_group_fails_check_with_line(self):
        for server, pattern in (({"user": '"no-such-ktlb-user"'}, r"server\.user: no such user"),
                                ({"user": '"nobody"', "group": '"no-such-ktlb-group"'},
                                 r"server\.group: no such group"),
                                ({"group": '"nogroup"'}, r"server\.group: needs user")):
            path = os.path.join(self.tmp, "bad-user.toml")
            with open(path, "w") as f:
                f.write(self.basic_config({"app": [self.o.addr]}, server=server))
            r = self.run_ktlb("--check", "--config", path)
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stderr, r"bad-user\.toml:\d+: " + pattern)


if __name__ == "__main__":
    import unittest
    unittest.main()
