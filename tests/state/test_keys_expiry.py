"""
``keys`` and expired variables: left out of the reply, not swept by the
request (sweeping every expired variable, each a journalled change, was one
more unbounded stall of the reactor, issue 19).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.state.patterns import SLICE
from lttx.state.store import MemoryStore


class KeysAndExpiryTests(SynchronousTestCase):

    def store(self) -> tuple[MemoryStore, Clock, list[str]]:
        clock = Clock()
        store = MemoryStore()
        store.clock = clock.seconds
        removed: list[str] = []
        store.expired = removed.append
        return store, clock, removed

    def test_expired_names_are_left_out_but_not_swept(self) -> None:
        """Small store: expired names are not listed, and nothing is removed by keys."""
        store, clock, removed = self.store()
        for i in range(10):
            store.put(f"n{i}", i, ttl=5 if i % 2 else None)
        clock.advance(6)
        self.assertEqual(store.keys("n*"), ["n0", "n2", "n4", "n6", "n8"])
        self.assertEqual(removed, [])
        self.assertEqual(store.sweep(), 5)  # the periodic sweep removes them

    def test_a_sliced_scan_leaves_out_names_expired_by_its_end(self) -> None:
        """Large store (a scan in slices): the names expired are not in the reply."""
        store, clock, removed = self.store()
        store.schedule_scans_on(clock)
        count = 3 * SLICE
        for i in range(count):
            store.put(f"v{i:06d}", i, ttl=5 if i < SLICE else None)
        clock.advance(6)
        d = store.keys("v*")
        while not d.called:
            clock.advance(0)
        names = self.successResultOf(d)
        self.assertEqual(len(names), count - SLICE)
        self.assertEqual(names[0], f"v{SLICE:06d}")
        self.assertEqual(removed, [])
