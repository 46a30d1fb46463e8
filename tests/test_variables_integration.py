"""
Revisions, compare-and-set, counters and expiry against the real daemon
(``twistd -n lttx``) with blocking clients: races between threads, and what
a restart keeps.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from twisted.trial.unittest import TestCase

import lttx

from .common import Daemon

THREADS = 8


def race(work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in THREADS threads released together; their results."""
    start = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as e:  # reported by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


def cas_race(clients: list[Any], names: list[str],
             start: dict[str, int]) -> list[list[str]]:
    """Each of THREADS clients tries to move every name from revision ``start[name]``
    to its own index; the names each thread won, by thread."""
    def work(i: int) -> list[str]:
        won = []
        for name in names:
            try:
                clients[i].put(name, i, if_revision=start[name])
                won.append(name)
            except lttx.Conflict:
                pass
        return won

    return race(work)


class RaceTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.clients = [self.daemon.connect() for _ in range(THREADS)]

    def test_compare_and_set_applies_one_of_each_conflicting_pair(self) -> None:
        """8 threads each try to move every one of 50 variables from the revision
        they all read: exactly one wins each, the others get Conflict."""
        c = self.clients[0]
        names = [f"cas{i}" for i in range(50)]
        for name in names:
            c.put(name, -1)
        start = {name: c.get(name, revision=True)[1] for name in names}

        results = cas_race(self.clients, names, start)
        winners = sorted(n for won in results for n in won)
        self.assertEqual(winners, sorted(names))  # each exactly once
        for i, won in enumerate(results):
            for name in won:
                self.assertEqual(c.get(name, revision=True), (i, start[name] + 1))

    def test_create_only_once(self) -> None:
        """if_revision=0 creates a variable for exactly one of 8 racing threads."""
        def work(i: int) -> int:
            created = 0
            for n in range(50):
                try:
                    self.clients[i].put(f"lock{n}", i, if_revision=0)
                    created += 1
                except lttx.Conflict:
                    pass
            return created

        self.assertEqual(sum(race(work)), 50)

    def test_incr_from_8_threads(self) -> None:
        """8 threads x 500 incr give 4,000, and a float step makes it a float."""
        race(lambda i: [self.clients[i].incr("fills") for _ in range(500)])
        c = self.clients[0]
        self.assertEqual(c.get("fills", revision=True), (4000, 4000))
        self.assertEqual(c.incr("fills", -0.5), 3999.5)
        c.put("s", "text")
        self.assertRaises(lttx.WrongTypeError, c.incr, "s")


class RestartTests(TestCase):
    timeout = 120

    def test_revisions_and_deadlines_survive_a_restart(self) -> None:
        """After SIGTERM and a new start: the same revisions, a deleted and
        re-created variable above every revision given, deadlines where they were."""
        daemon = Daemon(self)
        c = daemon.connect()
        c.put("a", 1)
        c.put("a", 2)
        c.dict_change("d", "k", 1)
        c.put("gone", 0)
        for _ in range(5):
            c.incr("gone")
        gone_revision = c.get("gone", revision=True)[1]
        self.assertTrue(c.delete("gone"))
        c.put("lease", "me", ttl=60)
        c.put("short", "soon", ttl=0.3)
        c.put("kept", 1)
        self.assertTrue(c.expire("kept", 120))
        written = time.time()
        c.close()
        daemon.stop()

        again = Daemon(self, data_dir=daemon.data_dir)
        c = again.connect()
        self.assertEqual(c.get("a", revision=True), (2, 2))
        self.assertEqual(c.get("d", revision=True), ({"k": 1}, 3))
        c.put("gone", "back")
        self.assertGreater(c.get("gone", revision=True)[1], gone_revision + 1)
        left = c.ttl("lease")
        self.assertLessEqual(left, 60 - (time.time() - written) + 0.5)
        self.assertGreater(left, 0)
        self.assertGreater(c.ttl("kept"), 60)
        time.sleep(max(0.0, written + 0.3 - time.time()))
        self.assertFalse(c.exists("short"))
        self.assertNotIn("short", c.keys())
        self.assertEqual(c.status()["journal"]["expiring"], 2)

    def test_expiry_fires_at_its_time(self) -> None:
        """A variable put with a ttl is there until its deadline and gone from then on."""
        daemon = Daemon(self)
        c = daemon.connect()
        put_at = time.time()
        c.put("alive:strat7", True, ttl=1.0)
        left = c.ttl("alive:strat7")
        if time.time() - put_at < 0.9:  # not when the machine stalled for a second
            self.assertTrue(0 < left <= 1.0, left)
        while c.exists("alive:strat7"):
            time.sleep(0.02)
        self.assertGreaterEqual(time.time(), put_at + 1.0)
        self.assertIsNone(c.get("alive:strat7"))
        self.assertEqual(c.get("alive:strat7", revision=True), (None, 0))
        self.assertIsNone(c.ttl("alive:strat7"))
        # A put without ttl clears the expiry (Redis's rule).
        c.put("x", 1, ttl=30)
        c.put("x", 2)
        self.assertIsNone(c.ttl("x"))
