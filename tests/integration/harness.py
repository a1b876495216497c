"""Integration-test harness: real ktlb and ktlb-origin processes, real clients.

Standard library only (runs under /usr/bin/python3). ctest runs every
test_*.py as `/usr/bin/python3 test_x.py` from tests/integration with
KTLB_BIN, KTLB_ORIGIN_BIN and KTLB_SOURCE_DIR in the environment.

What it gives a test:
  - KtlbTestCase: a temp dir per test class with a fresh test PKI (gen-certs.sh),
    every process it starts killed by PID in tearDown/tearDownClass/atexit, and
    the logs of the ktlb instances printed when a test fails;
  - self.origin(name) -> Origin (ktlb-origin on a free port, ready to accept);
  - self.ktlb(config_toml_text) -> Ktlb (ready: every listener and the admin
    port accept), .stop() (SIGTERM, asserts exit code 0), .metrics();
  - self.curl(...), self.s_client(...), HttpConn (raw HTTP/1.1 over TLS or TCP);
  - pattern_sha256(n): the hash of the origin's /size/N body.

Metrics are Prometheus counters summed over workers; a counter that was never
incremented may be absent and reads as 0. Tests compare deltas, never absolute
values (readiness probes open connections too).
"""

import atexit
import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("KTLB_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
GEN_CERTS = os.path.join(SOURCE_DIR, "tools", "gen-certs.sh")


def _binary(var):
    path = os.environ.get(var)
    if not path:
        raise RuntimeError(f"{var} is not set (ctest sets it; by hand: {var}=build/... python3 test_x.py)")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{var}={path} is not an executable (is it built?)")
    return path


def ktlb_bin():
    return _binary("KTLB_BIN")


def origin_bin():
    return _binary("KTLB_ORIGIN_BIN")


# Generous by default: the suite also runs under ASan (about 3x slower), two tests
# at a time, on machines that may be shared or slow. Deadlines are for conditions
# (a port accepts, a counter moves), so a fast machine never waits them out.
START_TIMEOUT = 30.0
CLIENT_TIMEOUT = 60.0

# Every ktlb a test starts states the timeouts it relies on instead of taking
# ktlb's defaults: far beyond anything a test needs, so that a slow run never
# meets a timeout it did not ask for (a connection held idle between two steps,
# a large body on a loaded machine). A test that exercises a timeout sets that one
# short itself (server={"keepalive_timeout_ms": "500"}).
TEST_TIMEOUTS_MS = {
    "handshake_timeout_ms": 60000,
    "request_header_timeout_ms": 120000,
    "keepalive_timeout_ms": 120000,
    "upstream_connect_timeout_ms": 30000,
    "upstream_response_timeout_ms": 120000,
    "drain_timeout_ms": 10000,
    "tunnel_idle_timeout_ms": 600000,
    "send_timeout_ms": 120000,
}


def server_table(**overrides):
    """The body of a [server] table: TEST_TIMEOUTS_MS with `overrides`
    ({key: toml literal}) on top, one "key = value" line each."""
    keys = {k: str(v) for k, v in TEST_TIMEOUTS_MS.items()}
    # The passthrough tests run with either forwarding mode
    # (KTLB_PASSTHROUGH_FORWARDING=sockmap|splice|auto; unset = the default).
    if os.environ.get("KTLB_PASSTHROUGH_FORWARDING"):
        keys["passthrough_forwarding"] = '"%s"' % os.environ["KTLB_PASSTHROUGH_FORWARDING"]
    keys.update(overrides)
    return "".join(f"{k} = {v}\n" for k, v in keys.items())

# ---------------------------------------------------------------------------
# Processes: every child is registered so that nothing outlives the tests.

_ALL_PROCS = []


def _kill(proc):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@atexit.register
def _kill_all():
    for p in _ALL_PROCS:
        _kill(p)


def _spawn(argv, log_path, **kw):
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kw)
    finally:
        log.close()
    _ALL_PROCS.append(proc)
    return proc


# ---------------------------------------------------------------------------
# Sockets.


