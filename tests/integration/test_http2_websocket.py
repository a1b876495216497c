"""WebSocket over HTTP/2 (RFC 8441) through a terminate listener, with the raw
frame client (h2raw.py): ktlb advertises SETTINGS_ENABLE_CONNECT_PROTOCOL; an
extended CONNECT (:protocol websocket) reaches the WebSocket echo backend
(ws_echo_server.py) as an HTTP/1.1 upgrade with a key ktlb made up; the
backend's 101 becomes :status 200 and WebSocket frames echo both ways in
DATA, with the windows given back as the backend takes the bytes; the
backend's close becomes END_STREAM. Refusals: plain CONNECT (501), extended
CONNECT missing a pseudo-header, :protocol on a GET, a content-length or a
bad :scheme (RST_STREAM PROTOCOL_ERROR by reason), and a backend that does
not switch (its answer passes as the stream's response)."""

import json
import os
import random
import struct
import socket
import subprocess
import sys
import threading
import time

import h2raw
import harness
from h2raw import H2Raw, frame

H2 = {"alpn": '["h2", "http/1.1"]'}
HELLO = b"hello from ktlb-origin\n"
SETTINGS_ENABLE_CONNECT_PROTOCOL = 8


def masked_frame(payload, opcode):
    """One final client WebSocket frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_frames(buf):
    """Complete server frames (unmasked) at the start of buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        off = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < off + n:
            break
        out.append((opcode, bytes(buf[off:off + n])))
        buf = buf[off + n:]
    return out, buf


class WsStream:
    """One extended CONNECT stream on an H2Raw connection."""

    def __init__(self, c, sid):
        self.c, self.sid, self.read_off = c, sid, 0

    def send(self, data, end_stream=False):
        for i in range(0, len(data), 16384):
            last = i + 16384 >= len(data)
            self.c.send(frame(h2raw.DATA, h2raw.END_STREAM if end_stream and last else 0, self.sid,
                              data[i:i + 16384]))
        if not data and end_stream:
            self.c.send(frame(h2raw.DATA, h2raw.END_STREAM, self.sid))

    def recv_message(self, timeout=15.0):
        r = self.c.responses[self.sid]
        got = []

        def have():
            frames, _ = parse_frames(bytes(r.body[self.read_off:]))
            if frames:
                got.append(frames[0])
                op, payload = frames[0]
                n = len(payload)
                self.read_off += 2 + (2 if 126 <= n < 65536 else 8 if n >= 65536 else 0) + n
                return True
            return r.ended or r.reset is not None

        self.c.wait(have, timeout)
        return got[0] if got else None


