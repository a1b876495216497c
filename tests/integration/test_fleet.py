"""A fleet behind an L4 balancer, in network namespaces: a rolling restart of
two ktlb hosts under load fails no request, and a session made on one host
resumes on the other (one ticket_keys file for the fleet).

    client --- router --- hostA (ktlb + origin)
                     \\--- hostB (ktlb + origin)

The router is a flow-aware L4 balancer made of nftables: a new flow to the VIP
is DNATed to one host picked by `numgen inc mod N map {...}`, and conntrack
keeps every established flow on the host it started on (a plain ECMP route
withdrawal would re-hash those flows onto the other host, which resets them).
A health checker in the router polls each host's admin /healthz, as an L4
balancer's checks would, and keeps in the map only the hosts answering 200.

Each host is drained in turn: SIGTERM, /healthz answers 503 at once, the checker
withdraws the host while `drain_grace_ms` still has it accepting, the host
finishes its connections and exits, is started again and re-added. Under wrk
(HTTP/1.1 keep-alive), h2load (HTTP/2) and a stream of new TLS connections from
the client namespace, nothing fails and both hosts serve. h2load connects first,
alone, so that two of its connections are on the drained host; the drained
process's access log shows every request it took while draining answered 200.

Everything the test creates (namespaces, veth pairs inside them, addresses from
the benchmarking range 198.18.0.0/15, nft rules, processes) is removed
afterwards, also on failure.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import unittest

import harness
import netns

VIP = "198.19.0.80"
PORT = 443
ADMIN_PORT = 9901
ORIGIN = "127.0.0.1:8080"  # inside each host namespace
# The balancer's checks: every CHECK_INTERVAL_S, FALL failures withdraw a host,
# RISE successes add it. drain_grace_ms covers the interval times the fall
# count with room to spare, as the README tells operators to set it.
CHECK_INTERVAL_S = 0.1
FALL = 2
RISE = 2
GRACE_MS = 3000
PHASE_S = 16  # load per drained host: 1.5 s, the roll (4-11 s seen here), then the restarted host serves

HOSTS = {  # name: (router side, host side) of the link, as /24s
    "hostA": ("198.18.1.1", "198.18.1.2"),
    "hostB": ("198.18.2.1", "198.18.2.2"),
}

_SKIP = netns.missing_requirements("nft")


class L4Balancer:
    """DNAT of VIP:PORT over the healthy hosts, and the health checker that
    decides which are healthy. Runs in the router namespace."""

    TABLE = "ktlb_fleet"

    def __init__(self, router, hosts):
        self.router = router
        self.hosts = hosts  # {name: address}, in map order
        self.members = ()
        self.events = []  # (monotonic time, name, "added" | "withdrawn")
        self.first_failed_check = {}  # name: monotonic time of the latest first failed check
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.error = None
        router.run("nft", "-f", "-", input=(
            f"table ip {self.TABLE} {{\n"
            f"  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
            f"}}\n"))
        self._thread = threading.Thread(target=self._check_loop, daemon=True)
        self._thread.start()

    def _write_map(self, members):
        # One nft transaction: new flows see either the old rule or the new one,
        # never none. Established flows are conntrack's and never look at it.
        script = f"flush chain ip {self.TABLE} prerouting\n"
        if members:
            entries = ", ".join(f"{i} : {self.hosts[m]}" for i, m in enumerate(members))
            script += (f"add rule ip {self.TABLE} prerouting ip daddr {VIP} tcp dport {PORT} "
                       f"dnat to numgen inc mod {len(members)} map {{ {entries} }}\n")
        # Run from the checker's thread, which is in the router namespace, and
        # so is nft's process: no `ip netns exec`, whose mount namespace set-up
        # makes each update slower on a loaded machine.
        r = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"nft failed ({r.returncode}): {r.stderr}\n{script}")

    def _healthy(self, name):
        try:
            status, _, _ = harness.http_get(f"http://{self.hosts[name]}:{ADMIN_PORT}/healthz", timeout=0.5)
            return status == 200
        except OSError:
            return False

    def _check_loop(self):
        try:
            self.router.enter()
            ok = {n: 0 for n in self.hosts}
            bad = {n: 0 for n in self.hosts}
            while not self._stop.is_set():
                members = list(self.members)
                for name in self.hosts:
                    if self._healthy(name):
                        ok[name], bad[name] = ok[name] + 1, 0
                        if ok[name] >= RISE and name not in members:
                            members.append(name)
                    else:
                        if bad[name] == 0:
                            self.first_failed_check[name] = time.monotonic()
                        ok[name], bad[name] = 0, bad[name] + 1
                        if bad[name] >= FALL and name in members:
                            members.remove(name)
                members = tuple(n for n in self.hosts if n in members)
                if members != self.members:
                    self._write_map(members)
                    now = time.monotonic()
                    with self._cond:
                        for n in (n for n in self.hosts if (n in members) != (n in self.members)):
                            self.events.append((now, n, "added" if n in members else "withdrawn"))
                        self.members = members
                        self._cond.notify_all()
                self._stop.wait(CHECK_INTERVAL_S)
        except BaseException as e:  # noqa: BLE001 - surfaced by wait_members
            with self._cond:
                self.error = e
                self._cond.notify_all()

    def wait_members(self, members, timeout):
        """Waits until the map holds exactly `members`; returns the monotonic time it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while set(self.members) != set(members):
                if self.error:
                    raise AssertionError(f"health checker failed: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"balancer map is {self.members}, not {members}, after {timeout}s; "
                                         f"events {self.events}")
                self._cond.wait(left)
            return self.events[-1][0] if self.events else time.monotonic()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)


