#!/usr/bin/python3
"""A backend killed mid-run: ktlb vs nginx vs haproxy, errors and p99.

Each proxy (one worker pinned to CPU 0) terminates TLS in front of four ktlb-origin
processes (CPU 1, with wrk). wrk sends idempotent GETs (-t1 -c32, --latency) for
--duration seconds; halfway through, one origin is killed with SIGKILL and stays down.
Every proxy gets fresh origins on fresh ports. The result is what a client saw: failed
requests (wrk's non-2xx responses plus socket errors) and the latency percentiles, for
the whole run.

Each proxy is set up for passive health (no active checks, so that only what the traffic
shows steers it), with retries of failed idempotent requests on another server:

  ktlb     eject = { consecutive_failures = 1, base_ms = 10000, max_ms = 10000 }
           (idempotent requests refused, reset or cut before their head are retried
           on another server by default; retry_budget 0.2)
  nginx    server ... max_fails=1 fail_timeout=10s;
           proxy_next_upstream error timeout; proxy_next_upstream_tries 2
  haproxy  default-server check observe layer4 error-limit 1 on-error mark-down inter 10s
           (observe needs `check`; inter 10s keeps active probes out of the 10 s run),
           retries 1, option redispatch 1, retry-on conn-failure empty-response

usage: bench/failover.py [--build build] [--duration 10] [--proxies ktlb,nginx,haproxy]
                         [--no-kill]
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (shared helpers: Proxy, free_port, wait_port)

ORIGINS = 4
CONNECTIONS = 32


def ktlb_proxy(build, d, origins, certs):
    port = run.free_port()
    admin = run.free_port()
    cfg = os.path.join(d, "ktlb.toml")
    servers = ", ".join(f'"127.0.0.1:{p}"' for p in origins)
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
admin_listen = "127.0.0.1:{admin}"
[[listeners]]
name = "bench"
listen = "127.0.0.1:{port}"
certificates = ["site"]
[[certificates]]
name = "site"
cert = "{certs}/other.crt"
key = "{certs}/other.key"
[[routes]]
listener = "bench"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = [{servers}]
eject = {{ consecutive_failures = 1, base_ms = 10000, max_ms = 10000 }}
""")
    p = run.Proxy("ktlb", [os.path.join(build, "ktlb"), "--config", cfg], port, d)
    p.admin = admin
    return p


def ktlb_counts(proxy):
    """What ktlb counted of the run: its non-zero upstream failure, retry and
    ejection series."""
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{proxy.admin}/metrics", timeout=5).read().decode()
    keep = re.compile(r"^ktlb_upstream_(server_failures_total|server_retries_total|"
                      r"server_ejections_total|retries_budget_exhausted_total|no_server_total)"
                      r"\{.*\} [1-9]")
    return [line for line in text.splitlines() if keep.match(line)]


def nginx_proxy(d, origins, certs):
    port = run.free_port()
    cfg = os.path.join(d, "nginx.conf")
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in origins)
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
  upstream origin {{
{servers}    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs}/other.crt;
    ssl_certificate_key {certs}/other.key;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
""")
    return run.Proxy("nginx", ["nginx", "-c", cfg, "-p", d], port, d)


def haproxy_proxy(d, origins, certs):
    port = run.free_port()
    pem = os.path.join(d, "site.pem")
    with open(pem, "w") as f:
        f.write(open(f"{certs}/other.crt").read() + open(f"{certs}/other.key").read())
    cfg = os.path.join(d, "haproxy.cfg")
    servers = "".join(f"  server o{i} 127.0.0.1:{p}\n" for i, p in enumerate(origins))
    with open(cfg, "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  retries 1
  option redispatch 1
  retry-on conn-failure empty-response
frontend fe
  bind 127.0.0.1:{port} ssl crt {pem}
  default_backend be
backend be
  default-server check observe layer4 error-limit 1 on-error mark-down inter 10s
{servers}""")
    return run.Proxy("haproxy", ["haproxy", "-f", cfg, "-db"], port, d)


def percentile_ms(text, pct):
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def measure(proxy, origins, duration, victim):
    """wrk for `duration` s with origin `victim` SIGKILLed halfway (None: no kill);
    returns the figures."""
    url = f"https://127.0.0.1:{proxy.port}/"
    wrk = subprocess.Popen(["taskset", "-c", run.LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}",
                            f"-d{duration}s", "--latency", url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(duration / 2)
    if victim is not None:
        origins[victim].send_signal(signal.SIGKILL)
        origins[victim].wait()
    out = wrk.communicate(timeout=duration + 60)[0]
    total = re.search(r"(\d+) requests in", out)
    if not total:
        raise RuntimeError("wrk printed no summary:\n" + out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(total.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
        "p50": percentile_ms(out, 50),
        "p99": percentile_ms(out, 99),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(run.ROOT, "build"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--proxies", default="ktlb,nginx,haproxy")
    ap.add_argument("--no-kill", action="store_true",
                    help="kill nothing: the same run as a baseline for the latencies")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    d = tempfile.mkdtemp(prefix="ktlb-failover-")
    certs = os.path.join(d, "certs")
    subprocess.run(["bash", os.path.join(run.ROOT, "tools/gen-certs.sh"), certs], check=True,
                   stdout=subprocess.DEVNULL)
    makers = {
        "ktlb": lambda ports: ktlb_proxy(args.build, d, ports, certs),
        "nginx": lambda ports: nginx_proxy(d, ports, certs),
        "haproxy": lambda ports: haproxy_proxy(d, ports, certs),
    }
    results = {}
    for name in args.proxies.split(","):
        if name != "ktlb" and shutil.which(name) is None:
            print(f"# {name} not installed, skipped")
            continue
        ports = [run.free_port() for _ in range(ORIGINS)]
        origins = [subprocess.Popen(["taskset", "-c", run.LOAD_CPU,
                                     os.path.join(args.build, "ktlb-origin"),
                                     "--listen", f"127.0.0.1:{p}", "--threads", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for p in ports]
        p = makers[name](ports)
        try:
            for port in ports:
                run.wait_port(port)
            p.start()
            # Warm-up: pools filled, every origin alive.
            subprocess.run(["taskset", "-c", run.LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}",
                            "-d1s", f"https://127.0.0.1:{p.port}/"], capture_output=True)
            r = measure(p, origins, args.duration, victim=None if args.no_kill else ORIGINS - 1)
            results[name] = r
            print(f"# {name:8} {r['requests']} requests, {r['non2xx']} non-2xx, "
                  f"{r['socket_errors']} socket errors, p50 {r['p50']:.2f} ms, "
                  f"p99 {r['p99']:.2f} ms, {r['rps']:.0f} req/s", flush=True)
            if name == "ktlb":
                for line in ktlb_counts(p):
                    print(f"#   {line}", flush=True)
        finally:
            p.stop()
            for o in origins:
                if o.poll() is None:
                    o.kill()
                o.wait()
    print()
    print(f"{'no origin' if args.no_kill else f'one of {ORIGINS} origins'} SIGKILLed after "
          f"{args.duration / 2:g} s of a {args.duration} s wrk -c{CONNECTIONS} run")
    print("| proxy | requests | failed (non-2xx + socket errors) | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['requests']} | {r['non2xx'] + r['socket_errors']} | "
              f"{r['p50']:.2f} | {r['p99']:.2f} |")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