_HANDED_OUT = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_PORT_RNG = random.Random(os.getpid() ^ int(time.time() * 1000))


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago, and never handed
    out before by this process (one config must not get the same port for
    two listeners).

    Picked below the kernel's ephemeral range: a port from that range can be
    taken a moment later as the source port of some outgoing connection (the
    suite runs load generators in parallel), and a listener then cannot bind
    it. Below the range only another listener can take it."""
    lo = 10000
    hi = max(lo + 1000, _EPHEMERAL[0] - 1)
    while True:
        port = _PORT_RNG.randrange(lo, hi)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def port_accepts(addr, timeout=0.5):
    host, port = split_addr(addr) if isinstance(addr, str) else addr
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_closed(sock, timeout):
    """Reads and discards until EOF or reset. Returns the seconds it took, or
    None when the peer kept the connection open past `timeout`."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return None
        except ssl.SSLError:
            return time.monotonic() - start  # a TLS alert or a broken record: gone
        except OSError:  # ECONNRESET and friends
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start


# ---------------------------------------------------------------------------
# The origin's deterministic body pattern (see tools/origin/origin.cc).

_PATTERN_PERIOD = 65521
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PATTERN = bytes(_ALPHABET[(j * 31 + j // 64) % 64] for j in range(_PATTERN_PERIOD))


def pattern(n):
    """The first n bytes of every /size, /chunked and /close body."""
    reps = n // _PATTERN_PERIOD + 1
    return (_PATTERN * reps)[:n]


def pattern_sha256(n):
    h = hashlib.sha256()
    full, rest = divmod(n, _PATTERN_PERIOD)
    block = _PATTERN * 64
    for _ in range(full // 64):
        h.update(block)
    for _ in range(full % 64):
        h.update(_PATTERN)
    h.update(_PATTERN[:rest])
    return h.hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


# ---------------------------------------------------------------------------
# Certificates: gen-certs.sh runs once per machine and script version (a few
# seconds of RSA key generation), under a lock so that parallel ctest runs
# share it; each test class gets its own copy.


def _cert_cache():
    with open(GEN_CERTS, "rb") as f:
        version = hashlib.sha256(f.read()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), f"ktlb-it-certs-{os.getuid()}-{version}")
    with open(cache + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(cache, "ca.crt")):
            subprocess.run(["bash", GEN_CERTS, cache], check=True, timeout=120)
    return cache


def make_certs(dest):
    shutil.copytree(_cert_cache(), dest, ignore=shutil.ignore_patterns(".*"))


# ---------------------------------------------------------------------------
# Plain HTTP (admin endpoint, origin /stats) without any proxy from the env.

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url, timeout=10):
    """(status, headers, body) of a plain-HTTP GET; HTTP errors are returned."""
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): float} from Prometheus text format."""
    out = {}
    line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?\s*$")
    label_re = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        labels = {}
        body = m.group(3) or ""
        pos = 0
        while pos < len(body):
            lm = label_re.match(body, pos)
            if not lm:
                raise ValueError(f"bad labels in {line!r}")
            value = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            labels[lm.group(1)] = value
            pos = lm.end()
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out


def metric_value(metrics, name, **labels):
    """Sum of every series of `name` whose labels include `labels` (absent = 0)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


# ---------------------------------------------------------------------------
# Processes under test.


