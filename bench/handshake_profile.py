#!/usr/bin/env python3
"""Instructions per TLS handshake in ktlb, from callgrind.

Wall-clock figures are noise on a shared machine; instruction counts are not.
ktlb (terminate mode, workers = 1, ECDSA P-256 certificate) runs under
`valgrind --tool=callgrind` while ktlb-tlsload, outside valgrind, makes exactly
N connections one after another (-c 1 -n N). Each scenario runs twice, with N1
and then N2 connections (after a warm-up of 3), with a callgrind dump after
each; the difference of the two dumps divided by N2 - N1 is the cost of one
connection, with start-up, warm-up and anything per run cancelled out. The
same subtraction per function gives the breakdown.

  python3 bench/handshake_profile.py --build build [--n1 5 --n2 25]
      [--only tls13,tls12,resume13,resume12] [--request] [--ktls auto|off]
      [--keep DIR]

Scenarios: tls13 / tls12 are full handshakes (X25519), resume13 / resume12
offer the previous connection's session (the first connection of each run is
a full handshake, which the subtraction removes). Without --request the client
sends no HTTP request (ktlb-tlsload --handshake-only): accept, handshake,
ticket, close_notify, close. With --request each connection also carries one
GET of 100 bytes through to ktlb-origin.
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

SCENARIOS = {
    "tls13": ["--tls", "1.3"],
    "tls12": ["--tls", "1.2"],
    "resume13": ["--tls", "1.3", "--resume"],
    "resume12": ["--tls", "1.2", "--resume"],
    # The same full TLS 1.3 handshake with a P-256 key share instead of X25519.
    "tls13-p256": ["--tls", "1.3", "--curves", "P-256"],
}

# Function name -> category, first match wins. libcrypto/libssl have no debug
# symbols on Debian 12 (no libssl3-dbgsym in the main archive), so only their
# exported functions have names; the cost of a static function lands on the
# "???" of its object unless callgrind can place it.
CATEGORIES = [
    ("EC P-256 sign (ECDSA, nistz256, BN)",
     r"ecp_nistz256|ECDSA|ecdsa|^BN_|^bn_|ec_GFp|EC_POINT|EC_KEY|ossl_ec_|ec_key|ec_scalar|"
     r"ec_group|ecx_|^EC_|ossl_bn|__ecp_|ecp_"),
    ("X25519", r"x25519|X25519|curve25519|fe51|fe64|ge_|ossl_ecx"),
    ("AES/GCM/SHA/HMAC/HKDF (record and key schedule)",
     r"aes|AES|gcm|GCM|sha256|sha512|SHA256|SHA512|sha1|SHA1|HMAC|hmac|HKDF|hkdf|kdf_|KDF|"
     r"EVP_Digest|EVP_Cipher|EVP_Encrypt|EVP_Decrypt|EVP_MAC|EVP_MD_CTX|EVP_CIPHER_CTX|"
     r"ossl_cipher|ossl_gcm|ossl_prov_digest|ossl_sha|ghash|gcm_|CRYPTO_gcm128|tls1_PRF|"
     r"tls13_hkdf|tls13_derive|tls13_generate|tls1_prf|keccak|md5|MD5|blake"),
    ("randomness (DRBG)", r"RAND_|rand_|drbg|DRBG|ossl_crngt|ossl_prov_drbg|ctr_|getrandom"),
    ("provider fetches, property queries, names, params",
     r"ossl_method|evp_generic_fetch|_fetch|ossl_property|ossl_namemap|OSSL_PARAM|ossl_param|"
     r"ossl_provider|OSSL_PROVIDER|ossl_algorithm|ossl_lib_ctx|OSSL_LIB_CTX|ossl_decoder|"
     r"OSSL_DECODER|ossl_encoder|OSSL_ENCODER|EVP_KEYMGMT|evp_keymgmt|EVP_PKEY_CTX|evp_pkey|"
     r"EVP_PKEY|evp_md_|evp_cipher_|EVP_SIGNATURE|evp_signature|EVP_KEYEXCH|evp_keyexch|"
     r"ossl_store|OBJ_|obj_|ossl_ht|lh_|OPENSSL_LH|OPENSSL_sk|sk_|ossl_sa|ossl_tolower|"
     r"OPENSSL_strcasecmp|OPENSSL_strncasecmp|ossl_ctype|ERR_|err_|ossl_err"),
    ("locks and atomics", r"pthread_rwlock|pthread_mutex|CRYPTO_THREAD|CRYPTO_atomic|"
     r"CRYPTO_UP_REF|CRYPTO_DOWN_REF|__lll_|pthread_once|CRYPTO_THREAD_run_once"),
    ("allocation (malloc/free)", r"malloc|free|realloc|calloc|memalign|_int_|tcache|"
     r"CRYPTO_malloc|CRYPTO_zalloc|CRYPTO_free|CRYPTO_realloc|CRYPTO_clear|OPENSSL_cleanse|"
     r"CRYPTO_memdup|CRYPTO_strdup|CRYPTO_strndup|operator new|operator delete|consolidate|"
     r"unlink_chunk|sysmalloc|arena_|mremap|^brk|^sbrk"),
    ("certificate/ASN.1/X509 (encoding the chain)",
     r"ASN1|asn1|X509|x509|d2i_|i2d_|c2i_|i2c_|PEM_|BUF_MEM|WPACKET|wpacket|PACKET"),
    ("libc string/memory", r"^mem|^str|__mem|__str|__GI_mem|__GI_str|wmem|bzero|__nss"),
    ("kernel-facing (syscall wrappers, io_uring, sockets)",
     r"io_uring|__io_uring|syscall|^__libc_|^send|^recv|^accept|^close|getpeername|"
     r"setsockopt|getsockopt|^read$|^write$|epoll|clock_gettime|__vdso|_dl_|^__close|"
     r"__GI___close|__GI___libc"),
]
KTLB_OBJ = re.compile(r"/ktlb$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("process exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} never opened")


def write_config(d, port, origin_port, certs, ktls):
    cfg = os.path.join(d, "ktlb.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:{port}"
certificates = ["other"]
alpn = ["h2", "http/1.1"]
ktls = "{ktls}"
[[certificates]]
name = "other"
cert = "{certs}/other.crt"
key = "{certs}/other.key"
[[routes]]
listener = "bench"
upstream = "origin"
[[upstreams]]
name = "origin"
servers = ["127.0.0.1:{origin_port}"]
""")
    return cfg


