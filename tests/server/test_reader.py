"""
The channel reader as a streaming producer over the channel logs, alone on a
StringTransport and behind the daemon's protocol: exact frames.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lttx.wire import codec
from lttx.state.auth import TokenAuthenticator
from lttx.state.channels import ChannelRegistry, ISubscriber
from lttx.state.store import MemoryStore
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.server.reader import CHUNK, ChannelReader

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
        """The peer catches up: resume the producer, take what it wrote."""
        if self.producer is not None:
            self.producer.resumeProducing()
        data = self.value()
        self.clear()
        return data


class ReaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = ChannelRegistry(history_bytes=10_000_000)
        self.transport = CountingTransport()
        self.reader = ChannelReader(self.transport, self.registry)

    def publish(self, count: int, channel: str = "hq", size: int = 10, key: Any = None) -> None:
        for i in range(count):
            self.registry.publish(channel, f"k{i % 3}" if key is None else key, "x" * size)
        self.registry.flush()

    def test_interfaces_and_registration(self) -> None:
        verifyObject(ISubscriber, self.reader)
        self.assertIs(self.transport.producer, self.reader)
        self.assertTrue(self.transport.streaming)

    def test_batch_is_one_write(self) -> None:
        """The messages of one flush are one transport.write."""
        self.registry.subscribe(self.reader, ["hq"])
        self.publish(50)
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual([m[4] for m in frames_of(self.transport.value())], list(range(1, 51)))

    def test_two_channels_in_arrival_order(self) -> None:
        """A reader of two channels gets their messages in the order they arrived."""
        self.registry.subscribe(self.reader, ["a", "b"])
        for i in range(6):
            self.registry.publish("ab"[i % 2], "k", i)
        self.registry.flush()
        self.assertEqual([(m[1], m[3]) for m in frames_of(self.transport.value())],
                         [("ab"[i % 2], i) for i in range(6)])

    def test_paused_reader_holds_nothing_and_resumes_from_its_position(self) -> None:
        """While paused nothing is written or copied; resumed, everything follows in order,
        in slices of about CHUNK bytes until the transport pauses again."""
        self.transport.pause_after = CHUNK
        self.registry.subscribe(self.reader, ["hq"])
        self.transport.producer.pauseProducing()
        self.publish(3000, size=300)  # ~1 MB
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.reader.positions["hq"].next, 1)
        seqs: list[int] = []
        while len(seqs) < 3000:
            self.transport.writes = 0
            seqs += [m[4] for m in frames_of(self.transport.drain())]
            self.assertLessEqual(self.transport.writes, 2)
        self.assertEqual(seqs, list(range(1, 3001)))

    def test_messages_dropped_before_reading_are_a_gap_notice(self) -> None:
        """A paused reader whose log dropped what it had not read gets a gap notice
        naming them, then reads on from the oldest retained message."""
        registry = ChannelRegistry(history_bytes=20 * 150)
        transport = CountingTransport()
        reader = ChannelReader(transport, registry)
        epoch = registry.subscribe(reader, ["hq"])["hq"]["epoch"]
        transport.producer.pauseProducing()
        for i in range(100):
            registry.publish("hq", "k", "x" * 70)
        registry.flush()
        first = registry.channel("hq").first_seq
        frames = frames_of(transport.drain())
        self.assertEqual(frames[0][:2], [codec.NOTICE, "gap"])
        self.assertEqual(frames[0][3], {"channel": "hq", "first": 1, "last": first - 1,
                                        "epoch": epoch})
        self.assertEqual([m[4] for m in frames[1:]], list(range(first, 101)))
        self.assertEqual(registry.status()["gaps"], 1)

    def test_readers_at_one_place_share_one_join_and_others_get_their_own(self) -> None:
        """In one flush, readers at the same seq are written the same bytes object
        (one join for all), exactly the frames of their messages; a reader that
        was behind gets its backlog from its own place, a paused conflating one
        the newest per key, and the delivered count counts every message."""
        written: list[list[bytes]] = []

        class Recording(CountingTransport):
            def __init__(self) -> None:
                super().__init__()
                self.chunks: list[bytes] = []
                written.append(self.chunks)

            def write(self, data: bytes) -> None:
                self.chunks.append(data)
                super().write(data)

        transports = [Recording() for _ in range(4)]
        readers = [ChannelReader(t, self.registry) for t in transports]
        for reader in readers[:3]:
            self.registry.subscribe(reader, ["hq"])
        self.registry.subscribe(readers[3], ["hq"], conflate=True)
        transports[2].producer.pauseProducing()
        transports[3].producer.pauseProducing()
        for i in range(3):
            self.registry.publish("hq", f"k{i % 2}", i)
        self.registry.flush()
        transports[3].producer.resumeProducing()  # conflating, lagging: newest per key
        self.assertEqual(transports[3].value(), message("hq", "k1", 1, 2)
                         + message("hq", "k0", 2, 3))
        delivered = self.registry.delivered
        for i in range(3, 6):
            self.registry.publish("hq", f"k{i % 2}", i)
        transports[2].producer.resumeProducing()  # behind: its backlog and the new ones
        self.assertEqual(transports[2].value(), b"".join(
            message("hq", f"k{i % 2}", i, i + 1) for i in range(6)))
        self.registry.flush()
        self.assertIsNone(self.registry.joined)
        new = b"".join(message("hq", f"k{i % 2}", i, i + 1) for i in range(3, 6))
        self.assertEqual(written[0][-1], new)
        self.assertIs(written[0][-1], written[1][-1])
        self.assertIs(written[0][-1], written[3][-1])
        self.assertEqual(len(written[2]), 1)  # nothing more for the one that caught up
        self.assertEqual(transports[0].value(), b"".join(
            message("hq", f"k{i % 2}", i, i + 1) for i in range(6)))
        self.assertEqual(self.registry.delivered - delivered, 3 * 3 + 6)

    def test_a_reader_that_rewrites_its_frames_is_not_given_a_shared_join(self) -> None:
        """A subclass with its own _write (the legacy port's reader) gets every
        frame through it, next to plain readers sharing a join."""
        rewritten: list[bytes] = []

        class Rewriting(ChannelReader):
            def _write(self, frames: list[bytes]) -> None:
                rewritten.extend(frames)

        plain = ChannelReader(CountingTransport(), self.registry)
        rewriting = Rewriting(CountingTransport(), self.registry)
        self.registry.subscribe(plain, ["hq"])
        self.registry.subscribe(rewriting, ["hq"])
        self.publish(3)
        self.assertEqual(rewritten, [message("hq", f"k{i}", "x" * 10, i + 1) for i in range(3)])
        self.assertEqual(plain.transport.value(), b"".join(rewritten))

    def test_conflating_backlog_is_the_newest_per_key(self) -> None:
        """A paused conflating reader, resumed, gets the newest message of each key,
        in seq order; a live one gets every message."""
        self.registry.subscribe(self.reader, ["hq"], conflate=True)
        self.publish(2)
        self.assertEqual([m[4] for m in frames_of(self.transport.value())], [1, 2])
        self.transport.clear()
        self.transport.producer.pauseProducing()
        self.publish(300)
        self.assertEqual([(m[2], m[4]) for m in frames_of(self.transport.drain())],
                         [("k0", 300), ("k1", 301), ("k2", 302)])
        self.assertEqual(self.registry.status()["conflated_drops"], 297)

    def test_stop_producing_stops_writing(self) -> None:
        self.registry.subscribe(self.reader, ["hq"])
        self.reader.stopProducing()
        self.publish(3)
        self.assertEqual(self.transport.value(), b"")


class ProtocolChannelTests(SynchronousTestCase):
    """Subscribe, publish and slow subscribers through the daemon's protocol."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = LTtxFactory(ServerState(
            MemoryStore(), TokenAuthenticator(TOKEN), clock=self.clock,
            channels=ChannelRegistry(history_bytes=64 * 1024)))
        self.pub, self.pub_t = server_protocol(factory=self.factory)

    def subscriber(self, *args: Any, request_id: int = 1) -> tuple[Any, StringTransport, Any]:
        proto, transport = server_protocol(factory=self.factory)
        proto.dataReceived(frame([codec.REQUEST, request_id, "subscribe", list(args)]))
        # The reply; what follows it (history) stays in the transport.
        written = transport.value()
        size = 4 + int.from_bytes(written[:4], "big")
        transport.clear()
        transport.write(written[size:])
        return proto, transport, frames_of(written[:size])[0]

    def epoch(self, channel: str) -> int:
        return self.factory.state.channels.channel(channel).epoch

    def test_subscribe_reply_and_messages(self) -> None:
        """The reply gives each channel's epoch, first, next seq and starting point;
        messages come as exact frames."""
        _, t, reply = self.subscriber("hq@orders", None, {"conflate": False})
        self.assertEqual(reply, [codec.REPLY, 1, {
            "hq": {"epoch": self.epoch("hq"), "first": 1, "next": 1, "from": 1},
            "orders": {"epoch": self.epoch("orders"), "first": 1, "next": 1, "from": 1}}])
        data = frame([codec.PUBLISH, "hq", "600000.SH", "10.23|10.24"])
        # Split at awkward points: the publisher's frames arrive in pieces.
        stream = data * 3
        for piece in (stream[:3], stream[3:25], stream[25:]):
            self.pub.dataReceived(piece)
        self.assertEqual(t.value(), b"".join(
            message("hq", "600000.SH", "10.23|10.24", s) for s in (1, 2, 3)))
        self.assertEqual(self.pub_t.value(), b"")  # a publish has no reply

    def test_acknowledged_publish_returns_consecutive_seqs(self) -> None:
        """The publish request replies with the seq once the message is in the log."""
        _, t, _ = self.subscriber("hq")
        for i in range(3):
            self.pub.dataReceived(frame([codec.REQUEST, 10 + i, "publish", ["hq", "k", i]]))
        self.assertEqual(frames_of(self.pub_t.value()),
                         [[codec.REPLY, 10 + i, i + 1] for i in range(3)])
        self.assertEqual([m[3:] for m in frames_of(t.value())], [[i, i + 1] for i in range(3)])
        self.pub_t.clear()
        self.pub.dataReceived(frame([codec.REQUEST, 20, "publish", ["", "k", 1]]))
        self.assertEqual(frames_of(self.pub_t.value())[0][:3], [codec.ERROR, 20, "bad_request"])

    def test_history_since_and_last_values(self) -> None:
        """history=N, since=S and last_values give exactly the past messages, then live ones."""
        for i in range(10):
            self.pub.dataReceived(frame([codec.PUBLISH, "hq", f"k{i % 2}", i]))
        _, t, reply = self.subscriber("hq", None, {"history": 3})
        self.assertEqual(reply[2]["hq"]["from"], 8)
        _, t2, _ = self.subscriber("hq", None, {"since": 5})
        _, t3, _ = self.subscriber("hq", None, {"last_values": True})
        self.pub.dataReceived(frame([codec.PUBLISH, "hq", "k0", 10]))
        self.assertEqual([m[4] for m in frames_of(t.value())], [8, 9, 10, 11])
        self.assertEqual([m[4] for m in frames_of(t2.value())], [6, 7, 8, 9, 10, 11])
        self.assertEqual([(m[2], m[4]) for m in frames_of(t3.value())],
                         [("k0", 9), ("k1", 10), ("k0", 11)])

    def test_resume_of_another_epoch_is_a_gap(self) -> None:
        """Resuming from another epoch: a gap notice naming it, then the whole log."""
        self.pub.dataReceived(frame([codec.PUBLISH, "hq", "k", 1]))
        _, t, _ = self.subscriber("hq", None, {"resume": {"hq": [12345, 40]}})
        frames = frames_of(t.value())
        self.assertEqual(frames[0][:2], [codec.NOTICE, "gap"])
        self.assertEqual(frames[0][3], {"channel": "hq", "first": 41, "last": None,
                                        "epoch": self.epoch("hq"), "previous_epoch": 12345})
        self.assertEqual([m[4] for m in frames[1:]], [1])
        _, t2, _ = self.subscriber("hq", None, {"resume": {"hq": [self.epoch("hq"), 0]}})
        self.assertEqual([m[4] for m in frames_of(t2.value())], [1])

    def test_refused_publish_is_a_notice(self) -> None:
        """A publish with a bad key gets a NOTICE, and the connection goes on."""
        self.pub.dataReceived(frame([codec.PUBLISH, "hq", {"k": 1}, 1]))
        self.assertEqual(frames_of(self.pub_t.value()), [
            [codec.NOTICE, "bad_request",
             "a message key must be a str, bytes, number, bool or nil, not dict"]])
        self.pub_t.clear()
        self.pub.dataReceived(frame([codec.REQUEST, 2, "ping", []]))
        self.assertEqual(frames_of(self.pub_t.value()), [[codec.REPLY, 2, "pong"]])

    def test_bad_options_are_bad_requests(self) -> None:
        for options in ({"history": -1}, {"since": "x"}, {"history": 1, "since": 1},
                        {"nope": 1}, {"resume": {"hq": [1]}}):
            _, t, reply = self.subscriber("hq", None, options)
            self.assertEqual(reply[:3], [codec.ERROR, 1, "bad_request"], options)

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

    def test_paused_subscriber_is_not_cut_off_and_others_go_on(self) -> None:
        """A subscriber whose transport is paused stays connected and holds nothing;
        resumed, it reads on, with a gap notice for what the log dropped meanwhile.
        The fast one and the publisher see nothing of it."""
        slow, slow_t, _ = self.subscriber("hq")
        fast, fast_t, _ = self.subscriber("hq")
        slow_t.producer.pauseProducing()
        publish = frame([codec.PUBLISH, "hq", "600000.SH", "x" * 100])
        for _ in range(1000):  # 1000 * ~190 bytes > 64 KiB of history
            self.pub.dataReceived(publish)
        self.assertEqual(slow_t.value(), b"")
        self.assertFalse(slow_t.disconnecting)
        self.assertEqual([m[4] for m in frames_of(fast_t.value())], list(range(1, 1001)))
        self.assertEqual(self.pub_t.value(), b"")
        channels = self.factory.state.status()["channels"]
        self.assertEqual(channels["channels"]["hq"]["slowest_behind"], 1000)
        slow_t.producer.resumeProducing()
        frames = frames_of(slow_t.value())
        first = self.factory.state.channels.channel("hq").first_seq
        self.assertEqual(frames[0][3]["last"], first - 1)
        self.assertEqual([m[4] for m in frames[1:]], list(range(first, 1001)))

    def test_connection_lost_leaves_no_trace(self) -> None:
        """A subscriber whose connection closes is gone, and so is its idle empty channel."""
        proto, t, _ = self.subscriber("hq", "pw")
        proto.connectionLost(None)
        self.assertEqual(self.factory.state.status()["channels"]["channels"], {})
        self.subscriber("hq", "another")  # the password went with it


