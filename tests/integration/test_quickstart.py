"""configs/quickstart.toml does what the README says: --check passes and, with
the origin behind it, curl over HTTPS gets the origin's hello."""

import os
import shutil

import harness

QUICKSTART = os.path.join(harness.SOURCE_DIR, "configs", "quickstart.toml")


class QuickstartTest(harness.KtlbTestCase):
    def read(self):
        with open(QUICKSTART) as f:
            return f.read()

    def test_check_accepts_the_file(self):
        # Verbatim, next to a certs/ directory like configs/certs/ made by gen-certs.sh.
        path = os.path.join(self.tmp, "quickstart.toml")
        shutil.copyfile(QUICKSTART, path)
        r = self.run_ktlb("--check", "--config", path)
        self.assertEqual(r.returncode, 0, f"--check failed:\n{r.stderr}")

    def test_serves_the_origin_over_https(self):
        origin = self.origin("demo")
        text = self.read()
        ports = {"127.0.0.1:8443": f"127.0.0.1:{harness.free_port()}",
                 "127.0.0.1:9901": f"127.0.0.1:{harness.free_port()}",
                 "127.0.0.1:9001": origin.addr}
        for old, new in ports.items():
            self.assertEqual(text.count(f'"{old}"'), 1, f"quickstart.toml should use {old} once")
            text = text.replace(f'"{old}"', f'"{new}"')
        k = self.ktlb(text)

        status, headers, body = self.get(k, "/")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"hello from ktlb-origin\n")
        self.assertEqual(headers.get("x-origin"), "demo")
        # The same by IP, as the README's curl would be run with 127.0.0.1.
        r = self.curl(f"https://127.0.0.1:{k.port()}/")
        self.assertEqual(r.stdout, b"hello from ktlb-origin\n")
        # HTTP/2 by ALPN (curl's default), and HTTP/1.1 for a client that asks for it.
        url, resolve = self.url(k, "/")
        for flag, want in (("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")):
            r = self.curl(flag, "-v", *resolve, url)
            self.assertEqual(r.stdout, b"hello from ktlb-origin\n")
            self.assertIn("< " + want, r.stderr.decode())
        # curl offers h2 by default: every request above but the --http1.1 one.
        self.assertEqual(k.metric("ktlb_h2_connections_total", listener="public"), 3)

        status, _, body = k.admin_get("/healthz")
        self.assertEqual(status, 200)
        self.assertGreaterEqual(k.metric("ktlb_connections_accepted_total", listener="public"), 2)


if __name__ == "__main__":
    harness.main()
