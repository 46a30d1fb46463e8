"""
A channel reader of a connection that asked for MESSAGES frames at hello
(``batches``): exact frames on a StringTransport; shared joins, gaps,
conflation, merged channels, flow control; the daemon's protocol with and
without the option.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.factory import LTtxFactory
from lttx.server.reader import CHUNK, ChannelReader
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.channels import ChannelRegistry
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.batches import ALONE_FROM, BATCH_BYTES, MESSAGES, batch_messages

from ..common import TOKEN, frame, frames_of, server_protocol
from .test_reader import CountingTransport


def message(channel: str, key: Any, data: Any, seq: int) -> bytes:
    return frame([codec.MESSAGE, channel, key, data, seq])


def batch(channel: str, items: list[tuple[Any, Any, int]]) -> bytes:
    return frame([MESSAGES, channel, [x for item in items for x in item]])


def expand(payloads: list[Any]) -> list[Any]:
    """Payloads with each MESSAGES frame replaced by the MESSAGE frames it stands for."""
    out: list[Any] = []
    for payload in payloads:
        if payload[0] == MESSAGES:
            channel, flat = batch_messages(payload)
            out += [[codec.MESSAGE, channel, *flat[i:i + 3]] for i in range(0, len(flat), 3)]
        else:
            out.append(payload)
    return out


class Recording(CountingTransport):
    """Keeps each write's bytes object."""

    def __init__(self, pause_after: int = 0) -> None:
        super().__init__(pause_after)
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        super().write(data)


class BatchReaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = ChannelRegistry(history_bytes=10_000_000)

    def reader(self, batches: bool = True, pause_after: int = 0) -> ChannelReader:
        reader = ChannelReader(Recording(pause_after), self.registry)
        reader.batches = batches
        reader.batch_from = 2  # the mechanics, on short runs (the default: test_short_runs_...)
        return reader

    def publish(self, count: int, channel: str = "hq", first: int = 0) -> None:
        for i in range(first, first + count):
            self.registry.publish(channel, f"k{i % 2}", i)
        self.registry.flush()

    def test_caught_up_readers_share_one_batch_and_plain_ones_their_frames(self) -> None:
        """In one flush, two batch readers at the same seq are written the same
        bytes object, one MESSAGES frame holding exactly the flush's messages;
        a plain reader gets the MESSAGE frames; delivered counts messages."""
        readers = [self.reader(), self.reader(), self.reader(batches=False)]
        for reader in readers:
            self.registry.subscribe(reader, ["hq"])
        delivered = self.registry.delivered
        self.publish(3)
        expected = batch("hq", [(f"k{i % 2}", i, i + 1) for i in range(3)])
        self.assertEqual(readers[0].transport.chunks, [expected])
        self.assertIs(readers[0].transport.chunks[0], readers[1].transport.chunks[0])
        self.assertEqual(readers[2].transport.value(),
                         b"".join(message("hq", f"k{i % 2}", i, i + 1) for i in range(3)))
        self.assertEqual(self.registry.delivered - delivered, 9)
        self.assertEqual(readers[0].written, len(expected))
        self.assertIsNone(self.registry.batched)

    def test_short_runs_stay_message_frames_by_default(self) -> None:
        """With the daemon's default, a flush of batch_from - 1 messages goes
        as MESSAGE frames, one of batch_from messages as one MESSAGES frame."""
        reader = ChannelReader(Recording(), self.registry)
        reader.batches = True
        short = ChannelReader.batch_from - 1
        self.assertGreater(short, 1)
        self.registry.subscribe(reader, ["hq"])
        self.publish(short)
        self.assertEqual(reader.transport.chunks, [b"".join(
            message("hq", f"k{i % 2}", i, i + 1) for i in range(short))])
        self.publish(short + 1, first=short)
        self.assertEqual(reader.transport.chunks[1], batch(
            "hq", [(f"k{i % 2}", i, i + 1) for i in range(short, 2 * short + 1)]))

    def test_a_short_run_shared_by_several_subscribers_is_one_batch(self) -> None:
        """Two subscribers at the same seq: with the daemon's default, even two
        messages go as one MESSAGES frame, built once for both."""
        readers = [ChannelReader(Recording(), self.registry) for _ in range(2)]
        for reader in readers:
            reader.batches = True
            self.registry.subscribe(reader, ["hq"])
        self.publish(2)
        expected = batch("hq", [(f"k{i % 2}", i, i + 1) for i in range(2)])
        self.assertEqual(readers[0].transport.chunks, [expected])
        self.assertIs(readers[0].transport.chunks[0], readers[1].transport.chunks[0])

    def test_one_message_per_flush_is_a_message_frame(self) -> None:
        """A batch of one would not pay: a lone message keeps its MESSAGE frame."""
        reader = self.reader()
        self.registry.subscribe(reader, ["hq"])
        self.publish(1)
        self.assertEqual(reader.transport.value(), message("hq", "k0", 0, 1))

    def test_gap_notice_between_the_right_batches(self) -> None:
        """A paused reader whose log dropped what it had not read gets its batch
        of what it had read before, then the gap notice naming exactly the
        dropped seqs, then batches from the oldest retained message."""
        registry = ChannelRegistry(history_bytes=20 * 150)
        reader = ChannelReader(Recording(), registry)
        reader.batches = True
        reader.batch_from = 2
        epoch = registry.subscribe(reader, ["hq"])["hq"]["epoch"]
        for i in range(3):
            registry.publish("hq", "k", "x" * 70)
        registry.flush()
        reader.transport.producer.pauseProducing()
        for i in range(100):
            registry.publish("hq", "k", "x" * 70)
        registry.flush()
        first = registry.channel("hq").first_seq
        frames = frames_of(reader.transport.drain())
        self.assertEqual(frames[0], [MESSAGES, "hq", ["k", "x" * 70, 1, "k", "x" * 70, 2,
                                                      "k", "x" * 70, 3]])
        self.assertEqual(frames[1], [codec.NOTICE, "gap", frames[1][2],
                                     {"channel": "hq", "first": 4, "last": first - 1,
                                      "epoch": epoch}])
        self.assertEqual(frames[2][0], MESSAGES)
        self.assertEqual([m[4] for m in expand(frames[2:])], list(range(first, 104)))

    def test_conflated_backlog_is_one_batch_of_the_newest_per_key(self) -> None:
        """The newest message of each key, with their own (not consecutive) seqs."""
        reader = self.reader()
        self.registry.subscribe(reader, ["hq"], conflate=True)
        reader.transport.producer.pauseProducing()
        self.publish(300)
        self.assertEqual(reader.transport.drain(), batch("hq", [("k0", 298, 299),
                                                                ("k1", 299, 300)]))
        self.assertEqual(self.registry.status()["conflated_drops"], 298)

    def test_two_channels_keep_their_frames_in_arrival_order(self) -> None:
        """Merged reads of several channels stay MESSAGE frames, in arrival order."""
        reader = self.reader()
        self.registry.subscribe(reader, ["a", "b"])
        for i in range(6):
            self.registry.publish("ab"[i % 2], "k", i)
        self.registry.flush()
        self.assertEqual(frames_of(reader.transport.value()),
                         [[codec.MESSAGE, "ab"[i % 2], "k", i, i // 2 + 1] for i in range(6)])

    def test_a_paused_reader_resumes_in_bounded_batches(self) -> None:
        """A backlog of ~1 MB goes in writes of about CHUNK bytes as the transport
        takes them, each holding batches of at most about BATCH_BYTES, with
        every seq once and in order."""
        reader = self.reader(pause_after=CHUNK)
        self.registry.subscribe(reader, ["hq"])
        reader.transport.producer.pauseProducing()
        for i in range(3000):
            self.registry.publish("hq", i, "x" * 300)
        self.registry.flush()
        self.assertEqual(reader.transport.value(), b"")
        seqs: list[int] = []
        while len(seqs) < 3000:
            reader.transport.writes = 0
            payloads = frames_of(reader.transport.drain())
            self.assertLessEqual(reader.transport.writes, 2)
            self.assertEqual({p[0] for p in payloads}, {MESSAGES})
            seqs += [m[4] for m in expand(payloads)]
        self.assertEqual(seqs, list(range(1, 3001)))
        for chunk in reader.transport.chunks:
            self.assertLess(len(chunk), CHUNK + BATCH_BYTES + ALONE_FROM)


# An operation: ("pub", channel index, data size) / ("flush",) / ("drain",) / ("pause",)
_operations = st.lists(st.one_of(
    st.tuples(st.just("pub"), st.integers(0, 2), st.integers(0, 400)),
    st.tuples(st.just("flush")), st.tuples(st.just("drain")), st.tuples(st.just("pause")),
), max_size=150)


class BatchReaderPropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_operations, st.integers(2000, 20000), st.integers(200, 5000),
           st.sampled_from([["a"], ["a", "b", "c"]]), st.booleans())
    def test_order_seqs_and_gaps_as_without_batches(
            self, operations: list[tuple], history: int, pause_after: int,
            names: list[str], conflate: bool) -> None:
        """A batch reader (of one or three channels, conflating or not) beside a
        plain one, transports pausing at random: both get exactly the same
        messages and notices in the same order, each channel's seqs increasing,
        what is missing exactly what gap notices named (without conflation),
        and the delivered count is the messages written plus the notices."""
        registry = ChannelRegistry(history_bytes=history)
        readers = []
        for batches in (True, False):
            reader = ChannelReader(CountingTransport(pause_after=pause_after), registry)
            reader.batches = batches
            reader.batch_from = 2  # batches of every size
            registry.subscribe(reader, names, conflate=conflate)
            readers.append(reader)
        received = [b"", b""]
        sent = {name: 0 for name in names}
        n = 0
        for op in operations:
            if op[0] == "pub":
                name = names[op[1] % len(names)]
                registry.publish(name, f"k{n % 3}", [n, "x" * op[2]])
                sent[name] += 1
                n += 1
            elif op[0] == "flush":
                registry.flush()
            elif op[0] == "drain":
                received = [r + reader.transport.drain() for r, reader in zip(received, readers)]
            else:
                for reader in readers:
                    if not reader.paused:
                        reader.pauseProducing()
        registry.flush()
        for k, reader in enumerate(readers):
            reader.transport.pause_after = 0
            while reader.paused or reader.transport.value():
                received[k] += reader.transport.drain()
        batched, plain = (frames_of(r) for r in received)
        self.assertNotIn(MESSAGES, {f[0] for f in plain})
        frames = expand(batched)
        messages = [f for f in frames if f[0] == codec.MESSAGE]
        self.assertEqual(registry.delivered, sum(
            len(m) for m in ([f for f in frames if f[0] != MESSAGES],
                             [f for f in plain if f[0] != MESSAGES])))
        if not conflate:  # (a conflated backlog is per channel, not merged)
            arrivals = [m[3][0] for m in messages]
            self.assertEqual(arrivals, sorted(set(arrivals)))
        for name in names:
            seqs = [m[4] for m in messages if m[1] == name]
            self.assertEqual(seqs, sorted(set(seqs)))
            if not conflate:
                gaps = {s for f in frames if f[0] == codec.NOTICE and f[3]["channel"] == name
                        for s in range(f[3]["first"], f[3]["last"] + 1)}
                self.assertEqual(set(range(1, sent[name] + 1)) - set(seqs), gaps)


class ProtocolBatchTests(SynchronousTestCase):
    """The daemon's protocol: the hello option decides the frames."""

    def subscriber(self, factory: Any, options: dict[str, Any]) -> Any:
        proto, transport = server_protocol(authenticate=False, factory=factory)
        proto.dataReceived(frame([codec.REQUEST, 1, "hello", [TOKEN, options]]))
        proto.dataReceived(frame([codec.REQUEST, 2, "subscribe", [["hq"], None, {}]]))
        transport.clear()
        return transport

    def test_batches_only_for_a_client_that_asks(self) -> None:
        """Eight publishes in one read (the default batch_from): a client that
        said "batches": true at hello gets one MESSAGES frame, one that did
        not (or said something else than true) the MESSAGE frames of protocol 2."""
        factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN)))
        publisher, _ = server_protocol(factory=factory)
        asking = self.subscriber(factory, {"batches": True})
        plain = self.subscriber(factory, {})
        odd = self.subscriber(factory, {"batches": 1})
        publisher.dataReceived(b"".join(frame([codec.PUBLISH, "hq", f"k{i}", i])
                                        for i in range(8)))
        self.assertEqual(asking.value(), batch("hq", [(f"k{i}", i, i + 1) for i in range(8)]))
        old = b"".join(message("hq", f"k{i}", i, i + 1) for i in range(8))
        self.assertEqual(plain.value(), old)
        self.assertEqual(odd.value(), old)


class DocsExampleTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """The hex of docs/protocol.md's "Batches of messages" is what the
        Python client's hello and a batch reader write."""
        import os
        import re

        from lttx.client.settings import ConnectionSettings

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "docs", "protocol.md"), encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("### Batches of messages"):text.index("\n## Watch and mirror")]
        blocks = [bytes.fromhex(line.replace(" ", ""))
                  for block in re.findall(r"```\n(.*?)```", section, re.S)
                  for line in block.splitlines() if re.fullmatch(r"[0-9a-f ]+", line)]
        registry = ChannelRegistry()
        reader = ChannelReader(Recording(), registry)
        reader.batches = True
        reader.batch_from = 2  # the example's two messages
        registry.subscribe(reader, ["hq"])
        registry.publish("hq", "600000.SH", "10.23|10.24")
        registry.publish("hq", "600001.SH", "8.71|8.72")
        registry.flush()
        hello = ConnectionSettings("127.0.0.1", 1, token="LTtx").hello_args(batches=True)
        self.assertEqual(blocks, [frame([codec.REQUEST, 1, "hello", hello]),
                                  reader.transport.value()])
        self.assertEqual(frames_of(blocks[1]), [[MESSAGES, "hq", [
            "600000.SH", "10.23|10.24", 1, "600001.SH", "8.71|8.72", 2]]])
