#!/usr/bin/python3
"""ktlb vs nginx vs haproxy, same machine, same origin, same run.

Each proxy terminates TLS with one worker pinned to CPU 0 and forwards HTTP/1.1 to the
same ktlb-origin over pooled keep-alive connections; wrk/h2load/ktlb-tlsload and the
origin are pinned to CPU 1. For every scenario it prints requests/s and requests per proxy
CPU-second (utime+stime of the proxy's processes over the run, from /proc), and the
ratio of ktlb to the better anchor. Absolute numbers on a shared machine are noise;
the ratios are the result.

Scenarios: small, 1mib and newconn use wrk. newconn sends "Connection: close", but wrk
resumes TLS sessions, so it mostly measures resumed handshakes. fullhs uses
ktlb-tlsload (tools/tlsload, built with ktlb): a new connection per request with a FULL
handshake every time (no session is ever offered), and it fails the run unless its
"Resumed:" fraction is 0.

--cert picks the certificate all three proxies serve, for every scenario: "site" (the
default, RSA-2048) or "other" (ECDSA P-256), both from tools/gen-certs.sh and both with
the RSA intermediate in the chain. For fullhs prefer --cert other: with RSA the
private-key signature (~0.25 ms on one core) dominates every full handshake and hides
the proxy's own overhead; with ECDSA the signature is ~20 us and the proxy's work shows.
fullhs sends the SNI the certificate names (localhost or other.test).

The load generator has one core, shared with the origin; ktlb-tlsload prints its own CPU
per handshake ("client ... us/handshake" below, ~0.4-0.5 ms). When that CPU nears the
whole core (as with --cert other), the client, not the proxy, sets the pace: requests per
proxy CPU-second stay comparable across proxies, requests/s do not measure capacity.

usage: bench/run.py [--build build] [--duration 10] [--only small,1mib,newconn,fullhs]
                    [--cert site|other]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
LOAD_CPU = "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def proc_tree(pid):
    """pid and all its descendants."""
    pids = [pid]
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    i = 0
    while i < len(pids):
        pids.extend(children.get(pids[i], []))
        i += 1
    return pids


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


class Proxy:
    def __init__(self, name, argv, port, cwd):
        self.name, self.argv, self.port, self.cwd = name, argv, port, cwd
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.cwd, self.name + ".log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", PROXY_CPU] + self.argv, cwd=self.cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        time.sleep(0.3)

    def pids(self):
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            for p in reversed(self.pids()):
                try:
                    os.kill(p, signal.SIGTERM)
                except OSError:
                    pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ktlb_proxy(build, d, origin_port, certs, cert):
    port = free_port()
    cfg = os.path.join(d, "ktlb.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:{port}"
certificates = ["site"]
ktls = "auto"
[[certificates]]
name = "site"
cert = "{certs}/{cert}.crt"
key = "{certs}/{cert}.key"
[[routes]]
listener = "bench"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:{origin_port}"]
""")
    return Proxy("ktlb", [os.path.join(build, "ktlb"), "--config", cfg], port, d)


def nginx_proxy(d, origin_port, certs, cert):
    port = free_port()
    cfg = os.path.join(d, "nginx.conf")
    with open(cfg, "w") as f:
        f.write(f"""
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs}/{cert}.crt;
    ssl_certificate_key {certs}/{cert}.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_buffering on;
    }}
  }}
}}
""")
    return Proxy("nginx", ["nginx", "-c", cfg, "-p", d], port, d)


def haproxy_proxy(d, origin_port, certs, cert):
    port = free_port()
    pem = os.path.join(d, "site.pem")
    with open(pem, "w") as f:
        f.write(open(f"{certs}/{cert}.crt").read() + open(f"{certs}/{cert}.key").read())
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{port} ssl crt {pem} ssl-min-ver TLSv1.2
  http-request set-header X-Forwarded-Proto https
  default_backend be
backend be
  server o1 127.0.0.1:{origin_port} maxconn 1000