# An operation: ("pub", channel index, data size) / ("flush",) / ("drain",) / ("pause",)
_operations = st.lists(st.one_of(
    st.tuples(st.just("pub"), st.integers(0, 2), st.integers(0, 400)),
    st.tuples(st.just("flush")), st.tuples(st.just("drain")), st.tuples(st.just("pause")),
), max_size=150)


class ReaderPropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_operations, st.integers(2000, 20000), st.integers(200, 5000))
    def test_arrival_order_and_exact_gaps(self, operations: list[tuple], history: int,
                                          pause_after: int) -> None:
        """A reader of three channels over small logs, its transport pausing at random:
        it gets every channel's messages with increasing seqs, all channels'
        messages in the order they were published, and what it did not get is
        exactly what gap notices named."""
        registry = ChannelRegistry(history_bytes=history)
        transport = CountingTransport(pause_after=pause_after)
        reader = ChannelReader(transport, registry)
        names = ["a", "b", "c"]
        registry.subscribe(reader, names)
        received = b""
        sent = {name: 0 for name in names}
        n = 0
        for op in operations:
            if op[0] == "pub":
                registry.publish(names[op[1]], "k", [n, "x" * op[2]])
                sent[names[op[1]]] += 1
                n += 1
            elif op[0] == "flush":
                registry.flush()
            elif op[0] == "drain":
                received += transport.drain()
            elif reader.positions and not reader.paused:
                reader.pauseProducing()
        registry.flush()
        transport.pause_after = 0
        while reader.paused or transport.value():
            received += transport.drain()
        frames = frames_of(received)
        messages = [f for f in frames if f[0] == codec.MESSAGE]
        arrivals = [m[3][0] for m in messages]
        self.assertEqual(arrivals, sorted(set(arrivals)))
        for name in names:
            seqs = [m[4] for m in messages if m[1] == name]
            self.assertEqual(seqs, sorted(set(seqs)))
            gaps = {s for f in frames if f[0] == codec.NOTICE and f[3]["channel"] == name
                    for s in range(f[3]["first"], f[3]["last"] + 1)}
            self.assertEqual(set(range(1, sent[name] + 1)) - set(seqs), gaps)
