"""Timers of one kind with different durations expire on time.

The first-request wait after a handshake and the idle wait between requests
are both "keepalive" timers, armed with request_header_timeout_ms and
keepalive_timeout_ms. A connection idle after a response (short timeout)
must be closed on time even when a connection armed earlier with the long
timeout is still waiting: with one FIFO per kind it waited behind it."""

import time

import harness


class TimerDurationTest(harness.KtlbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.o = cls.class_origin("t")

    def test_short_keepalive_not_stuck_behind_long_first_request_wait(self):
        k = self.ktlb(self.basic_config({"app": [self.o.addr]},
                                        server={"request_header_timeout_ms": "30000",
                                                "keepalive_timeout_ms": "700"}))
        # Handshake done, no request: its timer is armed first, for 30 s.
        with harness.HttpConn(k.addr(), cafile=self.ca):
            time.sleep(0.2)
            with harness.HttpConn(k.addr(), cafile=self.ca) as c:
                c.request("GET", "/size/10")
                self.assertEqual(c.read_response()[0], 200)
                t0 = time.monotonic()
                self.assertIsNotNone(c.wait_closed(10), "idle connection was not closed")
                elapsed = time.monotonic() - t0
                self.assertGreater(elapsed, 0.4)
                self.assertLess(elapsed, 5.0, "the 700 ms keep-alive fired %.1f s late" % elapsed)


if __name__ == "__main__":
    harness.main()
