"""
MESSAGES frames on the client (lttx.wire.batches): the protocol's hot path and
its frame-at-a-time path give exactly the messages, in order with the frames
around them; a broken batch closes; the hello of a command connection asks for
batches, a file connection's does not; end to end through the real daemon,
with an old-style reader beside and four threads reading one Q.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lttx.client import ClientProtocol, Message
from lttx.client import protocol as client_protocol
from lttx.client.settings import ConnectionSettings
from lttx.wire import codec
from lttx.wire.batches import MESSAGES

from ..common import TOKEN, Daemon, frame, frames_of
from ..strategies import values


def batch(channel: str, items: list[tuple[Any, Any, int]]) -> bytes:
    return frame([MESSAGES, channel, [x for item in items for x in item]])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if b > a]


class ProtocolBatchTests(SynchronousTestCase):
    def receiver(self) -> tuple[ClientProtocol, StringTransport, list[Any]]:
        events: list[Any] = []
        protocol = ClientProtocol(events.append, lambda *n: events.append(n))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.request("ping").addCallback(events.append)
        protocol.set_receivers(lambda got: events.append(list(got)),
                               lambda *n: events.append(("notice",) + n),
                               lambda *n: events.append(("gap",) + n))
        return protocol, transport, events

    def test_batches_and_frames_around_them_in_order(self) -> None:
        """One read: a MESSAGE, a batch, a reply, a gap notice, a batch. The
        messages before the reply are one delivery before it fires, the gap
        notice comes between the batches it was sent between, seqs exact."""
        gap = [codec.NOTICE, "gap", "lost", {"channel": "hq", "first": 5, "last": 9, "epoch": 7}]
        protocol, _, events = self.receiver()
        protocol.dataReceived(frame([codec.MESSAGE, "hq", "a", 1, 1])
                              + batch("hq", [("b", 2, 2), ("c", [3], 3)])
                              + frame([codec.REPLY, 1, "pong"])
                              + batch("hq", [("d", 4, 4)])
                              + frame(gap)
                              + batch("hq", [("e", None, 10), (b"f", {"x": 1}, 11)]))
        self.assertEqual(events, [
            [Message("hq", "a", 1, 1), Message("hq", "b", 2, 2), Message("hq", "c", [3], 3)],
            "pong",
            [Message("hq", "d", 4, 4)],
            ("gap", "gap", "lost", gap[3]),
            [Message("hq", "e", None, 10), Message("hq", b"f", {"x": 1}, 11)]])

    def test_before_set_receivers_one_message_at_a_time(self) -> None:
        """A connection not yet handed to a client (frame at a time) gives a
        batch's messages to on_message one by one, in order."""
        got: list[Message] = []
        protocol = ClientProtocol(got.append)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(batch("hq", [("a", 1, 1), ("b", 2, 2)]))
        self.assertEqual(got, [Message("hq", "a", 1, 1), Message("hq", "b", 2, 2)])

    def test_a_broken_batch_closes_after_the_messages_before_it(self) -> None:
        """A batch whose list is not key, data, seq triples (or does not decode)
        ends the connection; the messages before it are delivered, none after."""
        for broken in (frame([MESSAGES, "hq", ["a", 1]]), frame([MESSAGES, 7, []]),
                       b"\x00\x00\x00\x03\x93\x06\xc1"):
            protocol, transport, events = self.receiver()
            protocol.dataReceived(frame([codec.MESSAGE, "hq", "a", 1, 1]) + broken
                                  + batch("hq", [("b", 2, 2), ("c", 3, 3)]))
            self.assertEqual(events, [[Message("hq", "a", 1, 1)]])
            self.assertTrue(transport.disconnecting)
            self.assertIsInstance(protocol.error, Exception)
            self.assertIn("undecodable frame", str(protocol.error))
        self.flushLoggedErrors()

    def test_a_file_connection_refuses_a_batch(self) -> None:
        protocol = ClientProtocol(None, mode=client_protocol.FILE)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(batch("hq", [("a", 1, 1), ("b", 2, 2)]))
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors()

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(st.tuples(st.text(max_size=8), values), min_size=1, max_size=6),
                    max_size=8),
           st.lists(st.booleans(), max_size=8), st.lists(st.integers(min_value=0), max_size=20))
    def test_any_mix_cut_anywhere(self, runs: list[list[tuple[str, Any]]], plain: list[bool],
                                  cuts: list[int]) -> None:
        """Runs of messages sent as batches or as MESSAGE frames, fed in pieces
        cut anywhere: the same messages, in order, with their seqs."""
        stream = b""
        expected = []
        seq = 70_000
        for k, run in enumerate(runs):
            items = []
            for key, data in run:
                seq += 1
                items.append((key, data, seq))
                expected.append(Message("hq", key, data, seq))
            if k < len(plain) and plain[k]:
                stream += b"".join(frame([codec.MESSAGE, "hq", *item]) for item in items)
            else:
                stream += batch("hq", items)
        got: list[Message] = []
        protocol = ClientProtocol(got.append)
        protocol.makeConnection(StringTransport())
        protocol.set_receivers(got.extend, lambda *n: None)
        for piece in split(stream, cuts):
            protocol.dataReceived(piece)
        self.assertEqual(got, expected)


