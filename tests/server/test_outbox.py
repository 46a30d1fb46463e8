"""
The subscriber outbox as a streaming producer, alone on a StringTransport and
behind the daemon's protocol.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lttx.wire import codec
from lttx.state.auth import TokenAuthenticator
from lttx.state.channels import ISubscriber
from lttx.state.store import MemoryStore
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.server.outbox import CHUNK, Outbox

from ..common import TOKEN, frame, frames_of, server_protocol


def message(channel: str, key: Any, data: Any, seq: int) -> bytes:
    return frame([codec.MESSAGE, channel, key, data, seq])


class CountingTransport(StringTransport):
    """Counts writes; optionally pauses its producer once ``pause_after`` bytes sit
    unread, as a TCP transport does when its buffer fills."""

    def __init__(self, pause_after: int = 0) -> None:
        super().__init__()
        self.writes = 0
        self.pause_after = pause_after

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes += 1
        if self.pause_after and len(self.value()) > self.pause_after and self.producer:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The reader catches up: take what was written, resume the producer."""
        data = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


class OutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = CountingTransport()
        self.overflows: list[str] = []
        self.closes: list[str] = []
        self.outbox = Outbox(self.transport, 10_000, self.overflows.append, self.closes.append)

    def test_interfaces_and_registration(self) -> None:
        """The outbox is an ISubscriber and registers itself as a streaming producer."""
        verifyObject(ISubscriber, self.outbox)
        self.assertIs(self.transport.producer, self.outbox)
        self.assertTrue(self.transport.streaming)

    def test_batch_is_one_write(self) -> None:
        """Fifty frames delivered, then one flush: one write holding them all, in order."""
        frames = [message("hq", f"k{i}", i, i + 1) for i in range(50)]
        flags = [self.outbox.deliver(f, None) for f in frames]
        self.assertEqual(flags, [True] + [False] * 49)  # only the first asks for a flush
        self.assertEqual(self.transport.value(), b"")
        self.outbox.flush()
        self.assertEqual((self.transport.writes, self.transport.value()), (1, b"".join(frames)))

    def test_paused_queue_grows_to_the_bound_then_cuts_off(self) -> None:
        """While paused nothing is written; past the bound: one overflow, queue dropped."""
        self.outbox.pauseProducing()
        f = message("hq", "k", "x" * 80, 1)
        count = 0
        while not self.overflows:
            self.outbox.deliver(f, None)
            self.outbox.flush()
            count += 1
            self.assertLessEqual(self.outbox.queued_bytes, 10_000)
        self.assertEqual(count, 10_000 // len(f) + 1)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.overflows), 1)
        self.assertIn("10000 bytes", self.overflows[0])
        self.assertEqual(self.outbox.queued_bytes, 0)
        self.outbox.deliver(f, None)  # after the overflow nothing more is queued
        self.assertEqual(self.outbox.queued_bytes, 0)

    def test_resume_writes_the_backlog_in_order(self) -> None:
        """After a pause the queued frames are written on resume, in order."""
        self.outbox.pauseProducing()
        frames = [message("hq", i, i, i + 1) for i in range(20)]
        for f in frames:
            self.outbox.deliver(f, None)
        self.outbox.flush()
        self.assertEqual(self.transport.value(), b"")
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"".join(frames))

    def test_large_backlog_written_in_chunks_until_the_transport_pauses(self) -> None:
        """A backlog of several chunks is written a chunk at a time, stopping when the
        transport pauses again; everything arrives, once, in order."""
        transport = CountingTransport(pause_after=CHUNK)
        outbox = Outbox(transport, 100 * CHUNK, self.overflows.append, self.closes.append)
        outbox.pauseProducing()
        frames = [message("hq", i, "x" * 1000, i + 1) for i in range(2000)]
        for i, f in enumerate(frames):
            outbox.deliver(f, ("hq", i % 7) if i % 2 else None)  # some conflating, distinct
        received = b""
        transport.producer.resumeProducing()
        rounds = 0
        while outbox.queued_bytes or transport.value():
            rounds += 1
            self.assertLessEqual(len(transport.value()), 2 * CHUNK + 1100)
            received += transport.drain()
        self.assertGreater(rounds, 3)
        self.assertEqual(self.overflows, [])
        # Conflated odd frames keep only the newest per key; even ones all arrive.
        got = [m[4] for m in frames_of(received)]
        self.assertEqual(got, sorted(got))
        self.assertEqual([s for s in got if s % 2 == 1], list(range(1, 2001, 2)))
        self.assertEqual(len([s for s in got if s % 2 == 0]), 7)

    def test_conflating_queue_holds_one_frame_per_key(self) -> None:
        """While paused, a newer frame replaces the queued one of its key; on resume the
        newest of each key arrives, in seq order, and the drops are counted."""
        self.outbox.pauseProducing()
        seq = 0
        latest = {}
        for round_ in range(100):
            for key in ("600000.SH", "000001.SZ", "300750.SZ"):
                seq += 1
                latest[key] = message("hq", key, round_, seq)
                self.outbox.deliver(latest[key], ("hq", key))
        self.assertEqual(self.outbox.queued_bytes, sum(len(f) for f in latest.values()))
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"".join(latest.values()))
        self.assertEqual(self.outbox.conflated_drops, 297)

    def test_conflating_subscriber_is_never_cut_off(self) -> None:
        """Conflated frames far past the bound in total never trigger the cut-off."""
        self.outbox.pauseProducing()
        for i in range(5000):
            self.outbox.deliver(message("hq", i % 50, "x" * 100, i + 1), ("hq", i % 50))
        self.assertEqual(self.overflows, [])
        self.assertLess(self.outbox.queued_bytes, 50 * 200)

    def test_conflating_subscriber_with_ever_new_keys_is_bounded(self) -> None:
        """Keys that never repeat conflate nothing: past 4x the bound, the subscriber
        is cut off like any other, and the daemon's memory stays bounded."""
        from lttx.server.outbox import CONFLATED_BOUND

        self.outbox.pauseProducing()
        size = len(message("hq", 0, "x" * 100, 1))
        count = CONFLATED_BOUND * self.outbox.limit // size + 10
        for i in range(count):
            self.outbox.deliver(message("hq", i, "x" * 100, i + 1), ("hq", i))
        self.assertEqual(self.outbox.queued_bytes, 0)
        self.outbox.flush()
        self.assertEqual(len(self.overflows), 1)
        self.assertIn("conflated messages with distinct keys", self.overflows[0])

    def test_plain_frames_after_conflated_ones_keep_order(self) -> None:
        """A mix of plain and conflated frames comes out in delivery order."""
        self.outbox.pauseProducing()
        a1 = message("hq", "a", 1, 1)
        p = message("orders", "o", "buy", 1)
        a2 = message("hq", "a", 2, 2)
        self.outbox.deliver(a1, ("hq", "a"))
        self.outbox.deliver(p, None)
        self.outbox.deliver(a2, ("hq", "a"))
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), p + a2)

    def test_stop_producing_drops_the_queue(self) -> None:
        """When the transport stops the producer, queued frames are let go."""
        self.outbox.pauseProducing()
        self.outbox.deliver(message("hq", "k", 1, 1), None)
        self.outbox.stopProducing()
        self.assertEqual(self.outbox.queued_bytes, 0)
        self.assertFalse(self.outbox.deliver(message("hq", "k", 2, 2), None))


