"""Bodies stream through ktlb with bounded memory, in both directions.

"A 10 GB upload must not grow ktlb's memory": every test here moves far more
bytes than the bound it puts on ktlb's resident memory (VmRSS, sampled from
/proc/PID/status, and the kernel's own peak VmHWM after resetting it through
/proc/PID/clear_refs), so a ktlb that buffered whole bodies, or that kept
reading from one side while the other side was not draining, fails.

  - uploads (chunked and Content-Length) to the origin's /sha256, generated on
    the fly: the origin's hash and length match, RSS growth stays bounded;
  - an upload to a backend that reads nothing for a few seconds: the client is
    held back (it can push only a few MiB meanwhile) and RSS stays bounded;
  - a download read slowly for a few seconds, then fast: RSS stays bounded and
    the body arrives intact;
  - clients that go away mid-download or mid-upload: ktlb stays healthy, closes
    the upstream connection that was mid-body (it is not pooled), the next
    requests succeed and ktlb_connections_active returns to 0.

Sizes: STREAM_MIB (default 1024 MiB, 256 MiB when ktlb is an ASan build) per
transfer; override with KTLB_STREAM_MIB.
"""

import hashlib
import os
import socket
import struct
import subprocess
import threading
import time

import harness
from harness import header

MiB = 1 << 20
HELLO = b"hello from ktlb-origin\n"


