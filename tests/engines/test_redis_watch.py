"""
Watches and mirrors across real daemons (``--engine redis``) on one real
redis-server: a watcher on B sees the changes made through A, in order; a
mirror on B follows writes through A; a watcher whose daemon is killed
resumes through another with nothing missed.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from ..redis_server import RedisServer
from ..test_watch_integration import random_changes
from .test_redis_integration import redis_daemon


class WatchAcrossDaemonsTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a = redis_daemon(self, self.redis)
        self.b = redis_daemon(self, self.redis)

    def test_watcher_on_b_sees_changes_through_a_in_order(self) -> None:
        """Puts, in-place changes, incr, delete and an expiry made through A reach
        a watcher on B in the order they were made, with their revisions."""
        ca, cb = self.a.connect(), self.b.connect()
        ca.put("before", 1)  # made before the watch: not sent
        w = cb.watch("x*")
        ca.put("x1", {"a": 1})
        ca.dict_change("x1", "b", [2.5])
        self.assertEqual(ca.incr("x2", 5), 5)
        ca.list_append("x3", "i")
        ca.put("y", 0)  # not watched
        ca.list_pop("x3", 0)
        ca.delete("x1")
        ca.put("x4", True, ttl=0.2)
        got = [w.get(timeout=15) for _ in range(7)]
        self.assertEqual([(c.name, c.op, c.args) for c in got], [
            ("x1", "put", ({"a": 1},)), ("x1", "dict_change", ("b", [2.5])),
            ("x2", "incr", (5,)), ("x3", "list_append", ("i",)), ("x3", "list_pop", (0,)),
            ("x1", "delete", ()), ("x4", "put", (True,))])
        self.assertEqual([c.revision for c in got if c.name == "x1"],
                         [got[0].revision, got[0].revision + 1, got[0].revision + 2])
        expired = w.get(timeout=15)  # the sweep of either daemon removes it
        self.assertEqual((expired.name, expired.op, expired.revision),
                         ("x4", "expire", got[6].revision + 1))
        self.assertFalse(cb.exists("x4"))
        # B's own changes come in the same stream, after A's.
        cb.put("x5", "b")
        self.assertEqual((w.get(timeout=5).name, w.qsize()), ("x5", 0))

    def test_mirror_on_b_follows_concurrent_writes_through_a_and_b(self) -> None:
        """Two writers, one on each daemon, change 8 variables at random while a
        mirror on B follows them: after a last put through B's own client, the
        mirror equals a get of every name."""
        ca, cb, wa, wb = (d.connect() for d in (self.a, self.b, self.a, self.b))
        ca.put("k0", {"start": True})
        m = cb.mirror("k*")
        self.assertEqual(dict(m), {"k0": {"start": True}})
        threads = [threading.Thread(target=random_changes, args=(client, seed, 150))
                   for seed, client in [(1, wa), (2, wb)]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Once the mirror's own client's put returns, B's change log has read
        # the stream up to it, so every change made before it too.
        cb.put("k_end", 1)
        fresh = {name: ca.get(name) for name in ca.keys("k*")}
        self.assertEqual(dict(m), fresh)


class ResumeAcrossDaemonsTests(TestCase):
    timeout = 120

    def test_watcher_resumes_through_another_daemon_nothing_missed(self) -> None:
        """A watcher on A (and B) while a writer on B appends: A is killed, the
        watcher goes on through B from its last seq, and ends with every change
        exactly once, in order, and no missed notice."""
        redis = RedisServer(self)
        a, b = redis_daemon(self, redis), redis_daemon(self, redis)
        watcher = lttx.connect([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                               token=a.token, timeout=15)
        self.addCleanup(watcher.close)
        w = watcher.watch("seq")
        writer = b.connect()
        count = 400
        got: list[Any] = []
        for i in range(count):
            writer.list_append("seq", i)
            if i == 150:
                while len(got) < 100:  # A delivered some of them
                    got.append(w.get(timeout=10))
                mark = len(b.lines)
                a.kill()
        b.wait_for_log(r"watches seq \(resumed\)", start=mark)
        while len(got) < count:
            got.append(w.get(timeout=15))
        self.assertEqual([c.args for c in got], [(i,) for i in range(count)])
        self.assertEqual([c.revision for c in got],
                         list(range(got[0].revision, got[0].revision + count)))
        self.assertEqual(w.missed, 0)
        self.assertEqual(w.qsize(), 0)


class StreamLostTests(TestCase):
    timeout = 120

    def test_redis_restarted_empty_is_a_missed_notice(self) -> None:
        """Redis restarted without its data: the change stream comes back with
        another epoch, a watcher is told it missed changes and then gets every
        change of the new stream; a mirror reloads."""
        redis = RedisServer(self)
        a, b = redis_daemon(self, redis), redis_daemon(self, redis)
        ca, cb = a.connect(), b.connect()
        w = cb.watch("x*")
        m = cb.mirror("x*")
        ca.put("x", 1)
        self.assertEqual((w.get(timeout=10).args, m.get("x")), ((1,), 1))
        mark, mark_a = len(b.lines), len(a.lines)
        redis.stop()
        b.wait_for_log(r"the change feed lost Redis", start=mark)
        redis.start()
        b.wait_for_log(r"redis: connected to Redis", start=mark)
        a.wait_for_log(r"redis: connected to Redis", start=mark_a)
        ca.put("x", 2)  # before or after B's feed made the stream again
        with self.assertRaises(lttx.MissedChanges):
            w.get(timeout=10)
        self.assertEqual(w.get(timeout=10).args, (2,))
        b.wait_for_log(r"the change stream has another epoch", start=mark)
        cb.put("x_end", 3)
        self.assertEqual(w.get(timeout=10).name, "x_end")
        self.assertGreaterEqual(m.reloads, 1)  # (its copy: once the reload is done)
