#!/usr/bin/python3
"""Passthrough (SNI routing, no decryption): ktlb vs nginx stream vs haproxy mode tcp.

Each proxy, one worker pinned to CPU 0, reads the ClientHello, routes on its SNI and
relays raw TLS to the same backend: a ktlb terminating TLS (one worker) in front of
ktlb-origin. The backend, the origin and the load generator share CPU 1; the backend's
CPU is not counted. Reported: requests per proxy CPU-second (utime+stime of the proxy's
processes over the run) and the ratio of ktlb to the better anchor.

  nginx:   stream { ssl_preread on; map $ssl_preread_server_name ... }
  haproxy: mode tcp, tcp-request inspect-delay + req_ssl_sni
  ktlb:    mode = "passthrough", [[routes]] sni = "localhost"

Scenarios: small (100 B keep-alive responses, wrk -c50), 1mib (1 MiB responses, wrk
-c8), newconn (a new connection, with its TLS handshake at the backend, per request).

usage: bench/passthrough.py [--build build] [--duration 10] [--only small,1mib,newconn]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (shared helpers: Proxy, CPU accounting, wrk runner)

SCENARIOS = {
    "small": ("small keep-alive responses (100 B), wrk -c50",
              lambda url, dur: ["wrk", "-t1", "-c50", f"-d{dur}s", url + "/size/100"]),
    "1mib": ("1 MiB responses, wrk -c8",
             lambda url, dur: ["wrk", "-t1", "-c8", f"-d{dur}s", url + "/size/1048576"]),
    "newconn": ("new connection per request, wrk -c20 Connection: close",
                lambda url, dur: ["wrk", "-t1", "-c20", f"-d{dur}s", "-H", "Connection: close",
                                  url + "/size/100"]),
}


def backend(build, d, origin_port, certs):
    """The TLS server behind every proxy: ktlb terminating on CPU 1."""
    port = run.free_port()
    cfg = os.path.join(d, "backend.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
[[listeners]]
name = "be"
listen = "127.0.0.1:{port}"
certificates = ["site"]
[[certificates]]
name = "site"
cert = "{certs}/site.crt"
key = "{certs}/site.key"
[[routes]]
listener = "be"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:{origin_port}"]
""")
    log = open(os.path.join(d, "backend.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", run.LOAD_CPU, os.path.join(build, "ktlb"),
                             "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
    run.wait_port(port)
    return proc, port


def ktlb_passthrough(build, d, backend_port):
    port = run.free_port()
    cfg = os.path.join(d, "ktlb-pt.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
[[listeners]]
name = "edge"
listen = "127.0.0.1:{port}"
mode = "passthrough"
[[routes]]
listener = "edge"
sni = "localhost"
upstream = "be"
[[upstreams]]
name = "be"
servers = ["127.0.0.1:{backend_port}"]
""")
    return run.Proxy("ktlb", [os.path.join(build, "ktlb"), "--config", cfg], port, d)


def nginx_stream(d, backend_port):
    port = run.free_port()
    cfg = os.path.join(d, "nginx-stream.conf")
    with open(cfg, "w") as f:
        f.write(f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx-stream.pid;
error_log {d}/nginx-stream-error.log warn;
events {{ worker_connections 4096; }}
stream {{
  map $ssl_preread_server_name $be {{
    localhost 127.0.0.1:{backend_port};
    default 127.0.0.1:1;
  }}
  server {{
    listen 127.0.0.1:{port};
    ssl_preread on;
    proxy_pass $be;
  }}
}}
""")
    return run.Proxy("nginx", ["nginx", "-c", cfg, "-p", d], port, d)


def haproxy_tcp(d, backend_port):
    port = run.free_port()
    cfg = os.path.join(d, "haproxy-tcp.cfg")
    with open(cfg, "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port}
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req_ssl_hello_type 1 }}
  use_backend be if {{ req_ssl_sni -i localhost }}
backend be
  server b1 127.0.0.1:{backend_port}
""")
    return run.Proxy("haproxy", ["haproxy", "-f", cfg, "-db"], port, d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(run.ROOT, "build"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--proxies", default="ktlb,nginx,haproxy")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    d = tempfile.mkdtemp(prefix="ktlb-bench-pt-")
    certs = os.path.join(d, "certs")
    subprocess.run(["bash", os.path.join(run.ROOT, "tools/gen-certs.sh"), certs], check=True,
                   stdout=subprocess.DEVNULL)
    origin_port = run.free_port()
    origin = subprocess.Popen(["taskset", "-c", run.LOAD_CPU, os.path.join(build, "ktlb-origin"),
                               "--listen", f"127.0.0.1:{origin_port}", "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run.wait_port(origin_port)
    be, be_port = backend(build, d, origin_port, certs)
    makers = {
        "ktlb": lambda: ktlb_passthrough(build, d, be_port),
        "nginx": lambda: nginx_stream(d, be_port),
        "haproxy": lambda: haproxy_tcp(d, be_port),
    }
    try:
        # wrk sends the URL's host as SNI: the routes match "localhost".
        results = run.measure_all(makers, args.proxies.split(","), args.only.split(","),
                                  lambda p, sc, dur: SCENARIOS[sc][1](
                                      f"https://localhost:{p.port}", dur),
                                  args.duration)
    finally:
        be.terminate()
        be.wait()
        origin.terminate()
        origin.wait()

    print()
    run.print_table(results, args.only.split(","),
                    {k: "passthrough: " + v[0] for k, v in SCENARIOS.items()})
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