def _is_asan_build():
    try:
        out = subprocess.run(["ldd", harness.ktlb_bin()], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "asan" in out


ASAN = _is_asan_build()
if ASAN:
    # ASan keeps freed blocks resident in its quarantine (256 MiB by default)
    # to catch use-after-free; streaming allocates and frees per read, so the
    # quarantine alone would grow RSS by its whole size. A small one keeps RSS
    # a measure of what ktlb holds live (later flags override earlier ones).
    os.environ["ASAN_OPTIONS"] = ":".join(
        x for x in (os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=16") if x)
STREAM_MIB = int(os.environ.get("KTLB_STREAM_MIB") or (256 if ASAN else 1024))
STREAM_BYTES = STREAM_MIB * MiB
# Peak RSS growth over the warmed-up baseline. ktlb's fixed memory (the 16 MiB
# provided-buffer ring per worker, TLS buffers) is touched by the warm-up; what
# streaming legitimately adds is a few per-connection queues bounded at well
# under a MiB each. A ktlb that buffers whole bodies grows by STREAM_BYTES.
RSS_BOUND = 64 * MiB
assert STREAM_BYTES >= 4 * RSS_BOUND, "KTLB_STREAM_MIB too small for a meaningful bound"
# How long the slow side holds back. At loopback speed, a ktlb without
# backpressure would have read (and buffered) far more than RSS_BOUND by then.
HOLD_SECONDS = 3.0
# What the client may push into a ktlb that reads nothing more while its
# backend reads nothing: ktlb's queue (256 KiB) plus the kernel buffers of its
# two sockets in between (the client's send buffer and the backend's receive
# buffer are pinned small). Without backpressure: the whole body.
SMALL_SOCKBUF = 256 * 1024


def _sysctl_max(name):
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 32 * MiB


HELD_BOUND = 16 * MiB + _sysctl_max("tcp_rmem") + _sysctl_max("tcp_wmem")
TRANSFER_TIMEOUT = 300.0


# ---------------------------------------------------------------------------
# Memory of the ktlb process.


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class RssMonitor:
    """Peak VmRSS of `pid` between start() and stop(), over the RSS at start().

    Samples every few ms from a thread, and also reads VmHWM (the kernel's
    exact peak) when it could be reset at start() via clear_refs, so a short
    spike between two samples is not missed."""

    def __init__(self, pid, interval=0.005):
        self.pid = pid
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = None

    def rss(self):
        return _status_kib(self.pid, "VmRSS") * 1024

    def start(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline = self.rss()
        self.peak = self.baseline
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
                self.samples += 1
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        if self.hwm_reset:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM") * 1024)
        return self

    @property
    def growth(self):
        return self.peak - self.baseline

    def describe(self):
        return (f"baseline {self.baseline / MiB:.1f} MiB, peak {self.peak / MiB:.1f} MiB, "
                f"growth {self.growth / MiB:.1f} MiB ({self.samples} samples"
                f"{', VmHWM' if self.hwm_reset else ''})")

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        if self._thread is not None and self._thread.is_alive():
            self.stop()


def _report(what, mon, nbytes, seconds):
    print(f"\n[streaming] {what}: {nbytes / MiB:.0f} MiB in {seconds:.1f}s "
          f"({nbytes / MiB / max(seconds, 1e-9):.0f} MiB/s), ktlb RSS {mon.describe()}", flush=True)


# ---------------------------------------------------------------------------
# ktlb's upstream sockets, from /proc (ktlb uses ordinary fds, one process).


def _socket_inodes(pid):
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def upstream_sockets(k, origin_port):
    """{inode: (local port, tcp state hex)} of ktlb's sockets to 127.0.0.1:origin_port."""
    mine = _socket_inodes(k.pid)
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            if inode in mine and int(remote.split(":")[1], 16) == origin_port:
                out[inode] = (int(local.split(":")[1], 16), state)
    return out


# ---------------------------------------------------------------------------
# Bodies generated on the fly.

_RANDOM = os.urandom(2 * MiB)
_SIZES = (65536, 16384, 131071, 1000, 262144, 4097, 32768, 200003)


def body_pieces(total):
    """Memoryviews of pseudo-random bytes, of varying sizes, adding up to `total`.
    Not periodic (offsets move by a prime), so a dropped, repeated or reordered
    piece changes the hash."""
    view = memoryview(_RANDOM)
    sent, i = 0, 0
    while sent < total:
        n = min(_SIZES[i % len(_SIZES)], total - sent)
        off = (i * 104729) % (len(_RANDOM) - n)
        yield view[off:off + n]
        sent += n
        i += 1


def abort(sock, reset=True):
    """Closes a client socket abruptly: no close_notify; a TCP RST when `reset`."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------
# A backend that reads nothing for a while (upload backpressure).


class PausingBackend:
    """Plain HTTP/1.1 backend for one request with a Content-Length body: reads
    the head, then nothing for `pause` seconds, then the body as fast as it can;
    answers "<sha256 hex> <len>\\n" like the origin's /sha256 and closes."""

    def __init__(self, pause):
        self.pause = pause
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKBUF)  # inherited by accept
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.head_at = None      # monotonic time the request head arrived
        self.resumed = threading.Event()
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            c, _ = self.sock.accept()
            with c:
                c.settimeout(TRANSFER_TIMEOUT)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        raise EOFError(f"closed mid-head: {buf[:200]!r}")
                    buf += d
                head, _, rest = buf.partition(b"\r\n\r\n")
                self.head_at = time.monotonic()
                lines = head.decode(errors="replace").split("\r\n")
                cl = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("content-length:")]
                if len(cl) != 1:
                    raise AssertionError(f"expected one Content-Length upstream:\n{head.decode(errors='replace')}")
                want = int(cl[0])
                time.sleep(self.pause)
                self.resumed.set()
                h = hashlib.sha256(rest)
                got = len(rest)
                mem = bytearray(MiB)
                mv = memoryview(mem)
                while got < want:
                    n = c.recv_into(mv, min(MiB, want - got))
                    if n == 0:
                        raise EOFError(f"closed with {got} of {want} body bytes")
                    h.update(mv[:n])
                    got += n
                body = f"{h.hexdigest()} {got}\n".encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                self.result = body
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.resumed.set()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------


class StreamingTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        print(f"\n[streaming] {STREAM_MIB} MiB per transfer{' (ASan build)' if ASAN else ''}, "
              f"RSS bound {RSS_BOUND // MiB} MiB", flush=True)

    # -- helpers --

    def start(self, origin_addr):
        return self.ktlb(self.basic_config({"app": [origin_addr]}))

    def upload(self, k, total, chunked, path="/sha256", abort_after=None, reset=True, progress=None,
               before_abort=None, sndbuf=None):
        """PUTs a generated body of `total` bytes. Returns (status, body, sha256 hex)
        or, with abort_after, closes the connection once that many body bytes
        are sent (after calling before_abort()) and returns None. `progress`
        (a list) gets the bytes sent so far."""
        with self.tls(k, timeout=TRANSFER_TIMEOUT) as c:
            if sndbuf:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
            c.send(f"PUT {path} HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n")
            h = hashlib.sha256()
            sent = 0
            for piece in body_pieces(total):
                h.update(piece)
                if chunked:
                    c.sock.sendall(b"".join((b"%x\r\n" % len(piece), piece, b"\r\n")))
                else:
                    c.sock.sendall(piece)
                sent += len(piece)
                if progress is not None:
                    progress[0] = sent
                if abort_after is not None and sent >= abort_after:
                    if before_abort is not None:
                        before_abort()
                    abort(c.sock, reset)
                    return None
            if chunked:
                c.send(b"0\r\n\r\n")
            status, _, body = c.read_response()
            return status, body, h.hexdigest()

    def warm_up(self, k):
        """Touches ktlb's fixed buffers (and the pooled upstream connection)
        with moderate transfers both ways, so the baseline is steady state."""
        for chunked in (True, False):
            status, body, digest = self.upload(k, 16 * MiB, chunked)
            self.assertEqual((status, body), (200, f"{digest} {16 * MiB}\n".encode()))
        status, _, body = self.get(k, f"/size/{16 * MiB}")
        self.assertEqual((status, len(body)), (200, 16 * MiB))
        # Steady state: the warm-up connections are gone before the baseline.
        self.assertEqual(self.wait_active_zero(k), 0, "warm-up connections still open")

    def assert_bounded(self, mon, what):
        self.assertLess(mon.growth, RSS_BOUND,
                        f"{what}: ktlb's RSS grew by {mon.growth / MiB:.1f} MiB while streaming "
                        f"{STREAM_MIB} MiB ({mon.describe()})")

    def wait_active_zero(self, k, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            v = k.metric("ktlb_connections_active", listener="public")
            if v == 0 or time.monotonic() > deadline:
                return v
            time.sleep(0.05)

    def wait_gone(self, k, origin_port, inodes, timeout=30.0):
        """Waits until none of ktlb's upstream sockets `inodes` is open; returns
        the ones still open."""
        deadline = time.monotonic() + timeout
        while True:
            left = set(upstream_sockets(k, origin_port)) & set(inodes)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def assert_healthy_after(self, k):
        """ktlb is up, serves exact bodies both ways on new and reused
        connections (a pooled upstream connection left mid-body would corrupt
        or stall these), and has no client connection left open."""
        self.assertTrue(k.running(), "ktlb died")
        status, _, body = k.admin_get("/healthz")
        self.assertEqual(status, 200, body)
        for i in range(3):
            status, _, body = self.get(k, "/size/100000")
            self.assertEqual((status, body), (200, harness.pattern(100000)), f"new connection #{i}")
        with self.tls(k) as c:
            for i in range(3):
                c.request("GET", "/size/70000")
                status, _, body = c.read_response()
                self.assertEqual((status, body), (200, harness.pattern(70000)), f"keep-alive #{i}")
                c.request("PUT", "/sha256", body=b"x" * 5000)
                status, _, body = c.read_response()
                want = f"{hashlib.sha256(b'x' * 5000).hexdigest()} 5000\n".encode()
                self.assertEqual((status, body), (200, want), f"keep-alive upload #{i}")
        self.assertEqual(self.wait_active_zero(k), 0, "ktlb_connections_active did not return to 0")
        self.assertTrue(k.running(), "ktlb died")

    # -- 1. uploads --

    def test_upload_bounded_memory(self):
        o = self.origin("up")
        k = self.start(o.addr)
        self.warm_up(k)
        for chunked in (True, False):
            with self.subTest("chunked" if chunked else "content-length"):
                t0 = time.monotonic()
                with RssMonitor(k.pid) as mon:
                    status, body, digest = self.upload(k, STREAM_BYTES, chunked)
                    mon.stop()
                _report(f"upload {'chunked' if chunked else 'content-length'}", mon, STREAM_BYTES,
                        time.monotonic() - t0)
                self.assertEqual((status, body), (200, f"{digest} {STREAM_BYTES}\n".encode()),
                                 "the origin did not receive the body intact")
                self.assert_bounded(mon, "upload")
        self.assertEqual(self.wait_active_zero(k), 0)

    def test_upload_to_paused_backend_is_held_back(self):
        # The backend reads nothing for HOLD_SECONDS: ktlb must stop reading
        # from the client rather than buffer what the client keeps sending.
        o = self.origin("warm")
        backend = PausingBackend(pause=HOLD_SECONDS)
        self.addCleanup(backend.close)
        k = self.ktlb(self.basic_config(
            {"app": [o.addr], "paused": [backend.addr]},
            routes=[{"path_prefix": "/paused", "upstream": "paused"}, {"upstream": "app"}]))
        self.warm_up(k)
        progress = [0]
        result = {}

        def run():
            try:
                result["r"] = self.upload(k, STREAM_BYTES, chunked=False, path="/paused/sha256", progress=progress,
                                          sndbuf=SMALL_SOCKBUF)
            except BaseException as e:
                result["e"] = e

        t0 = time.monotonic()
        with RssMonitor(k.pid) as mon:
            client = threading.Thread(target=run, daemon=True)
            client.start()
            backend.resumed.wait(HOLD_SECONDS + 30)
            held = progress[0]
            paused_growth = max(mon.peak, mon.rss()) - mon.baseline
            client.join(TRANSFER_TIMEOUT)
            mon.stop()
        _report("upload to a backend paused for %.0fs" % HOLD_SECONDS, mon, STREAM_BYTES, time.monotonic() - t0)
        print(f"[streaming]   client got {held / MiB:.1f} MiB into ktlb while the backend read nothing; "
              f"RSS growth by then {paused_growth / MiB:.1f} MiB", flush=True)
        self.assertFalse(client.is_alive(), "upload did not finish")
        self.assertIsNone(backend.error, f"backend: {backend.error!r}")
        self.assertNotIn("e", result, f"client: {result.get('e')!r}")
        self.assertIsNotNone(backend.head_at, "the request never reached the backend")
        status, body, digest = result["r"]
        self.assertEqual((status, body), (200, f"{digest} {STREAM_BYTES}\n".encode()))
        if STREAM_BYTES >= 2 * HELD_BOUND:
            self.assertLess(held, HELD_BOUND,
                            f"ktlb accepted {held / MiB:.1f} MiB from the client while the backend read nothing")
        else:
            print(f"[streaming]   (held-back check skipped: this host's TCP buffers allow "
                  f"{HELD_BOUND / MiB:.0f} MiB, too close to the body size)", flush=True)
        self.assert_bounded(mon, "upload to a paused backend")

    # -- 2. download with a slow reader --

    def test_slow_reader_download_bounded_memory(self):
        o = self.origin("down")
        k = self.start(o.addr)
        self.warm_up(k)
        n = STREAM_BYTES
        want = harness.pattern_sha256(n)
        t0 = time.monotonic()
        with RssMonitor(k.pid) as mon, self.tls(k, timeout=TRANSFER_TIMEOUT) as c:
            c.request("GET", f"/size/{n}")
            status, headers = c.read_head()
            self.assertEqual((status, header(headers, "Content-Length")), (200, [str(n)]))
            h = hashlib.sha256(c.buf)
            got = len(c.buf)
            c.buf = b""
            # Slow: 16 KiB every 10 ms (about 1.6 MB/s) for HOLD_SECONDS.
            slow_end = time.monotonic() + HOLD_SECONDS
            while time.monotonic() < slow_end and got < n:
                d = c.sock.recv(16384)
                self.assertTrue(d, f"EOF after {got} of {n} bytes")
                h.update(d)
                got += len(d)
                time.sleep(0.01)
            slow_bytes = got
            slow_growth = max(mon.peak, mon.rss()) - mon.baseline
            mem = bytearray(1 << 18)
            mv = memoryview(mem)
            while got < n:
                r = c.sock.recv_into(mv, min(len(mem), n - got))
                self.assertGreater(r, 0, f"EOF after {got} of {n} bytes")
                h.update(mv[:r])
                got += r
            mon.stop()
        _report("download with a slow reader", mon, n, time.monotonic() - t0)
        print(f"[streaming]   slow phase read {slow_bytes / MiB:.1f} MiB in {HOLD_SECONDS:.0f}s; "
              f"RSS growth by then {slow_growth / MiB:.1f} MiB", flush=True)
        self.assertEqual(got, n)
        self.assertEqual(h.hexdigest(), want, "the body arrived corrupted")
        self.assert_bounded(mon, "download with a slow reader")
        self.assertEqual(self.wait_active_zero(k), 0)

    # -- 3. client gone mid-download --

    def test_client_disconnects_mid_download(self):
        for reset in (True, False):
            with self.subTest("RST" if reset else "FIN"):
                o = self.origin("abort-down")
                k = self.start(o.addr)
                before = set(upstream_sockets(k, o.port))
                c = self.tls(k, timeout=TRANSFER_TIMEOUT)
                c.request("GET", f"/size/{STREAM_BYTES}")
                status, _ = c.read_head()
                self.assertEqual(status, 200)
                got = len(c.buf)
                while got < 4 * MiB:
                    d = c.sock.recv(65536)
                    self.assertTrue(d)
                    got += len(d)
                busy = set(upstream_sockets(k, o.port)) - before
                self.assertTrue(busy, "no upstream connection found for the download")
                abort(c.sock, reset)
                # The upstream connection was mid-body: it must be closed, not
                # pooled (nor drained for the remaining ~STREAM_MIB MiB).
                left = self.wait_gone(k, o.port, busy)
                self.assertFalse(left, f"ktlb kept the upstream connection of the aborted download: "
                                       f"{upstream_sockets(k, o.port)}")
                self.assertEqual(self.wait_active_zero(k), 0, "ktlb_connections_active did not return to 0")
                self.assert_healthy_after(k)
                k.stop()
                o.stop()

    # -- 4. client gone mid-upload --

    def test_client_disconnects_mid_upload(self):
        for chunked, reset in ((False, True), (True, False), (False, False), (True, True)):
            name = f"{'chunked' if chunked else 'content-length'}, {'RST' if reset else 'FIN'}"
            with self.subTest(name):
                o = self.origin("abort-up")
                k = self.start(o.addr)
                before = set(upstream_sockets(k, o.port))
                seen = set()

                def find_upstream():
                    # The origin waits for the rest of the body, so the upload's
                    # upstream connection is open as long as the client's is.
                    deadline = time.monotonic() + 30
                    while not seen and time.monotonic() < deadline:
                        seen.update(set(upstream_sockets(k, o.port)) - before)
                        time.sleep(0.01)

                self.assertIsNone(self.upload(k, STREAM_BYTES, chunked, abort_after=8 * MiB, reset=reset,
                                              before_abort=find_upstream))
                self.assertTrue(seen, "no upstream connection found for the upload")
                # The origin still waits for the rest of the body: the connection
                # must be closed, never pooled.
                left = self.wait_gone(k, o.port, seen)
                self.assertFalse(left, f"ktlb kept the upstream connection of the aborted upload: "
                                       f"{upstream_sockets(k, o.port)}")
                self.assertEqual(self.wait_active_zero(k), 0, "ktlb_connections_active did not return to 0")
                self.assert_healthy_after(k)
                k.stop()
                o.stop()


if __name__ == "__main__":
    harness.main()
