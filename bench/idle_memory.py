#!/usr/bin/python3
"""Memory per idle keep-alive TLS connection.

Opens N TLS connections to a running ktlb, sends one request on each (so the
handshake, the first exchange and the upstream pool are all done), leaves them
idle, and reports the growth of ktlb's RSS (VmRSS from /proc) per connection.

usage: bench/idle_memory.py --pid PID --port PORT --ca CA [-n 1000] [--tls 1.3|1.2]
"""
import argparse
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--tls", default="1.3")
    ap.add_argument("--path", default="/size/100")
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.ca)
    v = ssl.TLSVersion.TLSv1_3 if args.tls == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    # Warm up: the first connections grow pools and allocator arenas.
    warm = []
    for _ in range(20):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", args.port)), server_hostname="localhost")
        s.sendall(f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        s.recv(65536)
        warm.append(s)
    time.sleep(0.5)
    before = rss_kib(args.pid)
    conns = []
    req = f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    for _ in range(args.n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", args.port)), server_hostname="localhost")
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        conns.append(s)
    time.sleep(1.0)
    after = rss_kib(args.pid)
    per = (after - before) / args.n
    print(f"idle TLS {args.tls} connections: {args.n}  RSS before {before} KiB  after {after} KiB  "
          f"=> {per:.1f} KiB per idle connection")
    for s in conns + warm:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
