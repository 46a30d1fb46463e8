"""
A scan over a million names does not stall the other clients (issue 19,
finding 1): ``keys`` runs in slices across reactor turns, its pattern is
bounded, and a reply past the name bound is refused, not built.

The daemon is in this process (its factory on a real TCP port) so that a
million names can be put in its store directly; the clients are the real
:class:`~lttx.client.AsyncClient`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

import lttx
from lttx.client import AsyncClient, ConnectionSettings
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.patterns import MAX_KEYS, MAX_PATTERN
from lttx.state.store import MemoryStore

from .common import TOKEN

NAMES = 1_000_000


class FairScanTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:
        self.store = MemoryStore()
        for i in range(NAMES):
            self.store.restore(f"n{i:07d}", i, 1, None)
        factory = LTtxFactory(ServerState(self.store, TokenAuthenticator(TOKEN)))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        settings = ConnectionSettings("127.0.0.1", port.getHost().port, TOKEN, 60)
        self.scanner = yield AsyncClient.connect(reactor, settings)
        self.other = yield AsyncClient.connect(reactor, settings)
        self.addCleanup(self.scanner.close)
        self.addCleanup(self.other.close)

    @inlineCallbacks
    def ping_ms(self) -> Generator[Any, Any, float]:
        start = time.perf_counter()
        yield self.other.ping()
        return (time.perf_counter() - start) * 1000

    @inlineCallbacks
    def pings_while(self, scan: Deferred[Any]) -> Generator[Any, Any, list[float]]:
        """The other client's ping round trips (ms), one after another, while ``scan`` runs."""
        done: list[Any] = []
        scan.addBoth(lambda result: done.append(True) or result)
        during = []
        while not done:
            during.append((yield self.ping_ms()))
        return during

    @inlineCallbacks
    def test_other_clients_are_served_during_keys_over_a_million_names(
            self) -> Generator[Any, Any, None]:
        """While keys('n000*') runs over 1,000,000 names, the other client's pings
        are answered between slices (several of them before the scan's reply)."""
        idle = []
        for _ in range(20):
            idle.append((yield self.ping_ms()))
        scan = self.scanner.keys("n000*")
        during = yield self.pings_while(scan)
        found = yield scan
        self.assertEqual(found, [f"n{i:07d}" for i in range(10_000)])
        print(f"\n  keys over {NAMES:,} names: other client's ping median "
              f"{statistics.median(idle):.2f} ms idle, {statistics.median(during):.2f} ms "
              f"during (max {max(during):.2f} ms, {len(during)} pings answered)")
        # The old keys ran in one reactor turn: at most one ping got through.
        self.assertGreaterEqual(len(during), 3)

    @inlineCallbacks
    def test_keys_past_the_bound_is_refused_without_stalling(self) -> Generator[Any, Any, None]:
        """keys('*') over 1,000,000 names: limit (past MAX_KEYS), found in slices."""
        scan = self.scanner.keys("*")
        during = yield self.pings_while(scan)
        error = yield self.assertFailure(scan, lttx.LimitExceeded)
        self.assertIn(f"keys matched more than {MAX_KEYS} names", str(error))
        print(f"\n  keys('*') refused; other client's ping max {max(during):.2f} ms, "
              f"{len(during)} pings answered")
        self.assertGreaterEqual(len(during), 2)

    @inlineCallbacks
    def test_a_long_pattern_is_refused(self) -> Generator[Any, Any, None]:
        """A 1,000,000-character pattern is a bad_request, at once."""
        error = yield self.assertFailure(self.scanner.keys("*a" * 500_000), lttx.BadRequest)
        self.assertEqual(str(error), f"a key pattern may have at most {MAX_PATTERN} "
                                     f"characters, not 1000000")
        found = yield self.scanner.keys("n000000?")
        self.assertEqual(found, [f"n000000{i}" for i in range(10)])
