"""
The Twisted-native client's channel side against the real server protocol, in
memory (twisted.test.iosim): subscriptions, callbacks, push flow control,
what a reconnection does with them.
"""

from __future__ import annotations

import queue
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.wire import codec
from lttx.client import AsyncClient, ClientProtocol, Message, MessageQueue

from ..common import frame, frames_of
from .test_client import MemoryDaemon, connect_client, connected_client, logged, memory_settings


def recording_writes(client: Any) -> list[bytes]:
    writes: list[bytes] = []
    transport = client.protocol.transport
    original_write = transport.write
    transport.write = lambda data: (writes.append(data), original_write(data))[1]
    return writes


class SubscriptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.received: list[Message] = []
        self.client, self.pump = connected_client(self, on_message=self.received.append)
        self.reactor = self.pump.clock

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
        keeps, and resubscribes after a reconnection, only what the daemon accepted."""
        self.client.subscribe("locked", password="right")
        self.pump.flush()
        d = self.client.subscribe(["locked", "fresh"], password="wrong")
        self.pump.flush()
        self.failureResultOf(d, lttx.AuthError)
        self.assertEqual(self.client.subscriptions, ["locked"])
        # After a restart another client takes the channel with the right password
        # first: only the right one gets this client in again.
        self.pump.drop_connections()
        other = connect_client(self, self.pump)
        other.subscribe("locked", password="right")
        self.pump.flush()
        self.reactor.advance(0.1)
        self.pump.flush()
        self.assertEqual(self.client.subscriptions, ["locked"])
        other.push("k", "in", "locked")
        self.reactor.advance(0)
        self.pump.flush()
        self.assertEqual(self.received, [Message("locked", "k", "in", 1)])

    def test_bad_channel_name_fails_locally(self) -> None:
        self.failureResultOf(self.client.subscribe("a@"), lttx.BadRequest)
        self.failureResultOf(self.client.unsubscribe([]), lttx.BadRequest)


class PushFlowControlTests(SynchronousTestCase):
    def test_pushes_wait_while_the_transport_is_paused(self) -> None:
        """While the transport's buffer is full pushes stay in the client; on resume
        they leave in one write, in order, and flush() fires."""
        client, pump = connected_client(self)
        reactor = pump.clock
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


class MessageQueueThreadTests(SynchronousTestCase):
    """Q's get takes moved batches without the lock: from many threads at once,
    each message is taken once, in order, and the bounds count every message held."""

    def test_many_readers_take_each_message_once_in_order(self) -> None:
        """A putter thread's batches read by four threads: every message is taken
        exactly once, each thread sees increasing seqs, nobody times out early."""
        import threading

        q = MessageQueue()
        total, readers = 20000, 4
        taken: list[list[int]] = [[] for _ in range(readers)]
        done = threading.Event()

        def read(mine: list[int]) -> None:
            while not done.is_set() or q.qsize():
                try:
                    mine.append(q.get(timeout=0.05).seq)
                except queue.Empty:
                    continue

        threads = [threading.Thread(target=read, args=(t,)) for t in taken]
        for thread in threads:
            thread.start()
        for start in range(0, total, 50):
            q.put_many([Message("a", "k", None, i) for i in range(start, start + 50)])
        done.set()
        for thread in threads:
            thread.join(30)
        self.assertEqual(sorted(s for t in taken for s in t), list(range(total)))
        for mine in taken:
            self.assertEqual(mine, sorted(mine))
        self.assertEqual(q.qsize(), 0)

    def test_a_waiting_get_is_woken_by_a_batch(self) -> None:
        """A get blocked in another thread returns the first message of a batch
        put later; the rest stay, in order, counted by qsize."""
        import threading

        q = MessageQueue()
        got: list[Message] = []
        waiting = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
        waiting.start()
        q.put_many([Message("a", "k", None, i) for i in range(3)])
        waiting.join(30)
        self.assertEqual([m.seq for m in got], [0])
        self.assertEqual(q.qsize(), 2)
        self.assertEqual([q.get_nowait().seq, q.get(block=False).seq], [1, 2])
        self.assertRaises(queue.Empty, q.get_nowait)
        self.assertRaises(ValueError, q.get, timeout=-1)

    def test_the_limit_counts_messages_already_moved(self) -> None:
        """Messages moved out of the put side by a get still count against the
        limit: the Q holds at most `limit` in all."""
        q = MessageQueue(limit=10)
        q.put_many([Message("a", "k", None, i) for i in range(8)])
        self.assertEqual(q.get().seq, 0)  # the other 7 now wait in the get side
        q.put_many([Message("a", "k", None, i) for i in range(8, 12)])
        self.assertEqual((q.qsize(), q.dropped), (10, 1))
        self.assertEqual([q.get().seq for _ in range(10)], list(range(1, 11)))
        self.assertTrue(q.empty())


class ScriptedDaemon:
    """
    The daemon played by the test: each connection the client makes is a
    StringTransport whose frames the test reads, and answers by feeding bytes.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[ClientProtocol, StringTransport]] = []

    def connect(self, factory: Any) -> "Deferred[Any]":
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    def requests(self) -> list[Any]:
        """The frames the newest connection wrote since the last look."""
        transport = self.connections[-1][1]
        sent = frames_of(transport.value())
        transport.clear()
        return sent

    def answer(self, *frames: Any) -> None:
        """Feed frames to the newest connection, all in one chunk."""
        self.connections[-1][0].dataReceived(b"".join(frame(f) for f in frames))

    def accept_hello(self) -> None:
        [hello] = self.requests()
        self.answer([codec.REPLY, hello[1], {"server": "lttx", "max_frame": 1 << 20}])

    def drop(self) -> None:
        """The daemon goes away: the newest connection is lost."""
        protocol, transport = self.connections[-1]
        transport.loseConnection()
        protocol.connectionLost(Failure(ConnectionDone()))


