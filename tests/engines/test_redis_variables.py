"""
Revisions, compare-and-set, counters and expiry with ``--engine redis``:
two real daemons on one real redis-server, and Redis's own expiry of the
value keys.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from lttx.engines.redis.store import RedisStore

from ..redis_server import RedisClientTestCase, RedisServer
from ..test_variables_integration import cas_race, race
from .test_redis_integration import redis_daemon


class AcrossDaemonsTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a = redis_daemon(self, self.redis)
        self.b = redis_daemon(self, self.redis)
        # Threads 0-3 on daemon A, 4-7 on daemon B.
        self.clients = [(self.a if i < 4 else self.b).connect() for i in range(8)]

    def test_incr_and_compare_and_set_are_atomic_across_daemons(self) -> None:
        """8 threads on two daemons x 500 incr give 4,000; of 8 racing CAS on
        each of 30 variables exactly one applies."""
        race(lambda i: [self.clients[i].incr("fills") for _ in range(500)])
        self.assertEqual(self.clients[0].get("fills", revision=True), (4000, 4000))
        names = [f"cas{i}" for i in range(30)]
        for name in names:
            self.clients[0].put(name, -1)
        start = {n: self.clients[5].get(n, revision=True)[1] for n in names}

        won = cas_race(self.clients, names, start)
        self.assertEqual(sorted(n for names_won in won for n in names_won), sorted(names))

    def test_a_lease_expires_for_both_daemons(self) -> None:
        """A variable put with a ttl through A is gone through B at its deadline."""
        ca, cb = self.clients[0], self.clients[4]
        put_at = time.time()
        ca.put("alive:strat7", True, ttl=1.0)
        left = cb.ttl("alive:strat7")
        if time.time() - put_at < 0.9:  # not when the machine stalled for a second
            self.assertTrue(0 < left <= 1.0, left)
        while cb.exists("alive:strat7"):
            time.sleep(0.02)
        self.assertGreaterEqual(time.time(), put_at + 1.0)
        self.assertEqual(ca.get("alive:strat7", revision=True), (None, 0))
        ca.put("alive:strat7", True)
        self.assertEqual(cb.get("alive:strat7", revision=True), (True, 3))  # never reused


class RedisExpiryTests(RedisClientTestCase):

    @defer.inlineCallbacks
    def test_redis_expires_the_value_key_itself(self) -> Any:
        """The value key carries the deadline (PEXPIREAT): Redis frees it with no
        daemon's help; the sweep then removes the bookkeeping, as a change."""
        store = RedisStore(self.client, "x:")
        yield store.put("big", {"k": 1}, ttl=60)
        yield store.put("kept", 1)
        # The deadline is the daemon's clock + 60 s; Redis measures PTTL with the time
        # it cached when the command's event-loop turn began, which may be a little
        # older than the daemon's reading (seen under load): allow a second of slack.
        self.assertTrue(0 < (yield self.client.execute("PTTL", "x:v:big")) <= 61_000)
        self.assertEqual((yield self.client.execute("PTTL", "x:v:kept")), -1)
        self.assertTrue((yield store.expire("big", 0.2)))
        give_up = time.monotonic() + 30
        while (yield self.client.execute("EXISTS", "x:v:big")) and time.monotonic() < give_up:
            yield deferLater(reactor, 0.05, lambda: None)  # Redis's own expiry, not ours
        self.assertEqual((yield self.client.execute("EXISTS", "x:v:big")), 0)
        # Redis dropped the value; the bookkeeping waits for a command or the sweep.
        self.assertEqual(sorted((yield self.client.execute("HKEYS", "x:types"))),
                         [b"big", b"kept"])
        self.assertEqual((yield store.sweep()), 1)
        self.assertEqual((yield self.client.execute("HKEYS", "x:types")), [b"kept"])
        self.assertEqual((yield self.client.execute("ZCARD", "x:expiry")), 0)
        yield store.refresh()
        self.assertEqual((store.count, store.expiring), (1, 0))

    @defer.inlineCallbacks
    def test_variables_of_the_previous_version_get_revisions(self) -> Any:
        """A variable written before revisions (no revision in Redis) gets one when read."""
        store = RedisStore(self.client, "o:")
        yield self.client.execute("HSET", "o:types", "old", "int")
        yield self.client.execute("SET", "o:v:old", b"\x05")
        self.assertEqual((yield store.get("old", revision=True)), (5, 1))
        self.assertEqual((yield store.incr("old")), 6)
        self.assertEqual((yield store.get("old", revision=True)), (6, 2))
