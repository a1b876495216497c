"""A raw HTTP/2 client for adversarial tests: frames are built by hand (so a
test can send what no well-behaved library would), HPACK comes from python3's
hpack (Debian's python3-h2), TLS with ALPN h2 from the ssl module."""

import socket
import ssl
import struct
import time

import hpack

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 8, 9, 11

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, sid, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF) + payload


def settings_frame(settings=(), ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in settings))


def rst_frame(sid, code=CANCEL):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def window_update_frame(sid, inc):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


class Response:
    def __init__(self):
        self.headers = []     # list of (name, value) of the final head
        self.interim = []
        self.trailers = []
        self.body = bytearray()
        self.ended = False
        self.reset = None     # RST_STREAM error code

    @property
    def status(self):
        for k, v in self.headers:
            if k == ":status":
                return int(v)
        return None

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None


class H2Raw:
    def __init__(self, addr, cafile, settings=(), timeout=30.0, preface=True):
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        host, port = addr.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.sock.settimeout(timeout)
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""
        self.responses = {}
        self.goaway = None  # (last_stream_id, error_code) of the latest GOAWAY
        self.goaways = []  # every GOAWAY, in order
        self.closed = False
        self.frames = []    # every frame read: (type, flags, sid, payload)
        if preface:
            self.send(PREFACE + settings_frame(settings))

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
        self.sock.sendall(data)

    def header_block(self, fields):
        return self.enc.encode(fields)

    def headers_frame(self, sid, fields, end_stream=True, end_headers=True, block=None):
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return frame(HEADERS, flags, sid, self.header_block(fields) if block is None else block)

    def request(self, sid, path="/", method="GET", extra=(), end_stream=True, authority="localhost"):
        fields = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
        self.send(self.headers_frame(sid, fields + list(extra), end_stream=end_stream))

    # -- reading --

    def read_frame(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame within %.1fs" % timeout)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        ftype, flags = self.buf[3], self.buf[4]
        sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
        payload = self.buf[9:9 + n]
        self.buf = self.buf[9 + n:]
        self._handle(ftype, flags, sid, payload)
        self.frames.append((ftype, flags, sid, payload))
        return ftype, flags, sid, payload

    def _handle(self, ftype, flags, sid, payload):
        if ftype == SETTINGS and not flags & ACK:
            self.send(settings_frame(ack=True))
        elif ftype == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code)
            self.goaways.append(self.goaway)
        elif ftype == HEADERS:
            r = self.responses.setdefault(sid, Response())
            block = payload
            if flags & PADDED:
                block = block[1:len(block) - block[0]]
            if flags & PRIORITY_FLAG:
                block = block[5:]
            fields = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                      for k, v in self.dec.decode(block)]
            status = dict(fields).get(":status")
            if status is None:
                r.trailers = fields
            elif int(status) < 200:
                r.interim.append(fields)
            else:
                r.headers = fields
            if flags & END_STREAM:
                r.ended = True
        elif ftype == DATA:
            r = self.responses.setdefault(sid, Response())
            r.body += payload
            if payload:
                # Keep the windows open: a test that wants them shut says so.
                if self.auto_window:
                    self.send(window_update_frame(0, len(payload)) + window_update_frame(sid, len(payload)))
            if flags & END_STREAM:
                r.ended = True
        elif ftype == RST_STREAM:
            r = self.responses.setdefault(sid, Response())
            r.reset = struct.unpack(">I", payload[:4])[0]

    auto_window = True

    def wait(self, pred, timeout=30.0):
        """Reads frames until pred() holds; False if the connection closed first."""
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not met within %.1fs" % timeout)
            if self.read_frame(left) is None:
                return pred()
        return True

    def response(self, sid, timeout=30.0):
        self.wait(lambda: sid in self.responses and
                  (self.responses[sid].ended or self.responses[sid].reset is not None), timeout)
        return self.responses[sid]

    def wait_goaway(self, timeout=30.0, count=1):
        """Waits for `count` GOAWAY frames; returns the last (last_stream_id,
        error_code)."""
        self.wait(lambda: len(self.goaways) >= count, timeout)
        return self.goaways[count - 1]

    def wait_closed(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("connection still open")
            self.read_frame(left)
        return True
