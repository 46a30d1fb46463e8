"""
The sweep of expired variables (:mod:`lttx.server.expiry`): bounded slices,
one reactor turn apart, and the timer makeService runs it on.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.expiry import ExpirySweeper
from lttx.state.store import MemoryStore


class SweepTests(SynchronousTestCase):
    def test_sweep_runs_in_bounded_slices(self) -> None:
        """2,500 expired variables go 1,000 at a time, a reactor turn between slices."""
        clock = Clock()
        store = MemoryStore(clock.seconds)
        for i in range(2500):
            store.put(f"lease{i}", i, ttl=1)
        store.put("kept", 1, ttl=10)
        clock.advance(1)
        sizes = []
        sweep = store.sweep
        store.sweep = lambda limit: sizes.append(sweep(limit)) or sizes[-1]  # type: ignore
        sweeper = ExpirySweeper(store, clock, slice_size=1000)
        sweeper.run()
        self.assertEqual(sizes, [1000])
        sweeper.run()  # the timer fires while a sweep runs: no second sweep
        clock.advance(0)
        clock.advance(0)
        self.assertEqual(sizes, [1000, 1000, 500])
        self.assertEqual(len(store), 1)
        self.assertEqual(sweeper.removed, 2500)

    def test_the_daemon_sweeps_every_second(self) -> None:
        """makeService's timer removes an expired variable nobody touches."""
        from twisted.internet.testing import MemoryReactorClock

        from lttx.tap import Options, makeService

        reactor = MemoryReactorClock()
        reactor.advance(1_800_000_000)
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--port", "0"])
        service = makeService(options, reactor)
        store = next(s for s in service if hasattr(s, "sweep"))
        service.startService()
        self.addCleanup(service.stopService)
        store.put("lease", 1, ttl=1.5)
        reactor.advance(1)
        self.assertEqual(store.status()["variables"], 1)
        reactor.advance(1)
        self.assertEqual(store.status()["variables"], 0)