class Origin:
    """A ktlb-origin on a free port. `addr` is "127.0.0.1:PORT"."""

    def __init__(self, workdir, name, threads=1, port=None):
        self.name = name
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, f"origin-{name}-{self.port}.log")
        argv = [origin_bin(), "--listen", self.addr, "--threads", str(threads), "--name", name]
        self.proc = _spawn(argv, self.log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_accepts(self.addr):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ktlb-origin exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ktlb-origin did not listen on {self.addr}:\n{self.log()}")
            time.sleep(0.02)

    def url(self, path="/"):
        return f"http://{self.addr}{path}"

    def requests(self):
        """Request heads the origin received so far (its /stats; not counting /stats)."""
        status, _, body = http_get(self.url("/stats"))
        m = re.match(rb"requests (\d+)\n", body)
        if status != 200 or not m:
            raise AssertionError(f"bad /stats answer {status} {body!r}")
        return int(m.group(1))

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        _kill(self.proc)


class Ktlb:
    """A running ktlb with the given config (written into `workdir`).

    Construction returns once every listener and the admin port accept; it
    raises with the log if ktlb exits first or START_TIMEOUT passes.
    """

    _seq = 0

    def __init__(self, workdir, config_text, wait=True, args=(), launcher=()):
        Ktlb._seq += 1
        self.workdir = workdir
        self.config_text = config_text
        self.config_path = os.path.join(workdir, f"ktlb-{Ktlb._seq}.toml")
        self.log_path = os.path.join(workdir, f"ktlb-{Ktlb._seq}.log")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        cfg = tomllib.loads(config_text)
        self.listeners = {l["name"]: l["listen"] for l in cfg.get("listeners", [])}
        self.admin = cfg.get("server", {}).get("admin_listen")
        # `launcher`: a command that execs ktlb (argv follows it), e.g. to
        # set its environment from its own PID as systemd does.
        self.proc = _spawn([*launcher, ktlb_bin(), "--config", self.config_path, *args],
                           self.log_path, cwd=workdir)
        self.stopped = False
        if wait:
            self.wait_ready()

    @property
    def pid(self):
        """The ktlb process id (one process: workers are threads), e.g. for /proc/PID/status."""
        return self.proc.pid

    # -- lifecycle --

    def wait_ready(self, timeout=START_TIMEOUT):
        addrs = list(self.listeners.values()) + ([self.admin] if self.admin else [])
        deadline = time.monotonic() + timeout
        for addr in addrs:
            while not port_accepts(addr):
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"ktlb exited with {self.proc.returncode} before listening on {addr}\n"
                        f"--- config ---\n{self.config_text}\n--- log ---\n{self.log()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"ktlb is not listening on {addr} after {timeout}s\n"
                                         f"--- log ---\n{self.log()}")
                time.sleep(0.02)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout=40.0, expect_code=0):
        """SIGTERM, wait, and check the exit code. Returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            raise AssertionError(f"ktlb did not exit {timeout}s after SIGTERM\n--- log ---\n{self.log()}")
        self.stopped = True
        if expect_code is not None and code != expect_code:
            raise AssertionError(f"ktlb exited with {code}, expected {expect_code}\n--- log ---\n{self.log()}")
        return code

    def kill(self):
        _kill(self.proc)
        self.stopped = True

    def running(self):
        return self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- addresses --

    def addr(self, listener="public"):
        return self.listeners[listener]

    def port(self, listener="public"):
        return split_addr(self.listeners[listener])[1]

    # -- admin --

    def admin_get(self, path):
        assert self.admin, "config has no admin_listen"
        return http_get(f"http://{self.admin}{path}")

    def metrics(self):
        status, _, body = self.admin_get("/metrics")
        if status != 200:
            raise AssertionError(f"/metrics answered {status}: {body[:200]!r}")
        return parse_prometheus(body.decode())

    def metric(self, name, **labels):
        return metric_value(self.metrics(), name, **labels)

    def wait_metric(self, name, at_least, timeout=30.0, **labels):
        """Polls until metric(name, **labels) >= at_least; returns the last value.
        Counters may lag the client-visible event by a moment (a worker updates
        them when it gets to the connection's teardown)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.metric(name, **labels)
            if v >= at_least or time.monotonic() > deadline:
                return v
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# Load while something happens (a reload, an upgrade): wrk (HTTP/1.1
# keep-alive), h2load (HTTP/2) and a stream of new TLS connections, one
# request each, so that every kind of client meets the event.


class LoadRun:
    """Starts the load on `port` for `seconds`; stop() returns a summary.
    Every failure of the new-connection stream is kept as evidence."""

    def __init__(self, port, cafile, seconds, tag, host="127.0.0.1", netns=None, h2_connected=None):
        """`netns` runs the load from inside a network namespace (netns.Netns:
        `.prefix` runs a command there, `.enter()` moves a thread there)
        against `host`. `h2_connected`, if given, is called after h2load
        starts and before anything else does; it may wait for h2load's
        connections (a flow balancer then spreads them alone, evenly)."""
        url = f"https://{host}:{port}/"
        self.tag = tag
        self.host, self.port, self.cafile, self.netns = host, port, cafile, netns
        prefix = list(netns.prefix) if netns else []
        self.h2 = subprocess.Popen(prefix + ["h2load", "-c4", "-m8", f"-D{seconds}", url],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if h2_connected:
            try:
                h2_connected()
            except BaseException:
                _kill(self.h2)
                raise
        self.wrk = subprocess.Popen(prefix + ["wrk", "-t1", "-c8", f"-d{seconds}s", url],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.ok = 0
        self.failed = []
        # New connections answered, by the commonName of the certificate that
        # answered them: which host of a fleet served each one.
        self.served_by = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._new_connections)
        self._thread.start()

    def _new_connections(self):
        if self.netns:
            self.netns.enter()
        ctx = ssl.create_default_context(cafile=self.cafile)
        while not self._stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=10) as s:
                    with ctx.wrap_socket(s, server_hostname="localhost") as t:
                        t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                        data = b""
                        while chunk := t.recv(65536):
                            data += chunk
                        subject = dict(rdn[0] for rdn in t.getpeercert()["subject"])
                if data.startswith(b"HTTP/1.1 200"):
                    self.ok += 1
                    cn = subject.get("commonName", "")
                    self.served_by[cn] = self.served_by.get(cn, 0) + 1
                else:
                    self.failed.append(data[:80])
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                self.failed.append(repr(e))
            time.sleep(0.005)

    def stop(self):
        """Stops the new connections, waits for wrk and h2load; prints and
        returns (wrk output, h2load counts {total, done, succeeded, failed,
        errored, timeout} or None)."""
        self._stop.set()
        self._thread.join()
        wrk_out = self.wrk.communicate(timeout=60)[0]
        h2_out = self.h2.communicate(timeout=60)[0]
        m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", h2_out)
        h2 = None
        if m:
            h2 = dict(zip(("total", "done", "succeeded", "failed", "errored", "timeout"),
                          (int(g) for g in m.groups())))
        print(f"\n[{self.tag}] {self.ok} new TLS connections ok, {len(self.failed)} failed", flush=True)
        print(f"[{self.tag}] wrk: " + " | ".join(
            l.strip() for l in wrk_out.splitlines()
            if "requests in" in l or "Socket errors" in l or "Non-2xx" in l), flush=True)
        print(f"[{self.tag}] h2load: " + " | ".join(
            l.strip() for l in h2_out.splitlines() if l.startswith("requests:")), flush=True)
        self.h2_out = h2_out
        return wrk_out, h2


# ---------------------------------------------------------------------------
# Raw HTTP/1.1 client over TLS or TCP, for pipelining and malformed requests.


class HttpConn:
    """One client connection; write raw bytes, read responses one at a time."""

    def __init__(self, addr, tls=True, cafile=None, server_hostname="localhost", timeout=CLIENT_TIMEOUT,
                 ssl_context=None):
        host, port = split_addr(addr)
        raw = socket.create_connection((host, port), timeout=timeout)
        if tls:
            ctx = ssl_context or ssl.create_default_context(cafile=cafile)
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        else:
            self.sock = raw
        self.sock.settimeout(timeout)
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def request(self, method, path, host="localhost", headers=(), body=None):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        self.send(data)

    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 20)
        except ssl.SSLError as e:
            # A peer that closes without close_notify: treat as EOF.
            if "EOF" in str(e) or "UNEXPECTED_EOF" in str(e):
                data = b""
            else:
                raise
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self):
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed mid-line; have {self.buf[:200]!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed with {len(self.buf)} of {n} body bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self):
        """(status, [(name, value)]) of the next response head (1xx included)."""
        line = self._line()
        m = re.match(rb"HTTP/1\.([01]) (\d{3})(?: .*)?$", line)
        if not m:
            raise AssertionError(f"bad status line {line!r}")
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.partition(b":")
            headers.append((name.decode().strip(), value.decode(errors="replace").strip()))
        return int(m.group(2)), headers

    def read_response(self, head_request=False, skip_1xx=True):
        """(status, headers, body) of the next response."""
        while True:
            status, headers = self.read_head()
            if not (skip_1xx and 100 <= status < 200):
                break
        hdr = {k.lower(): v for k, v in headers}
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if "chunked" in hdr.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    return status, headers, body
                body += self._exactly(size)
                if self._exactly(2) != b"\r\n":
                    raise AssertionError("bad chunk terminator")
        if "content-length" in hdr:
            return status, headers, self._exactly(int(hdr["content-length"]))
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def wait_closed(self, timeout=5.0):
        """Seconds until the peer closed (buffered bytes are dropped), or None."""
        if self.eof:
            return 0.0
        return wait_closed(self.sock, timeout)


