"""
The client's protocol and the Twisted-native client against the real server
protocol, in memory (twisted.test.iosim), and the blocking client's loop.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.wire import codec
from lttx.state.auth import TokenAuthenticator
from lttx.client import AsyncClient, ClientProtocol, ConnectionSettings, Message
from lttx.client.eventloop import EventLoop
from lttx.server.factory import LTtxFactory
from lttx.state.store import MemoryStore

from .common import TOKEN


def connected_client(test: SynchronousTestCase, max_frame: int = 1024 * 1024,
                     store: Any = None) -> tuple[AsyncClient, iosim.IOPump, list[Any]]:
    """An authenticated AsyncClient wired to a real server protocol in memory."""
    factory = LTtxFactory(store if store is not None else MemoryStore(), TokenAuthenticator(TOKEN),
                          max_frame=max_frame)
    server = factory.buildProtocol(None)
    notices: list[Any] = []
    messages: list[Message] = []
    client_protocol = ClientProtocol(messages.append, lambda *n: notices.append(n))
    pump = iosim.connect(server, iosim.makeFakeServer(server),
                         client_protocol, iosim.makeFakeClient(client_protocol))
    settings = ConnectionSettings("127.0.0.1", 1, TOKEN)
    hello = client_protocol.request("hello", *settings.hello_args())
    pump.flush()
    info = test.successResultOf(hello)
    client_protocol.max_frame = info["max_frame"]
    reactor = MemoryReactorClock()
    client = AsyncClient(reactor, settings, client_protocol, info, messages.append)
    client.test_reactor = reactor  # type: ignore[attr-defined]
    return client, pump, notices


class AsyncClientTests(SynchronousTestCase):
    def test_pipelined_requests(self) -> None:
        """Requests sent together get their own results, matched by id."""
        client, pump, _ = connected_client(self)
        results = [client.put("a", 1), client.list_append("l", "x"), client.get("a"),
                   client.get("missing", default="dflt"), client.get_dict_value("a", "k")]
        pump.flush()
        self.assertEqual(self.successResultOf(results[0]), None)
        self.assertEqual(self.successResultOf(results[1]), 1)
        self.assertEqual(self.successResultOf(results[2]), 1)
        self.assertEqual(self.successResultOf(results[3]), "dflt")
        self.assertIsInstance(self.failureResultOf(results[4]).value, lttx.WrongTypeError)

    def test_errors_come_back_as_their_classes(self) -> None:
        client, pump, _ = connected_client(self)
        pops = [client.list_pop("none"), client.call("nosuch")]
        pump.flush()
        self.failureResultOf(pops[0], lttx.NotFound)
        failure = self.failureResultOf(pops[1], lttx.BadRequest)
        self.assertEqual(str(failure.value), "unknown command 'nosuch'")

    def test_frame_too_large_is_refused_before_sending(self) -> None:
        """The client knows the daemon's limit and refuses locally; the connection goes on."""
        client, pump, _ = connected_client(self, max_frame=2048)
        self.failureResultOf(client.put("big", b"x" * 4096), lttx.FrameTooLarge)
        d = client.ping()
        pump.flush()
        self.assertEqual(self.successResultOf(d), "pong")

    def test_unencodable_value(self) -> None:
        client, _, _ = connected_client(self)
        self.failureResultOf(client.put("s", {1, 2}), lttx.EncodeError)

    def test_lost_connection_fails_pending_requests(self) -> None:
        """Requests in flight when the connection drops fail with ConnectionLost;
        later ones wait for the reconnection, then fail after the timeout."""
        class NeverAnswers(MemoryStore):
            def get(self, name: str) -> Deferred[Any]:
                return Deferred()

        client, pump, _ = connected_client(self, store=NeverAnswers())
        d = client.get("a")
        pump.flush()
        self.assertNoResult(d)
        client.protocol.transport.loseConnection()
        pump.flush()
        self.failureResultOf(d, lttx.ConnectionLost)
        # A call made while disconnected waits for the reconnection, at most the timeout.
        later = client.get("a")
        self.assertNoResult(later)
        client.test_reactor.advance(client.settings.timeout)  # type: ignore[attr-defined]
        self.failureResultOf(later, lttx.ConnectionLost)

    def test_pushes_are_written_together(self) -> None:
        """Pushes made in one reactor turn leave in a single write."""
        client, pump, _ = connected_client(self)
        writes: list[bytes] = []
        transport = client.protocol.transport
        original_write = transport.write
        transport.write = lambda data: (writes.append(data), original_write(data))[1]
        for i in range(100):
            client.push(f"k{i}", {"px": i}, "hq")
        self.assertEqual(writes, [])
        client.test_reactor.advance(0)  # type: ignore[attr-defined]
        self.assertEqual(len(writes), 1)
        self.assertEqual(writes[0].count(codec.encode("hq")), 100)

    def test_cancelled_request_is_forgotten(self) -> None:
        """A cancelled request's late reply is dropped quietly."""
        client, pump, notices = connected_client(self)
        d = client.get("a")
        d.cancel()
        self.failureResultOf(d)
        pump.flush()
        self.assertEqual(client.protocol._pending, {})
        self.assertEqual(notices, [])


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
        self.loop.stop()
        self.assertFalse(self.loop._thread.is_alive())
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