def dump(pid, d, timeout=120):
    """Has callgrind write what it counted since the last dump (it zeroes
    after each) and returns that file. signalfd signals never reach a program
    under valgrind, so ktlb cannot be stopped cleanly: dumps it is. vgdb
    interrupts the worker's blocking io_uring_enter to take the command."""
    before = set(os.listdir(d))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL)
    end = time.time() + timeout
    while time.time() < end:
        new = [f for f in set(os.listdir(d)) - before if f.startswith("callgrind.")]
        if new:
            path = os.path.join(d, new[0])
            time.sleep(1)  # let the writer finish
            return path
        time.sleep(0.2)
    raise RuntimeError("callgrind dump never appeared")


def load(args, port, scenario, n):
    cmd = [os.path.join(args.build, "ktlb-tlsload"), "--connect", f"127.0.0.1:{port}",
           "-c", "1", "-n", str(n), "-d", "900", "--timeout", "60", "--sni", "other.test",
           # P-256 too: a TLS 1.2 client must list the certificate's curve for
           # ECDSA to be usable; X25519 comes first so the key exchange uses it.
           "--path", "/size/100"] + SCENARIOS[scenario]
    if "--curves" not in cmd:
        cmd += ["--curves", "X25519:P-256"]
    if not args.request:
        cmd.append("--handshake-only")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    m = re.search(r"(\d+) requests in", r.stdout)
    errs = re.search(r"Errors: connect (\d+), handshake (\d+), status (\d+), read (\d+)",
                     r.stdout)
    resumed = re.search(r"Resumed: \S+ \((\d+) of (\d+)", r.stdout)
    if not m or int(m.group(1)) != n or not errs or any(int(x) for x in errs.groups()):
        raise RuntimeError(f"{scenario} n={n}: load failed:\n{r.stdout}\n{r.stderr}")
    # One tlsload process has no session yet for its first connection.
    want_resumed = n - 1 if "resume" in scenario else 0
    if int(resumed.group(1)) != want_resumed:
        raise RuntimeError(f"{scenario} n={n}: {resumed.group(0)}, wanted {want_resumed}")
    desc = re.search(r"TLS: (.*)", r.stdout)
    return desc.group(1) if desc else "?"


