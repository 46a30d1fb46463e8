"""
The hot-path shortcuts of issue 14 keep what they replace: the blocking
call's :class:`~lttx.client.eventloop.Waiter` (results to the right thread,
first result wins) and :func:`~lttx.wire.writes.send_now` (bytes leave in the
same reactor turn on plain TCP, and nothing changes where it would not be safe).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

import lttx
from lttx.client.eventloop import EventLoop, Waiter
from lttx.wire.writes import send_now, write_now


class WaiterTests(SynchronousTestCase):
    def test_first_result_wins(self) -> None:
        """A reply arriving after stop() failed the call does not replace the error."""
        waiter: Waiter[int] = Waiter()
        waiter.set_exception(lttx.LTtxError("closed"))
        waiter.set_result(1)
        self.assertTrue(waiter.wait(0))
        self.assertIsNone(waiter.result)
        self.assertEqual(str(waiter.error), "closed")

    def test_a_result_taken_is_not_replaced(self) -> None:
        """Once the caller has its result, stop() failing the waiters changes nothing."""
        waiter: Waiter[int] = Waiter()
        waiter.set_result(7)
        self.assertTrue(waiter.wait(0))  # the caller takes it (the lock is held again)
        waiter.set_exception(lttx.LTtxError("closed"))
        self.assertEqual((waiter.result, waiter.error), (7, None))
        self.assertTrue(waiter.done())

    def test_wait_times_out_without_a_result(self) -> None:
        waiter: Waiter[int] = Waiter()
        self.assertFalse(waiter.wait(0.01))
        self.assertFalse(waiter.done())

    def test_many_threads_each_get_their_own_result(self) -> None:
        """Calls from several threads at once: every thread gets its own answer."""
        loop = EventLoop()
        self.addCleanup(loop.stop)
        got: dict[int, list[int]] = {}

        def later(value: int) -> Deferred[int]:
            d: Deferred[int] = Deferred()
            loop.reactor.callLater(0, d.callback, value)
            return d

        def caller(k: int) -> None:
            got[k] = [loop.run(later, k * 1000 + i, timeout=10) for i in range(200)]

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(got, {k: [k * 1000 + i for i in range(200)] for k in range(8)})


class _Keep(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]


class SendNowTests(TestCase):
    """A real TCP connection on the test reactor, a plain socket at the other end."""

    def setUp(self) -> Deferred[Any]:
        factory = protocol.Factory.forProtocol(_Keep)
        factory.made = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.peer.settimeout(5)
        self.addCleanup(self.peer.close)

        def made(proto: _Keep) -> None:
            self.transport = proto.transport
            self.addCleanup(self.transport.abortConnection)

        return factory.made.addCallback(made)  # type: ignore[attr-defined, no-any-return]

    def test_bytes_leave_in_the_same_turn(self) -> None:
        """Without send_now the bytes would wait for the reactor's next poll;
        with it the peer reads them while this turn still runs."""
        self.transport.write(b"reply-1")
        self.transport.write(b"reply-2")
        send_now(self.transport)
        self.assertEqual(self.peer.recv(100), b"reply-1reply-2")
        self.assertEqual(self.transport._tempDataLen, 0)
        self.assertEqual(self.transport.dataBuffer, b"")

    def test_not_while_closing(self) -> None:
        """loseConnection's end is the reactor's to do: send_now leaves it alone."""
        self.transport.write(b"last")
        self.transport.loseConnection()
        send_now(self.transport)
        self.assertEqual(self.transport._tempDataLen, 4)

    def test_not_with_a_paused_producer(self) -> None:
        """A paused producer is resumed by the reactor's doWrite, never from
        inside the code that writes."""

        class Producer:
            resumed = 0

            def resumeProducing(self) -> None:
                self.resumed += 1

            def pauseProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        producer = Producer()
        self.transport.registerProducer(producer, True)
        self.transport.producerPaused = True
        self.transport.write(b"x")
        send_now(self.transport)
        self.assertEqual((producer.resumed, self.transport._tempDataLen), (0, 1))

    def test_write_now_sends_without_registering_for_writing(self) -> None:
        """An idle transport: the bytes are in the kernel when write_now
        returns, and the socket was never registered for writing (no
        epoll_ctl pair, no reactor turn)."""
        write_now(self.transport, b"reply")
        self.assertNotIn(self.transport, reactor.getWriters())  # type: ignore[attr-defined]
        self.assertEqual((self.transport._tempDataLen, self.transport.dataBuffer), (0, b""))
        self.assertEqual(self.peer.recv(100), b"reply")

    def test_write_now_goes_behind_buffered_bytes(self) -> None:
        """Bytes the transport still holds go first: write_now buffers behind them."""
        self.transport.write(b"first-")
        write_now(self.transport, b"second")
        self.assertEqual(self.transport._tempDataLen, 12)
        send_now(self.transport)
        self.assertEqual(self.peer.recv(100), b"first-second")

    def test_write_now_keeps_what_the_kernel_did_not_take(self) -> Deferred[None]:
        """Past the socket's buffer the rest is written to the transport and
        sent by the reactor, in order, after what the kernel took."""
        from twisted.internet.threads import deferToThread

        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 4096  # 1 MiB
        write_now(self.transport, data)
        self.assertGreater(self.transport._tempDataLen, 0)

        def read_all() -> bytes:
            got = b""
            while len(got) < len(data):
                got += self.peer.recv(1 << 20)
            return got

        return deferToThread(read_all).addCallback(  # type: ignore[no-any-return]
            lambda got: self.assertEqual(got, data))

    def test_other_transports_are_left_to_write(self) -> None:
        """A TLS or in-memory transport buffers as before."""
        transport = StringTransport()
        transport.write(b"abc")
        send_now(transport)
        write_now(transport, b"def")
        self.assertEqual(transport.value(), b"abcdef")
