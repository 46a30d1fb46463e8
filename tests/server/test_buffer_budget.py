"""
The daemon-wide bound on memory held for connections (issue 19 finding 6,
:mod:`lttx.server.budget`): incomplete large frames and unread replies of
all connections together stay under ``--max-buffered``.  Through the
daemon's protocol on StringTransports, exact frames.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.budget import LARGE, BufferBudget, unsent_bytes
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.store import MemoryStore
from lttx.wire import codec

from ..common import TOKEN, frame, frames_of, server_protocol

R, E = codec.REPLY, codec.ERROR
KiB = 1024


class UnreadTransport(StringTransport):
    """A connection whose peer reads nothing: every byte written stays in the
    transport's buffer, as in Twisted's ``FileDescriptor``."""

    offset = 0
    _tempDataLen = 0

    @property
    def dataBuffer(self) -> bytes:
        return self.io.getvalue()


def put_frame(request_id: int, name: str, size: int) -> bytes:
    return frame([codec.REQUEST, request_id, "put", [name, b"v" * size]])


class BudgetTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.state = ServerState(self.store, TokenAuthenticator(TOKEN))
        self.state.budget.limit = 1024 * KiB
        self.factory = LTtxFactory(self.state)

    def connect(self, host: str = "10.0.0.1") -> tuple[Any, StringTransport]:
        return server_protocol(factory=self.factory, peer=(host, 40000))

    def sent(self, transport: StringTransport) -> list[Any]:
        out = frames_of(transport.value())
        transport.clear()
        return out


class IncompleteFrameTests(BudgetTestCase):

    def test_a_large_frame_past_the_budget_is_refused_and_closed(self) -> None:
        """Two connections start 600 KiB frames: the first is admitted (counted at its
        declared length from its first bytes), the second would pass --max-buffered:
        a limit error, closed; small requests are served meanwhile; once the first
        frame is complete, a new large frame fits again."""
        first, first_transport = self.connect()
        big = put_frame(1, "a", 600 * KiB)
        first.dataReceived(big[:100 * KiB])
        self.assertEqual(self.state.budget.held(), len(big) - 4)
        second, second_transport = self.connect("10.0.0.2")
        second.dataReceived(put_frame(1, "b", 600 * KiB)[:100 * KiB])
        [[kind, request_id, code, message]] = self.sent(second_transport)
        self.assertEqual((kind, request_id, code), (E, None, "limit"))
        self.assertIn("--max-buffered of 1048576", message)
        self.assertTrue(second_transport.disconnecting)
        small, small_transport = self.connect("10.0.0.3")
        small.dataReceived(frame([codec.REQUEST, 1, "put", ["s", 1]]))
        self.assertEqual(self.sent(small_transport), [[R, 1, None]])
        first.dataReceived(big[100 * KiB:])
        self.assertEqual(self.sent(first_transport), [[R, 1, None]])
        self.assertEqual(self.store.get("a"), b"v" * 600 * KiB)
        second.connectionLost(None)
        third, third_transport = self.connect("10.0.0.4")
        third.dataReceived(put_frame(2, "c", 600 * KiB))
        self.assertEqual(self.sent(third_transport), [[R, 2, None]])
        self.assertEqual(self.state.budget.status()["frames_refused"], 1)

    def test_frames_under_the_large_size_are_never_counted(self) -> None:
        """A frame under 256 KiB is served whatever the others hold."""
        self.state.budget.limit = 300 * KiB
        first, _ = self.connect()
        first.dataReceived(put_frame(1, "a", 290 * KiB)[:1000])
        other, transport = self.connect("10.0.0.2")
        other.dataReceived(put_frame(1, "b", LARGE // 2))
        self.assertEqual(self.sent(transport), [[R, 1, None]])


class UnreadReplyTests(BudgetTestCase):

    def connect_unread(self, host: str) -> tuple[Any, UnreadTransport]:
        proto, plain = self.connect(host)
        proto.transport = transport = UnreadTransport(peerAddress=plain.getPeer())
        return proto, transport

    def test_large_replies_wait_for_room(self) -> None:
        """Peers that ask for a 400 KiB value and read nothing: replies go out until
        the unsent ones would pass --max-buffered; then the request gets a limit error
        (the connection goes on, small replies still go); once a peer has read, the
        large reply is sent again."""
        self.store.put("big", b"x" * 400 * KiB)
        readers = [self.connect_unread(f"10.0.0.{i}") for i in range(3)]
        for proto, _ in readers:
            proto.dataReceived(frame([codec.REQUEST, 1, "get", ["big"]]))
        (_, first), (_, second), (third, refused) = readers
        self.assertEqual(frames_of(first.value())[0][:2], [R, 1])
        self.assertEqual(frames_of(second.value())[0][:2], [R, 1])
        [[kind, request_id, code, message]] = frames_of(refused.value())
        self.assertEqual((kind, request_id, code), (E, 1, "limit"))
        self.assertIn("this reply of", message)
        self.assertFalse(refused.disconnecting)
        refused.clear()
        third.dataReceived(frame([codec.REQUEST, 2, "exists", ["big"]]))
        self.assertEqual(frames_of(refused.value()), [[R, 2, True]])
        refused.clear()
        first.clear()  # the first peer read its reply
        third.dataReceived(frame([codec.REQUEST, 3, "get", ["big"]]))
        [reply] = frames_of(refused.value())
        self.assertEqual(reply[:2], [R, 3], reply[:4] if reply[0] == E else reply[:2])
        self.assertEqual(reply[2], [b"x" * 400 * KiB])
        # Full again (the second and third peers hold 800 KiB): the reply of a
        # change is sent all the same, a popped item is never lost.
        self.store.list_append("l", b"y" * 400 * KiB)
        third.dataReceived(frame([codec.REQUEST, 4, "list_pop", ["l"]]))
        popped = frames_of(refused.value())[-1]
        self.assertEqual(popped[:3], [R, 4, b"y" * 400 * KiB])
        self.assertGreater(self.state.budget.held(), 1024 * KiB)
        status = self.state.status()["buffers"]  # type: ignore[index]
        self.assertEqual((status["replies_refused"], status["limit"]), (1, 1024 * KiB))


class UnsentBytesTests(SynchronousTestCase):

    def test_a_tcp_transport_and_a_tls_wrapper_over_it(self) -> None:
        """unsent_bytes reads Twisted's FileDescriptor buffer, through a wrapper."""
        class TCP:
            dataBuffer = b"abcdef"
            offset = 2
            _tempDataLen = 10

        class TLS:
            transport = TCP()
            _appSendBuffer = [b"123"]

        self.assertEqual(unsent_bytes(TCP()), 14)
        self.assertEqual(unsent_bytes(TLS()), 17)
        self.assertEqual(unsent_bytes(StringTransport()), 0)

    def test_summing_ten_thousand_connections_is_cheap(self) -> None:
        """The sum is taken only for large frames and replies; over 10,000
        connections it costs a few ms (printed)."""
        state = ServerState(MemoryStore(), TokenAuthenticator(TOKEN))
        state.max_connections_per_host = 0
        factory = LTtxFactory(state)
        for i in range(10_000):
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
        budget: BufferBudget = state.budget
        started = time.perf_counter()
        self.assertEqual(budget.held(), 0)
        self.assertEqual(len(state.connections), 10_000)
        print(f"\n  held() over {len(state.connections)} connections: "
              f"{(time.perf_counter() - started) * 1000:.1f} ms")