class ResubscribeTests(SynchronousTestCase):
    """What a reconnection does with subscriptions, messages, waiting calls and pushes."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.clock = MemoryReactorClock()
        self.daemon = ScriptedDaemon()
        self.received: list[Message] = []
        d = AsyncClient.connect(self.clock, memory_settings(self.daemon), self.received.append)
        self.daemon.accept_hello()
        self.client = self.successResultOf(d)
        self.client.subscribe("hq")
        [subscribe] = self.daemon.requests()
        self.daemon.answer([codec.REPLY, subscribe[1], {"hq": 1}])

    def reconnect(self) -> list[Any]:
        """Drop the connection, let the client reconnect; its resubscribe request."""
        self.daemon.drop()
        self.clock.advance(0.1)
        self.daemon.accept_hello()
        [subscribe] = self.daemon.requests()
        self.assertEqual(subscribe[2:], ["subscribe", [["hq"], None, {"conflate": False}]])
        return subscribe

    def test_messages_in_the_chunk_of_the_resubscribe_reply_are_kept(self) -> None:
        """Ticks that share a TCP segment with the resubscribe reply reach the user."""
        subscribe = self.reconnect()
        self.daemon.answer([codec.REPLY, subscribe[1], {"hq": 5}],
                           [codec.MESSAGE, "hq", "k", "a", 5],
                           [codec.MESSAGE, "hq", "k", "b", 6])
        self.daemon.answer([codec.MESSAGE, "hq", "k", "c", 7])
        self.assertEqual([m.seq for m in self.received], [5, 6, 7])
        [line] = logged(self.events, "reconnected to LTtx")
        self.assertIn("resubscribed to hq", line)

    def test_messages_before_the_last_resubscribe_reply_are_kept(self) -> None:
        """Channels subscribed with other passwords are resubscribed by separate
        requests; the messages that follow the first reply reach the user too."""
        self.client.subscribe("private", password="pw")
        [subscribe] = self.daemon.requests()
        self.daemon.answer([codec.REPLY, subscribe[1], {"private": 1}])
        self.daemon.drop()
        self.clock.advance(0.1)
        self.daemon.accept_hello()
        first, second = self.daemon.requests()
        self.daemon.answer([codec.REPLY, first[1], {"hq": 3}], [codec.MESSAGE, "hq", "k", "a", 3])
        self.daemon.answer([codec.REPLY, second[1], {"private": 2}],
                           [codec.MESSAGE, "private", "k", "b", 2])
        self.assertEqual([(m.channel, m.seq) for m in self.received], [("hq", 3), ("private", 2)])

    def test_calls_and_pushes_wait_for_the_resubscribe(self) -> None:
        """What was asked for during the outage leaves only once the channels are
        subscribed again: the pushes, in order, then the calls."""
        self.daemon.drop()
        got = self.client.get("x")
        for i in range(3):
            self.client.push("k", i, "hq")
        self.clock.advance(0.1)
        self.daemon.accept_hello()
        [subscribe] = self.daemon.requests()
        self.assertNoResult(got)
        self.daemon.answer([codec.REPLY, subscribe[1], {"hq": 1}])
        sent = self.daemon.requests()
        self.assertEqual(sent[:3], [[codec.PUBLISH, "hq", "k", i] for i in range(3)])
        self.assertEqual(sent[3][2:], ["get", ["x"]])
        self.daemon.answer([codec.REPLY, sent[3][1], [42]])
        self.assertEqual(self.successResultOf(got), 42)

    def test_forbidden_resubscribe_drops_the_channel_not_the_connection(self) -> None:
        """A token that lost a channel's right keeps its connection for everything else,
        logs one error line, and does not try that channel again."""
        subscribe = self.reconnect()
        self.daemon.answer([codec.ERROR, subscribe[1], "forbidden",
                            "the token 'x' may not subscribe 'hq'"])
        self.assertEqual(self.client.subscriptions, [])
        self.assertTrue(self.client.connected)
        self.assertEqual(len(logged(self.events, "could not resubscribe")), 1)
        d = self.client.ping()
        [ping] = self.daemon.requests()
        self.daemon.answer([codec.REPLY, ping[1], "pong"])
        self.assertEqual(self.successResultOf(d), "pong")
        self.clock.advance(60)
        self.assertEqual(len(self.daemon.connections), 2)

    def test_connection_lost_while_resubscribing_is_retried(self) -> None:
        """A connection lost before the resubscribe reply is one more failed attempt:
        the next one resubscribes."""
        self.reconnect()
        self.daemon.drop()
        self.assertFalse(self.client.connected)
        self.clock.advance(0.2)
        self.daemon.accept_hello()
        [subscribe] = self.daemon.requests()
        self.daemon.answer([codec.REPLY, subscribe[1], {"hq": 9}],
                           [codec.MESSAGE, "hq", "k", "z", 9])
        self.assertTrue(self.client.connected)
        self.assertEqual([m.seq for m in self.received], [9])
        self.assertEqual(len(logged(self.events, "cannot reconnect yet")), 1)


class RealDaemonResubscribeTests(SynchronousTestCase):
    """Reconnection against the real server protocol, in memory."""

    def test_refused_channel_is_dropped_the_others_resubscribed(self) -> None:
        """After a restart a channel taken with another password is dropped (one error
        line, no retry loop); the client's other channels get their messages."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        daemon = MemoryDaemon(MemoryReactorClock())
        received: list[Message] = []
        client = connect_client(self, daemon, on_message=received.append)
        client.subscribe("hq")
        client.subscribe("locked", password="mine")
        daemon.flush()
        daemon.drop_connections()
        publisher = connect_client(self, daemon)
        publisher.subscribe("locked", password="theirs")
        daemon.flush()
        daemon.clock.advance(0.1)
        daemon.flush()
        self.assertTrue(client.connected)
        self.assertEqual(client.subscriptions, ["hq"])
        [line] = logged(events, "could not resubscribe")
        self.assertIn("locked", line)
        publisher.push("k", "after", "hq")
        daemon.clock.advance(0)
        daemon.flush()
        self.assertEqual(received, [Message("hq", "k", "after", 1)])
        connections = daemon.connections_made
        daemon.clock.advance(60)
        self.assertEqual(daemon.connections_made, connections)


