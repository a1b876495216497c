"""ktlb as a service: systemd's notify protocol (READY, RELOADING, STOPPING,
WATCHDOG, and MAINPID when SIGUSR2 upgrades the binary) spoken to a socket
the test holds, the unit file systemd accepts, and the privilege drop to
`user`/`group` after binding."""

import os
import pwd
import re
import grp
import shutil
import signal
import socket
import subprocess
import sys
import time

import harness


class Notification(str):
    """One datagram's text; `pid` is its sender's (SCM_CREDENTIALS), as
    systemd uses it to tell the main process from others."""
    pid = 0


class NotifySocket:
    """The datagram socket systemd would give a Type=notify service."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.everything = []  # every notification, in order

    def _receive(self):
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        m = Notification(data.decode())
        for level, kind, cred in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                m.pid = int.from_bytes(cred[0:4], sys.byteorder)
        self.messages.append(m)
        self.everything.append(m)

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
                self._receive()
            except socket.timeout:
                pass

    def drain(self, seconds):
        """Reads whatever comes for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._receive()
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


class ServiceTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("svc-origin")

    def start_with_env(self, text, env, launcher=()):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return self.ktlb(text, launcher=launcher)
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

    def test_sigusr2_upgrade_hands_the_unit_to_the_successor(self):
        """Under systemd the successor must be the unit's child and say
        MAINPID= before the old process may exit; the old one must not say
        STOPPING=1 (it would stop the unit); the watchdog moves along."""
        n = NotifySocket(os.path.join(self.tmp, "notify-upgrade.sock"))
        successors = []

        def kill_successors():
            for pid in successors:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.addCleanup(kill_successors)
        try:
            # As systemd starts a unit: WATCHDOG_PID is the main process's PID.
            launcher = ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$0" "$@"']
            old = self.start_with_env(
                self.basic_config({"app": [self.o.addr]}, server={"workers": "2"}),
                {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "1000000"}, launcher=launcher)
            ready = n.wait_for("READY=1")
            self.assertEqual(ready[-1].pid, old.pid)
            url, resolve = self.url(old)
            load = harness.LoadRun(old.port(), self.ca, 4, "sigusr2")
            try:
                time.sleep(1)
                old.signal(signal.SIGUSR2)
                seen = n.wait_for(f"MAINPID={self._successor_pid(old)}")
                new_pid = seen[-1].pid
                successors.append(new_pid)
                self.assertNotEqual(new_pid, old.pid)
                # MAINPID comes from the new process itself, before the old exits.
                self.assertEqual(seen[-1], f"MAINPID={new_pid}")
                self.assertIsNone(old.proc.poll())
                ready = n.wait_for("READY=1")
                self.assertEqual(ready[-1].pid, new_pid)
                code = old.proc.wait(timeout=40)
                old.stopped = True
                self.assertEqual(code, 0, old.log())
                # The successor's watchdog is its own (WATCHDOG_PID adopted).
                n.drain(1.5)
                self.assertTrue(any(m.pid == new_pid and "WATCHDOG=1" in m.splitlines()
                                    for m in n.everything), n.everything)
            finally:
                wrk_out, _ = load.stop()
            self.assertEqual(load.failed, [])
            self.assertNotIn("Socket errors", wrk_out, wrk_out)
            self.assertNotIn("Non-2xx", wrk_out, wrk_out)
            from_old = [m for m in n.everything if m.pid == old.pid]
            self.assertFalse(any("STOPPING=1" in m.splitlines() for m in from_old), from_old)
            # The successor serves, and stops like a main process.
            r = subprocess.run(["curl", "-sS", "--cacert", self.ca, *resolve, "-o", "/dev/null",
                                "-w", "%{http_code}", url], capture_output=True, text=True)
            self.assertEqual(r.stdout, "200", r.stderr)
            os.kill(new_pid, signal.SIGTERM)
            seen = n.wait_for("STOPPING=1")
            self.assertEqual(seen[-1].pid, new_pid)
            deadline = time.monotonic() + 40
            while os.path.exists(f"/proc/{new_pid}") and time.monotonic() < deadline:
                time.sleep(0.05)  # reparented: not ours to wait for
            self.assertFalse(os.path.exists(f"/proc/{new_pid}"))
        finally:
            n.close()

    def _successor_pid(self, old, timeout=30):
        """The PID the old process logged for the successor it started."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(r"started successor (\d+)", old.log())
            if m:
                return int(m.group(1))
            self.assertLess(time.monotonic(), deadline, old.log())
            time.sleep(0.02)

    def test_sigusr2_successor_that_fails_leaves_the_old_process_serving(self):
        old = self.ktlb(self.basic_config({"app": [self.o.addr]}))
        with open(old.config_path, "a") as f:
            f.write("\n[bogus]\n")  # the successor reads the file as it is now
        old.signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while "before taking over; still serving" not in old.log():
            self.assertLess(time.monotonic(), deadline, old.log())
            time.sleep(0.05)
        self.assertRegex(old.log(), r"successor \d+ exited with status 1")
        self.assertTrue(old.running())
        url, resolve = self.url(old)
        r = subprocess.run(["curl", "-sS", "--cacert", self.ca, *resolve, "-o", "/dev/null",
                            "-w", "%{http_code}", url], capture_output=True, text=True)
        self.assertEqual(r.stdout, "200", r.stderr)
        old.stop()

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