@unittest.skipIf(_SKIP, _SKIP)
class FleetTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for name in HOSTS:
            cls.host_certs(name)
        # The fleet's session-ticket keys, shared by every host (nginx's
        # ssl_session_ticket_key format: 80-byte records).
        with open(os.path.join(cls.tmp, "fleet.keys"), "wb") as f:
            f.write(os.urandom(160))

    @classmethod
    def host_certs(cls, name):
        """fleet.crt/fleet.key in DIR/NAME: the host's own leaf (CN=fleet-NAME,
        SAN localhost and the VIP) from the test PKI's intermediate CA."""
        d = os.path.join(cls.tmp, name)
        os.makedirs(d)
        ext = os.path.join(d, "ext.cnf")
        with open(ext, "w") as f:
            f.write("[v3]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
                    f"extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:{VIP}\n")
        key, csr, leaf = (os.path.join(d, f) for f in ("fleet.key", "fleet.csr", "leaf.pem"))
        inter = os.path.join(cls.certs, "intermediate")
        for argv in (
            ["openssl", "genpkey", "-quiet", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
            ["openssl", "req", "-new", "-key", key, "-subj", f"/O=ktlb test/CN=fleet-{name}", "-out", csr],
            ["openssl", "x509", "-req", "-in", csr, "-CA", inter + ".crt", "-CAkey", inter + ".key",
             "-set_serial", "0x" + os.urandom(16).hex(), "-days", "30", "-sha256",
             "-extfile", ext, "-extensions", "v3", "-out", leaf],
        ):
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
        with open(os.path.join(d, "fleet.crt"), "w") as out:
            for part in (leaf, inter + ".crt"):
                with open(part) as f:
                    out.write(f.read())

    # -- the network --

    def setUp(self):
        super().setUp()
        tag = f"ktlbfleet-{os.getpid()}"
        self.ns = {}
        for role in ("client", "router", *HOSTS):
            n = netns.Netns(f"{tag}-{role}")
            self.addCleanup(n.delete)  # runs after tearDown stopped the processes inside
            self.ns[role] = n
        client, router = self.ns["client"], self.ns["router"]
        netns.veth(router, "to-client", client, "to-router")
        router.ip("addr", "add", "198.18.0.1/24", "dev", "to-client")
        client.ip("addr", "add", "198.18.0.2/24", "dev", "to-router")
        client.ip("route", "add", "default", "via", "198.18.0.1")
        for name, (router_ip, host_ip) in HOSTS.items():
            host = self.ns[name]
            netns.veth(router, f"to-{name}", host, "to-router")
            router.ip("addr", "add", f"{router_ip}/24", "dev", f"to-{name}")
            host.ip("addr", "add", f"{host_ip}/24", "dev", "to-router")
            # Replies go back through the router, whose conntrack undoes the DNAT.
            host.ip("route", "add", "default", "via", router_ip)
        router.sysctl("net.ipv4.ip_forward", 1)
        self.config = ("[server]\n" + harness.server_table(
            workers=1, admin_listen=f'"0.0.0.0:{ADMIN_PORT}"', drain_grace_ms=GRACE_MS,
            access_log='"access.log"', ticket_keys='"../fleet.keys"') + f"""
[[listeners]]
name = "public"
listen = "0.0.0.0:{PORT}"
mode = "terminate"
certificates = ["fleet"]
alpn = ["h2", "http/1.1"]

[[certificates]]
name = "fleet"
cert = "fleet.crt"
key = "fleet.key"

[[routes]]
listener = "public"
upstream = "app"

[[upstreams]]
name = "app"
servers = ["{ORIGIN}"]
""")
        self.starts = {name: 0 for name in HOSTS}
        self.ktlbs = {}

    def wait_accepts(self, ns, addrs, proc, what, log=lambda: ""):
        def poll():
            deadline = time.monotonic() + harness.START_TIMEOUT
            for addr in addrs:
                while not harness.port_accepts(addr):
                    if proc.poll() is not None:
                        return f"{what} exited with {proc.returncode} before listening on {addr}"
                    if time.monotonic() > deadline:
                        return f"{what} is not listening on {addr}"
                    time.sleep(0.02)
            return None
        problem = ns.call(poll)
        if problem:
            self.fail(f"[{ns.name}] {problem}\n{log()}")

    def start_origin(self, name):
        ns = self.ns[name]
        proc = harness._spawn(ns.prefix + [harness.origin_bin(), "--listen", ORIGIN, "--threads", "1",
                                           "--name", name],
                              os.path.join(self.tmp, f"origin-{name}.log"))
        self.addCleanup(harness._kill, proc)
        self.wait_accepts(ns, [ORIGIN], proc, f"ktlb-origin in {name}")

    def origin_requests(self, name):
        _, _, body = self.ns[name].call(harness.http_get, f"http://{ORIGIN}/stats")
        return int(re.match(rb"requests (\d+)\n", body).group(1))

    def start_ktlb(self, name):
        """ktlb in host `name`'s namespace, with the fleet's config in the
        host's directory (its own fleet.crt/fleet.key beside it)."""
        self.starts[name] += 1
        d = os.path.join(self.tmp, name)
        k = harness.Ktlb.__new__(harness.Ktlb)
        k.workdir, k.config_text = d, self.config
        k.config_path = os.path.join(d, "ktlb.toml")
        k.log_path = os.path.join(d, f"ktlb-{self.starts[name]}.log")
        k.listeners, k.admin, k.stopped = {"public": f"{VIP}:{PORT}"}, None, False
        with open(k.config_path, "w") as f:
            f.write(self.config)
        k.proc = harness._spawn(self.ns[name].prefix + [harness.ktlb_bin(), "--config", k.config_path],
                                k.log_path, cwd=d)
        self._test_procs.append(k)  # tearDown stops it by PID and prints its log on failure
        host_ip = HOSTS[name][1]
        self.wait_accepts(self.ns[name], [f"{host_ip}:{PORT}", f"{host_ip}:{ADMIN_PORT}"], k.proc, f"ktlb in {name}",
                          k.log)
        self.ktlbs[name] = k
        return k

    def h2_connections(self):
        """{host: HTTP/2 connections its ktlb accepted} (h2load's alone: wrk
        and the new-connection stream speak HTTP/1.1), read from the router."""
        def read():
            out = {}
            for name, (_, ip) in HOSTS.items():
                status, _, body = harness.http_get(f"http://{ip}:{ADMIN_PORT}/metrics", timeout=5)
                if status != 200:
                    raise AssertionError(f"{name}: /metrics answered {status}")
                out[name] = harness.metric_value(harness.parse_prometheus(body.decode()),
                                                 "ktlb_h2_connections_total")
            return out
        return self.ns["router"].call(read)

    def wait_h2_connections(self, before, n):
        """Waits until the hosts accepted `n` more HTTP/2 connections than `before`."""
        deadline = time.monotonic() + 20
        while sum(self.h2_connections().values()) - sum(before.values()) < n:
            self.assertLess(time.monotonic(), deadline, "h2load did not connect")
            time.sleep(0.05)

    def end_load(self, load):
        """Stops a load run cut short by a failure (by PID)."""
        load._stop.set()
        for p in (load.wrk, load.h2):
            harness._kill(p)
        load._thread.join(timeout=30)

    # -- the test --

    def roll(self, name, others, lb):
        """Drains host `name` and starts it again; returns the timings."""
        k = self.ktlbs[name]
        t0 = time.monotonic()
        sigterm_wall = time.time()
        k.signal(signal.SIGTERM)
        withdrawn = lb.wait_members(others, timeout=10) - t0
        noticed = lb.first_failed_check[name] - t0
        # The balancer must move new flows away while the host still accepts.
        self.assertLess(withdrawn, GRACE_MS / 1000, f"{name} withdrawn {withdrawn:.2f}s after SIGTERM "
                        f"(first failed check at {noticed:.2f}s), after its drain_grace_ms ended")
        try:
            code = k.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail(f"{name} did not exit after SIGTERM\n{k.log()}")
        exited = time.monotonic() - t0
        k.stopped = True
        self.assertEqual(code, 0, k.log())
        self.check_drain_log(name, sigterm_wall)
        self.start_ktlb(name)
        added = lb.wait_members(tuple(HOSTS), timeout=10) - t0
        return noticed, withdrawn, exited, added

    def check_drain_log(self, name, since):
        """The exited process's access log from SIGTERM on: every request it
        took while draining (HTTP/1.1 and HTTP/2 streams) was answered 200,
        none aborted or refused. Moved aside, so that the next process of the
        host starts a log of its own."""
        d = os.path.join(self.tmp, name)
        path = os.path.join(d, f"access-{self.starts[name]}.log")
        os.rename(os.path.join(d, "access.log"), path)
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since)) + f".{int(since * 1000) % 1000:03d}Z"
        seen, bad = {}, []
        with open(path, "rb") as f:
            for line in f:
                t = line[9:33].decode()  # {"time":"2026-12-02T15:11:51.917Z",...
                if t < cutoff:
                    continue
                entry = json.loads(line)
                seen[entry["version"]] = seen.get(entry["version"], 0) + 1
                if entry["status"] != 200 or entry.get("error"):
                    bad.append(entry)
        print(f"\n[drain {name}] requests logged from SIGTERM to exit: {seen}", flush=True)
        self.assertEqual(bad[:10], [], f"{name}: {len(bad)} requests failed while it drained")
        self.assertGreater(sum(seen.values()), 0, f"{name}: served nothing while it drained")

    def check_load(self, load, wrk_out, h2):
        tag = load.tag
        self.assertEqual(load.failed, [], f"{tag}: new TLS connections failed")
        self.assertGreater(load.ok, 10, tag)
        self.assertEqual(set(load.served_by), {f"fleet-{n}" for n in HOSTS},
                         f"{tag}: new connections were not served by both hosts: {load.served_by}")
        self.assertRegex(wrk_out, r"\d+ requests in", wrk_out)
        self.assertNotIn("Socket errors", wrk_out, wrk_out)
        self.assertNotIn("Non-2xx", wrk_out, wrk_out)
        self.assertIsNotNone(h2, load.h2_out)
        # h2load never opens a new connection after a GOAWAY: its two
        # connections to the drained host end there (a browser would reconnect,
        # and the new flow would go to the other host), and the other two carry
        # on. Requests it had queued on a connection when the GOAWAY arrived
        # never leave it: nghttp2 refuses to start them, and h2load counts them
        # done, failed and errored (at most -m8 per drained connection). That
        # ktlb answered every stream it did receive with a 200 is checked in
        # its access log (check_drain_log). Here: no other failure, no stream
        # left hanging but those open on the two surviving connections when
        # the duration ends, no timeout, no 4xx or 5xx.
        started = int(re.search(r"requests: \d+ total, (\d+) started", load.h2_out).group(1))
        self.assertGreater(h2["succeeded"], 0, load.h2_out)
        self.assertLessEqual(h2["done"] - h2["succeeded"], 2 * 8, load.h2_out)
        self.assertLessEqual(started - h2["done"], 2 * 8, load.h2_out)
        self.assertEqual(h2["timeout"], 0, load.h2_out)
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", load.h2_out)
        self.assertIsNotNone(m, load.h2_out)
        self.assertGreater(int(m.group(1)), 0, load.h2_out)
        self.assertEqual((m.group(3), m.group(4)), ("0", "0"), load.h2_out)

    def visit(self, host_ip, flag, sess_in=None, sess_out=None):
        """One s_client connection from the client namespace straight to a
        host, carrying one request; returns "New" or "Reused". -ign_eof reads
        until ktlb closes, so a TLS 1.3 ticket reaches -sess_out."""
        argv = ["openssl", "s_client", "-connect", f"{host_ip}:{PORT}", "-servername", "localhost",
                "-CAfile", self.ca, flag, "-ign_eof"]
        if sess_in:
            argv += ["-sess_in", sess_in]
        if sess_out:
            argv += ["-sess_out", sess_out]
        r = subprocess.run(self.ns["client"].prefix + argv, capture_output=True, timeout=60,
                           input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        out = (r.stdout + r.stderr).decode(errors="replace")
        self.assertIn("200 OK", out, out)
        m = re.search(r"^(New|Reused), TLSv1\.\d", out, re.M)
        self.assertIsNotNone(m, out)
        return m.group(1)

    def test_sessions_resume_across_hosts(self):
        for name in HOSTS:
            self.start_origin(name)
            self.start_ktlb(name)
        sess = os.path.join(self.tmp, "fleet.sess")
        a, b = HOSTS["hostA"][1], HOSTS["hostB"][1]
        for flag in ("-tls1_3", "-tls1_2"):
            # As when the balancer re-hashes a returning client to another host.
            self.assertEqual(self.visit(a, flag, sess_out=sess), "New")
            self.assertEqual(self.visit(b, flag, sess_in=sess), "Reused", f"{flag}: B did not resume A's session")
            self.assertEqual(self.visit(b, flag, sess_out=sess), "New")
            self.assertEqual(self.visit(a, flag, sess_in=sess), "Reused", f"{flag}: A did not resume B's session")
        for name in HOSTS:
            k = self.ktlbs[name]
            self.assertGreaterEqual(
                self.ns["router"].call(lambda ip=HOSTS[name][1]: harness.metric_value(harness.parse_prometheus(
                    harness.http_get(f"http://{ip}:{ADMIN_PORT}/metrics", timeout=5)[2].decode()),
                    "ktlb_tls_resumptions_total", source="ticket_file")), 2, k.log())

    def test_rolling_restart_behind_l4_balancer(self):
        for name in HOSTS:
            self.start_origin(name)
            self.start_ktlb(name)
        lb = L4Balancer(self.ns["router"], {n: ip for n, (_, ip) in HOSTS.items()})
        self.addCleanup(lb.stop)
        lb.wait_members(tuple(HOSTS), timeout=10)

        for name in HOSTS:
            others = tuple(n for n in HOSTS if n != name)
            # h2load connects first and alone: numgen inc then puts two of its
            # four connections on each host, so the drained host has some.
            h2_before = self.h2_connections()
            load = harness.LoadRun(PORT, self.ca, PHASE_S, f"drain {name}", host=VIP, netns=self.ns["client"],
                                   h2_connected=lambda: self.wait_h2_connections(h2_before, 4))
            self.addCleanup(self.end_load, load)
            start = time.monotonic()
            h2_after = self.h2_connections()
            self.assertEqual({n: h2_after[n] - h2_before[n] for n in HOSTS}, {n: 2 for n in HOSTS})
            time.sleep(1.5)
            served = {n: self.origin_requests(n) for n in HOSTS}
            noticed, withdrawn, exited, added = self.roll(name, others, lb)
            readded_at = self.origin_requests(name)
            print(f"\n[drain {name}] after SIGTERM: first 503 seen at {noticed:.2f}s, withdrawn at {withdrawn:.2f}s, "
                  f"exited at {exited:.2f}s, restarted and re-added at {added:.2f}s", flush=True)
            # The restarted host takes new flows again while the load still runs.
            while self.origin_requests(name) < readded_at + 20:
                self.assertLess(time.monotonic() - start, PHASE_S - 0.5,
                                f"{name} served nothing after it was re-added")
                time.sleep(0.1)
            time.sleep(max(0.0, PHASE_S - (time.monotonic() - start)))
            wrk_out, h2 = load.stop()
            self.check_load(load, wrk_out, h2)
            for n in HOSTS:
                self.assertGreater(self.origin_requests(n), served[n], f"{n} served nothing while {name} rolled")
        self.assertEqual([(n, what) for _, n, what in lb.events],
                         [(n, "added") for n in HOSTS] +
                         [e for n in HOSTS for e in ((n, "withdrawn"), (n, "added"))])


if __name__ == "__main__":
    harness.main()