class HelloTests(SynchronousTestCase):
    def test_command_connections_ask_file_connections_do_not(self) -> None:
        """The hello of a command connection says "batches": true; a file
        connection's does not (no messages come on it)."""
        from twisted.internet.testing import MemoryReactorClock

        from lttx.client.connection import open_connection

        for mode, expected in (("command", {"batches": True}), ("file", {"mode": "file"})):
            reactor = MemoryReactorClock()
            open_connection(reactor, ConnectionSettings("127.0.0.1", 1, token=TOKEN), mode=mode)
            factory = reactor.tcpClients[0][2]
            proto = factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            hello = frames_of(transport.value())[0]
            self.assertEqual(hello[2], "hello")
            options = hello[3][1]
            self.assertEqual({k: options[k] for k in expected}, expected)
            if mode == "file":
                self.assertNotIn("batches", options)


def read_frames(sock: socket.socket, count: int) -> list[Any]:
    """``count`` frames from a raw socket, decoded."""
    out = []
    buf = b""
    while len(out) < count:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack("!I", buf[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("the daemon closed the connection")
            buf += chunk
        size = 4 + struct.unpack("!I", buf[:4])[0]
        out.append(frames_of(buf[:size])[0])
        buf = buf[size:]
    return out


class DaemonBatchTests(TestCase):
    """The real daemon, real clients."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)

    def raw_subscriber(self, options: dict[str, Any]) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=30)
        self.addCleanup(sock.close)
        sock.sendall(frame([codec.REQUEST, 1, "hello", [TOKEN, options]])
                     + frame([codec.REQUEST, 2, "subscribe", [["hq"], None, {}]]))
        self.assertEqual([f[:2] for f in read_frames(sock, 2)], [[1, 1], [1, 2]])
        return sock

    def test_a_client_that_asks_gets_batches_one_that_does_not_gets_messages(self) -> None:
        """Two raw-socket clients of the same channel: one said "batches": true
        at hello and gets MESSAGES frames holding the pushes with their seqs,
        the other did not and gets one MESSAGE frame per push, the same messages."""
        asking = self.raw_subscriber({"batches": True})
        plain = self.raw_subscriber({})
        publisher = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=30)
        self.addCleanup(publisher.close)
        publisher.sendall(frame([codec.REQUEST, 1, "hello", [TOKEN, {}]]))
        read_frames(publisher, 1)
        # One write: the daemon reads the pushes in one chunk (and so batches them).
        publisher.sendall(b"".join(frame([codec.PUBLISH, "hq", f"k{i}", i]) for i in range(200))
                          + frame([codec.REQUEST, 2, "ping", []]))
        self.assertEqual(read_frames(publisher, 1)[0][:2], [1, 2])
        frames = read_frames(plain, 200)
        self.assertEqual(frames, [[codec.MESSAGE, "hq", f"k{i}", i, i + 1] for i in range(200)])
        got: list[Any] = []
        kinds = set()
        while len(got) < 600:
            (payload,) = read_frames(asking, 1)
            kinds.add(payload[0])
            got += payload[2] if payload[0] == MESSAGES else payload[2:]
        self.assertIn(MESSAGES, kinds)
        self.assertEqual(got, [x for i in range(200) for x in (f"k{i}", i, i + 1)])

    def test_many_threads_read_one_q_fed_by_batches(self) -> None:
        """20,000 pushes to a blocking client that reads MESSAGES frames: four
        threads reading its Q take each message once, each thread's seqs
        increasing, all of them 1..20,000; batches did arrive."""
        seen = []
        real = client_protocol.batch_messages

        def counting(payload: Any) -> Any:
            seen.append(len(payload[2]) // 3)
            return real(payload)

        self.patch(client_protocol, "batch_messages", counting)
        subscriber = self.daemon.connect()
        subscriber.subscribe("hq")
        publisher = self.daemon.connect()
        for i in range(20_000):
            publisher.push(f"{i % 500:06d}.SH", i, "hq")
        publisher.flush()
        taken: list[list[int]] = [[] for _ in range(4)]
        claimed = [0]
        lock = threading.Lock()

        def read(mine: list[int]) -> None:
            while True:
                with lock:  # exactly 20,000 gets between the four threads
                    if claimed[0] == 20_000:
                        return
                    claimed[0] += 1
                mine.append(subscriber.Q.get(timeout=30).seq)

        threads = [threading.Thread(target=read, args=(mine,)) for mine in taken]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for mine in taken:
            self.assertEqual(mine, sorted(mine))
        self.assertEqual(sorted(s for mine in taken for s in mine), list(range(1, 20_001)))
        self.assertTrue(seen)
        self.assertGreater(sum(seen), 1000)
