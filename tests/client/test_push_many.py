"""
``Client.push_many``: a batch of pushes written together, against a real
daemon: in order and with consecutive seqs, in one write from the calling
thread when nothing waits, behind earlier pushes when something does, and
nothing of a batch sent when one of its values cannot be.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

import lttx
from lttx.client import pacing

from ..common import Daemon


class PushManyTests(TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self, "--max-frame", "65536")
        self.client = self.daemon.connect()
        self.addCleanup(self.client.close)
        self.sub = self.daemon.connect()
        self.addCleanup(self.sub.close)
        self.sub.subscribe("ticks")
        self.client.ping()

    def received(self, n: int) -> list[Any]:
        return [self.sub.Q.get(timeout=30) for _ in range(n)]

    def test_a_batch_arrives_in_order_in_one_write_from_its_thread(self) -> None:
        """100 messages, consecutive seqs, in order; one send from the calling
        thread, nothing handed to the reactor thread."""
        reactor = self.client._loop.reactor
        handed: list[Any] = []
        original_cft = reactor.callFromThread
        reactor.callFromThread = lambda f, *a, **k: (handed.append(f), original_cft(f, *a, **k))
        self.addCleanup(setattr, reactor, "callFromThread", original_cft)
        sends: list[bytes] = []
        original = self.client._push_direct
        self.client._push_direct = lambda data: sends.append(data) or original(data)
        self.client.push_many([(f"k{i}", i) for i in range(100)], "ticks")
        got = self.received(100)
        self.assertEqual([(m.key, m.data) for m in got], [(f"k{i}", i) for i in range(100)])
        self.assertEqual([m.seq for m in got], list(range(got[0].seq, got[0].seq + 100)))
        self.assertEqual(len(sends), 1)
        self.assertEqual(handed, [])

    def test_keeps_its_place_among_pushes_queued_or_not(self) -> None:
        """push, push_many, push, with every push queued for the reactor thread
        and then with none: the subscriber sees them in the order made."""
        for run in (0, pacing.DIRECT_PUSH_RUN):
            self.patch(pacing, "DIRECT_PUSH_RUN", run)
            self.client.push("a", 1, "ticks")
            self.client.push_many([("b", 2), ("c", 3)], "ticks")
            self.client.push("d", 4, "ticks")
            self.client.push_many([], "ticks")
            self.assertEqual([(m.key, m.data) for m in self.received(4)],
                             [("a", 1), ("b", 2), ("c", 3), ("d", 4)])

    def test_nothing_of_a_batch_with_an_unencodable_value_is_sent(self) -> None:
        """An object in the middle: EncodeError, and the subscriber never gets
        the values before it; the connection goes on."""
        with self.assertRaises(lttx.EncodeError):
            self.client.push_many([("a", 1), ("b", object()), ("c", 3)], "ticks")
        self.client.push("d", 4, "ticks")
        self.assertEqual([(m.key, m.data) for m in self.received(1)], [("d", 4)])

    def test_a_generator_that_calls_the_client(self) -> None:
        """Items made by a generator that itself calls the client (a get per
        tick): no deadlock on the client's push lock; all arrive."""
        self.client.put("price", 10)

        def ticks() -> Any:
            for i in range(3):
                yield (f"k{i}", self.client.get("price") + i)

        self.client.push_many(ticks(), "ticks")
        self.assertEqual([m.data for m in self.received(3)], [10, 11, 12])

    def test_a_value_over_the_frame_limit_refuses_the_batch(self) -> None:
        limit = self.client.server_info["max_frame"]
        with self.assertRaises(lttx.FrameTooLarge):
            self.client.push_many([("a", 1), ("big", b"x" * (limit + 1))], "ticks")
        self.client.push("d", 4, "ticks")
        self.assertEqual([(m.key, m.data) for m in self.received(1)], [("d", 4)])