def run_scenario(args, d, cfg, port, scenario):
    """One ktlb under callgrind: warm-up, then n1 and n2 connections, each
    followed by a dump. Returns the two dumps and the negotiated TLS."""
    sd = os.path.join(d, scenario)
    shutil.rmtree(sd, ignore_errors=True)
    os.makedirs(sd)
    ktlb = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={sd}/callgrind.out",
         os.path.join(args.build, "ktlb"), "--config", cfg],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(sd, "ktlb.log"), "w"))
    try:
        wait_port(port, ktlb)
        load(args, port, scenario, 3)  # first-use costs: lazy inits, caches, pools
        dump(ktlb.pid, sd)
        load(args, port, scenario, args.n1)
        f1 = dump(ktlb.pid, sd)
        desc = load(args, port, scenario, args.n2)
        f2 = dump(ktlb.pid, sd)
    finally:
        ktlb.kill()  # SIGKILL reaches valgrind itself; SIGTERM would not reach ktlb
        ktlb.wait()
    return f1, f2, desc


FN_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)\s+\[(.*)\]\s*$")


# Named entry points whose inclusive cost is reported. libcrypto's internals
# are unnamed, so the API functions OpenSSL's handshake calls are the handles;
# their costs overlap (a KDF hashes, a signature fetches).
ENTRY_POINTS = [
    ("SSL_do_handshake", "the whole handshake inside OpenSSL"),
    ("EVP_PKEY_keygen", "ephemeral key generation (X25519)"),
    ("EVP_PKEY_derive", "ECDH shared secret (X25519)"),
    ("EVP_DigestSign", "CertificateVerify / ServerKeyExchange ECDSA P-256 signature"),
    ("EVP_DigestSignInit_ex", "  of which signature context set-up (fetches)"),
    ("ECDSA_do_sign_ex", "  of which the ECDSA arithmetic"),
    ("EVP_KDF_derive", "key schedule (TLS 1.3 HKDF, TLS 1.2 PRF)"),
    ("EVP_Q_mac", "  of which HKDF-Extract (fetches HMAC every call)"),
    ("EVP_DigestUpdate", "hashing (transcript, HMAC inner)"),
    ("i2d_SSL_SESSION", "session serialisation for the ticket"),
    ("OnTicketKey", "ktlb's ticket key callback"),
    ("EVP_EncryptUpdate", "ticket encryption (AES-256-CBC) and records"),
    ("EVP_PKEY_CTX_new_from_pkey", "EVP_PKEY_CTX set-up (keymgmt lookups)"),
    ("EVP_PKEY_CTX_new_from_name", "EVP_PKEY_CTX by group name"),
    ("EVP_KEYMGMT_names_do_all", "namemap walks (a hash table scan per call)"),
    ("EVP_MD_fetch", "digest fetches"),
    ("EVP_KDF_fetch", "KDF fetches"),
    ("EVP_MAC_fetch", "MAC fetches"),
    ("EVP_CIPHER_fetch", "cipher fetches"),
    ("EVP_SIGNATURE_fetch", "signature fetches"),
    ("CRYPTO_THREAD_read_lock", "read locks"),
    ("CRYPTO_THREAD_write_lock", "write locks"),
    ("RAND_bytes_ex", "randomness (a getpid() each)"),
    ("CRYPTO_malloc", "OpenSSL allocations"),
    ("CRYPTO_zalloc", "OpenSSL zeroed allocations"),
    ("CRYPTO_free", "OpenSSL frees"),
    ("SSL_new", "SSL_new"),
    ("SSL_free", "SSL_free"),
    ("Worker::OnAccept", "ktlb accept (getpeername, connection set-up)"),
    ("BIO_ctrl", "BIO controls (flush, pending, kTLS queries)"),
]


def inclusive_costs(out):
    """{function: (inclusive Ir, calls)} for the entry points."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=yes",
                           "--auto=no", "--tree=caller", out],
                          capture_output=True, text=True, check=True).stdout
    found = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+\*\s+(\S.*?)\s+\[", line)
        if not m:
            continue
        fn = m.group(2)
        for name, _ in ENTRY_POINTS:
            if re.search(r"(^|[:\s])(ktlb::)?[\w:()\s]*" + re.escape(name) + r"(\(|$|')", fn) \
                    and name not in found:
                if fn.endswith("'2"):
                    continue  # a recursive call: already inside the outer one
                found[name] = int(m.group(1).replace(",", ""))
    return found


def function_costs(out):
    """{(function, object): self Ir} and the total, from callgrind_annotate."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", out],
                          capture_output=True, text=True, check=True).stdout
    costs = {}
    total = None
    for line in text.splitlines():
        if total is None and "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
            continue
        m = FN_LINE.match(line)
        if not m:
            continue
        fn = m.group(2)
        fn = fn.split(":", 1)[1] if ":" in fn else fn  # drop "file:" (often "???:")
        key = (fn, os.path.basename(m.group(3)))
        costs[key] = costs.get(key, 0) + int(m.group(1).replace(",", ""))
    return total, costs


