"""Passthrough forwarding in the kernel (passthrough_forwarding = "sockmap") against
splice: 30 MB each way, checked by sha256, with each side half-closing first while the
other is still sending. The backend is a plain TCP socket in this process: passthrough
never decrypts, so after a real ClientHello (which the relay routes on) any bytes do.

The order that matters: a FIN ktlb sees on one socket must reach the other only after
every byte received before it. With sockmap those bytes may still sit in the kernel's
psock backlog when the FIN is seen (the receiver reads slowly here, so they do)."""

import hashlib
import json
import os
import socket
import ssl
import threading
import time

import harness


SIZE = int(os.environ.get("KTLB_TEST_KERNEL_RELAY_BYTES", 30 * 1000 * 1000))
CHUNK = 256 * 1024


def client_hello(server_name):
    """The bytes of a real TLS ClientHello for `server_name`, from OpenSSL."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def payload(seed):
    """SIZE bytes that differ per seed and per position, as CHUNK-sized pieces."""
    block = hashlib.sha256(seed).digest() * (CHUNK // 32)
    sent = 0
    i = 0
    while sent < SIZE:
        piece = bytes([i & 0xFF]) + block[1:]
        piece = piece[: min(CHUNK, SIZE - sent)]
        sent += len(piece)
        i += 1
        yield piece


def payload_sha256(seed):
    h = hashlib.sha256()
    for p in payload(seed):
        h.update(p)
    return h.hexdigest()


def send_all_then_shut(sock, seed, delay=0.0):
    time.sleep(delay)
    for p in payload(seed):
        sock.sendall(p)
    sock.shutdown(socket.SHUT_WR)


def read_to_eof(sock, out, skip=0, slow_start=0.0):
    """sha256 of everything after the first `skip` bytes, up to EOF, into out[0]."""
    time.sleep(slow_start)  # let the sender fill every buffer on the way first
    h = hashlib.sha256()
    n = 0
    while True:
        b = sock.recv(1 << 20)
        if not b:
            break
        if skip:
            take = min(skip, len(b))
            skip -= take
            b = b[take:]
        h.update(b)
        n += len(b)
    out[0] = (n, h.hexdigest())


class KernelRelayTest(harness.KtlbTestCase):
    def relay(self, forwarding, log):
        backend = socket.socket()
        backend.bind(("127.0.0.1", 0))
        backend.listen(8)
        self.addCleanup(backend.close)
        port = harness.free_port()
        cfg = f"""
[server]
workers = 1
access_log = "{log}"
{harness.server_table(passthrough_forwarding=f'"{forwarding}"')}
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
mode = "passthrough"

[[routes]]
listener = "edge"
sni = "localhost"
upstream = "sink"

[[upstreams]]
name = "sink"
servers = ["127.0.0.1:{backend.getsockname()[1]}"]
"""
        k = self.ktlb(cfg, wait=False)
        try:
            k.wait_ready()
        except AssertionError:
            if forwarding == "sockmap" and "sockmap" in k.log():
                self.skipTest("BPF sockmap cannot be loaded here: " + k.log()[-300:])
            raise
        return k, backend

    def exchange(self, forwarding, client_first):
        """30 MB each way; the side named first half-closes while the other still
        sends, and the receiver of the first FIN reads slowly at the start."""
        log = os.path.join(self.tmp, f"{forwarding}-{client_first}.log")
        k, backend = self.relay(forwarding, log)
        hello = client_hello("localhost")
        client = socket.create_connection(("127.0.0.1", k.port("edge")), timeout=120)
        self.addCleanup(client.close)
        client.sendall(hello)
        backend.settimeout(30)
        server, _ = backend.accept()
        server.settimeout(120)
        self.addCleanup(server.close)
        # As in TLS, the client sends nothing more until the backend answered
        # (its "ServerHello"); then both sides stream.
        server.sendall(b"S" * 90)
        greeting = b""
        while len(greeting) < 90:
            greeting += client.recv(90 - len(greeting))

        # The first sender starts at once; the other side reads slowly, then
        # sends after a delay, so the first FIN arrives while bytes are queued.
        first_delay, second_delay = 0.0, 1.0
        got_by_server, got_by_client = [None], [None]
        threads = [
            threading.Thread(target=read_to_eof, args=(server, got_by_server, len(hello),
                                                       1.0 if client_first else 0.0)),
            threading.Thread(target=read_to_eof, args=(client, got_by_client, 0,
                                                       0.0 if client_first else 1.0)),
            threading.Thread(target=send_all_then_shut, args=(
                client, b"up", first_delay if client_first else second_delay)),
            threading.Thread(target=send_all_then_shut, args=(
                server, b"down", second_delay if client_first else first_delay)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
            self.assertFalse(t.is_alive(), "the exchange did not finish")
        self.assertEqual(got_by_server[0], (SIZE, payload_sha256(b"up")))
        self.assertEqual(got_by_client[0], (SIZE, payload_sha256(b"down")))
        client.close()
        server.close()
        k.stop()
        with open(log) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        self.assertEqual(len(lines), 1, lines)
        line = lines[0]
        self.assertNotIn("error", line)  # both directions ended with a FIN
        self.assertEqual(line["bytes_up"], len(hello) + SIZE)
        self.assertEqual(line["bytes_down"], 90 + SIZE)
        self.assertEqual(line.get("sockmap", False), forwarding == "sockmap")

    def test_sockmap_client_half_closes_first(self):
        self.exchange("sockmap", client_first=True)

    def test_sockmap_backend_half_closes_first(self):
        self.exchange("sockmap", client_first=False)

    def test_splice_client_half_closes_first(self):
        self.exchange("splice", client_first=True)

    def test_splice_backend_half_closes_first(self):
        self.exchange("splice", client_first=False)


if __name__ == "__main__":
    harness.main()
