#!/usr/bin/env python3
"""Writes the seeds of http2_session_fuzz (tests/fuzz/corpus/http2_session_fuzz/).

Each seed is one options byte (see http2_session_fuzz.cc) and then what a
client sends after the preface, which the target prepends: its SETTINGS and
request frames. Header blocks are HPACK literals without indexing and without
Huffman coding, so the bytes stay readable and easy for the fuzzer to mutate.

    python3 tests/fuzz/make_http2_corpus.py
"""
import os
import struct

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 2, 3, 4, 6, 7, 8, 9)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def block(fields):
    out = b""
    for name, value in fields:
        name, value = name.encode(), value.encode()
        out += b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value
    return out


def settings(*pairs):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


GET = [(":method", "GET"), (":scheme", "https"), (":authority", "example.test"), (":path", "/")]
POST = [(":method", "POST"), (":scheme", "https"), (":authority", "example.test"),
        (":path", "/upload"), ("content-type", "text/plain")]
START = settings((0x3, 100), (0x4, 65535))  # MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE
SETTINGS_ACK = frame(SETTINGS, ACK, 0)

SEEDS = {
    "get": b"\x00" + START + SETTINGS_ACK +
           frame(HEADERS, END_HEADERS | END_STREAM, 1, block(GET + [("accept", "*/*")])),
    "get_split": b"\x03" + START + SETTINGS_ACK +
                 frame(HEADERS, END_HEADERS | END_STREAM, 1, block(GET + [("cookie", "a=1"), ("cookie", "b=2")])) +
                 frame(HEADERS, END_HEADERS | END_STREAM, 3, block(GET[:3] + [(":path", "/two")])),
    "post_data_trailers": b"\x0a" + START + SETTINGS_ACK +
                          frame(HEADERS, END_HEADERS, 1, block(POST + [("te", "trailers")])) +
                          frame(DATA, 0, 1, b"hello ") + frame(DATA, 0, 1, b"world") +
                          frame(HEADERS, END_HEADERS | END_STREAM, 1, block([("x-checksum", "abc")])),
    "post_content_length": b"\x01" + START + SETTINGS_ACK +
                           frame(HEADERS, END_HEADERS, 1, block(POST + [("content-length", "5")])) +
                           frame(DATA, END_STREAM, 1, b"12345"),
    "ping": b"\x00" + START + frame(PING, 0, 0, b"ktlbping") + frame(PING, ACK, 0, b"\0" * 8),
    "settings": b"\x00" + settings((0x1, 4096), (0x2, 0), (0x3, 10), (0x4, 1 << 20), (0x5, 32768),
                                   (0x6, 8192)) + SETTINGS_ACK +
                settings((0x4, 100)) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)),
    "rapid_reset": b"\x20" + START + b"".join(
        frame(HEADERS, END_HEADERS | END_STREAM, i, block(GET)) + frame(RST_STREAM, 0, i, struct.pack(">I", 8))
        for i in range(1, 40, 2)),
    "continuation": b"\x08" + START +
                    frame(HEADERS, 0, 1, block(GET[:2])) +
                    frame(CONTINUATION, 0, 1, block(GET[2:])) +
                    frame(CONTINUATION, END_HEADERS, 1, block([("x-a", "1")])) +
                    frame(RST_STREAM, 0, 1, struct.pack(">I", 8)) +
                    frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),  # a client names server streams: 0
    "malformed": b"\x11" + START +
                 frame(HEADERS, END_HEADERS | END_STREAM, 1, block(GET + [("Upper", "x")])) +
                 frame(HEADERS, END_HEADERS | END_STREAM, 3, block(GET + [("connection", "close")])) +
                 frame(HEADERS, END_HEADERS | END_STREAM, 5, block(GET[:3] + [(":path", "http://x/")])) +
                 frame(PRIORITY, 0, 7, struct.pack(">IB", 0, 16)),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "corpus", "http2_session_fuzz")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
