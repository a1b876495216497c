"""Host names in an upstream's servers, through a real ktlb: resolved at
startup, re-resolved every resolve_interval_ms off the workers, traffic
moving to the new address when the answer changes (live connections kept),
the last good addresses kept when the name stops resolving; --check needing
no DNS while a start with an unresolvable name fails with FILE:LINE.

Each test runs in a network namespace of its own, so that its names live in
a hosts file it controls: `ip netns exec NS cmd` bind-mounts
/etc/netns/NS/hosts over /etc/hosts for cmd (ktlb here), and the file is
rewritten in place (a rename would not reach through the bind mount). The
test process itself joins the namespace's network (setns) so that curl,
the origins and the harness's port checks all see the same 127/8."""

import ctypes
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import harness
from harness import header

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class DnsServersTest(harness.KtlbTestCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("network namespaces need root")
        self.ns = f"ktlbdns{os.getpid()}x{time.monotonic_ns() % 100000}"
        self.ns_dir = f"/etc/netns/{self.ns}"
        self.hosts = os.path.join(self.ns_dir, "hosts")
        self._home_ns = None
        self._saved_bin = os.environ.get("KTLB_BIN")
        # Cleanups run even when setUp fails half way, in reverse order.
        self.addCleanup(self._remove_namespace)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        os.makedirs(self.ns_dir, exist_ok=True)
        self.write_hosts("")
        self._home_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
        ns_fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            _setns(ns_fd)
        finally:
            os.close(ns_fd)
        # ktlb runs through `ip netns exec` (which execs it: same PID), so that
        # it sees the namespace's hosts file.
        wrapper = os.path.join(self.tmp, f"ktlb-in-{self.ns}")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec ip netns exec {self.ns} {harness.ktlb_bin()} "$@"\n')
        os.chmod(wrapper, stat.S_IRWXU)
        os.environ["KTLB_BIN"] = wrapper

    def _remove_namespace(self):
        if self._saved_bin is not None:
            os.environ["KTLB_BIN"] = self._saved_bin
        if self._home_ns is not None:
            _setns(self._home_ns)
            os.close(self._home_ns)
            self._home_ns = None
        subprocess.run(["ip", "netns", "delete", self.ns], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.ns_dir, ignore_errors=True)

    def tearDown(self):
        # Processes first (harness), the namespace after (cleanup).
        super().tearDown()

    def write_hosts(self, text):
        """Rewrites the namespace's hosts file in place: truncate and write
        the same inode, which is what the bind mount shows."""
        with open(self.hosts, "r+" if os.path.exists(self.hosts) else "w") as f:
            f.truncate(0)
            f.write(text)

    def origin_at(self, ip, port, name):
        """A ktlb-origin on ip:port (the harness's Origin binds 127.0.0.1)."""
        addr = f"{ip}:{port}"
        log = os.path.join(self.tmp, f"origin-{name}-{self.ns}.log")
        proc = harness._spawn([harness.origin_bin(), "--listen", addr, "--name", name], log)
        self.addCleanup(harness._kill, proc)
        deadline = time.monotonic() + harness.START_TIMEOUT
        while not harness.port_accepts(addr):
            self.assertIsNone(proc.poll(), f"origin {name} exited")
            self.assertLess(time.monotonic(), deadline, f"origin {name} not listening on {addr}")
            time.sleep(0.02)
        return proc

    def config(self, servers, extra=""):
        text = self.basic_config({"app": ["PLACEHOLDER"]})
        return text.replace('servers = ["PLACEHOLDER"]', f"servers = {servers}\n{extra}")

    def origin_of(self, k):
        status, headers, body = self.get(k)
        self.assertEqual(status, 200, body)
        return headers.get("x-origin")

    def wait_for(self, what, cond, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not cond():
            self.assertLess(time.monotonic(), deadline, f"timed out waiting for {what}")
            time.sleep(0.05)

    def test_traffic_follows_the_name(self):
        port = harness.free_port()
        self.origin_at("127.0.0.2", port, "a")
        self.origin_at("127.0.0.3", port, "b")
        self.write_hosts("127.0.0.2 app.ktlb.test\n")
        k = self.ktlb(self.config(f'["app.ktlb.test:{port}"]', "resolve_interval_ms = 200\n"))
        self.assertEqual(self.origin_of(k), "a")

        # A keep-alive client connection opened before the change.
        live = self.tls(k)
        self.addCleanup(live.close)
        live.request("GET", "/")
        status, headers, _ = live.read_response()
        self.assertEqual((status, header(headers, "X-Origin")), (200, ["a"]))
        self.wait_for("an unchanged answer counted",
                      lambda: k.metric("ktlb_upstream_dns_resolutions_total", upstream="app",
                                       result="unchanged") >= 1)
        self.assertEqual(k.metric("ktlb_upstream_dns_resolutions_total", upstream="app",
                                  result="changed"), 0)

        self.write_hosts("127.0.0.3 app.ktlb.test\n")
        changed_at = time.monotonic()
        self.wait_for("traffic on the new address", lambda: self.origin_of(k) == "b")
        print(f"\n[dns] new connections reach the new address {time.monotonic() - changed_at:.2f} s "
              "after the hosts file changed (resolve_interval_ms = 200)", file=sys.stderr)
        for _ in range(5):
            self.assertEqual(self.origin_of(k), "b")
        self.assertEqual(k.metric("ktlb_upstream_dns_resolutions_total", upstream="app",
                                  result="changed"), 1)
        self.assertEqual(len(re.findall(r"app\.ktlb\.test:\d+ is now 127\.0\.0\.3:\d+ \(was "
                                        r"127\.0\.0\.2:\d+\)", k.log())), 1, k.log())
        # The live connection was not dropped: it finishes on the servers it
        # started with (as across a reload).
        live.request("GET", "/")
        status, headers, _ = live.read_response()
        self.assertEqual((status, header(headers, "X-Origin")), (200, ["a"]))

        # Two addresses: two servers, both served (round robin).
        self.write_hosts("127.0.0.2 app.ktlb.test\n127.0.0.3 app.ktlb.test\n")
        self.wait_for("both addresses in service", lambda: k.metric(
            "ktlb_upstream_dns_resolutions_total", upstream="app", result="changed") >= 2)
        seen = {self.origin_of(k) for _ in range(6)}
        self.assertEqual(seen, {"a", "b"})

        # The name stops resolving: the last good addresses stay, said once.
        self.write_hosts("")
        self.wait_for("a failed lookup counted", lambda: k.metric(
            "ktlb_upstream_dns_resolutions_total", upstream="app", result="failed") >= 3)
        seen = {self.origin_of(k) for _ in range(6)}
        self.assertEqual(seen, {"a", "b"})
        self.assertEqual(k.log().count('cannot resolve "app.ktlb.test"'), 1, k.log())

        self.write_hosts("127.0.0.3 app.ktlb.test\n")
        self.wait_for("recovery", lambda: self.origin_of(k) == "b" and self.origin_of(k) == "b")
        self.assertIn('"app.ktlb.test" resolves again', k.log())

    def test_ejection_survives_a_new_address_set(self):
        """A server ejected before the name's answer grew stays ejected in the
        new server list: the swap does not hand it fresh attempts."""
        port = harness.free_port()
        # 127.0.0.2 has no origin: connects are refused there.
        self.origin_at("127.0.0.3", port, "b")
        self.origin_at("127.0.0.4", port, "c")
        self.write_hosts("127.0.0.2 app.ktlb.test\n127.0.0.3 app.ktlb.test\n")
        k = self.ktlb(self.config(
            f'["app.ktlb.test:{port}"]',
            "resolve_interval_ms = 200\n"
            "eject = { consecutive_failures = 1, base_ms = 60000, max_ms = 60000 }\n"))
        for _ in range(4):
            self.assertEqual(self.origin_of(k), "b")  # refused on .2, retried on .3
        self.assertEqual(k.metric("ktlb_upstream_ejections_total", upstream="app"), 1)
        failures = k.metric("ktlb_upstream_connect_failures_total", upstream="app")
        self.assertGreaterEqual(failures, 1)

        self.write_hosts("127.0.0.2 app.ktlb.test\n127.0.0.3 app.ktlb.test\n"
                         "127.0.0.4 app.ktlb.test\n")
        self.wait_for("the third address in service", lambda: self.origin_of(k) == "c")
        seen = {self.origin_of(k) for _ in range(8)}
        self.assertEqual(seen, {"b", "c"})
        self.assertEqual(k.metric("ktlb_upstream_ejections_total", upstream="app"), 1)
        self.assertEqual(k.metric("ktlb_upstream_connect_failures_total", upstream="app"),
                         failures, "the ejected server was tried again after the swap")

    def test_check_needs_no_dns_and_start_fails_with_file_line(self):
        port = harness.free_port()
        text = self.config(f'["127.0.0.1:{port}",\n  {{ address = "nowhere.ktlb.test:{port}", weight = 2 }}]')
        path = os.path.join(self.tmp, f"unresolvable-{self.ns}.toml")
        with open(path, "w") as f:
            f.write(text)
        line = text.splitlines().index(f'  {{ address = "nowhere.ktlb.test:{port}", weight = 2 }}]') + 1
        r = self.run_ktlb("--check", "--config", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok", r.stderr)

        r = self.run_ktlb("--config", path, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, re.escape(f"{path}:{line}: upstreams[0].servers[1].address: "
                                             'cannot resolve "nowhere.ktlb.test": '))

        # Once the name resolves, the same file starts.
        self.write_hosts("127.0.0.2 nowhere.ktlb.test\n")
        self.origin_at("127.0.0.2", port, "a")
        k = self.ktlb(text)
        self.assertEqual(self.origin_of(k), "a")  # 127.0.0.1:port has no origin: ejected/retried

    def test_reload_keeps_last_good_addresses(self):
        port = harness.free_port()
        self.origin_at("127.0.0.2", port, "a")
        self.write_hosts("127.0.0.2 app.ktlb.test\n")
        # resolve once: only loads (startup, reload) resolve.
        text = self.config(f'["app.ktlb.test:{port}"]', "resolve_interval_ms = 0\n")
        k = self.ktlb(text)
        self.assertEqual(self.origin_of(k), "a")
        self.write_hosts("")
        k.signal(1)  # SIGHUP
        self.wait_for("the reload", lambda: "config " in k.log() and "in service" in k.log())
        self.assertIn('cannot resolve "app.ktlb.test"', k.log())
        self.assertIn("keeping its 1 last good address(es)", k.log())
        self.assertEqual(self.origin_of(k), "a")


if __name__ == "__main__":
    harness.main()
