"""
The client's protocol and the Twisted-native client against the real server
protocol, in memory (twisted.test.iosim), and the blocking client's loop.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx import testing
from lttx.wire import codec
from lttx.client import AsyncClient, ConnectionSettings, Message
from lttx.client.eventloop import EventLoop
from lttx.state.store import MemoryStore

from ..common import TOKEN


def MemoryDaemon(clock: MemoryReactorClock, store: Any = None, **state_args: Any) -> Any:
    """lttx.testing's in-memory daemon on ``clock``, with the tests' token."""
    return testing.MemoryDaemon(TOKEN, clock, store=store, **state_args)


def memory_settings(daemon: Any, **settings: Any) -> ConnectionSettings:
    """Settings reaching ``daemon``: an lttx.testing daemon, or any endpoint a test plays."""
    if isinstance(daemon, testing.MemoryDaemon):
        return daemon.settings(**settings)
    settings.setdefault("token", TOKEN)
    return ConnectionSettings("memory", 1, connector=lambda reactor, host, port: daemon,
                              **settings)


def cluster(token: Optional[str], **daemons: Any) -> ConnectionSettings:
    """Settings for the in-memory daemons given by name, starting at the first."""
    return testing.cluster_settings(daemons, next(iter(daemons)), token=token)


def connect_client(test: SynchronousTestCase, daemon: MemoryDaemon,
                   settings: Optional[ConnectionSettings] = None,
                   on_message: Optional[Callable[[Message], None]] = None) -> AsyncClient:
    """AsyncClient.connect to an in-memory daemon, pumped until it is connected."""
    d = AsyncClient.connect(daemon.clock, settings or memory_settings(daemon), on_message)
    daemon.flush()
    return test.successResultOf(d)


def connected_client(test: SynchronousTestCase, max_frame: int = 1024 * 1024,
                     store: Any = None,
                     on_message: Optional[Callable[[Message], None]] = None,
                     ) -> tuple[AsyncClient, MemoryDaemon]:
    """An authenticated AsyncClient on a real server protocol in memory."""
    daemon = MemoryDaemon(MemoryReactorClock(), store, max_frame=max_frame)
    return connect_client(test, daemon, on_message=on_message), daemon


def logged(events: Any, text: str) -> list[str]:
    """The logged lines whose format contains ``text``, formatted."""
    return [e["log_format"].format(**e) for e in events if text in e.get("log_format", "")]


class AsyncClientTests(SynchronousTestCase):
    def test_pipelined_requests(self) -> None:
        """Requests sent together get their own results, matched by id."""
        client, daemon = connected_client(self)
        results = [client.put("a", 1), client.list_append("l", "x"), client.get("a"),
                   client.get("missing", default="dflt"), client.get_dict_value("a", "k")]
        daemon.flush()
        self.assertEqual(self.successResultOf(results[0]), None)
        self.assertEqual(self.successResultOf(results[1]), 1)
        self.assertEqual(self.successResultOf(results[2]), 1)
        self.assertEqual(self.successResultOf(results[3]), "dflt")
        self.assertIsInstance(self.failureResultOf(results[4]).value, lttx.WrongTypeError)

    def test_every_variable_command(self) -> None:
        """Each variable command sends its request and gives its result, post-processed."""
        client, daemon = connected_client(self)
        calls = [client.ping(), client.put("d", {"k": 1}), client.get_dict_value("d", "k"),
                 client.get_dict_value("d", "nope", 0), client.dict_change("d", "j", 2),
                 client.get("d"), client.exists("d"), client.list_append("l", "a"),
                 client.list_append("l", "b"), client.get_list_value("l", 1),
                 client.list_remove("l", "a"), client.list_pop("l"), client.keys(),
                 client.delete("d"), client.exists("d")]
        daemon.flush()
        self.assertEqual([self.successResultOf(d) for d in calls],
                         ["pong", None, 1, 0, None, {"k": 1, "j": 2}, True, 1, 2, "b",
                          True, "b", ["d", "l"], True, False])
        status = client.status()
        daemon.flush()
        self.assertIn("version", self.successResultOf(status))

    def test_errors_come_back_as_their_classes(self) -> None:
        client, daemon = connected_client(self)
        pops = [client.list_pop("none"), client.call("nosuch")]
        daemon.flush()
        self.failureResultOf(pops[0], lttx.NotFound)
        failure = self.failureResultOf(pops[1], lttx.BadRequest)
        self.assertEqual(str(failure.value), "unknown command 'nosuch'")

    def test_frame_too_large_is_refused_before_sending(self) -> None:
        """The client knows the daemon's limit and refuses locally; the connection goes on."""
        client, daemon = connected_client(self, max_frame=2048)
        self.failureResultOf(client.put("big", b"x" * 4096), lttx.FrameTooLarge)
        d = client.ping()
        daemon.flush()
        self.assertEqual(self.successResultOf(d), "pong")

    def test_unencodable_value(self) -> None:
        client, _ = connected_client(self)
        self.failureResultOf(client.put("s", {1, 2}), lttx.EncodeError)

    def test_lost_connection_fails_pending_requests(self) -> None:
        """Requests in flight when the connection drops fail with ConnectionLost;
        later ones wait for the reconnection, then fail after the timeout."""
        class NeverAnswers(MemoryStore):
            def get(self, name: str) -> Deferred[Any]:
                return Deferred()

        client, daemon = connected_client(self, store=NeverAnswers())
        d = client.get("a")
        daemon.flush()
        self.assertNoResult(d)
        daemon.down = True
        daemon.drop_connections()
        self.failureResultOf(d, lttx.ConnectionLost)
        # A call made while disconnected waits for the reconnection, at most the timeout.
        later = client.get("a")
        self.assertNoResult(later)
        daemon.clock.advance(client.settings.timeout)
        self.failureResultOf(later, lttx.ConnectionLost)

    def test_pushes_are_written_together(self) -> None:
        """Pushes made in one reactor turn leave in a single write."""
        client, daemon = connected_client(self)
        writes: list[bytes] = []
        transport = client.protocol.transport
        original_write = transport.write
        transport.write = lambda data: (writes.append(data), original_write(data))[1]
        for i in range(100):
            client.push(f"k{i}", {"px": i}, "hq")
        self.assertEqual(writes, [])
        daemon.clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.assertEqual(writes[0].count(codec.encode("hq")), 100)

    def test_cancelled_request_is_forgotten(self) -> None:
        """A cancelled request's late reply is dropped quietly; the next calls go on."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        client, daemon = connected_client(self)
        d = client.get("a")
        d.cancel()
        self.failureResultOf(d)
        daemon.flush()
        self.assertEqual(logged(events, "the daemon says"), [])
        later = client.ping()
        daemon.flush()
        self.assertEqual(self.successResultOf(later), "pong")

    def test_wrong_token_fails_at_once(self) -> None:
        """A wrong token on the first connect is an AuthError, and nothing is retried,
        not even at the other addresses."""
        clock = MemoryReactorClock()
        a, b = MemoryDaemon(clock), MemoryDaemon(clock)
        settings = cluster("wrong", a=a, b=b)
        d = AsyncClient.connect(clock, settings)
        a.flush()
        self.failureResultOf(d, lttx.AuthError)
        clock.advance(60)
        self.assertEqual((a.connections_made, b.connections_made), (1, 0))

    def test_first_connect_skips_the_daemons_that_are_down(self) -> None:
        """With several addresses, connect uses the first daemon that can be reached."""
        clock = MemoryReactorClock()
        a, b = MemoryDaemon(clock), MemoryDaemon(clock)
        a.down = True
        settings = cluster(TOKEN, a=a, b=b)
        client = connect_client(self, b, settings)
        self.assertEqual((client.settings.host, client.connected), ("b", True))

    def test_connect_to_nothing_is_a_connect_error(self) -> None:
        """A daemon that cannot be reached: ConnectError, with the address in its text."""
        daemon = MemoryDaemon(MemoryReactorClock())
        daemon.down = True
        d = AsyncClient.connect(daemon.clock, memory_settings(daemon))
        failure = self.failureResultOf(d, lttx.ConnectError)
        self.assertIn("cannot connect to LTtx at memory:1: ", failure.getErrorMessage())


class ReconnectionTests(SynchronousTestCase):
    """A client whose daemon goes away and comes back, as its user sees it."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.clock = MemoryReactorClock()

    def test_outage_logs_one_warning_and_the_reconnection(self) -> None:
        """However many attempts fail, an outage logs the loss, one failed attempt and
        the reconnection; calls then go on."""
        daemon = MemoryDaemon(self.clock)
        client = connect_client(self, daemon)
        daemon.down = True
        daemon.drop_connections()
        self.assertFalse(client.connected)
        for _ in range(8):  # 0.1 + 0.2 + ... + 5 s of backoff: eight failed attempts
            self.clock.advance(5)
        daemon.down = False
        self.clock.advance(5)
        daemon.flush()
        self.assertTrue(client.connected)
        self.assertEqual(len(logged(self.events, "lost the connection")), 1)
        self.assertEqual(len(logged(self.events, "cannot reconnect yet")), 1)
        self.assertEqual(len(logged(self.events, "reconnected to LTtx")), 1)
        d = client.ping()
        daemon.flush()
        self.assertEqual(self.successResultOf(d), "pong")

    def test_backoff_doubles_up_to_five_seconds(self) -> None:
        """Attempts come 0.1 s after the loss, then twice as long each time, at most 5 s."""
        daemon = MemoryDaemon(self.clock)
        connect_client(self, daemon)
        daemon.down = True
        daemon.drop_connections()
        delays = []
        for _ in range(8):
            [retry] = self.clock.getDelayedCalls()
            delays.append(round(retry.getTime() - self.clock.seconds(), 3))
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])

    def test_each_attempt_tries_the_next_daemon(self) -> None:
        """With several daemons, a lost connection is replaced by one to the next."""
        a, b = MemoryDaemon(self.clock), MemoryDaemon(self.clock)
        settings = cluster(TOKEN, a=a, b=b)
        client = connect_client(self, a, settings)
        a.drop_connections()
        self.clock.advance(0.1)
        b.flush()
        self.assertEqual((client.settings.host, client.connected), ("b", True))
        d = client.ping()
        b.flush()
        self.assertEqual(self.successResultOf(d), "pong")

    def test_close_stops_reconnecting(self) -> None:
        """close() while reconnecting: no more attempts, and waiting calls fail."""
        daemon = MemoryDaemon(self.clock)
        client = connect_client(self, daemon)
        daemon.down = True
        daemon.drop_connections()
        waiting = client.ping()
        self.successResultOf(client.close())
        self.failureResultOf(waiting, lttx.ConnectionLost)
        daemon.down = False
        self.clock.advance(60)
        self.assertEqual(daemon.connections_made, 1)
        self.failureResultOf(client.ping(), lttx.ConnectionLost)

    def test_close_closes_the_connection(self) -> None:
        """close() on a connected client closes its connection; it is not reopened."""
        daemon = MemoryDaemon(self.clock)
        client = connect_client(self, daemon)
        closed = client.close()
        daemon.flush()
        self.successResultOf(closed)
        self.assertFalse(client.connected)
        self.clock.advance(60)
        self.assertEqual(daemon.connections_made, 1)
        self.assertEqual(logged(self.events, "lost the connection"), [])


class EventLoopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.loop = EventLoop()
        self.addCleanup(self.loop.stop)

    def test_run_returns_the_deferred_result(self) -> None:
        def later() -> Deferred[str]:
            d: Deferred[str] = Deferred()
            self.loop.reactor.callLater(0, d.callback, "done")
            return d

        self.assertEqual(self.loop.run(later, timeout=5), "done")

    def test_run_raises_the_failure(self) -> None:
        def boom() -> None:
            raise lttx.NotFound("gone")

        self.assertRaises(lttx.NotFound, self.loop.run, boom, timeout=5)

    def test_timeout_cancels(self) -> None:
        cancelled = threading.Event()

        def never() -> Deferred[None]:
            return Deferred(lambda d: cancelled.set())

        self.assertRaises(lttx.TimeoutError, self.loop.run, never, timeout=0.05)
        self.assertTrue(cancelled.wait(5))

    def test_blocking_call_in_the_loop_thread_is_refused(self) -> None:
        """A blocking call from a callback would deadlock: it raises instead."""
        self.assertRaises(RuntimeError, self.loop.run,
                          lambda: self.loop.run(lambda: 1, timeout=1), timeout=5)

    def test_stop_fails_the_calls_still_waiting(self) -> None:
        """A thread waiting on a call (a long transfer) is released when the loop stops."""
        outcome: list[BaseException] = []
        started = threading.Event()

        def wait_forever() -> None:
            def never() -> Deferred[None]:
                started.set()
                return Deferred()

            try:
                self.loop.run(never)
            except lttx.LTtxError as e:
                outcome.append(e)

        caller = threading.Thread(target=wait_forever)
        caller.start()
        self.assertTrue(started.wait(5))
        self.loop.stop()
        caller.join(5)
        self.assertFalse(caller.is_alive())
        self.assertEqual([str(e) for e in outcome],
                         ["the client was closed while this call waited"])

    def test_stop_ends_the_thread(self) -> None:
        """stop() stops the reactor and waits for its thread; later calls are refused."""
        self.loop.stop()
        self.assertFalse(self.loop.reactor.running)
        self.assertRaises(lttx.LTtxError, self.loop.run, lambda: 1, timeout=1)


class AddressListTests(SynchronousTestCase):
    def test_next_address_cycles(self) -> None:
        """With several daemons, each reconnection tries the next one, in turn."""
        from lttx.client.settings import ConnectionSettings, split_address

        addresses = (split_address("h1:2025", 1), split_address(("h2", 2026), 1),
                     split_address("h3", 2027), split_address("[::1]:2028", 1))
        self.assertEqual(addresses, (("h1", 2025), ("h2", 2026), ("h3", 2027), ("::1", 2028)))
        settings = ConnectionSettings("h1", 2025, addresses=addresses)
        seen = []
        for _ in range(5):
            settings = settings.next_address()
            seen.append((settings.host, settings.port))
        self.assertEqual(seen, [("h2", 2026), ("h3", 2027), ("::1", 2028), ("h1", 2025),
                                ("h2", 2026)])
        single = ConnectionSettings("h1", 2025)
        self.assertIs(single.next_address(), single)
