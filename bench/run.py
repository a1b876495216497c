#!/usr/bin/python3
"""ktlb vs nginx vs haproxy, same machine, same origin, same run.

Each proxy terminates TLS with one worker pinned to CPU 0 and forwards HTTP/1.1 to the
same ktlb-origin over pooled keep-alive connections; wrk/h2load and the origin are
pinned to CPU 1. For every scenario it prints requests/s and requests per proxy
CPU-second (utime+stime of the proxy's processes over the run, from /proc), and the
ratio of ktlb to the better anchor. Absolute numbers on a shared machine are noise;
the ratios are the result.

usage: bench/run.py [--build build] [--duration 10] [--only small,1mib,newconn]
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


def ktlb_proxy(build, d, origin_port, certs):
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
cert = "{certs}/site.crt"
key = "{certs}/site.key"
[[routes]]
listener = "bench"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:{origin_port}"]
""")
    return Proxy("ktlb", [os.path.join(build, "ktlb"), "--config", cfg], port, d)


def nginx_proxy(d, origin_port, certs):
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
    ssl_certificate {certs}/site.crt;
    ssl_certificate_key {certs}/site.key;
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


def haproxy_proxy(d, origin_port, certs):
    port = free_port()
    pem = os.path.join(d, "site.pem")
    with open(pem, "w") as f:
        f.write(open(f"{certs}/site.crt").read() + open(f"{certs}/site.key").read())
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


SCENARIOS = {
    # name: (description, tool argv builder)
    "small": ("small keep-alive responses (100 B), wrk -c50",
              lambda url, dur: ["wrk", "-t1", "-c50", f"-d{dur}s", url + "/size/100"]),
    "1mib": ("1 MiB responses, wrk -c8",
             lambda url, dur: ["wrk", "-t1", "-c8", f"-d{dur}s", url + "/size/1048576"]),
    "newconn": ("new TLS connection per request, wrk -c20 Connection: close",
                lambda url, dur: ["wrk", "-t1", "-c20", f"-d{dur}s", "-H", "Connection: close",
                                  url + "/size/100"]),
}


def run_load(argv):
    out = subprocess.run(["taskset", "-c", LOAD_CPU] + argv, capture_output=True, text=True)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    sock_err = re.search(r"Socket errors: (.*)", out.stdout)
    if not m:
        raise RuntimeError("load generator failed:\n" + out.stdout + out.stderr)
    return float(m.group(1)), int(total.group(1)), (errors.group(1) if errors else "0"), \
        (sock_err.group(1) if sock_err else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--proxies", default="ktlb,nginx,haproxy")
    args = ap.parse_args()

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
        "ktlb": lambda: ktlb_proxy(args.build, d, origin_port, certs),
        "nginx": lambda: nginx_proxy(d, origin_port, certs),
        "haproxy": lambda: haproxy_proxy(d, origin_port, certs),
    }
    results = {}
    try:
        for name in args.proxies.split(","):
            if name != "ktlb" and shutil.which(name) is None:
                print(f"# {name} not installed, skipped")
                continue
            p = makers[name]()
            p.start()
            try:
                url = f"https://127.0.0.1:{p.port}"
                for sc in args.only.split(","):
                    desc, argv = SCENARIOS[sc]
                    run_load(argv(url, 1))  # warm-up: pools, caches
                    pids = p.pids()
                    c0 = cpu_seconds(pids)
                    rps, total, non2xx, sockerr = run_load(argv(url, args.duration))
                    cpu = cpu_seconds(pids) - c0
                    results[(sc, name)] = (rps, total, cpu, non2xx, sockerr)
                    print(f"# {sc:8} {name:8} {rps:10.0f} req/s  cpu {cpu:6.2f}s  "
                          f"{total / cpu if cpu else 0:10.0f} req/cpu-s  non2xx={non2xx} {sockerr}",
                          flush=True)
            finally:
                p.stop()
    finally:
        origin.terminate()
        origin.wait()

    print()
    print("| scenario | proxy | requests/s | proxy CPU-s | requests per proxy CPU-second | ktlb / best anchor |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for sc in args.only.split(","):
        per_cpu = {n: (r[1] / r[2] if r[2] else 0.0) for (s, n), r in results.items() if s == sc}
        anchors = [v for n, v in per_cpu.items() if n != "ktlb"]
        best = max(anchors) if anchors else 0
        for (s, n), (rps, total, cpu, _, _) in results.items():
            if s != sc:
                continue
            ratio = f"{per_cpu[n] / best:.2f}x" if n == "ktlb" and best else ""
            print(f"| {SCENARIOS[sc][0]} | {n} | {rps:.0f} | {cpu:.2f} | {per_cpu[n]:.0f} | {ratio} |")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
