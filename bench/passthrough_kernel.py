#!/usr/bin/python3
"""Passthrough forwarding, splice against sockmap, in total machine CPU.

Sockmap moves the relay's work out of ktlb: into softirq on the sending side and into
the psock's kworker, which no per-process counter charges to ktlb. So this measures the
whole machine: busy jiffies of every CPU (/proc/stat) over a bulk transfer through
ktlb, minus the same transfer sent directly client -> backend. Also reported: the CPU
of ktlb alone and of the client and backend processes.

The backend is a plain TCP sink (passthrough never decrypts; the client opens with a
real ClientHello for routing, then streams). Modes run alternately, --rounds times each;
medians are printed. Other load on the machine shows up in the totals: compare modes
within one run, never across runs.

--connections N measures short connections instead (ClientHello + 1 KiB each way, then
close), per 10,000 connections.

usage: bench/passthrough_kernel.py [--build build] [--bytes 1000000000] [--rounds 5]
                                   [--connections N]
"""
import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CHUNK = 1 << 20


def busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle


def proc_cpu(pid, tid_self=False):
    path = f"/proc/{pid}/stat"
    with open(path) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def client_hello():
    ctx = ssl.create_default_context()
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(i, o, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return o.read()


def transfer(port, backend, nbytes):
    """Client: ClientHello, then nbytes, then FIN; backend: reads to EOF, then closes."""
    hello = client_hello()
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(hello)
    s, _ = backend.accept()
    done = threading.Event()

    def sink():
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while s.recv_into(view):
            pass
        s.close()
        done.set()

    t = threading.Thread(target=sink)
    t.start()
    block = b"\x17" * CHUNK
    sent = 0
    while sent < nbytes:
        c.sendall(block)
        sent += CHUNK
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # the backend's close comes back through the relay
    c.close()
    t.join()


def short_connections(port, backend, count):
    """count connections, each: ClientHello, 1 KiB up, 1 KiB back, both close."""
    hello = client_hello()
    up = b"\x17" * 1024

    def serve():
        for _ in range(count):
            s, _ = backend.accept()
            got = 0
            while got < len(hello) + len(up):
                got += len(s.recv(65536))
            s.sendall(up)
            s.close()

    t = threading.Thread(target=serve)
    t.start()
    for _ in range(count):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(hello + up)
        got = 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            got += len(b)
        c.close()
    t.join()


def start_ktlb(build, d, mode, backend_port):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    p = port.getsockname()[1]
    port.close()
    cfg = os.path.join(d, f"{mode}.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
passthrough_forwarding = "{mode}"
[[listeners]]
name = "edge"
listen = "127.0.0.1:{p}"
mode = "passthrough"
[[routes]]
listener = "edge"
sni = "localhost"
upstream = "sink"
[[upstreams]]
name = "sink"
servers = ["127.0.0.1:{backend_port}"]
""")
    proc = subprocess.Popen([os.path.join(build, "ktlb"), "--config", cfg],
                            stderr=open(os.path.join(d, f"{mode}.log"), "w"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ktlb ({mode}) did not start: see {d}/{mode}.log")
            time.sleep(0.05)
    return proc, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--bytes", type=int, default=1_000_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=0,
                    help="instead of one bulk upload: this many short connections per run")
    a = ap.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    d = tempfile.mkdtemp(prefix="ktlb-bench-kernel-")
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(16)
    bport = backend.getsockname()[1]
    procs = {m: start_ktlb(a.build, d, m, bport) for m in ("splice", "sockmap")}
    results = {m: {"total": [], "ktlb": [], "secs": []} for m in ("direct", "splice", "sockmap")}
    try:
        for _ in range(a.rounds):
            for mode in ("direct", "splice", "sockmap"):
                port = bport if mode == "direct" else procs[mode][1]
                k0 = proc_cpu(procs[mode][0].pid) if mode != "direct" else 0.0
                j0, t0 = busy_jiffies(), time.monotonic()
                if a.connections:
                    short_connections(port, backend, a.connections)
                else:
                    # (direct: same bytes, no relay, the client talks to the sink itself.)
                    transfer(port, backend, a.bytes)
                j1, t1 = busy_jiffies(), time.monotonic()
                k1 = proc_cpu(procs[mode][0].pid) if mode != "direct" else 0.0
                results[mode]["total"].append((j1 - j0) / hz)
                results[mode]["ktlb"].append(k1 - k0)
                results[mode]["secs"].append(t1 - t0)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait()
    gb = a.connections / 1e4 if a.connections else a.bytes / 1e9
    unit = "10k connections" if a.connections else "GB"
    direct = statistics.median(results["direct"]["total"])
    what = f"{a.connections} connections" if a.connections else f"{a.bytes} bytes"
    print(f"{what} per run, {a.rounds} alternating rounds, medians "
          f"(CPU seconds per {unit}; 'added' = total minus the direct run)")
    print(f"{'mode':8} {'wall s':>7} {'machine':>8} {'added':>7} {'ktlb':>6}")
    for mode in ("direct", "splice", "sockmap"):
        r = results[mode]
        tot = statistics.median(r["total"])
        print(f"{mode:8} {statistics.median(r['secs']):7.2f} {tot / gb:8.3f} "
              f"{(tot - direct) / gb:7.3f} {statistics.median(r['ktlb']) / gb:6.3f}")
    print("raw:", {m: {k: [round(x, 2) for x in v] for k, v in r.items()} for m, r in results.items()})


if __name__ == "__main__":
    main()
