"""
Several real daemons (``--engine redis``) on one real redis-server.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from .common import Daemon
from .redis_server import RedisServer


def redis_daemon(testcase: TestCase, redis: RedisServer, *args: str) -> Daemon:
    daemon = Daemon(testcase, "--engine", "redis", "--redis", redis.url, *args)
    daemon.wait_for_log(r"redis: connected to Redis at")
    daemon.wait_for_log(r"redis pub/sub: connected to Redis at")
    return daemon


class TwoDaemonsTests(TestCase):
    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a = redis_daemon(self, self.redis)
        self.b = redis_daemon(self, self.redis)

    def test_written_on_one_read_on_the_other(self) -> None:
        ca, cb = self.a.connect(), self.b.connect()
        ca.put("pos", {"IF2412": 3, "IC2412": [1, 2.5, None]})
        self.assertEqual(cb.get("pos"), {"IF2412": 3, "IC2412": [1, 2.5, None]})
        cb.dict_change("pos", "IH2412", -1)
        self.assertEqual(ca.get_dict_value("pos", "IH2412"), -1)
        self.assertEqual(sorted(ca.keys("*")), ["pos"])
        self.assertTrue(cb.delete("pos"))
        self.assertFalse(ca.exists("pos"))
        with self.assertRaises(lttx.NotFound):
            cb.list_pop("pos")

    def test_in_place_operations_at_once(self) -> None:
        """Appends, dict changes and pops through two daemons at once give what one would."""
        ca, cb = self.a.connect(), self.b.connect()
        ca.put("orders", [])
        n = 300

        def work(client: Any, tag: str) -> None:
            for i in range(n):
                client.list_append("orders", f"{tag}{i}")
                client.dict_change("fills", f"{tag}{i}", i)
            for _ in range(n // 3):
                client.list_pop("orders", 0)

        threads = [threading.Thread(target=work, args=(c, t)) for c, t in ((ca, "a"), (cb, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        orders = ca.get("orders")
        self.assertEqual(len(orders), 2 * n - 2 * (n // 3))
        # Each writer's items stay in its own order; nothing is lost or doubled.
        for tag in "ab":
            mine = [int(x[1:]) for x in orders if x[0] == tag]
            self.assertEqual(mine, sorted(mine))
        fills = cb.get("fills")
        self.assertEqual(len(fills), 2 * n)
        self.assertEqual(fills["b7"], 7)

    def test_push_on_a_reaches_b_and_c_in_order(self) -> None:
        """5,000 pushes on A reach the subscribers of B and C complete, in order,
        numbered 1, 2, 3... by each daemon."""
        c = redis_daemon(self, self.redis)
        subscribers = []
        for daemon in (self.b, c):
            client = daemon.connect()
            client.subscribe("hq")
            daemon.wait_for_log(r"redis pub/sub: subscribed in Redis to lttx:c:hq")
            subscribers.append(client)
        publisher = self.a.connect()
        count = 5000
        for i in range(count):
            publisher.push(f"k{i % 7}", i, "hq")
        publisher.flush()
        for client in subscribers:
            got = [client.Q.get(timeout=15) for _ in range(count)]
            self.assertEqual([m.data for m in got], list(range(count)))
            self.assertEqual([m.seq for m in got], list(range(1, count + 1)))
            self.assertEqual(got[8], lttx.Message("hq", "k1", 8, 9))
            self.assertTrue(client.Q.empty())
