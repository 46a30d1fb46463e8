"""
Failed hellos slow down per host, and refusals do not flood the log (issue 19,
findings 8 and 9): the plain throttle, then through the daemon's protocol.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.store import MemoryStore
from lttx.state.throttle import (
    CAPACITY,
    FIRST_DELAY,
    FREE_FAILURES,
    MAX_DELAY,
    HelloThrottle,
    RefusalLog,
)
from lttx.wire import codec

from ..common import TOKEN, frame, frames_of


class HelloThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 0.0
        self.throttle = HelloThrottle(lambda: self.now)

    def fail(self, host: str = "10.0.0.1") -> Any:
        wait = self.throttle.admit(host)
        self.throttle.checked(host, False)
        return wait

    def test_the_first_failures_are_free_then_delays_double(self) -> None:
        """Three wrong tokens cost nothing; then each hello waits 0.5, 1, 2 ... at most 8 s."""
        self.assertEqual([self.fail() for _ in range(FREE_FAILURES)], [0.0] * FREE_FAILURES)
        waits = []
        for _ in range(7):
            wait = self.throttle.admit("10.0.0.1")
            waits.append(wait)
            self.now += wait
            self.throttle.checked("10.0.0.1", False)
        self.assertEqual(waits[0], FIRST_DELAY)
        self.assertEqual(waits, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
        self.assertEqual(max(waits), MAX_DELAY)

    def test_parallel_hellos_of_a_host_take_turns(self) -> None:
        """Opening more connections does not buy more guesses: each waits its turn."""
        for _ in range(FREE_FAILURES + 1):
            self.fail()
        turns = [self.throttle.admit("10.0.0.1") for _ in range(4)]
        self.assertEqual(turns, sorted(turns))
        self.assertEqual(len(set(turns)), 4)

    def test_a_good_token_clears_the_host(self) -> None:
        for _ in range(FREE_FAILURES + 2):
            self.fail()
        self.now += 60
        self.assertIsNotNone(self.throttle.admit("10.0.0.1"))
        self.throttle.checked("10.0.0.1", True)
        self.assertEqual(self.throttle.admit("10.0.0.1"), 0.0)

    def test_other_hosts_are_not_slowed(self) -> None:
        for _ in range(10):
            self.fail("10.0.0.1")
        self.assertEqual(self.throttle.admit("10.0.0.2"), 0.0)

    def test_the_table_is_bounded(self) -> None:
        """A million hosts with one failure each keep at most CAPACITY entries."""
        for i in range(CAPACITY + 500):
            self.throttle.checked(f"h{i}", False)
        self.assertEqual(len(self.throttle), CAPACITY)


class RefusalLogTests(SynchronousTestCase):
    def test_a_burst_then_a_summary(self) -> None:
        now = [0.0]
        log = RefusalLog(lambda: now[0], burst=3, interval=60)
        decisions = [log.note("h") for _ in range(1000)]
        self.assertEqual(decisions[:3], [0, 0, 0])
        self.assertEqual(decisions[3:], [None] * 997)
        now[0] = 61
        self.assertEqual(log.note("h"), 997)  # the next line says how many were left out


class ThrottledProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN),
                                               clock=self.clock))
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def hello(self, token: str, *then: Any) -> StringTransport:
        peer = IPv4Address("TCP", "192.0.2.7", 5000)
        proto = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(frame(f) for f in (
            [codec.REQUEST, 0, "hello", [token, {}]], *then)))
        return transport

    def test_wrong_tokens_are_answered_later_and_later(self) -> None:
        """After the free failures a wrong token's answer waits its turn; a right
        token waits too, then is served, with the requests sent behind it."""
        for _ in range(FREE_FAILURES):
            self.assertEqual(frames_of(self.hello("nope").value()),
                             [[codec.ERROR, 0, "auth", "wrong token"]])
        held = self.hello("nope")
        self.assertEqual(held.value(), b"")
        self.clock.advance(FIRST_DELAY)
        self.assertEqual(frames_of(held.value()), [[codec.ERROR, 0, "auth", "wrong token"]])
        good = self.hello(TOKEN, [codec.REQUEST, 1, "ping", []])
        self.assertEqual(good.value(), b"")
        self.clock.advance(2 * FIRST_DELAY)
        [hello, ping] = frames_of(good.value())
        self.assertEqual((hello[:2], ping), ([codec.REPLY, 0], [codec.REPLY, 1, "pong"]))
        # Its success cleared the host: the next connection is served at once.
        self.assertEqual(frames_of(self.hello(TOKEN).value())[0][:2], [codec.REPLY, 0])

    def test_a_flood_of_refusals_logs_a_few_lines(self) -> None:
        """1,000 connections sending garbage before hello: a handful of log lines."""
        for _ in range(1000):
            peer = IPv4Address("TCP", "192.0.2.8", 5000)
            proto = self.factory.buildProtocol(peer)
            proto.makeConnection(StringTransport(peerAddress=peer))
            proto.dataReceived(frame([codec.REQUEST, 0, "put", ["x", 1]]))
        lines = [e for e in self.events if "before hello" in e.get("log_format", "")]
        self.assertLessEqual(len(lines), 3)

    def test_status_counts_failed_hellos(self) -> None:
        for _ in range(FREE_FAILURES + 1):
            self.hello("nope")
        self.clock.advance(10)
        report = self.factory.state.status()
        self.assertEqual(report["hellos"]["failed_hellos"], FREE_FAILURES + 1)
        self.assertEqual(report["hellos"]["hosts_slowed_down"], 1)