class CallOrderTests(SynchronousTestCase):
    def test_a_request_waits_behind_pushes_not_yet_written(self) -> None:
        """A call made while pushes wait in the client (the transport is full) is
        written after them, in the same write, once the transport takes more."""
        client, pump = connected_client(self)
        writes = recording_writes(client)
        client.pauseProducing()
        for i in range(3):
            client.push("k", i, "hq")
        d = client.call("ping")
        self.assertEqual(writes, [])
        client.resumeProducing()
        self.assertEqual(len(writes), 1)
        sent = frames_of(writes[0])
        self.assertEqual([f[0] for f in sent], [codec.PUBLISH] * 3 + [codec.REQUEST])
        self.assertEqual(sent[3][2], "ping")
        self.assertNoResult(d)
        pump.flush()
        self.assertEqual(self.successResultOf(d), "pong")


class ResumeTests(SynchronousTestCase):
    """Resubscription from the last seq received, and gap notices, against a daemon
    of protocol 2 played by the test."""

    EPOCH = 123456789

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.clock = MemoryReactorClock()
        self.daemon = ScriptedDaemon()
        self.received: list[Message] = []
        self.gaps: list[tuple[Any, ...]] = []
        d = AsyncClient.connect(self.clock, memory_settings(self.daemon), self.received.append)
        self.daemon.accept_hello()
        self.client = self.successResultOf(d)
        result = self.client.subscribe("hq", history=2, on_gap=lambda *a: self.gaps.append(a))
        [subscribe] = self.daemon.requests()
        self.assertEqual(subscribe[3], [["hq"], None, {"history": 2, "conflate": False}])
        self.daemon.answer(
            [codec.REPLY, subscribe[1],
             {"hq": {"epoch": self.EPOCH, "first": 1, "next": 9, "from": 7}}],
            [codec.MESSAGE, "hq", "k", "a", 7], [codec.MESSAGE, "hq", "k", "b", 8])
        self.assertEqual(self.successResultOf(result), {"hq": 9})

    def test_resubscribes_from_the_last_seq_with_the_epoch(self) -> None:
        """After a loss the client resubscribes with resume: [epoch, last seq]."""
        self.daemon.drop()
        self.clock.advance(0.1)
        self.daemon.accept_hello()
        [subscribe] = self.daemon.requests()
        self.assertEqual(subscribe[3], [["hq"], None, {
            "conflate": False, "resume": {"hq": [self.EPOCH, 8]}}])
        self.daemon.answer([codec.REPLY, subscribe[1],
                            {"hq": {"epoch": self.EPOCH, "first": 1, "next": 10, "from": 9}}],
                           [codec.MESSAGE, "hq", "k", "c", 9])
        self.assertEqual([m.seq for m in self.received], [7, 8, 9])
        self.assertEqual(self.client.gaps, 0)

    def test_a_batch_of_one_channel_and_a_mixed_batch_move_the_resume_point(self) -> None:
        """One read of one channel's messages (delivered as a whole batch) and one
        mixing in a channel not subscribed: the messages of hq alone reach the
        receiver, in order, and the resubscription resumes after the last."""
        self.daemon.answer([codec.MESSAGE, "hq", "k", "c", 9], [codec.MESSAGE, "hq", "k", "d", 10])
        self.daemon.answer([codec.MESSAGE, "hq", "k", "e", 11], [codec.MESSAGE, "zz", "k", "?", 1],
                           [codec.MESSAGE, "hq", "k", "f", 12])
        self.assertEqual([m.seq for m in self.received], [7, 8, 9, 10, 11, 12])
        self.daemon.drop()
        self.clock.advance(0.1)
        self.daemon.accept_hello()
        [subscribe] = self.daemon.requests()
        self.assertEqual(subscribe[3][2]["resume"], {"hq": [self.EPOCH, 12]})

    def test_gap_notice_is_logged_counted_and_called_back(self) -> None:
        """A gap notice between messages: on_gap in order, one log line, counted."""
        order: list[Any] = []
        self.client._subscriptions["hq"].on_gap = lambda *a: order.append(("gap", a))
        self.client._subscriptions["hq"].callback = lambda m: order.append(m.seq)
        self.daemon.answer([codec.MESSAGE, "hq", "k", "c", 9],
                           [codec.NOTICE, "gap", "hq: dropped",
                            {"channel": "hq", "first": 10, "last": 19, "epoch": self.EPOCH}],
                           [codec.MESSAGE, "hq", "k", "d", 20])
        self.assertEqual(order, [9, ("gap", ("hq", 10, 19)), 20])
        self.assertEqual((self.client.gaps, self.client.gaps_by_channel), (1, {"hq": 1}))
        [line] = logged(self.events, "gap on")
        self.assertIn("messages 10 to 19", line)
        # Resumed from after the gap's last message, not from before it.
        self.daemon.drop()
        self.clock.advance(0.1)
        self.daemon.accept_hello()
        [subscribe] = self.daemon.requests()
        self.assertEqual(subscribe[3][2]["resume"], {"hq": [self.EPOCH, 20]})
