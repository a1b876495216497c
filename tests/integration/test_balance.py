"""Balancers through a real ktlb and several ktlb-origin processes: weights
1:3 under round robin, maglev on a header keeping each user on one server
while spreading users, least_conn steering around a busy server, and p2c
serving from every server. Weights 3:1 within 5% over 4,000 requests.
Maglev's bound on moved keys (1/N + 2%) is unit-tested
(tests/unit/upstream_maglev_test.cc)."""

import collections
import random

import harness
from harness import header

HELLO = b"hello from ktlb-origin\n"


class BalanceTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.a = cls.class_origin("a")
        cls.b = cls.class_origin("b")
        cls.c = cls.class_origin("c")

    def config(self, servers, extra="", workers=1):
        """basic_config with the upstream's servers line replaced by
        `servers` (TOML) and `extra` lines after it."""
        text = self.basic_config({"app": [self.a.addr]}, server={"workers": str(workers)})
        line = f'servers = ["{self.a.addr}"]'
        self.assertIn(line, text)
        return text.replace(line, f"servers = {servers}\n{extra}")

    def origins_of(self, k, requests, connections=4, headers_of=lambda i: ()):
        """Sends `requests` GETs over `connections` keep-alive connections
        (round robin between them); returns the X-Origin of each, in order."""
        conns = [self.tls(k) for _ in range(connections)]
        try:
            seen = []
            for i in range(requests):
                c = conns[i % connections]
                c.request("GET", "/", headers=headers_of(i))
                status, headers, body = c.read_response()
                self.assertEqual((status, body), (200, HELLO), f"request {i}")
                seen += header(headers, "X-Origin")
            return seen
        finally:
            for c in conns:
                c.close()

    def test_round_robin_weights_one_to_three(self):
        servers = f'["{self.a.addr}", {{ address = "{self.b.addr}", weight = 3 }}]'
        # Two workers: each runs its own smooth round robin; the sum holds.
        k = self.ktlb(self.config(servers, 'balance = "round_robin"\n', workers=2))
        seen = self.origins_of(k, 400)
        counts = collections.Counter(seen)
        self.assertEqual(set(counts), {"a", "b"}, counts)
        share_b = counts["b"] / len(seen)
        self.assertAlmostEqual(share_b, 0.75, delta=0.03, msg=f"weights 1:3 not honoured: {counts}")
        # Smooth: the light server is never starved for long, the heavy one
        # never runs more than its weight in a row (per worker; two workers
        # interleave, so allow twice that).
        longest = max(len(run) for run in "".join(seen).split("a"))
        self.assertLessEqual(longest, 6, f"not smooth: {''.join(seen)}")

    def test_round_robin_weights_three_to_one_over_4000_requests(self):
        servers = f'[{{ address = "{self.a.addr}", weight = 3 }}, "{self.b.addr}"]'
        k = self.ktlb(self.config(servers, 'balance = "round_robin"\n', workers=2))
        counts = collections.Counter(self.origins_of(k, 4000, connections=8))
        ratio = counts["a"] / counts["b"]
        print(f"\n[balance] weights 3:1 over 4,000 requests: {counts['a']}:{counts['b']} "
              f"= {ratio:.3f}")
        self.assertAlmostEqual(ratio, 3.0, delta=3.0 * 0.05, msg=str(counts))
        # The per-server series count the same split.
        self.assertEqual(k.metric("ktlb_upstream_server_requests_total", upstream="app",
                                  server=self.a.addr), counts["a"])
        self.assertEqual(k.metric("ktlb_upstream_server_requests_total", upstream="app",
                                  server=self.b.addr), counts["b"])

    def test_maglev_on_header_keeps_users_and_spreads_them(self):
        servers = f'["{self.a.addr}", "{self.b.addr}", "{self.c.addr}"]'
        k = self.ktlb(self.config(servers, 'balance = "maglev"\nhash_key = "header:X-User"\n', workers=2))
        users = [f"user-{n}" for n in range(31)]
        # Each user five times in a shuffled order (so that no rotation of
        # the servers could line up with the users), over eight connections
        # (both workers).
        order = users * 5
        random.Random(7).shuffle(order)
        seen = self.origins_of(k, len(order), connections=8,
                               headers_of=lambda i: [("X-User", order[i])])
        by_user = collections.defaultdict(set)
        for user, origin in zip(order, seen):
            by_user[user].add(origin)
        moved = {u: s for u, s in by_user.items() if len(s) != 1}
        self.assertEqual(moved, {}, "a user was sent to more than one server")
        placed = collections.Counter(next(iter(s)) for s in by_user.values())
        self.assertEqual(set(placed), {"a", "b", "c"}, f"users not spread: {placed}")
        # The same users on a new ktlb (another process, fresh tables) land
        # on the same servers: the placement depends only on the server list.
        k2 = self.ktlb(self.config(servers, 'balance = "maglev"\nhash_key = "header:X-User"\n'))
        shuffled = list(users)
        random.Random(8).shuffle(shuffled)
        again = self.origins_of(k2, len(shuffled), connections=1,
                                headers_of=lambda i: [("X-User", shuffled[i])])
        for u, origin in zip(shuffled, again):
            self.assertEqual({origin}, by_user[u], u)
        # Requests without the header still get served, spread over servers.
        keyless = collections.Counter(self.origins_of(k, 12, connections=2))
        self.assertEqual(set(keyless), {"a", "b", "c"}, keyless)

    def test_least_conn_avoids_the_busy_server(self):
        servers = f'["{self.a.addr}", "{self.b.addr}"]'
        k = self.ktlb(self.config(servers, 'balance = "least_conn"\n'))
        with self.tls(k) as slow, self.tls(k) as fast:
            slow.request("GET", "/slow/3000")
            # Let the slow request reach its server first.
            k.wait_metric("ktlb_upstream_requests_total", 1, upstream="app")
            seen = []
            for _ in range(6):
                fast.request("GET", "/")
                status, headers, _ = fast.read_response()
                self.assertEqual(status, 200)
                seen += header(headers, "X-Origin")
            self.assertEqual(k.metric("ktlb_upstream_in_flight", upstream="app"), 1)
            status, headers, _ = slow.read_response()
            self.assertEqual(status, 200)
            busy = header(headers, "X-Origin")[0]
            self.assertNotIn(busy, seen, f"least_conn sent to the busy server {busy}: {seen}")
            # Once the slow request is done both servers take requests again.
            after = []
            for _ in range(4):
                fast.request("GET", "/")
                _, headers, _ = fast.read_response()
                after += header(headers, "X-Origin")
            self.assertEqual(set(after), {"a", "b"}, after)
            self.assertEqual(k.metric("ktlb_upstream_in_flight", upstream="app"), 0)

    def test_p2c_serves_from_every_server(self):
        servers = f'["{self.a.addr}", "{self.b.addr}", "{self.c.addr}"]'
        k = self.ktlb(self.config(servers, 'balance = "p2c"\n'))
        counts = collections.Counter(self.origins_of(k, 90))
        self.assertEqual(set(counts), {"a", "b", "c"}, counts)


if __name__ == "__main__":
    harness.main()
