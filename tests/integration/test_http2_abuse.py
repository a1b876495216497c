"""HTTP/2 validation and abuse limits, with a raw frame client: malformed
requests get RST_STREAM(PROTOCOL_ERROR) and are counted by reason; protocol
violations get a GOAWAY with the right code; floods and resets run out the
connection's budget (GOAWAY ENHANCE_YOUR_CALM); a second, well-behaved client
is served promptly meanwhile."""

import struct
import time

import h2raw
import harness
from h2raw import H2Raw, frame

H2 = {"alpn": '["h2", "http/1.1"]'}
BASE = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/")]


class Http2AbuseTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("o")

    def start(self, **server):
        server = {k: str(v) for k, v in server.items()}
        return self.ktlb(self.basic_config({"app": [self.o.addr]}, listener=H2, server=server))

    def raw(self, k, **kw):
        return H2Raw(k.addr(), self.ca, **kw)

    def assert_served(self, k):
        """A well-behaved client still gets its answer promptly."""
        start = time.monotonic()
        with self.raw(k) as c:
            c.request(1, "/size/10")
            r = c.response(1, timeout=10)
            self.assertEqual((r.status, bytes(r.body)), (200, harness.pattern(10)))
        self.assertLess(time.monotonic() - start, 5)

    # -- stream errors for malformed requests --

    def test_malformed_requests_are_refused_by_reason(self):
        k = self.start()
        cases = [
            ("uppercase_name", BASE + [("X-Upper", "1")]),
            ("connection_header", BASE + [("connection", "keep-alive")]),
            ("connection_header", BASE + [("transfer-encoding", "chunked")]),
            ("bad_te", BASE + [("te", "gzip")]),
            ("missing_pseudo", [(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]),
            ("duplicate_pseudo", BASE + [(":method", "POST")]),
            ("pseudo_after_regular", [(":method", "GET"), ("accept", "*/*"), (":scheme", "https"),
                                      (":path", "/")]),
            ("unknown_pseudo", BASE + [(":foo", "bar")]),
            ("host_mismatch", BASE + [("host", "other.example")]),
            ("bad_value", BASE + [("x-bad", "a\r\nb")]),
        ]
        with self.raw(k) as c:
            for i, (reason, fields) in enumerate(cases):
                sid = 1 + 2 * i
                c.send(c.headers_frame(sid, fields, end_stream=True))
                r = c.response(sid, timeout=10)
                self.assertEqual(r.reset, h2raw.PROTOCOL_ERROR, reason)
                self.assertEqual(r.headers, [], reason)  # a stream error, not a 400 page
            # content-length disagreeing with DATA.
            sid = 1 + 2 * len(cases)
            # In one read: refused before its exchange starts.
            c.send(c.headers_frame(sid, BASE + [("content-length", "10")], end_stream=False) +
                   frame(h2raw.DATA, h2raw.END_STREAM, sid, b"12345"))
            self.assertEqual(c.response(sid, timeout=10).reset, h2raw.PROTOCOL_ERROR)
            # The connection itself is fine.
            c.request(sid + 2, "/size/3")
            self.assertEqual(c.response(sid + 2).status, 200)
        want = {}
        for reason, _ in cases:
            want[reason] = want.get(reason, 0) + 1
        want["content_length_mismatch"] = 1
        for reason, n in want.items():
            self.assertEqual(k.metric("ktlb_h2_refused_streams_total", listener="public", reason=reason), n,
                             reason)
        # No byte of a refused request reached the backend.
        self.assertEqual(k.metric("ktlb_upstream_requests_total", upstream="app"), 1)

    # -- connection errors --

    def test_frame_on_idle_stream_is_a_connection_error(self):
        k = self.start()
        with self.raw(k) as c:
            c.send(frame(h2raw.DATA, 0, 5, b"x"))
            self.assertEqual(c.wait_goaway(10)[1], h2raw.PROTOCOL_ERROR)
            c.wait_closed(10)
        self.assertEqual(k.metric("ktlb_h2_goaways_sent_total", listener="public", reason="protocol_error"), 1)
        self.assert_served(k)

    def test_http1_bytes_after_alpn_h2_are_closed(self):
        k = self.start()
        c = H2Raw(k.addr(), self.ca, preface=False)
        with c:
            c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            start = time.monotonic()
            c.wait_closed(10)
            self.assertLess(time.monotonic() - start, 5)
        self.assert_served(k)

    def test_bad_frame_size_is_a_connection_error(self):
        k = self.start()
        with self.raw(k) as c:
            c.send(frame(h2raw.PING, 0, 0, b"1234567"))  # PING is 8 bytes
            self.assertEqual(c.wait_goaway(10)[1], h2raw.FRAME_SIZE_ERROR)
            c.wait_closed(10)
        self.assert_served(k)

    def test_hpack_garbage_is_a_compression_error(self):
        k = self.start()
        with self.raw(k) as c:
            # Index 127+ into an empty dynamic table.
            c.send(c.headers_frame(1, None, block=b"\xff\xff\xff\xff\x0f"))
            self.assertEqual(c.wait_goaway(10)[1], h2raw.COMPRESSION_ERROR)
            c.wait_closed(10)
        self.assertEqual(k.metric("ktlb_h2_goaways_sent_total", listener="public",
                                  reason="compression_error"), 1)

    # -- limits --

    def test_max_concurrent_streams(self):
        k = self.start(h2_max_concurrent_streams=2)
        # Before the client acknowledged ktlb's SETTINGS: the stream over the
        # limit is refused (REFUSED_STREAM: safe to retry).
        c = H2Raw(k.addr(), self.ca, preface=False)
        with c:
            data = h2raw.PREFACE + h2raw.settings_frame()
            for sid in (1, 3, 5):
                data += c.headers_frame(sid, BASE[:3] + [(":path", "/slow/800")])
            c.send(data)
            self.assertEqual(c.response(5, timeout=10).reset, h2raw.REFUSED_STREAM)
            self.assertEqual(c.response(1, timeout=10).status, 200)
            self.assertEqual(c.response(3, timeout=10).status, 200)
            settings = [f for f in c.frames if f[0] == h2raw.SETTINGS and not f[1] & h2raw.ACK][0][3]
            values = dict(struct.unpack(">HI", settings[i:i + 6]) for i in range(0, len(settings), 6))
            self.assertEqual(values[h2raw.SETTINGS_MAX_CONCURRENT_STREAMS], 2)
        # Once acknowledged, exceeding it is the client's protocol error
        # (nghttp2 ends the connection).
        with self.raw(k) as c:
            c.wait(lambda: any(f[0] == h2raw.SETTINGS and f[1] & h2raw.ACK for f in c.frames), 10)
            for sid in (1, 3, 5):
                c.request(sid, "/slow/800")
            self.assertEqual(c.wait_goaway(10)[1], h2raw.PROTOCOL_ERROR)
        self.assertGreaterEqual(k.metric("ktlb_h2_stream_resets_by_ktlb_total", listener="public",
                                         reason="refused_stream"), 1)
        self.assert_served(k)

    def test_header_list_too_large_and_hpack_bomb(self):
        k = self.start(h2_max_header_list_size=4096)
        with self.raw(k) as c:
            c.send(c.headers_frame(1, BASE + [("x-big", "a" * 5000)]))
            self.assertEqual(c.response(1, timeout=10).reset, h2raw.PROTOCOL_ERROR)
            # A bomb: one 3000-byte entry in the dynamic table, then referenced
            # again and again (1 byte each on the wire).
            block = c.header_block(BASE + [("x-bomb", "b" * 3000)])
            c.send(frame(h2raw.HEADERS, h2raw.END_STREAM | h2raw.END_HEADERS, 3, block))
            self.assertEqual(c.response(3, timeout=10).status, 200)  # 3 KiB: within the limit
            index = bytes([0x80 | 62])  # the newest dynamic entry
            bomb = c.header_block(BASE) + index * 2000
            c.send(frame(h2raw.HEADERS, h2raw.END_STREAM | h2raw.END_HEADERS, 5, bomb))
            self.assertEqual(c.response(5, timeout=10).reset, h2raw.PROTOCOL_ERROR)
        self.assertEqual(k.metric("ktlb_h2_refused_streams_total", listener="public",
                                  reason="header_list_too_large"), 2)
        self.assert_served(k)

    def test_peer_that_never_opens_its_window(self):
        k = self.start(send_timeout_ms=800)
        with self.raw(k, settings=[(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 0)]) as c:
            c.auto_window = False
            c.request(1, "/size/100000")
            r = c.response(1, timeout=15)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.reset, h2raw.CANCEL)
            self.assertEqual(len(r.body), 0)
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="send"), 1)
        # The exchange was cancelled: the upstream connection is closed, not pooled.
        self.assert_served(k)

    def test_stream_with_shut_window_is_cancelled_while_others_progress(self):
        # The send timeout is each stream's own: stream 3's window never
        # opens while stream 1's keeps opening a little; stream 3 is
        # cancelled after send_timeout_ms, stream 1 goes on.
        k = self.start(send_timeout_ms=800)
        with self.raw(k, settings=[(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 0)]) as c:
            c.auto_window = False
            c.send(h2raw.window_update_frame(0, 2**30))
            c.request(1, "/size/30000000")
            c.request(3, "/size/100000")
            start = time.monotonic()
            reset_at = None
            next_update = start
            while time.monotonic() - start < 4:
                # 32 KiB every 50 ms: stream 1 progresses steadily, far from its end.
                if time.monotonic() >= next_update:
                    c.send(h2raw.window_update_frame(1, 32768))
                    next_update += 0.05
                try:
                    c.read_frame(0.05)
                    while c.buf:
                        c.read_frame(0.05)
                except TimeoutError:
                    pass
                r3 = c.responses.get(3)
                if reset_at is None and r3 is not None and r3.reset is not None:
                    reset_at = time.monotonic() - start
                    got_before = len(c.responses[1].body)
                if reset_at is not None and time.monotonic() - start > reset_at + 0.5:
                    break
            self.assertIsNotNone(reset_at, "stream 3 was never cancelled")
            self.assertLess(reset_at, 2.5, "stream 3 outlived send_timeout_ms by far")
            self.assertEqual(c.responses[3].reset, h2raw.CANCEL)
            self.assertEqual(len(c.responses[3].body), 0)
            r1 = c.responses[1]
            self.assertIsNone(r1.reset)
            self.assertGreater(len(r1.body), got_before)  # still flowing after stream 3's end
            self.assertIsNone(c.goaway)
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="send"), 1)
        self.assert_served(k)

    def buffered_with_shut_windows(self, k, streams=8, size=2000000):
        """Opens `streams` downloads whose windows stay shut for a while; the
        most response bytes ktlb held meanwhile; then every body completes."""
        peak = 0
        with self.raw(k, settings=[(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 0)]) as c:
            c.auto_window = False
            c.send(h2raw.window_update_frame(0, 2**30))
            for i in range(streams):
                c.request(1 + 2 * i, f"/size/{size}")
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                peak = max(peak, k.metric("ktlb_h2_response_buffered_bytes", listener="public"))
                time.sleep(0.1)
            for i in range(streams):
                c.send(h2raw.window_update_frame(1 + 2 * i, 2**30))
            for i in range(streams):
                r = c.response(1 + 2 * i, timeout=60)
                self.assertIsNone(r.reset)
                self.assertEqual(bytes(r.body), harness.pattern(size), i)
        return peak

    def test_connection_response_budget(self):
        # Without a tight budget, 8 streams buffer up to 512 KiB each...
        k = self.start(h2_connection_buffer=1 << 30)
        loose = self.buffered_with_shut_windows(k)
        self.assertGreater(loose, 2 << 20)
        k.stop()
        # ...with one, the connection's streams hold the budget in all, plus
        # at most one 64 KiB receive buffer per stream.
        k = self.start(h2_connection_buffer=256 * 1024)
        tight = self.buffered_with_shut_windows(k)
        self.assertGreater(tight, 0)
        self.assertLessEqual(tight, 256 * 1024 + 8 * 64 * 1024)
        self.assertEqual(k.metric("ktlb_h2_response_buffered_bytes", listener="public"), 0)
        self.assert_served(k)

    def test_unfinished_header_block_times_out(self):
        k = self.start(request_header_timeout_ms=500)
        with self.raw(k) as c:
            # SETTINGS both ways first: any frame but CONTINUATION after the
            # HEADERS would itself be a protocol error.
            c.wait(lambda: any(f[0] == h2raw.SETTINGS and f[1] & h2raw.ACK for f in c.frames), 10)
            c.wait(lambda: any(f[0] == h2raw.SETTINGS and not f[1] & h2raw.ACK for f in c.frames), 10)
            block = c.header_block(BASE)
            c.send(frame(h2raw.HEADERS, h2raw.END_STREAM, 1, block))  # no END_HEADERS, ever
            self.assertEqual(c.wait_goaway(10)[1], h2raw.PROTOCOL_ERROR)
            c.wait_closed(10)
        self.assertEqual(k.metric("ktlb_timeouts_total", kind="request_header"), 1)

    def test_dropped_request_bodies_give_the_window_back(self):
        # Uploads answered without reaching a backend (502: nothing listens)
        # must return their bytes to the connection window, or after a few
        # the client could not send at all.
        dead = "127.0.0.1:%d" % harness.free_port()
        k = self.ktlb(self.basic_config({"app": [dead]}, listener=H2, server={
            "h2_connection_window": "65535", "h2_stream_window": "65535"}))
        body = b"x" * 16000
        with self.raw(k) as c:
            c.wait(lambda: any(f[0] == h2raw.SETTINGS and f[1] & h2raw.ACK for f in c.frames), 10)
            for i in range(12):  # 12 x 48000 bytes: far beyond one connection window
                sid = 1 + 2 * i
                data = c.headers_frame(sid, [(":method", "POST")] + BASE[1:] +
                                       [("content-length", str(3 * len(body)))], end_stream=False)
                data += frame(h2raw.DATA, 0, sid, body) * 2 + frame(h2raw.DATA, h2raw.END_STREAM, sid, body)
                c.send(data)
                r = c.response(sid, timeout=10)
                self.assertIn(r.status, (502, 503), i)  # 503 once the dead server is ejected
            self.assertIsNone(c.goaway)

    def test_a_client_that_stops_reading_is_read_again(self):
        k = self.start()
        with self.raw(k, settings=[(h2raw.SETTINGS_INITIAL_WINDOW_SIZE, 2**31 - 1)]) as c:
            c.send(h2raw.window_update_frame(0, 2**30))
            c.request(1, "/size/30000000")
            time.sleep(1.5)  # ktlb's output backs up: it stops reading this client
            c.request(3, "/size/10")
            r = c.response(3, timeout=30)
            self.assertEqual(bytes(r.body), harness.pattern(10))
            r = c.response(1, timeout=60)
            self.assertEqual(len(r.body), 30000000)

    # -- the abuse budget --

    def budget_run(self, k, kind, flood, expect_code=h2raw.ENHANCE_YOUR_CALM):
        with self.raw(k) as c:
            flood(c)
            self.assertEqual(c.wait_goaway(15)[1], expect_code, kind)
            c.wait_closed(15)
        self.assertEqual(k.metric("ktlb_h2_glitch_budget_exhausted_total", listener="public", reason=kind), 1,
                         kind)
        self.assert_served(k)

    def test_rapid_reset(self):
        k = self.start(h2_glitch_budget=100)

        def flood(c):
            data = b""
            for i in range(150):
                sid = 1 + 2 * i
                data += c.headers_frame(sid, BASE, end_stream=True) + h2raw.rst_frame(sid)
            c.send(data)
        self.budget_run(k, "client_reset", flood)
        # Streams reset in the read that opened them never reached a backend.
        self.assertLess(k.metric("ktlb_upstream_requests_total", upstream="app"), 10)

    def test_made_you_reset(self):
        # Requests ktlb must reset (a bad te field; DATA that overruns its
        # content-length after the exchange started): resets the client
        # provokes ktlb into sending count against the same budget as its own.
        k = self.start(h2_glitch_budget=50)

        def flood(c):
            data = b""
            for i in range(40):
                data += c.headers_frame(1 + 4 * i, BASE + [("te", "gzip")], end_stream=True)
                data += c.headers_frame(3 + 4 * i, BASE + [("content-length", "1")], end_stream=False)
            c.send(data)
            time.sleep(0.2)  # those exchanges start; now overrun them
            c.send(b"".join(frame(h2raw.DATA, 0, 3 + 4 * i, b"xy") for i in range(40)))
        self.budget_run(k, "server_reset", flood)
        self.assertGreaterEqual(k.metric("ktlb_h2_refused_streams_total", listener="public",
                                         reason="bad_te"), 1)

    def test_control_frame_floods(self):
        k = self.start(h2_glitch_budget=100)
        floods = {
            "ping": lambda c: c.send(frame(h2raw.PING, 0, 0, b"12345678") * 200),
            "settings": lambda c: c.send(h2raw.settings_frame() * 200),
            "priority": lambda c: c.send(frame(h2raw.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10") * 200),
            "window_update": lambda c: c.send(h2raw.window_update_frame(0, 1) * 300),
        }
        for kind, flood in floods.items():
            self.budget_run(k, kind, flood)

    def test_empty_data_flood(self):
        k = self.start(h2_glitch_budget=100)

        def flood(c):
            c.send(c.headers_frame(1, [(":method", "POST")] + BASE[1:], end_stream=False) +
                   frame(h2raw.DATA, 0, 1, b"") * 200)
        self.budget_run(k, "empty_data", flood)

    def test_continuation_flood(self):
        k = self.start(h2_glitch_budget=1000)
        with self.raw(k) as c:
            block = c.header_block(BASE)
            data = frame(h2raw.HEADERS, h2raw.END_STREAM, 1, block[:2])
            data += frame(h2raw.CONTINUATION, 0, 1, b"") * 2000
            c.send(data)
            # nghttp2 caps the CONTINUATIONs of one block; ktlb counts them too.
            code = c.wait_goaway(15)[1]
            self.assertIn(code, (h2raw.ENHANCE_YOUR_CALM, h2raw.PROTOCOL_ERROR))
            c.wait_closed(15)
        self.assertGreaterEqual(k.metric("ktlb_h2_glitches_total", listener="public", reason="continuation"), 1)
        self.assert_served(k)


if __name__ == "__main__":
    harness.main()
