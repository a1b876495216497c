#!/usr/bin/python3
"""ktlb vs nginx vs haproxy vs h2o, same machine, same origin, same run.

Each proxy terminates TLS with one worker pinned to CPU 0 and forwards HTTP/1.1 to the
same ktlb-origin over pooled keep-alive connections; wrk/h2load/ktlb-tlsload and the
origin are pinned to CPU 1. For every scenario it prints requests/s and requests per proxy
CPU-second (utime+stime of the proxy's processes over the run, from /proc), and the
ratio of ktlb to the best anchor. Absolute numbers on a shared machine are noise;
the ratios are the result.

Every listener offers ALPN h2 and http/1.1 (ktlb: alpn = ["h2", "http/1.1"]; nginx:
listen ... ssl http2; haproxy: bind ... alpn h2,http/1.1; h2o: h2 by default). wrk and
ktlb-tlsload offer no ALPN, so the HTTP/1.1 scenarios are unaffected.

h2-64 and h2-1m are HTTP/2: h2load --npn-list=h2 (it offers only h2, so a proxy that
does not negotiate h2 fails instead of being measured over HTTP/1.1 by h2load's
fallback), 64 B responses with -c32 -m10 (320 streams in flight) and 1 MiB responses
with -c8 -m2. Upstream is HTTP/1.1 as for the other scenarios. A proxy that fails a
scenario (it does not start, h2 is not negotiated, any request fails or errors, the load
generator exits without figures) gets a "failed" row with the reason, and the run goes
on; its figures do not count as an anchor.

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

usage: bench/run.py [--build build] [--duration 10]
                    [--only small,1mib,newconn,fullhs,h2-64,h2-1m]
                    [--proxies ktlb,nginx,haproxy,h2o] [--cert site|other]
"""
import argparse
import collections
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
        self.log = open(os.path.join(self.cwd, self.name + ".log"), "a")
        self.proc = subprocess.Popen(["taskset", "-c", PROXY_CPU] + self.argv, cwd=self.cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            self.log.flush()
            tail = open(self.log.name).read()[-2000:]
            raise RuntimeError(f"{self.name} did not start (exit {self.proc.poll()}):\n{tail}")
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
alpn = ["h2", "http/1.1"]
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
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
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
  bind 127.0.0.1:{port} ssl crt {pem} ssl-min-ver TLSv1.2 alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  default_backend be
backend be
  server o1 127.0.0.1:{origin_port} maxconn 1000
""")
    return Proxy("haproxy", ["haproxy", "-f", cfg, "-db"], port, d)


def h2o_proxy(d, origin_port, certs, cert):
    """h2o (Debian's 2.2), one worker thread. HTTP/2 settings are h2o's defaults
    (http2-max-concurrent-requests-per-connection 100, ...); proxy.reverse.url keeps
    upstream HTTP/1.1 connections alive (proxy.timeout.keepalive, 2 s by default).
    h2o also runs its neverbleed process (private-key operations) and a crash-handler
    helper; both are its children, so their CPU is counted."""
    port = free_port()
    cfg = os.path.join(d, "h2o.yaml")
    # As root h2o drops privileges to "nobody" unless told otherwise; the certificates
    # sit in a 0700 temporary directory.
    user = "user: root\n" if os.geteuid() == 0 else ""
    with open(cfg, "w") as f:
        f.write(f"""{user}num-threads: 1
pid-file: {d}/h2o.pid
error-log: {d}/h2o-error.log
listen:
  host: 127.0.0.1
  port: {port}
  ssl:
    certificate-file: {certs}/{cert}.crt
    key-file: {certs}/{cert}.key
    minimum-version: TLSv1.2
    ocsp-update-interval: 0
hosts:
  default:
    paths:
      "/":
        proxy.reverse.url: http://127.0.0.1:{origin_port}/
""")
    return Proxy("h2o", ["h2o", "-c", cfg], port, d)


def h2load(clients, streams, path):
    """h2load over h2 only (no HTTP/1.1 fallback), one thread, for `dur` seconds."""
    return lambda url, dur, port, a: ["h2load", "--npn-list=h2", "-t1", f"-c{clients}",
                                      f"-m{streams}", "-D", str(dur), url + path]


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
    "h2-64": ("HTTP/2 64 B responses, h2load -c32 -m10", h2load(32, 10, "/size/64")),
    "h2-1m": ("HTTP/2 1 MiB responses, h2load -c8 -m2", h2load(8, 2, "/size/1048576")),
}


class ScenarioFailed(RuntimeError):
    """The proxy failed the scenario (as opposed to a harness error)."""


Result = collections.namedtuple("Result", "rps total cpu failure")


def run_load(argv, timeout=None):
    """Runs wrk, h2load or ktlb-tlsload on the load CPU; returns (requests/s, requests,
    non-2xx count, error text, notes). Raises ScenarioFailed when the proxy failed the
    run (h2 not negotiated, failed requests, no figures, or the run hung)."""
    try:
        out = subprocess.run(["taskset", "-c", LOAD_CPU] + argv, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ScenarioFailed(f"{os.path.basename(argv[0])} did not finish in {timeout} s")
    if os.path.basename(argv[0]) == "h2load":
        return parse_h2load(out)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    if not m or not total:
        raise ScenarioFailed("load generator failed:\n" + out.stdout + out.stderr)
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


def parse_h2load(out):
    """h2load's summary. Requests are the succeeded ones; any failed, errored or timed
    out request, or a protocol other than h2, fails the scenario."""
    text = out.stdout + out.stderr
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    proto = re.search(r"Application protocol: (\S+)", text)
    if not fin or not req:
        raise ScenarioFailed("h2load printed no summary (exit %d): %s" %
                             (out.returncode, text.strip()[-300:]))
    total, started, done, ok, failed, errored, timeout = map(int, req.groups())
    no_proto = re.search(r"No protocol negotiated[^\n]*|No supported protocol[^\n]*", text)
    if proto is None or proto.group(1) != "h2":
        why = proto.group(1) if proto else (no_proto.group(0) if no_proto else "none")
        raise ScenarioFailed(f"h2 not negotiated ({why}); requests: {ok} succeeded, "
                             f"{failed} failed, {errored} errored")
    if failed or errored or timeout or ok == 0:
        raise ScenarioFailed(f"requests: {ok} succeeded, {failed} failed, {errored} errored, "
                             f"{timeout} timeout of {total}")
    non2xx = sum(map(int, codes.groups()[1:])) if codes else 0
    cipher = re.search(r"Cipher: (\S+)", text)
    return float(fin.group(3)), ok, str(non2xx), "", "h2" + (
        f" {cipher.group(1)}" if cipher else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--proxies", default="ktlb,nginx,haproxy,h2o")
    ap.add_argument("--cert", choices=sorted(CERT_SNI), default="site",
                    help="certificate every proxy serves: site (RSA-2048) or other "
                         "(ECDSA P-256; shows the proxies' own handshake cost better)")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)  # the proxies run in a temporary directory
    for sc in args.only.split(","):
        if sc.startswith("h2-") and shutil.which("h2load") is None:
            ap.error(f"{sc} needs h2load (Debian package nghttp2-client)")
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
        "h2o": lambda: h2o_proxy(d, origin_port, certs, args.cert),
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
    load generator's command line. Returns {(scenario, proxy): Result(req/s, requests,
    CPU-s, failure)}; failure is "" or why the proxy failed the scenario (a proxy that
    does not start fails every scenario), and the run goes on."""
    results = {}
    for name in proxies:
        if name != "ktlb" and shutil.which(name) is None:
            print(f"# {name} not installed, skipped")
            continue
        p = makers[name]()
        try:
            p.start()
        except RuntimeError as e:
            print(f"# {name}: {e}", flush=True)
            for sc in scenarios:
                results[(sc, name)] = Result(0.0, 0, 0.0, f"{name} did not start")
            continue
        try:
            for sc in scenarios:
                c0 = 0.0
                try:
                    run_load(load_argv(p, sc, 1), timeout=60)  # warm-up: pools, caches
                    pids = p.pids()
                    c0 = cpu_seconds(pids)
                    rps, total, non2xx, sockerr, notes = run_load(load_argv(p, sc, duration),
                                                                  timeout=duration + 60)
                except RuntimeError as e:
                    reason = str(e).strip()
                    short = " ".join(reason.split()).replace("|", "/")
                    results[(sc, name)] = Result(0.0, 0, 0.0, short[:160])
                    print(f"# {sc:8} {name:8} FAILED: {reason}", flush=True)
                    if p.proc.poll() is not None:  # it died: the next scenarios need it
                        print(f"# {name} exited ({p.proc.returncode}); restarting", flush=True)
                        try:
                            p.start()
                        except RuntimeError as e2:
                            print(f"# {name}: {e2}", flush=True)
                            break
                    continue
                cpu = cpu_seconds(pids) - c0
                results[(sc, name)] = Result(rps, total, cpu, "")
                print(f"# {sc:8} {name:8} {rps:10.0f} req/s  cpu {cpu:6.2f}s  "
                      f"{total / cpu if cpu else 0:10.0f} req/cpu-s  non2xx={non2xx} {sockerr}"
                      f"{'  ' + notes if notes else ''}",
                      flush=True)
        finally:
            p.stop()
    for sc in scenarios:  # scenarios a proxy never reached (it died and did not restart)
        for name in proxies:
            if (sc, name) not in results and any(n == name for (_, n) in results):
                results[(sc, name)] = Result(0.0, 0, 0.0, f"{name} not running")
    return results


def print_table(results, scenarios, descriptions):
    """The markdown table: requests per proxy CPU-second and ktlb / best anchor. A
    failed row shows "failed" and why; it is never an anchor, and a failed ktlb has no
    ratio."""
    print("| scenario | proxy | requests/s | proxy CPU-s | requests per proxy CPU-second | ktlb / best anchor |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for sc in scenarios:
        rows = [(n, r) for (s, n), r in results.items() if s == sc]
        per_cpu = {n: (r.total / r.cpu if r.cpu else 0.0) for n, r in rows if not r.failure}
        anchors = [v for n, v in per_cpu.items() if n != "ktlb"]
        best = max(anchors) if anchors else 0
        for n, r in rows:
            if r.failure:
                print(f"| {descriptions[sc]} | {n} | failed | | failed: {r.failure} | |")
                continue
            ratio = f"{per_cpu[n] / best:.2f}x" if n == "ktlb" and best else ""
            print(f"| {descriptions[sc]} | {n} | {r.rps:.0f} | {r.cpu:.2f} | {per_cpu[n]:.0f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