""")
    return Proxy("haproxy", ["haproxy", "-f", cfg, "-db"], port, d)


# The SNI each --cert names (fullhs sends it; wrk sends none for an IP URL).
CERT_SNI = {"site": "localhost", "other": "other.test"}

SCENARIOS = {
    # name: (description, tool argv builder(url, duration, port, args))
    "small": ("small keep-alive responses (100 B), wrk -c50",
              lambda url, dur, port, a: ["wrk", "-t1", "-c50", f"-d{dur}s", url + "/size/100"]),
    "1mib": ("1 MiB responses, wrk -c8",
             lambda url, dur, port, a: ["wrk", "-t1", "-c8", f"-d{dur}s",
                                        url + "/size/1048576"]),
    "newconn": ("new TLS connection per request, wrk -c20 Connection: close",
                lambda url, dur, port, a: ["wrk", "-t1", "-c20", f"-d{dur}s", "-H",
                                           "Connection: close", url + "/size/100"]),
    "fullhs": ("new TLS connection per request, full handshake (ktlb-tlsload -c 32)",
               lambda url, dur, port, a: [os.path.join(a.build, "ktlb-tlsload"),
                                          "--connect", f"127.0.0.1:{port}", "--path", "/size/100",
                                          "--concurrency", "32", "--duration", str(dur),
                                          "--sni", CERT_SNI[a.cert]]),
}


def run_load(argv):
    """Runs wrk or ktlb-tlsload on the load CPU; returns (requests/s, requests,
    non-2xx count, error text, notes)."""
    out = subprocess.run(["taskset", "-c", LOAD_CPU] + argv, capture_output=True, text=True)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    if not m or not total:
        raise RuntimeError("load generator failed:\n" + out.stdout + out.stderr)
    tls = re.search(r"Errors: connect (\d+), handshake (\d+), status (\d+), read (\d+)",
                    out.stdout)
    if tls:  # ktlb-tlsload
        connect, handshake, status, read = tls.groups()
        resumed = re.search(r"Resumed: ([\d.]+) \((\d+) of (\d+)", out.stdout)
        client = re.search(r"Client CPU: ([\d.]+)s, ([\d.]+)us per handshake", out.stdout)
        if resumed and float(resumed.group(1)) != 0.0:
            raise RuntimeError("ktlb-tlsload resumed sessions in a full-handshake run:\n" +
                               out.stdout)
        errors = "" if (connect, handshake, read) == ("0", "0", "0") else \
            f"errors: connect {connect}, handshake {handshake}, read {read}"
        notes = (f"resumed {resumed.group(2)}/{resumed.group(3)}" if resumed else "") + \
            (f" client {client.group(2)} us/handshake ({client.group(1)} s)" if client else "")
        return float(m.group(1)), int(total.group(1)), status, errors, notes
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    sock_err = re.search(r"Socket errors: (.*)", out.stdout)
    return float(m.group(1)), int(total.group(1)), (errors.group(1) if errors else "0"), \
        (sock_err.group(1) if sock_err else ""), ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--proxies", default="ktlb,nginx,haproxy")
    ap.add_argument("--cert", choices=sorted(CERT_SNI), default="site",
                    help="certificate every proxy serves: site (RSA-2048) or other "
                         "(ECDSA P-256; shows the proxies' own handshake cost better)")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)  # the proxies run in a temporary directory
    for sc in args.only.split(","):
        if sc not in SCENARIOS:
            ap.error(f"unknown scenario {sc!r} (have: {', '.join(SCENARIOS)})")
    if "fullhs" in args.only.split(",") and \
            not os.access(os.path.join(args.build, "ktlb-tlsload"), os.X_OK):
        ap.error(f"fullhs needs {args.build}/ktlb-tlsload (cmake --build ... --target ktlb-tlsload)")

    d = tempfile.mkdtemp(prefix="ktlb-bench-")
    certs = os.path.join(d, "certs")
    subprocess.run(["bash", os.path.join(ROOT, "tools/gen-certs.sh"), certs], check=True,
                   stdout=subprocess.DEVNULL)
    origin_port = free_port()
    origin = subprocess.Popen(["taskset", "-c", LOAD_CPU, os.path.join(args.build, "ktlb-origin"),
                               "--listen", f"127.0.0.1:{origin_port}", "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(origin_port)
    makers = {
        "ktlb": lambda: ktlb_proxy(args.build, d, origin_port, certs, args.cert),
        "nginx": lambda: nginx_proxy(d, origin_port, certs, args.cert),
        "haproxy": lambda: haproxy_proxy(d, origin_port, certs, args.cert),
    }
    try:
        results = measure_all(makers, args.proxies.split(","), args.only.split(","),
                              lambda p, sc, dur: SCENARIOS[sc][1](
                                  f"https://127.0.0.1:{p.port}", dur, p.port, args),
                              args.duration)
    finally:
        origin.terminate()
        origin.wait()

    print()
    print(f"certificate: {args.cert} ({'RSA-2048' if args.cert == 'site' else 'ECDSA P-256'})")
    print_table(results, args.only.split(","), {k: v[0] for k, v in SCENARIOS.items()})
    shutil.rmtree(d, ignore_errors=True)


def measure_all(makers, proxies, scenarios, load_argv, duration):
    """Starts each proxy in turn and runs each scenario against it: a 1 s warm-up,
    then `duration` seconds measured. load_argv(proxy, scenario, seconds) builds the
    load generator's command line. Returns {(scenario, proxy): (req/s, requests, CPU-s)}."""
    results = {}
    for name in proxies:
        if name != "ktlb" and shutil.which(name) is None:
            print(f"# {name} not installed, skipped")
            continue
        p = makers[name]()
        p.start()
        try:
            for sc in scenarios:
                run_load(load_argv(p, sc, 1))  # warm-up: pools, caches
                pids = p.pids()
                c0 = cpu_seconds(pids)
                rps, total, non2xx, sockerr, notes = run_load(load_argv(p, sc, duration))
                cpu = cpu_seconds(pids) - c0
                results[(sc, name)] = (rps, total, cpu)
                print(f"# {sc:8} {name:8} {rps:10.0f} req/s  cpu {cpu:6.2f}s  "
                      f"{total / cpu if cpu else 0:10.0f} req/cpu-s  non2xx={non2xx} {sockerr}"
                      f"{'  ' + notes if notes else ''}",
                      flush=True)
        finally:
            p.stop()
    return results


def print_table(results, scenarios, descriptions):
    """The markdown table: requests per proxy CPU-second and ktlb / best anchor."""
    print("| scenario | proxy | requests/s | proxy CPU-s | requests per proxy CPU-second | ktlb / best anchor |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for sc in scenarios:
        per_cpu = {n: (r[1] / r[2] if r[2] else 0.0) for (s, n), r in results.items() if s == sc}
        anchors = [v for n, v in per_cpu.items() if n != "ktlb"]
        best = max(anchors) if anchors else 0
        for (s, n), (rps, total, cpu) in results.items():
            if s != sc:
                continue
            ratio = f"{per_cpu[n] / best:.2f}x" if n == "ktlb" and best else ""
            print(f"| {descriptions[sc]} | {n} | {rps:.0f} | {cpu:.2f} | {per_cpu[n]:.0f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