def header(headers, name):
    """The values of header `name` (case-insensitive) in a [(name, value)] list."""
    return [v for k, v in headers if k.lower() == name.lower()]


# ---------------------------------------------------------------------------
# The test base class.


class KtlbTestCase(unittest.TestCase):
    """Temp dir + certs per class; processes killed by PID afterwards."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix=f"ktlb-{cls.__name__}-")
        cls.certs = os.path.join(cls.tmp, "certs")
        make_certs(cls.certs)
        cls.ca = os.path.join(cls.certs, "ca.crt")
        cls._class_procs = []

    @classmethod
    def tearDownClass(cls):
        for p in cls._class_procs:
            p.stop() if isinstance(p, Origin) else p.kill()
        if os.environ.get("KTLB_KEEP_TMP"):
            print(f"\n[harness] kept {cls.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def class_origin(cls, name, threads=1):
        """An origin shared by every test of the class."""
        o = Origin(cls.tmp, name, threads)
        cls._class_procs.append(o)
        return o

    def setUp(self):
        super().setUp()
        self._test_procs = []

    def _failed(self):
        outcome = getattr(self, "_outcome", None)
        return outcome is not None and not getattr(outcome, "success", True)

    def tearDown(self):
        problems = []
        for p in self._test_procs:
            if isinstance(p, Ktlb) and not p.stopped:
                if p.running():
                    # Graceful stop so that ASan/UBSan reports surface as a failure.
                    try:
                        p.stop(timeout=40)
                    except AssertionError as e:
                        problems.append(str(e))
                else:
                    problems.append(f"ktlb died during the test with {p.proc.returncode}\n--- log ---\n{p.log()}")
                    p.stopped = True
            elif isinstance(p, Origin):
                p.stop()
        if self._failed():
            for p in self._test_procs:
                if isinstance(p, Ktlb):
                    log = p.log()
                    tail = "\n".join(log.splitlines()[-150:])
                    print(f"\n--- {p.log_path} (exit {p.proc.returncode}) ---\n{tail}\n--- end ---",
                          file=sys.stderr)
        for p in self._test_procs:
            if isinstance(p, Ktlb):
                p.kill()
        super().tearDown()
        if problems and not self._failed():
            self.fail("\n".join(problems))

    # -- process helpers --

    def origin(self, name, threads=1):
        o = Origin(self.tmp, name, threads)
        self._test_procs.append(o)
        return o

    def ktlb(self, config_text, wait=True, args=(), launcher=()):
        k = Ktlb.__new__(Ktlb)
        # Register before it starts so that a failing start is still cleaned up.
        try:
            k.__init__(self.tmp, config_text, wait=wait, args=args, launcher=launcher)
        finally:
            if getattr(k, "proc", None) is not None:
                self._test_procs.append(k)
        return k

    def run_ktlb(self, *args, timeout=30):
        """Runs ktlb to completion (e.g. --check); returns CompletedProcess (text)."""
        return subprocess.run([ktlb_bin(), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)

    # -- config helpers --

    def cert_table(self, name, cert=None, key=None):
        cert = cert or os.path.join(self.certs, f"{name}.crt")
        key = key or os.path.join(self.certs, f"{name}.key")
        return f'[[certificates]]\nname = "{name}"\ncert = "{cert}"\nkey = "{key}"\n'

    def basic_config(self, upstreams, routes=None, server=None, listener=None, certificates=("site", "other"),
                     listener_name="public"):
        """A terminate-mode config on a free port with an admin port.

        upstreams: {name: [addr, ...]} (first one is the default route target).
        routes: list of dicts (keys of [[routes]]), default: everything to the
        first upstream. server / listener: extra keys, as {key: toml-literal}.
        """
        srv = {"workers": "1", "admin_listen": f'"127.0.0.1:{free_port()}"'}
        srv.update({k: str(v) for k, v in TEST_TIMEOUTS_MS.items()})
        srv.update(server or {})
        lst = {
            "name": f'"{listener_name}"',
            "listen": f'"127.0.0.1:{free_port()}"',
            "mode": '"terminate"',
            "certificates": "[" + ", ".join(f'"{c}"' for c in certificates) + "]",
        }
        lst.update(listener or {})
        out = ["[server]"] + [f"{k} = {v}" for k, v in srv.items()]
        out += ["", "[[listeners]]"] + [f"{k} = {v}" for k, v in lst.items()]
        for c in certificates:
            out += ["", self.cert_table(c)]
        if routes is None:
            routes = [{"upstream": next(iter(upstreams))}]
        for r in routes:
            r = dict(r)
            r.setdefault("listener", listener_name)
            out += ["", "[[routes]]"] + [f'{k} = "{v}"' for k, v in r.items()]
        for name, servers in upstreams.items():
            out += ["", "[[upstreams]]", f'name = "{name}"',
                    "servers = [" + ", ".join(f'"{s}"' for s in servers) + "]"]
        return "\n".join(out) + "\n"

    # -- client helpers --

    def curl(self, *args, timeout=CLIENT_TIMEOUT, check=True):
        """Runs curl with the test CA; args are passed through. Returns
        CompletedProcess with bytes stdout/stderr."""
        argv = ["curl", "-sS", "--noproxy", "*", "--cacert", self.ca, "--max-time", str(int(timeout))] + list(args)
        r = subprocess.run(argv, capture_output=True, timeout=timeout + 10, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            self.fail(f"curl failed ({r.returncode}): {' '.join(argv)}\n{r.stderr.decode(errors='replace')}")
        return r

    def url(self, k, path="/", host="localhost", listener="public"):
        """(url, ['--resolve', ...]) for `host` on ktlb's listener."""
        port = k.port(listener)
        return f"https://{host}:{port}{path}", ["--resolve", f"{host}:{port}:127.0.0.1"]

    def get(self, k, path="/", host="localhost", extra=(), listener="public", timeout=CLIENT_TIMEOUT):
        """curl GET through ktlb: (status, headers dict lowercased, body bytes)."""
        url, resolve = self.url(k, path, host, listener)
        hdr_file = os.path.join(self.tmp, f"curl-headers-{os.getpid()}-{time.monotonic_ns()}")
        r = self.curl(*resolve, "-D", hdr_file, *extra, url, timeout=timeout)
        with open(hdr_file, "rb") as f:
            raw = f.read().decode(errors="replace")
        os.unlink(hdr_file)
        # The last head (after any 1xx).
        heads = [h for h in raw.split("\r\n\r\n") if h.startswith("HTTP/")]
        lines = heads[-1].split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, r.stdout

    def s_client(self, port, *args, servername="localhost", input=b"", timeout=60):
        """openssl s_client against 127.0.0.1:port. Returns (returncode, output text)."""
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", self.ca]
        if servername:
            argv += ["-servername", servername]
        else:
            argv += ["-noservername"]
        argv += list(args)
        try:
            r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return -1, ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace")
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    def served_cert(self, port, servername):
        """(subject, [SAN DNS/IP names]) of the leaf certificate ktlb serves for SNI."""
        rc, out = self.s_client(port, servername=servername)
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        self.assertIsNotNone(m, f"no certificate in s_client output (rc {rc}):\n{out}")
        r = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName"],
                           input=m.group(0).encode(), capture_output=True, check=True)
        text = r.stdout.decode()
        subject = text.splitlines()[0]
        sans = re.findall(r"(?:DNS|IP Address):([^,\s]+)", text)
        return subject, sans

    def tls(self, k, server_hostname="localhost", listener="public", **kw):
        """An HttpConn over TLS to ktlb, verifying against the test CA."""
        return HttpConn(k.addr(listener), tls=True, cafile=self.ca, server_hostname=server_hostname, **kw)


def main():
    unittest.main(verbosity=2)
