"""WebSocket over HTTP/1.1 through a terminate listener: the upgrade goes to
the backend with ktlb's forwarding headers, a 101 turns the connection into a
two-way tunnel (messages of up to 64 KiB echo intact, bytes sent right after
the request head are kept), either side's close ends it with one access-log
line and the tunnel counters, an idle tunnel is closed after
tunnel_idle_timeout_ms, and the listener serves plain requests afterwards.

The backend is a python3-websockets echo server (ws_echo_server.py) started
per test class and killed by PID."""

import asyncio
import base64
import json
import os
import random
import ssl
import subprocess
import sys
import time

import websockets

import harness

HELLO = b"hello from ktlb-origin\n"


def masked_frame(payload, opcode=0x1):
    """One final client frame (clients must mask, RFC 6455 5.3)."""
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


class WebSocketTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("ws-plain-origin")
        cls.ws_log = open(os.path.join(cls.tmp, "ws-echo.log"), "wb")
        cls.ws = subprocess.Popen([sys.executable, os.path.join(harness.HERE, "ws_echo_server.py")],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=cls.ws_log)
        harness._ALL_PROCS.append(cls.ws)  # killed at exit whatever happens
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

    def start(self, server=None):
        log = os.path.join(self.tmp, f"access-{self._testMethodName}.log")
        srv = {"access_log": f'"{log}"'}
        srv.update(server or {})
        k = self.ktlb(self.basic_config({"ws": [self.ws_addr], "app": [self.o.addr]},
                                        routes=[{"path_prefix": "/ws/", "upstream": "ws"}, {"upstream": "app"}],
                                        server=srv))
        return k, log

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca)

    def connect(self, k, path="/ws/echo"):
        return websockets.connect(f"wss://localhost:{k.port()}{path}", host="127.0.0.1", port=k.port(),
                                  ssl=self.ssl_context(), server_hostname="localhost", max_size=None,
                                  ping_interval=None, close_timeout=10)

    def log_lines(self, path, want, timeout=10.0):
        """The access log's lines once there are `want` of them (the log is written at turn end)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            if os.path.exists(path):
                with open(path) as f:
                    lines = [json.loads(l) for l in f if l.strip()]
            if len(lines) >= want or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def wait_gauge(self, k, name, value, timeout=10.0, **labels):
        deadline = time.monotonic() + timeout
        while k.metric(name, **labels) != value and time.monotonic() < deadline:
            time.sleep(0.05)
        return k.metric(name, **labels)

    def assert_plain_request_works(self, k):
        status, _, body = self.get(k, "/")
        self.assertEqual((status, body), (200, HELLO))

    def test_echo_through_tunnel(self):
        k, log = self.start()
        rng = random.Random(8)
        sizes = [0, 1, 125, 126, 127, 65535, 65536] + [rng.randint(1, 65536) for _ in range(43)]

        async def run():
            async with self.connect(k) as ws:
                await ws.send("__headers__")
                headers = json.loads(await ws.recv())
                self.assertTrue(ws.open)
                sent = 0
                for i, n in enumerate(sizes):
                    if i % 2:
                        msg = rng.randbytes(n)
                    else:
                        msg = "".join(rng.choice("abcdefghij\u00e9\u4e2d") for _ in range(n // 3))
                    await ws.send(msg)
                    back = await ws.recv()
                    self.assertEqual(type(back), type(msg))
                    self.assertEqual(back, msg, f"message {i} of size {n}")
                    sent += len(msg)
                # Pipelined: many in flight at once, each echoed in order.
                burst = [rng.randbytes(rng.randint(1, 65536)) for _ in range(20)]
                for m in burst:
                    await ws.send(m)
                for m in burst:
                    self.assertEqual(await ws.recv(), m)
                self.assertEqual(k.metric("ktlb_websocket_tunnels_active", listener="public"), 1)
                return headers

        headers = asyncio.run(run())
        names = {}
        for name, value in headers:
            names.setdefault(name.lower(), []).append(value)
        self.assertEqual(names["upgrade"], ["websocket"])
        self.assertEqual([v.lower() for v in names["connection"]], ["upgrade"])
        self.assertEqual(names["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(names["x-forwarded-proto"], ["https"])
        self.assertIn("sec-websocket-key", names)

        # The client's close ends the tunnel: counted, one log line.
        self.assertEqual(self.wait_gauge(k, "ktlb_websocket_tunnels_active", 0, listener="public"), 0)
        self.assertEqual(k.metric("ktlb_websocket_tunnels_total", listener="public"), 1)
        lines = self.log_lines(log, 1)
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertEqual((line["status"], line["method"], line["target"]), (101, "GET", "/ws/echo"))
        self.assertEqual((line["upstream"], line["server"]), ("ws", self.ws_addr))
        self.assertNotIn("error", line)
        total = sum(sizes) // 2
        self.assertGreater(line["bytes"], total)
        self.assertGreater(line["bytes_up"], total)

        self.assert_plain_request_works(k)

    def test_bytes_after_request_head_are_kept(self):
        k, _ = self.start()
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /ws/raw HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        payload = b"sent before the 101"
        with harness.HttpConn(k.addr(), cafile=self.ca) as c:
            # The first frame travels in the same TLS record as the request head.
            c.send(req + masked_frame(payload))
            status, headers = c.read_head()
            self.assertEqual(status, 101, headers)
            self.assertEqual([v.lower() for v in harness.header(headers, "upgrade")], ["websocket"])
            self.assertEqual([v.lower() for v in harness.header(headers, "connection")], ["upgrade"])
            b0, b1 = c._exactly(2)
            self.assertEqual((b0, b1), (0x81, len(payload)))
            self.assertEqual(c._exactly(len(payload)), payload)
            # A close frame: the backend answers it and closes, so does ktlb.
            c.send(masked_frame(b"\x03\xe8", opcode=0x8))
            self.assertEqual(c._exactly(4), b"\x88\x02\x03\xe8")
            self.assertIsNotNone(c.wait_closed(10), "ktlb kept the connection after the backend closed")
        self.assertEqual(self.wait_gauge(k, "ktlb_websocket_tunnels_active", 0, listener="public"), 0)

    def test_idle_tunnel_is_closed(self):
        k, log = self.start(server={"tunnel_idle_timeout_ms": "500"})
        before = k.metric("ktlb_timeouts_total", kind="tunnel_idle")

        async def run():
            async with self.connect(k) as ws:
                await ws.send("ping me")
                self.assertEqual(await ws.recv(), "ping me")
                t0 = time.monotonic()
                await asyncio.wait_for(ws.wait_closed(), 15)
                return time.monotonic() - t0

        idle = asyncio.run(run())
        self.assertGreaterEqual(idle, 0.3)
        self.assertGreaterEqual(k.wait_metric("ktlb_timeouts_total", before + 1, kind="tunnel_idle"),
                                before + 1)
        self.assertEqual(self.wait_gauge(k, "ktlb_websocket_tunnels_active", 0, listener="public"), 0)
        lines = self.log_lines(log, 1)
        self.assertEqual([(l["status"], l.get("error")) for l in lines], [(101, "tunnel_idle")])
        self.assert_plain_request_works(k)

    def test_refused_upgrade_is_an_ordinary_response(self):
        # The plain origin does not switch: its answer is a normal response and
        # the connection stays HTTP.
        k, _ = self.start()
        with harness.HttpConn(k.addr(), cafile=self.ca) as c:
            c.request("GET", "/", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")])
            status, _, body = c.read_response()
            self.assertEqual((status, body), (200, HELLO))
            c.request("GET", "/")
            self.assertEqual(c.read_response()[2], HELLO)
        self.assertEqual(k.metric("ktlb_websocket_tunnels_total", listener="public"), 0)


if __name__ == "__main__":
    harness.main()