class Http2WebSocketTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("h2ws-origin")
        cls.ws_log = open(os.path.join(cls.tmp, "ws-echo.log"), "wb")
        cls.ws = subprocess.Popen([sys.executable, os.path.join(harness.HERE, "ws_echo_server.py")],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=cls.ws_log)
        harness._ALL_PROCS.append(cls.ws)
        line = cls.ws.stdout.readline()
        if not line.strip():
            raise RuntimeError("the WebSocket echo server did not start")
        cls.ws_addr = f"127.0.0.1:{int(line)}"

    @classmethod
    def tearDownClass(cls):
        harness._kill(cls.ws)
        cls.ws.stdout.close()
        cls.ws_log.close()
        super().tearDownClass()

    def start(self, **server):
        log = os.path.join(self.tmp, f"access-{self._testMethodName}.log")
        srv = {"access_log": f'"{log}"'}
        srv.update({k: str(v) for k, v in server.items()})
        k = self.ktlb(self.basic_config({"ws": [self.ws_addr], "app": [self.o.addr]}, listener=H2,
                                        routes=[{"path_prefix": "/ws/", "upstream": "ws"}, {"upstream": "app"}],
                                        server=srv))
        return k, log

    def connect(self, k):
        c = H2Raw(k.addr(), self.ca)
        # ktlb's SETTINGS offer extended CONNECT (RFC 8441 3).
        c.wait(lambda: any(f[0] == h2raw.SETTINGS and not f[1] & h2raw.ACK for f in c.frames), 10)
        return c

    def server_settings(self, c):
        for ftype, flags, _, payload in c.frames:
            if ftype == h2raw.SETTINGS and not flags & h2raw.ACK:
                return {struct.unpack(">H", payload[i:i + 2])[0]: struct.unpack(">I", payload[i + 2:i + 6])[0]
                        for i in range(0, len(payload), 6)}
        return {}

    def open_ws(self, c, sid, path="/ws/echo", extra=()):
        fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                  (":path", path), (":authority", "localhost"), ("sec-websocket-version", "13")]
        c.send(c.headers_frame(sid, fields + list(extra), end_stream=False))
        c.wait(lambda: sid in c.responses and (c.responses[sid].headers or c.responses[sid].reset is not None), 15)
        return c.responses[sid]

    def log_lines(self, path, want, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            if os.path.exists(path):
                with open(path) as f:
                    lines = [json.loads(l) for l in f if l.strip()]
            if len(lines) >= want or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def test_echo_over_extended_connect(self):
        k, log = self.start()
        rng = random.Random(8441)
        with self.connect(k) as c:
            self.assertEqual(self.server_settings(c).get(SETTINGS_ENABLE_CONNECT_PROTOCOL), 1)
            r = self.open_ws(c, 1, extra=[("sec-websocket-key", "ignored-by-ktlb"),
                                          ("sec-websocket-extensions", "x-test-ext")])
            self.assertIsNone(r.reset)
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.header("sec-websocket-accept"))
            self.assertIsNone(r.header("upgrade"))
            ws = WsStream(c, 1)
            ws.send(masked_frame(b"__headers__", 0x1))
            op, payload = ws.recv_message()
            self.assertEqual(op, 0x1)
            names = {}
            for name, value in json.loads(payload):
                names.setdefault(name.lower(), []).append(value)
            self.assertEqual(names["upgrade"], ["websocket"])
            self.assertEqual([v.lower() for v in names["connection"]], ["upgrade"])
            self.assertEqual(names["sec-websocket-version"], ["13"])
            self.assertEqual(names["sec-websocket-extensions"], ["x-test-ext"])
            self.assertEqual(len(names["sec-websocket-key"]), 1)
            self.assertEqual(len(names["sec-websocket-key"][0]), 24)  # base64 of 16 bytes, ktlb's own
            self.assertEqual(names["x-forwarded-for"], ["127.0.0.1"])
            self.assertEqual(names["host"], ["localhost"])
            self.assertEqual(k.metric("ktlb_websocket_tunnels_active", listener="public"), 1)

            # 50 messages up to 64 KiB, text and binary, one at a time...
            sizes = [0, 1, 125, 126, 127, 65535, 65536] + [rng.randint(1, 65536) for _ in range(43)]
            total = 0
            for i, n in enumerate(sizes):
                msg = rng.randbytes(n)
                opcode = 0x2 if i % 2 else 0x1
                if opcode == 0x1:
                    msg = bytes(rng.choice(b"abcdefghij") for _ in range(n))
                ws.send(masked_frame(msg, opcode))
                back = ws.recv_message()
                self.assertEqual(back, (opcode, msg), f"message {i} of size {n}")
                total += n
            # ...then pipelined: 20 of them (over a MiB) in flight at once.
            burst = [rng.randbytes(rng.randint(1, 65536)) for _ in range(20)]
            ws.send(b"".join(masked_frame(m, 0x2) for m in burst))
            for m in burst:
                self.assertEqual(ws.recv_message(), (0x2, m))

            # The client's close frame: the backend answers and closes its
            # socket, which ktlb turns into END_STREAM.
            ws.send(masked_frame(b"\x03\xe8", 0x8))
            self.assertEqual(ws.recv_message(), (0x8, b"\x03\xe8"))
            c.wait(lambda: c.responses[1].ended or c.responses[1].reset is not None, 10)
            self.assertTrue(c.responses[1].ended)
            self.assertIsNone(c.responses[1].reset)
            ws.send(b"", end_stream=True)
            # The connection goes on serving requests.
            c.request(3, "/")
            r3 = c.response(3, timeout=10)
            self.assertEqual((r3.status, bytes(r3.body)), (200, HELLO))
        self.assertEqual(k.wait_metric("ktlb_h2_websocket_tunnels_total", 1, listener="public"), 1)
        self.assertEqual(k.metric("ktlb_websocket_tunnels_total", listener="public"), 1)
        deadline = time.monotonic() + 10
        while k.metric("ktlb_websocket_tunnels_active", listener="public") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(k.metric("ktlb_websocket_tunnels_active", listener="public"), 0)
        self.assertEqual(k.metric("ktlb_h2_response_buffered_bytes", listener="public"), 0)
        lines = [l for l in self.log_lines(log, 2) if l["target"] == "/ws/echo"]
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertEqual((line["version"], line["method"], line["status"]), ("2", "CONNECT", 200))
        self.assertEqual((line["upstream"], line["server"]), ("ws", self.ws_addr))
        self.assertNotIn("error", line)
        self.assertGreater(line["bytes"], total)

    def test_a_client_that_does_not_read_backs_the_backend_up(self):
        # The client's window stays shut while it sends 3 MB for the echo
        # backend: ktlb holds at most 256 KiB (+ one receive buffer) of the
        # echo and lets the backend's socket fill instead; once the window
        # opens, every message comes back intact.
        k, _ = self.start()
        with H2Raw(k.addr(), self.ca, settings=[(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 0)]) as c:
            c.auto_window = False
            c.wait(lambda: any(f[0] == h2raw.SETTINGS and not f[1] & h2raw.ACK for f in c.frames), 10)
            window = self.server_settings(c).get(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 65535)
            self.assertEqual(self.open_ws(c, 1).status, 200)
            rng = random.Random(6455)
            msgs = [rng.randbytes(65000) for _ in range(48)]
            data = b"".join(masked_frame(m, 0x2) for m in msgs)

            def credit():  # what ktlb's windows allow us to send on stream 1
                upd = sum(struct.unpack(">I", f[3])[0] & 0x7FFFFFFF for f in c.frames
                          if f[0] == h2raw.WINDOW_UPDATE and f[2] == 1)
                return window + upd - sent

            sent, peak = 0, 0
            deadline = time.monotonic() + 6
            next_sample = 0
            while time.monotonic() < deadline:
                n = min(credit(), 16384, len(data) - sent)
                if n > 0:
                    c.send(frame(h2raw.DATA, 0, 1, data[sent:sent + n]))
                    sent += n
                else:
                    try:
                        c.read_frame(0.05)
                    except TimeoutError:
                        pass
                if time.monotonic() >= next_sample:
                    peak = max(peak, k.metric("ktlb_h2_response_buffered_bytes", listener="public"))
                    next_sample = time.monotonic() + 0.2
            self.assertGreater(sent, 1 << 20)  # the backend took more than the stream window
            self.assertGreater(peak, 0)
            self.assertLessEqual(peak, 256 * 1024 + 64 * 1024)
            self.assertEqual(len(c.responses[1].body), 0)
            # Open up: everything sent comes back, in order, and the rest goes through.
            c.send(h2raw.window_update_frame(0, 2**30) + h2raw.window_update_frame(1, 2**30))
            ws = WsStream(c, 1)
            while sent < len(data):
                n = min(credit(), 16384, len(data) - sent)
                if n > 0:
                    c.send(frame(h2raw.DATA, 0, 1, data[sent:sent + n]))
                    sent += n
                else:
                    c.read_frame(10)
            for i, m in enumerate(msgs):
                self.assertEqual(ws.recv_message(30), (0x2, m), i)

    def test_client_bytes_after_the_backend_half_closed_reach_it(self):
        """The backend switches, half-closes at once, and reads on: the h2
        stream ends on ktlb's side first, then the client sends its last
        bytes with END_STREAM. The stream is then closed, and those bytes
        (typically a WebSocket Close frame) must still reach the backend."""
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(20)
        got = {}

        def backend():
            conn, _ = lsock.accept()
            conn.settimeout(20)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
            conn.shutdown(socket.SHUT_WR)
            rest = head.split(b"\r\n\r\n", 1)[1]
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                rest += b
            got["bytes"] = rest
            conn.close()
        t = threading.Thread(target=backend, daemon=True)
        t.start()
        self.addCleanup(lsock.close)
        addr = "127.0.0.1:%d" % lsock.getsockname()[1]
        k = self.ktlb(self.basic_config({"half": [addr], "app": [self.o.addr]}, listener=H2,
                                        routes=[{"path_prefix": "/ws/", "upstream": "half"},
                                                {"upstream": "app"}]))
        last = masked_frame(b"goodbye", 0x8) * 200  # a few KiB, more than one send
        with self.connect(k) as c:
            self.assertEqual(self.open_ws(c, 1).status, 200)
            c.wait(lambda: c.responses[1].ended, 15)  # the backend's half-close
            WsStream(c, 1).send(last, end_stream=True)
            t.join(20)
        self.assertFalse(t.is_alive(), "the backend never saw the end of the tunnel")
        self.assertEqual(got.get("bytes"), last)

    def test_client_reset_closes_the_tunnel(self):
        k, _ = self.start()
        with self.connect(k) as c:
            self.assertEqual(self.open_ws(c, 1).status, 200)
            ws = WsStream(c, 1)
            ws.send(masked_frame(b"still there?", 0x1))
            self.assertEqual(ws.recv_message(), (0x1, b"still there?"))
            self.assertEqual(k.metric("ktlb_websocket_tunnels_active", listener="public"), 1)
            c.send(h2raw.rst_frame(1, h2raw.CANCEL))
            deadline = time.monotonic() + 10
            while k.metric("ktlb_websocket_tunnels_active", listener="public") and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(k.metric("ktlb_websocket_tunnels_active", listener="public"), 0)
            # A second tunnel on the same connection works.
            self.assertEqual(self.open_ws(c, 3).status, 200)
            ws = WsStream(c, 3)
            ws.send(masked_frame(b"again", 0x2))
            self.assertEqual(ws.recv_message(), (0x2, b"again"))
        self.assertEqual(k.metric("ktlb_h2_websocket_tunnels_total", listener="public"), 2)

    def test_idle_tunnel_is_reset(self):
        k, _ = self.start(tunnel_idle_timeout_ms=500)
        before = k.metric("ktlb_timeouts_total", kind="tunnel_idle")
        with self.connect(k) as c:
            self.assertEqual(self.open_ws(c, 1).status, 200)
            r = c.response(1, timeout=10)
            self.assertEqual(r.reset, h2raw.CANCEL)
            self.assertIsNone(c.goaway)
        self.assertGreaterEqual(k.metric("ktlb_timeouts_total", kind="tunnel_idle"), before + 1)

    def test_refusals(self):
        k, _ = self.start()
        base = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                (":path", "/ws/echo"), (":authority", "localhost")]
        cases = [
            ("missing_pseudo", [f for f in base if f[0] != ":path"]),
            ("missing_pseudo", [f for f in base if f[0] != ":authority"]),
            ("bad_pseudo_value", [(":method", "GET")] + base[1:]),  # :protocol needs CONNECT
            ("bad_pseudo_value", [f if f[0] != ":scheme" else (":scheme", "ftp") for f in base]),
            ("bad_pseudo_value", [f if f[0] != ":protocol" else (":protocol", "web socket") for f in base]),
            ("bad_content_length", base + [("content-length", "0")]),
        ]
        with self.connect(k) as c:
            for i, (reason, fields) in enumerate(cases):
                sid = 1 + 2 * i
                c.send(c.headers_frame(sid, fields, end_stream=False))
                r = c.response(sid, timeout=10)
                self.assertEqual((r.reset, r.status), (h2raw.PROTOCOL_ERROR, None), (reason, fields))
            # Plain CONNECT (no :protocol) stays refused with a 501, as before.
            sid = 1 + 2 * len(cases)
            c.send(c.headers_frame(sid, [(":method", "CONNECT"), (":authority", "example.com:443")]))
            self.assertEqual(c.response(sid, timeout=10).status, 501)
            # A backend that does not switch: its answer is the stream's.
            # DATA sent before it answered is dropped, its window given back.
            sid += 2
            fields = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                      (":path", "/"), (":authority", "localhost"), ("sec-websocket-version", "13")]
            c.send(c.headers_frame(sid, fields, end_stream=False) +
                   frame(h2raw.DATA, 0, sid, b"dropped: no tunnel"))
            r = c.response(sid, timeout=10)
            self.assertEqual((r.status, bytes(r.body)), (200, HELLO))
            self.assertIsNone(c.goaway)
        for reason, n in (("missing_pseudo", 2), ("bad_pseudo_value", 3), ("bad_content_length", 1)):
            self.assertEqual(k.metric("ktlb_h2_refused_streams_total", listener="public", reason=reason), n,
                             reason)
        self.assertEqual(k.metric("ktlb_h2_websocket_tunnels_total", listener="public"), 0)
        self.assertEqual(k.metric("ktlb_websocket_tunnels_total", listener="public"), 0)


if __name__ == "__main__":
    harness.main()
