"""The access log: one JSON object per line per request, written by the workers
through io_uring and flushed on exit; refused and failed requests are logged too."""

import json
import os
import socket
import ssl

import harness


class AccessLogTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("log-origin")

    def read_log(self, path):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def test_every_request_gets_one_json_line(self):
        log = os.path.join(self.tmp, "access.log")
        dead = f"127.0.0.1:{harness.free_port()}"  # nothing listens there
        k = self.ktlb(self.basic_config(
            {"app": [self.o.addr], "dead": [dead]},
            routes=[{"path_prefix": "/size/", "upstream": "app"},
                    {"path_prefix": "/dead/", "upstream": "dead"}],
            server={"access_log": f'"{log}"', "workers": "2"}))
        status, _, body = self.get(k, "/size/1000?x=\"y\"")
        self.assertEqual((status, len(body)), (200, 1000))
        status, _, _ = self.get(k, "/nowhere")
        self.assertEqual(status, 404)
        status, _, _ = self.get(k, "/dead/1")
        self.assertEqual(status, 502)
        # A request without Host: refused before it is a request.
        ctx = ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", k.port()), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                self.assertIn(b" 400 ", s.recv(4096))
        k.stop()

        lines = self.read_log(log)
        self.assertEqual(len(lines), 4, lines)
        by_status = {l["status"]: l for l in lines}
        ok = by_status[200]
        self.assertEqual(ok["listener"], "public")
        self.assertEqual(ok["method"], "GET")
        self.assertEqual(ok["target"], '/size/1000?x="y"')  # escaped in the file, intact here
        self.assertEqual(ok["host"].split(":")[0], "localhost")
        self.assertEqual(ok["sni"], "localhost")
        self.assertEqual(ok["version"], "HTTP/1.1")
        self.assertEqual(ok["upstream"], "app")
        self.assertEqual(ok["server"], self.o.addr)
        self.assertGreater(ok["bytes"], 1000)  # head + body
        self.assertTrue(ok["client"].startswith("127.0.0.1:"))
        self.assertRegex(ok["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertGreaterEqual(ok["ms"], 0)
        self.assertNotIn("error", ok)
        self.assertEqual(by_status[404]["error"], "no_route")
        self.assertEqual(by_status[502]["error"], "upstream_failed")
        self.assertEqual(by_status[502]["upstream"], "dead")
        refused = by_status[400]
        self.assertEqual(refused["error"], "missing_host")
        self.assertIsNone(refused["method"])

    def test_keep_alive_requests_are_logged_one_by_one(self):
        log = os.path.join(self.tmp, "ka.log")
        k = self.ktlb(self.basic_config({"app": [self.o.addr]},
                                        server={"access_log": f'"{log}"'}))
        url, resolve = self.url(k, "/size/10")
        self.curl(*resolve, url, url, url)
        k.stop()
        lines = self.read_log(log)
        self.assertEqual([l["status"] for l in lines], [200, 200, 200])
        self.assertEqual(len({l["client"] for l in lines}), 1)  # one connection

    def test_missing_directory_is_a_config_error(self):
        cfg = os.path.join(self.tmp, "bad-log.toml")
        with open(cfg, "w") as f:
            f.write(self.basic_config({"app": [self.o.addr]},
                                      server={"access_log": '"no/such/dir/access.log"'}))
        r = self.run_ktlb("--check", "--config", cfg)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr, r"bad-log\.toml:\d+: server\.access_log: directory .* does not exist")


if __name__ == "__main__":
    harness.main()
