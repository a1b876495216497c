"""Binary upgrade: `ktlb --config FILE --upgrade` takes the listening sockets
of the ktlb running FILE (SCM_RIGHTS), which then drains and exits, and not
one request or connection fails on the way, under load."""

import os
import socket
import subprocess
import time

import harness


class UpgradeTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("upgrade-origin", threads=2)

    def successor(self, old):
        """Starts `ktlb --upgrade` on the running one's config file."""
        k = harness.Ktlb.__new__(harness.Ktlb)
        harness.Ktlb._seq += 1
        k.workdir, k.config_text, k.config_path = old.workdir, old.config_text, old.config_path
        k.log_path = os.path.join(self.tmp, f"ktlb-{harness.Ktlb._seq}-upgrade.log")
        k.listeners, k.admin, k.stopped = old.listeners, old.admin, False
        k.proc = harness._spawn([harness.ktlb_bin(), "--config", k.config_path, "--upgrade"],
                                k.log_path, cwd=self.tmp)
        self._test_procs.append(k)
        return k

    def wait_exit(self, k, timeout=40):
        try:
            code = k.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"old ktlb did not exit after the hand-off\n{k.log()}")
        k.stopped = True
        return code

    def test_upgrade_under_load_fails_nothing(self):
        old = self.ktlb(self.basic_config({"app": [self.o.addr]},
                                          listener={"alpn": '["h2", "http/1.1"]'},
                                          server={"workers": "2"}))
        load = harness.LoadRun(old.port(), self.ca, 8, "upgrade")
        try:
            time.sleep(2)
            new = self.successor(old)
            self.assertEqual(self.wait_exit(old), 0, old.log())
            self.assertIn("handed 3 listening socket(s)", old.log())  # one per worker, and admin
        finally:
            time.sleep(1)
            wrk_out, h2 = load.stop()
        self.assertIn("took over the listening sockets", new.log())
        self.assertEqual(load.failed, [])
        self.assertGreater(load.ok, 10)
        self.assertNotIn("Socket errors", wrk_out, wrk_out)
        self.assertNotIn("Non-2xx", wrk_out, wrk_out)
        self.assertIsNotNone(h2, load.h2_out)
        # The old process's h2 connections get GOAWAY. h2load never opens a
        # new connection after one: the requests it then cannot submit it
        # counts as failed and errored (a browser would reconnect). So only
        # what reached ktlb is checked here: nothing timed out, and the
        # new-connection stream above lost nothing.
        self.assertGreater(h2["succeeded"], 0, load.h2_out)
        self.assertEqual(h2["timeout"], 0, load.h2_out)
        # The successor serves, admin included, and can itself be upgraded.
        self.assertEqual(new.admin_get("/healthz")[0], 200)
        self.assertGreater(new.metric("ktlb_connections_accepted_total", listener="public"), 0)
        newer = self.successor(new)
        self.assertEqual(self.wait_exit(new), 0, new.log())
        url2, resolve = self.url(newer)
        r = subprocess.run(["curl", "-sS", "--cacert", self.ca, *resolve, "-o", "/dev/null",
                            "-w", "%{http_code}", url2], capture_output=True, text=True)
        self.assertEqual(r.stdout, "200", r.stderr)
        newer.stop()

    def test_failed_successor_leaves_the_old_process_serving(self):
        old = self.ktlb(self.basic_config({"app": [self.o.addr]}, server={"workers": "2"}))
        # The new process will fail late in its start, after its workers
        # accept on the inherited sockets: its admin port is taken.
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        try:
            port = blocker.getsockname()[1]
            with open(old.config_path) as f:
                text = f.read()
            with open(old.config_path, "w") as f:
                f.write(text.replace(f'admin_listen = "{old.admin}"',
                                     f'admin_listen = "127.0.0.1:{port}"'))
            new = self.successor(old)
            self.assertEqual(new.proc.wait(timeout=60), 1, new.log())
            new.stopped = True
            self.assertIn("startup failed: admin_listen", new.log())
        finally:
            blocker.close()
        # The old one never stopped and still accepts on every socket it had.
        self.assertTrue(old.running())
        url, resolve = self.url(old)
        for _ in range(20):
            r = subprocess.run(["curl", "-sS", "--cacert", self.ca, *resolve, "-o", "/dev/null",
                                "-w", "%{http_code}", url], capture_output=True, text=True)
            self.assertEqual(r.stdout, "200", r.stderr + old.log())
        old.stop()

    def test_upgrade_without_a_running_process_fails_clearly(self):
        path = os.path.join(self.tmp, "lonely.toml")
        with open(path, "w") as f:
            f.write(self.basic_config({"app": [self.o.addr]}))
        r = subprocess.run([harness.ktlb_bin(), "--config", path, "--upgrade"], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--upgrade: no running ktlb answers", r.stderr)

    def test_second_process_on_the_same_config_cannot_steal_the_name(self):
        k = self.ktlb(self.basic_config({"app": [self.o.addr]}))
        self.assertNotIn("binary upgrade unavailable", k.log())


if __name__ == "__main__":
    import unittest
    unittest.main()