def categorize(fn, obj):
    if KTLB_OBJ.search("/" + obj) or obj.startswith("ktlb"):
        return "ktlb's own code (and inlined abseil/liburing)"
    for name, pattern in CATEGORIES:
        if re.search(pattern, fn):
            return name
    if obj.startswith("libssl"):
        return "OpenSSL state machine and other libssl"
    if obj.startswith("libcrypto"):
        return "other libcrypto"
    if obj.startswith("libc.so") or obj.startswith("ld-linux"):
        return "other libc"
    return f"other ({obj})"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--n1", type=int, default=5)
    ap.add_argument("--n2", type=int, default=25)
    ap.add_argument("--only", default="tls13,tls12,resume13,resume12")
    ap.add_argument("--request", action="store_true",
                    help="one GET per connection through to the origin")
    ap.add_argument("--ktls", default="auto", choices=["auto", "off"],
                    help="the listener's ktls key (run.py uses auto)")
    ap.add_argument("--top", type=int, default=25, help="functions listed per scenario")
    ap.add_argument("--keep", help="keep the callgrind files in this directory")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)

    d = args.keep or tempfile.mkdtemp(prefix="ktlb-hsprof-")
    os.makedirs(d, exist_ok=True)
    certs = os.path.join(d, "certs")
    if not os.path.exists(os.path.join(certs, "other.crt")):
        subprocess.run(["bash", os.path.join(ROOT, "tools/gen-certs.sh"), certs], check=True,
                       stdout=subprocess.DEVNULL)
    origin_port = free_port()
    origin = subprocess.Popen([os.path.join(args.build, "ktlb-origin"), "--listen",
                               f"127.0.0.1:{origin_port}"], stdout=subprocess.DEVNULL)
    try:
        wait_port(origin_port, origin)
        summary = []
        for scenario in args.only.split(","):
            port = free_port()
            cfg = write_config(d, port, origin_port, certs, args.ktls)
            f1, f2, desc = run_scenario(args, d, cfg, port, scenario)
            t1, c1 = function_costs(f1)
            t2, c2 = function_costs(f2)
            per = (t2 - t1) / (args.n2 - args.n1)
            diff = {k: (c2.get(k, 0) - c1.get(k, 0)) / (args.n2 - args.n1)
                    for k in set(c1) | set(c2)}
            cats = collections.Counter()
            for (fn, obj), v in diff.items():
                cats[categorize(fn, obj)] += v
            print(f"\n## {scenario}: {per:,.0f} instructions per connection ({desc})")
            print(f"   totals: n={args.n1}: {t1:,}  n={args.n2}: {t2:,}")
            listed = sum(cats.values())
            for name, v in cats.most_common():
                print(f"   {v:>12,.0f}  {100 * v / per:5.1f}%  {name}")
            print(f"   {per - listed:>12,.0f}  {100 * (per - listed) / per:5.1f}%  "
                  "(functions below the annotate threshold)")
            i1, i2 = inclusive_costs(f1), inclusive_costs(f2)
            print("   inclusive, per connection (overlapping):")
            for name, what in ENTRY_POINTS:
                v = (i2.get(name, 0) - i1.get(name, 0)) / (args.n2 - args.n1)
                if v:
                    print(f"   {v:>12,.0f}  {100 * v / per:5.1f}%  {name}: {what}")
            print(f"   top functions (self instructions per connection):")
            for (fn, obj), v in sorted(diff.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"   {v:>12,.0f}  {fn} [{obj}]")
            summary.append((scenario, per))
            sys.stdout.flush()
        print("\n| scenario | instructions per connection |\n| --- | ---: |")
        for scenario, per in summary:
            print(f"| {scenario} | {per:,.0f} |")
    finally:
        origin.terminate()
        origin.wait()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