class ProtocolChannelTests(SynchronousTestCase):
    """Subscribe, publish and the cut-off through the daemon's protocol."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN),
                                   subscriber_buffer=4096, clock=self.clock))
        self.pub, self.pub_t = server_protocol(factory=self.factory)

    def subscriber(self, *args: Any, request_id: int = 1) -> tuple[Any, StringTransport, Any]:
        proto, transport = server_protocol(factory=self.factory)
        proto.dataReceived(frame([codec.REQUEST, request_id, "subscribe", list(args)]))
        reply = frames_of(transport.value())
        transport.clear()
        return proto, transport, reply[0]

    def test_subscribe_reply_and_messages(self) -> None:
        """The reply gives each channel's next seq; messages come as exact frames."""
        _, t, reply = self.subscriber("hq@orders", None, {"conflate": False})
        self.assertEqual(reply, [codec.REPLY, 1, {"hq": 1, "orders": 1}])
        data = frame([codec.PUBLISH, "hq", "600000.SH", "10.23|10.24"])
        # Split at awkward points: the publisher's frames arrive in pieces.
        stream = data * 3
        for piece in (stream[:3], stream[3:25], stream[25:]):
            self.pub.dataReceived(piece)
        self.assertEqual(t.value(), b"".join(
            message("hq", "600000.SH", "10.23|10.24", s) for s in (1, 2, 3)))
        self.assertEqual(self.pub_t.value(), b"")  # a publish has no reply

    def test_refused_publish_is_a_notice(self) -> None:
        """A publish with a bad key gets a NOTICE, and the connection goes on."""
        self.pub.dataReceived(frame([codec.PUBLISH, "hq", {"k": 1}, 1]))
        self.assertEqual(frames_of(self.pub_t.value()), [
            [codec.NOTICE, "bad_request",
             "a message key must be a str, bytes, number, bool or nil, not dict"]])
        self.pub_t.clear()
        self.pub.dataReceived(frame([codec.REQUEST, 2, "ping", []]))
        self.assertEqual(frames_of(self.pub_t.value()), [[codec.REPLY, 2, "pong"]])

    def test_wrong_password_is_an_auth_error(self) -> None:
        """A wrong channel password is an 'auth' error frame; the connection stays."""
        self.subscriber("private", "pw")
        proto, t, reply = self.subscriber("private", "nope")
        self.assertEqual(reply, [codec.ERROR, 1, "auth", "wrong password for channel 'private'"])
        self.assertFalse(t.disconnecting)

    def test_unsubscribe(self) -> None:
        """unsubscribe replies with the channels left; no more of their messages come."""
        proto, t, _ = self.subscriber("a@b")
        proto.dataReceived(frame([codec.REQUEST, 2, "unsubscribe", [["a", "zzz"]]]))
        self.assertEqual(frames_of(t.value()), [[codec.REPLY, 2, ["a"]]])
        t.clear()
        self.pub.dataReceived(frame([codec.PUBLISH, "a", "k", 1]) +
                              frame([codec.PUBLISH, "b", "k", 2]))
        self.assertEqual(t.value(), message("b", "k", 2, 1))

    def test_paused_subscriber_is_cut_off_and_others_go_on(self) -> None:
        """A subscriber whose transport is paused is cut off past the bound with a
        slow_subscriber notice; the fast one and the publisher see nothing of it."""
        slow, slow_t, _ = self.subscriber("hq")
        fast, fast_t, _ = self.subscriber("hq")
        slow_t.producer.pauseProducing()
        publish = frame([codec.PUBLISH, "hq", "600000.SH", "x" * 100])
        for _ in range(60):  # 60 * ~130 bytes > 4096
            self.pub.dataReceived(publish)
        notices = frames_of(slow_t.value())
        self.assertEqual(len(notices), 1)
        self.assertEqual(notices[0][:2], [codec.NOTICE, "slow_subscriber"])
        self.assertTrue(slow_t.disconnecting)
        self.assertEqual([m[4] for m in frames_of(fast_t.value())], list(range(1, 61)))
        self.assertEqual(self.pub_t.value(), b"")
        channels = self.factory.state.status()["channels"]
        self.assertEqual(channels["slow_subscribers_cut_off"], 1)
        self.assertEqual(channels["channels"]["hq"]["subscribers"], 1)
        # It does not read its notice either: aborted after the grace period.
        self.clock.advance(5)
        self.assertTrue(slow_t.disconnected)

    def test_conflating_paused_subscriber_gets_latest_per_key(self) -> None:
        """A paused conflating subscriber is never cut off and, resumed, gets the newest
        message of each key."""
        proto, t, _ = self.subscriber("hq", None, {"conflate": True})
        t.producer.pauseProducing()
        for i in range(300):
            self.pub.dataReceived(frame([codec.PUBLISH, "hq", f"k{i % 3}", "x" * 100 + str(i)]))
        self.assertFalse(t.disconnecting)
        t.producer.resumeProducing()
        self.assertEqual(frames_of(t.value()), [
            [codec.MESSAGE, "hq", f"k{i % 3}", "x" * 100 + str(i), i + 1] for i in (297, 298, 299)])

    def test_connection_lost_leaves_no_trace(self) -> None:
        """A subscriber whose connection closes is gone from the registry."""
        proto, t, _ = self.subscriber("hq", "pw")
        proto.connectionLost(None)
        self.assertEqual(self.factory.state.status()["channels"]["channels"], {})
        self.subscriber("hq", "another")  # the password went with it
