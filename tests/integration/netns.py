"""Network namespaces for integration tests that need more than 127.0.0.1: a
client, a router and hosts, each with its own stack, joined by veth pairs.

Standard library only. Commands run in a namespace through `ip netns exec`,
which enters it and then execs the command itself, so the Popen's pid is the
command's and a test kills it by PID as usual. Python code runs in one through
Netns.call / Netns.enter, which move only the calling thread (setns(2) with
CLONE_NEWNET is per thread), never the test's main thread.
"""

import ctypes
import os
import shutil
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def missing_requirements(*tools):
    """Why namespace tests cannot run here (a reason for unittest's skip), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, nftables)"
    for tool in ("ip",) + tools:
        if not shutil.which(tool):
            return f"needs `{tool}` (tools/setup.sh installs it)"
    return None


class Netns:
    """A named network namespace (`ip netns add NAME`) with loopback up.
    delete() removes it and with it every interface inside (a veth pair goes
    when either end's namespace goes)."""

    def __init__(self, name):
        self.name = name
        self.path = f"/run/netns/{name}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        self.deleted = False
        self.ip("link", "set", "lo", "up")

    @property
    def prefix(self):
        """The argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv, input=None, check=True):
        """Runs a command inside; returns CompletedProcess (text). Raises with
        the command's output when it fails and `check` is set."""
        r = subprocess.run(self.prefix + list(argv), input=input, capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def ip(self, *args):
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True, timeout=30)

    def sysctl(self, key, value):
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def enter(self):
        """Moves the calling thread into the namespace (for a thread that
        opens sockets there for its whole life)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.path}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a fresh thread inside the namespace; returns
        its result or raises its exception."""
        out = {}

        def body():
            try:
                self.enter()
                out["value"] = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                out["error"] = e

        t = threading.Thread(target=body)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out.get("value")

    def delete(self):
        if not self.deleted:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self.deleted = True


def veth(a, a_if, b, b_if):
    """A veth pair with one end (a_if) in namespace a and the other (b_if) in b,
    created there directly: the root namespace never holds either end."""
    subprocess.run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if,
                    "netns", b.name], check=True, capture_output=True, timeout=30)
    a.ip("link", "set", a_if, "up")
    b.ip("link", "set", b_if, "up")
