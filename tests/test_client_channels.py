"""
The Twisted-native client's channel side against the real server protocol, in
memory (twisted.test.iosim): subscriptions, callbacks, push flow control.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.wire import codec
from lttx.client import ClientProtocol, Message, MessageQueue

from .common import frame, frames_of
from .test_client import connected_client


def recording_writes(client: Any) -> list[bytes]:
    writes: list[bytes] = []
    transport = client.protocol.transport
    original_write = transport.write
    transport.write = lambda data: (writes.append(data), original_write(data))[1]
    return writes


class SubscriptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client, self.pump, self.notices = connected_client(self)
        self.reactor = self.client.test_reactor  # type: ignore[attr-defined]
        self.received: list[Message] = []
        self.client._deliver = self.received.append

    def push_and_pump(self, *pushes: tuple[Any, Any, str]) -> None:
        for key, data, channel in pushes:
            self.client.push(key, data, channel)
        self.reactor.advance(0)
        self.pump.flush()

    def test_subscribe_and_receive(self) -> None:
        """subscribe fires with the next seqs; messages arrive as lttx.Message."""
        d = self.client.subscribe("a@b")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), {"a": 1, "b": 1})
        self.assertEqual(self.client.subscriptions, ["a", "b"])
        self.push_and_pump(("k", {"px": 1.5}, "a"), ("k", b"\x00", "b"), ("k", 3, "elsewhere"))
        self.assertEqual(self.received, [Message("a", "k", {"px": 1.5}, 1),
                                         Message("b", "k", b"\x00", 1)])

    def test_callback_per_subscription(self) -> None:
        """A subscription's callback gets its channel's messages; a failing callback is
        logged and the next messages still come."""
        got: list[Message] = []

        def callback(message: Message) -> None:
            got.append(message)
            if message.data == "boom":
                raise RuntimeError("user bug")

        self.client.subscribe("cb", callback=callback)
        self.client.subscribe("q")
        self.pump.flush()
        self.push_and_pump(("k", "boom", "cb"), ("k", 2, "q"), ("k", 3, "cb"))
        self.assertEqual([m.data for m in got], ["boom", 3])
        self.assertEqual([m.data for m in self.received], [2])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_messages_in_flight_after_unsubscribe_are_dropped(self) -> None:
        """Once unsubscribe is called, no message of that channel is delivered."""
        self.client.subscribe("a")
        self.pump.flush()
        self.client.push("k", 1, "a")
        self.reactor.advance(0)
        d = self.client.unsubscribe("a")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), ["a"])
        self.assertEqual(self.received, [])

    def test_refused_subscribe_restores_the_previous_subscription(self) -> None:
        """A subscribe refused for a wrong password fails with AuthError; the client
        keeps (and would resubscribe) only what the daemon accepted."""
        self.client.subscribe("locked", password="right")
        self.pump.flush()
        d = self.client.subscribe(["locked", "fresh"], password="wrong")
        self.pump.flush()
        self.failureResultOf(d, lttx.AuthError)
        self.assertEqual(self.client.subscriptions, ["locked"])
        self.assertEqual(self.client._subscriptions["locked"].password, "right")

    def test_bad_channel_name_fails_locally(self) -> None:
        self.failureResultOf(self.client.subscribe("a@"), lttx.BadRequest)
        self.failureResultOf(self.client.unsubscribe([]), lttx.BadRequest)


class PushFlowControlTests(SynchronousTestCase):
    def test_pushes_wait_while_the_transport_is_paused(self) -> None:
        """While the transport's buffer is full pushes stay in the client; on resume
        they leave in one write, in order, and flush() fires."""
        client, pump, _ = connected_client(self)
        reactor = client.test_reactor  # type: ignore[attr-defined]
        writes = recording_writes(client)
        client.pauseProducing()  # what the TCP transport does when its buffer fills
        self.assertFalse(client.writable)
        for i in range(50):
            client.push(f"k{i}", i, "hq")
        reactor.advance(0)
        flushed = client.flush()
        self.assertEqual(writes, [])
        self.assertNoResult(flushed)
        frames = [codec.encode([codec.PUBLISH, "hq", f"k{i}", i]) for i in range(50)]
        self.assertEqual(client.pending_push_bytes, sum(len(f) for f in frames))
        client.resumeProducing()
        self.assertEqual(len(writes), 1)
        self.assertEqual(client.pending_push_bytes, 0)
        self.successResultOf(flushed)
        self.assertEqual(writes[0], b"".join(len(f).to_bytes(4, "big") + f for f in frames))


class FramingTests(SynchronousTestCase):
    def test_frames_split_anywhere(self) -> None:
        """Messages, a reply and a notice fed in pieces of every size arrive whole and in
        order; messages before a reply are delivered before its Deferred fires."""
        stream = (frame([codec.MESSAGE, "hq", "600000.SH", {"px": 10.23}, 1])
                  + frame([codec.MESSAGE, "hq", b"\x95\x03", "x" * 300, 2])
                  + frame([codec.REPLY, 1, "pong"])
                  + frame([codec.NOTICE, "slow_subscriber", "bye"])
                  + frame([codec.MESSAGE, "hq", 7, None, 3]))
        for size in range(1, 12):
            events: list[Any] = []
            protocol = ClientProtocol(events.append, lambda *n: events.append(n))
            protocol.makeConnection(StringTransport())
            d = protocol.request("ping")
            d.addCallback(events.append)
            protocol.set_receivers(lambda batch: events.extend(batch),
                                   lambda *n: events.append(n))
            for i in range(0, len(stream), size):
                protocol.dataReceived(stream[i:i + size])
            self.assertEqual(events, [
                Message("hq", "600000.SH", {"px": 10.23}, 1),
                Message("hq", b"\x95\x03", "x" * 300, 2),
                "pong", ("slow_subscriber", "bye"), Message("hq", 7, None, 3)])

    def test_garbage_closes(self) -> None:
        """A frame that looks like a message but does not decode closes the connection."""
        protocol = ClientProtocol(lambda m: None, lambda *n: None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.set_receivers(lambda batch: None, lambda *n: None)
        protocol.dataReceived(b"\x00\x00\x00\x03\x95\x03\xc1")
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors()


class MessageQueueTests(SynchronousTestCase):
    def test_put_many_and_get(self) -> None:
        """put_many keeps order, counts tasks, and get/get_nowait behave as Queue's."""
        q = MessageQueue()
        q.put_many([Message("a", "k", i, i + 1) for i in range(3)])
        q.put(Message("a", "k", 3, 4))
        self.assertEqual(q.qsize(), 4)
        self.assertEqual([q.get().data for _ in range(3)] + [q.get_nowait().data], [0, 1, 2, 3])
        self.assertEqual(q.unfinished_tasks, 4)
        self.assertRaises(Exception, q.get, timeout=0.01)

    def test_full_queue_drops_new_messages_and_says_so_once(self) -> None:
        """A Q nobody reads keeps its first `limit` messages, counts the rest, logs
        one warning, and takes messages again once it is read."""
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        q = MessageQueue(limit=10)
        for batch in range(5):
            q.put_many([Message("a", "k", batch * 4 + i, batch * 4 + i + 1) for i in range(4)])
        self.assertEqual((q.qsize(), q.dropped), (10, 10))
        warnings = [e for e in observer if "nobody reads" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual([q.get().seq for _ in range(10)], list(range(1, 11)))
        q.put_many([Message("a", "k", 99, 21)])
        self.assertEqual(q.get().seq, 21)  # the gap 11..20 shows what was dropped


class ResubscribeTests(SynchronousTestCase):
    """What a reconnection does with the messages and refusals that follow it."""

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from lttx.client import AsyncClient, ClientProtocol, ConnectionSettings

        def new_protocol() -> ClientProtocol:
            protocol = ClientProtocol(lambda m: None, lambda c, m: None)
            protocol.makeConnection(StringTransport())
            return protocol

        self.new_protocol = new_protocol
        self.received: list[Any] = []
        first = new_protocol()
        self.client = AsyncClient(MemoryReactorClock(), ConnectionSettings(), first, {},
                                  self.received.append)
        self.client.subscribe("hq")
        [request] = frames_of(first.transport.value())
        first.dataReceived(frame([codec.REPLY, request[1], {"hq": 1}]))

    def test_messages_in_the_chunk_of_the_resubscribe_reply_are_kept(self) -> None:
        """Ticks that share a TCP segment with the resubscribe reply reach the user."""
        protocol = self.new_protocol()
        self.client._resubscribe((protocol, {})).addCallback(self.client._reconnected)
        [request] = frames_of(protocol.transport.value())
        protocol.dataReceived(frame([codec.REPLY, request[1], {"hq": 5}])
                              + frame([codec.MESSAGE, "hq", "k", "a", 5])
                              + frame([codec.MESSAGE, "hq", "k", "b", 6]))
        protocol.dataReceived(frame([codec.MESSAGE, "hq", "k", "c", 7]))
        self.assertEqual([m.seq for m in self.received], [5, 6, 7])

    def test_forbidden_resubscribe_drops_the_channel_not_the_connection(self) -> None:
        """A token that lost a channel's right keeps its connection for everything else."""
        protocol = self.new_protocol()
        outcome: list[Any] = []
        self.client._resubscribe((protocol, {})).addCallbacks(outcome.append, outcome.append)
        [request] = frames_of(protocol.transport.value())
        protocol.dataReceived(frame([codec.ERROR, request[1], "forbidden",
                                     "the token 'x' may not subscribe 'hq'"]))
        self.assertEqual(outcome, [(protocol, {}, [])])
        self.assertFalse(protocol.transport.disconnecting)
        self.assertEqual(self.client.subscriptions, [])
