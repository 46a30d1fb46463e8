"""
The shared channel registry and its stream follower on StringTransports, no
Redis: the exact commands they write (one APPEND per channel per flush, OPEN,
XREAD, XRANGE, CLIENT UNBLOCK) and what subscribers get from the replies.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx import LTtxError, Unavailable
from lttx.engines.redis import channels as channels_module
from lttx.engines.redis.channels import SharedChannelRegistry
from lttx.engines.redis.follower import StreamFollower
from lttx.engines.redis.resp import RedisAddress, RedisClient, RedisProtocol, encode_command
from lttx.engines.redis.streams import APPEND, OPEN
from lttx.wire import codec

from ..state.test_channels import ListSubscriber

HQ_KEYS = [b"p:s:hq", b"p:m:hq", b"p:v:hq", b"p:w:hq"]
XREAD = ["XREAD", "COUNT", 1000, "BLOCK", 2000, "STREAMS"]


def resp(value: Any) -> bytes:
    """A RESP2 reply."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)


def encoded(channel: str, key: object, data: object) -> bytes:
    return msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)


def entry(seq: int, key: object, data: object, channel: str = "hq") -> list[Any]:
    return [b"0-%d" % seq, [b"m", encoded(channel, key, data)]]


def connected(reactor: MemoryReactorClock, name: str) -> tuple[RedisClient, StringTransport]:
    client = RedisClient(reactor, RedisAddress(), name=name)
    protocol, transport = RedisProtocol(), StringTransport()
    protocol.makeConnection(transport)
    client.protocol = protocol
    return client, transport


class RegistryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(channels_module, "new_epoch", lambda: 77)
        self.build()

    def build(self) -> None:
        """A registry and its follower on StringTransports, the follower ready."""
        self.clock = MemoryReactorClock()
        self.registry = SharedChannelRegistry(lambda: 0.0, "p:", b"D" * 16, history_bytes=1000,
                                              last_values_limit=16)
        self.commands, self.ct = connected(self.clock, "redis")
        self.reading, self.rt = connected(self.clock, "redis streams")
        self.follower = StreamFollower(self.reading, self.commands, self.registry.stream_key,
                                       self.registry.entries_read, self.registry.flush,
                                       self.registry.resync, self.clock.callLater)
        self.registry.attach(self.commands, self.follower)
        self.follower.ready()
        self.assertEqual(self.take(self.rt), encode_command(["CLIENT", "ID"]))
        self.answer(self.reading, 9)

    def reconnect(self) -> None:
        """The follower's connection lost and made again."""
        protocol, self.rt = RedisProtocol(), StringTransport()
        protocol.makeConnection(self.rt)
        self.reading.protocol = protocol
        self.follower.ready()

    def take(self, transport: StringTransport) -> bytes:
        value = transport.value()
        transport.clear()
        return value

    def answer(self, client: RedisClient, *replies: Any) -> None:
        assert client.protocol is not None
        client.protocol.dataReceived(b"".join(resp(r) for r in replies))

    def open_hq(self, subscriber: ListSubscriber, last: int = 5, first: int = 1,
                **options: Any) -> Any:
        d = self.registry.subscribe(subscriber, ["hq"], **options)
        self.assertEqual(self.take(self.ct), encode_command(
            ["EVALSHA", OPEN.sha, 4, *HQ_KEYS, 77, "", ""]))
        self.answer(self.commands, [b"77", b"0-%d" % last, b"0-%d" % first, last - first + 1])
        return d


class PublishTests(RegistryTestCase):
    def test_one_append_per_channel_per_flush(self) -> None:
        """Messages wait for the flush; then one APPEND per channel, in one write,
        with the MAXLEN of --channel-history at the batch's message size."""
        self.registry.publish("hq", "a", 1, encoded("hq", "a", 1))
        self.registry.publish("other", "b", 2)
        self.registry.publish("hq", "c", 3)
        self.assertEqual(self.ct.value(), b"")
        self.registry.flush()
        hq = [encoded("hq", k, v) for k, v in (("a", 1), ("c", 3))]
        other = encoded("other", "b", 2)
        self.assertEqual(self.ct.value(), encode_command(
            ["EVALSHA", APPEND.sha, 4, *HQ_KEYS, 77, 1000 // (len(hq[0]) + 64), 16,
             msgpack.packb("a"), hq[0], msgpack.packb("c"), hq[1]]) + encode_command(
            ["EVALSHA", APPEND.sha, 4, b"p:s:other", b"p:m:other", b"p:v:other", b"p:w:other",
             77, 1000 // (len(other) + 64), 16, msgpack.packb("b"), other]))
        # Nothing is delivered from the publisher: it comes back from the stream.
        self.assertEqual(self.rt.value(), b"")

    def test_acknowledged_publish_gets_its_seq(self) -> None:
        """publish waits for the APPEND: each message's seq is the batch's first plus its place."""
        self.registry.publish("hq", "x", 0)
        first = self.registry.publish_acknowledged("hq", "a", 1)
        second = self.registry.publish_acknowledged("hq", "b", 2)
        self.registry.flush()
        self.assertNoResult(first)
        self.answer(self.commands, [b"77", b"0-41"])
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (42, 43))
        self.assertEqual(self.registry.status()["redis"]["appended"], 3)

    def test_refused_append_fails_the_publish_and_counts_the_pushes(self) -> None:
        self.registry.publish("hq", "x", 0)
        acked = self.registry.publish_acknowledged("hq", "a", 1)
        self.registry.flush()
        self.commands.protocol.dataReceived(b"-OOM command not allowed\r\n")  # type: ignore
        self.failureResultOf(acked, Unavailable)
        self.assertEqual(self.registry.status()["redis"]["dropped_redis_down"], 1)

    def test_redis_down(self) -> None:
        """No connection: pushes dropped and counted, an acknowledged publish fails."""
        self.commands.protocol = None
        self.registry.publish("hq", "k", 1)
        acked = self.registry.publish_acknowledged("hq", "k", 2)
        self.registry.flush()
        self.assertIn("Redis", self.failureResultOf(acked, Unavailable).value.message)
        self.assertEqual(self.registry.status()["redis"]["dropped_redis_down"], 1)

    def test_bad_publishes_refused_at_once(self) -> None:
        from lttx import BadRequest
        self.assertRaises(BadRequest, self.registry.publish, "a@b", "k", 1)
        self.assertRaises(BadRequest, self.registry.publish, "hq", ["not", "hashable"], 1)
        self.registry.flush()
        self.assertEqual(self.ct.value(), b"")


class SubscribeTests(RegistryTestCase):
    def test_reply_after_open_from_the_stream_position(self) -> None:
        """The reply waits for OPEN; its "from" is where the follower reads from,
        so what is appended after it arrives."""
        subscriber = ListSubscriber()
        d = self.open_hq(subscriber)
        self.assertEqual(self.successResultOf(d),
                         {"hq": {"epoch": 77, "first": 1, "next": 6, "from": 6}})
        self.assertEqual(self.take(self.rt), encode_command([*XREAD, b"p:s:hq", b"0-5"]))
        self.answer(self.reading, [[b"p:s:hq", [entry(6, "k", 1), entry(7, "k", [2])]]])
        self.assertEqual(subscriber.messages(), [[3, "hq", "k", 1, 6], [3, "hq", "k", [2], 7]])
        self.assertEqual(self.take(self.rt), encode_command([*XREAD, b"p:s:hq", b"0-7"]))

    def test_since_reads_the_rest_from_the_stream(self) -> None:
        """since=2: messages 3 to 5 from XRANGE (3 was trimmed: a gap notice),
        then the local log."""
        subscriber = ListSubscriber()
        d = self.open_hq(subscriber, since=2, epoch=77)
        self.assertEqual(self.take(self.ct), encode_command(
            ["XRANGE", b"p:s:hq", b"0-3", b"0-5", "COUNT", 3]))
        self.assertNoResult(d)
        self.answer(self.commands, [entry(4, "k", 4), entry(5, "k", 5)])
        self.assertEqual(self.successResultOf(d)["hq"]["from"], 3)
        self.answer(self.reading, [[b"p:s:hq", [entry(6, "k", 6)]]])
        frames = subscriber.messages()
        self.assertEqual(frames[0][:2], [4, "gap"])
        self.assertEqual((frames[0][3]["first"], frames[0][3]["last"]), (3, 3))
        self.assertEqual([f[4] for f in frames[1:]], [4, 5, 6])

    def test_history_reads_backwards(self) -> None:
        subscriber = ListSubscriber()
        d = self.open_hq(subscriber, history=2)
        self.assertEqual(self.take(self.ct), encode_command(
            ["XREVRANGE", b"p:s:hq", b"0-5", b"0-4", "COUNT", 2]))
        self.answer(self.commands, [entry(5, "k", 5), entry(4, "k", 4)])
        self.assertEqual(self.successResultOf(d)["hq"]["from"], 4)
        self.assertEqual([f[4] for f in subscriber.messages()], [4, 5])

    def test_resume_from_another_epoch(self) -> None:
        """A resume point of another epoch: a gap notice with previous_epoch, then
        the stream from its oldest message."""
        subscriber = ListSubscriber()
        d = self.open_hq(subscriber, last=2, resume={"hq": [55, 9]})
        self.assertEqual(self.take(self.ct), encode_command(
            ["XRANGE", b"p:s:hq", b"0-1", b"0-2", "COUNT", 2]))
        self.answer(self.commands, [entry(1, "k", 1), entry(2, "k", 2)])
        self.successResultOf(d)
        frames = subscriber.messages()
        self.assertEqual((frames[0][1], frames[0][3]["previous_epoch"], frames[0][3]["epoch"]),
                         ("gap", 55, 77))
        self.assertEqual([f[4] for f in frames[1:]], [1, 2])

    def test_last_values_from_the_hash(self) -> None:
        """last_values: the keys' newest messages before the start, in seq order,
        read in one transaction."""
        subscriber = ListSubscriber()
        d = self.open_hq(subscriber, last_values=True)
        self.assertEqual(self.take(self.ct), b"".join(encode_command(c) for c in (
            ["MULTI"], ["ZRANGE", b"p:w:hq", 0, -1, "WITHSCORES"], ["HGETALL", b"p:v:hq"],
            ["EXEC"])))
        a, b = msgpack.packb("a"), msgpack.packb("b")
        self.answer(self.commands, "OK", "QUEUED", "QUEUED", [
            [b, b"2", a, b"4"], [a, encoded("hq", "a", "A"), b, encoded("hq", "b", "B")]])
        self.successResultOf(d)
        self.assertEqual(subscriber.messages(), [[3, "hq", "b", "B", 2], [3, "hq", "a", "A", 4]])

    def test_second_channel_unblocks_the_read(self) -> None:
        """A channel followed while the XREAD blocks: CLIENT UNBLOCK of the
        follower's connection, then one XREAD over both; an UNBLOCK that found
        nothing blocked is sent again shortly."""
        self.successResultOf(self.open_hq(ListSubscriber()))
        self.take(self.rt)
        d = self.registry.subscribe(ListSubscriber(), ["cb"])
        self.take(self.ct)
        self.answer(self.commands, [b"77", b"0-0", None, 0])
        self.successResultOf(d)
        self.assertEqual(self.take(self.ct), encode_command(["CLIENT", "UNBLOCK", 9]))
        self.answer(self.commands, 0)  # the XREAD had not reached Redis
        self.clock.advance(0.005)
        self.assertEqual(self.take(self.ct), encode_command(["CLIENT", "UNBLOCK", 9]))
        self.answer(self.commands, 1)
        self.answer(self.reading, None)  # unblocked
        self.assertEqual(self.take(self.rt), encode_command(
            [*XREAD, b"p:s:hq", b"p:s:cb", b"0-5", b"0-0"]))
        self.assertEqual(self.follower.status()["unblocks"], 2)

    def test_last_subscriber_gone_unfollows(self) -> None:
        subscriber = ListSubscriber()
        self.successResultOf(self.open_hq(subscriber))
        self.registry.remove(subscriber)
        self.assertIsNone(self.registry.channel("hq"))
        self.assertEqual(self.follower.after, {})
        # What the read still brings of it is ignored.
        self.answer(self.reading, [[b"p:s:hq", [entry(6, "k", 1)]]])
        self.assertEqual(self.registry.status()["redis"]["read"], 0)

    def test_wrong_password_at_once(self) -> None:
        from lttx import AuthError
        first = ListSubscriber()
        self.successResultOf(self.open_hq(first, password="pw"))
        self.assertRaises(AuthError, self.registry.subscribe, ListSubscriber(), ["hq"], "nope")

    def test_open_fails_when_redis_is_down(self) -> None:
        self.commands.protocol = None
        d = self.registry.subscribe(ListSubscriber(), ["hq"])
        self.failureResultOf(d, Unavailable)
        self.assertIsNone(self.registry.channel("hq"))


class ResyncTests(RegistryTestCase):
    def test_reconnected_follower_finds_a_new_epoch(self) -> None:
        """Redis lost the stream: on reconnection the follower's OPEN finds
        another epoch; subscribers get a gap notice, then the new epoch's messages."""
        subscriber = ListSubscriber()
        self.successResultOf(self.open_hq(subscriber))
        self.answer(self.reading, [[b"p:s:hq", [entry(6, "k", 6)]]])
        self.take(self.rt)
        self.reconnect()
        self.assertEqual(self.take(self.rt), encode_command(["CLIENT", "ID"]) + encode_command(
            ["EVALSHA", OPEN.sha, 4, *HQ_KEYS, 77, 77, 6]))
        self.patch(channels_module, "new_epoch", lambda: 88)
        self.answer(self.reading, 10, [b"88", b"0-1", b"0-1", 1])
        self.assertEqual(self.take(self.rt), encode_command([*XREAD, b"p:s:hq", b"0-0"]))
        self.answer(self.reading, [[b"p:s:hq", [entry(1, "k", "new")]]])
        frames = subscriber.messages()
        self.assertEqual(frames[0][4], 6)
        self.assertEqual((frames[1][1], frames[1][3]["previous_epoch"], frames[1][3]["epoch"],
                          frames[1][3]["first"]), ("gap", 77, 88, 7))
        self.assertEqual(frames[2], [3, "hq", "k", "new", 1])
        self.assertEqual(self.registry.status()["redis"]["epoch_changes"], 1)

    def test_reconnected_follower_reads_on(self) -> None:
        """Same epoch: the follower reads from where it was, nothing repeated."""
        subscriber = ListSubscriber()
        self.successResultOf(self.open_hq(subscriber))
        self.answer(self.reading, [[b"p:s:hq", [entry(6, "k", 6)]]])
        self.reconnect()
        self.take(self.rt)
        self.answer(self.reading, 10, [b"77", b"0-8", b"0-1", 8])
        self.assertEqual(self.take(self.rt), encode_command([*XREAD, b"p:s:hq", b"0-6"]))
        self.answer(self.reading, [[b"p:s:hq", [entry(6, "k", 6), entry(7, "k", 7)]]])
        self.assertEqual([f[4] for f in subscriber.messages()], [6, 7])

    def test_unchecked_channel_read_on(self) -> None:
        """A channel whose check fails (another program's key of that name):
        one log line, and the follower reads on from where it was."""
        subscriber = ListSubscriber()
        self.successResultOf(self.open_hq(subscriber))
        self.reconnect()
        self.take(self.rt)
        self.reading.protocol.dataReceived(  # type: ignore[union-attr]
            resp(10) + b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
        self.assertEqual(self.take(self.rt), encode_command([*XREAD, b"p:s:hq", b"0-5"]))

    def test_trimmed_before_read_is_a_gap(self) -> None:
        subscriber = ListSubscriber()
        self.successResultOf(self.open_hq(subscriber))
        self.answer(self.reading, [[b"p:s:hq", [entry(9, "k", 9)]]])
        frames = subscriber.messages()
        self.assertEqual((frames[0][1], frames[0][3]["first"], frames[0][3]["last"]),
                         ("gap", 6, 8))
        self.assertEqual(frames[1][4], 9)


class BarrierTests(RegistryTestCase):
    def test_acknowledgements_wait_for_the_barrier(self) -> None:
        """The seam of --redis-wait: called with the connection right after the
        batch is written; a publish is answered once both the script and the
        barrier answered, and fails if the barrier does."""
        barriers: list[Deferred[Any]] = []
        self.registry.barrier = lambda protocol: barriers.append(Deferred()) or barriers[-1]
        ok = self.registry.publish_acknowledged("hq", "a", 1)
        self.registry.flush()
        self.answer(self.commands, [b"77", b"0-3"])
        self.assertNoResult(ok)
        barriers[0].callback(1)
        self.assertEqual(self.successResultOf(ok), 3)
        refused = self.registry.publish_acknowledged("hq", "a", 2)
        self.registry.flush()
        self.answer(self.commands, [b"77", b"0-4"])
        barriers[1].errback(Unavailable("WAIT: 0 of 1 replicas"))
        self.assertIn("WAIT", self.failureResultOf(refused, Unavailable).value.message)

    def test_failed_barrier_fails_every_channel(self) -> None:
        barrier: Deferred[Any] = Deferred()
        self.registry.barrier = lambda protocol: barrier
        one = self.registry.publish_acknowledged("hq", "a", 1)
        two = self.registry.publish_acknowledged("cb", "a", 1)
        self.registry.flush()
        self.answer(self.commands, [b"77", b"0-3"], [b"77", b"0-1"])
        barrier.errback(Unavailable("WAIT: 0 of 1 replicas"))
        self.failureResultOf(one, Unavailable)
        self.failureResultOf(two, Unavailable)


class BatchTests(RegistryTestCase):
    def test_large_batch_in_parts_of_one_write(self) -> None:
        """Past MAX_BATCH messages, a channel's batch is several APPENDs (one
        script does not hold Redis long), all in one write; seqs follow."""
        self.patch(channels_module, "MAX_BATCH", 2)
        acks = [self.registry.publish_acknowledged("hq", "k", i) for i in range(5)]
        self.registry.flush()
        calls = self.ct.value().count(b"EVALSHA")
        self.assertEqual(calls, 3)
        self.answer(self.commands, [b"77", b"0-1"], [b"77", b"0-3"], [b"77", b"0-5"])
        self.assertEqual([self.successResultOf(d) for d in acks], [1, 2, 3, 4, 5])


class OpenTests(RegistryTestCase):
    def test_concurrent_subscribes_share_one_open(self) -> None:
        """Two subscribes to a new channel: one OPEN; its failure fails both,
        and a later subscribe opens again."""
        one = self.registry.subscribe(ListSubscriber(), ["hq"])
        two = self.registry.subscribe(ListSubscriber(), ["hq"])
        self.assertEqual(self.take(self.ct).count(b"EVALSHA"), 1)
        self.commands.protocol.dataReceived(b"-LOADING Redis is loading\r\n")  # type: ignore
        self.failureResultOf(one, LTtxError)
        self.failureResultOf(two, LTtxError)
        three = self.registry.subscribe(ListSubscriber(), ["hq"])
        self.answer(self.commands, [b"77", b"0-0", None, 0])
        self.assertEqual(self.successResultOf(three)["hq"]["from"], 1)


class FollowedLogProperties(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(channels_module, "new_epoch", lambda: 77)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.booleans()),
                    max_size=25))
    def test_each_seq_once_or_in_a_gap(self, steps: list[tuple[int, int, bool]]) -> None:
        """Whatever the XREAD replies (entries trimmed before they were read,
        batches read again after a reconnection), a subscriber gets increasing
        seqs, never one twice, and each seq it does not get is in a gap notice."""
        harness = RegistryTestCase("build")
        harness.build()
        subscriber = ListSubscriber()
        harness.successResultOf(harness.open_hq(subscriber, last=0))
        next_seq = 1
        for skipped, count, repeat in steps:
            start = max(1, next_seq - count) if repeat else next_seq + skipped
            entries = [entry(seq, "k", seq) for seq in range(start, start + count)]
            harness.answer(harness.reading, [[b"p:s:hq", entries]])
            next_seq = max(next_seq, start + count)
        delivered: list[int] = []
        covered: list[int] = []
        for frame in subscriber.messages():
            if frame[0] == 3:
                delivered.append(frame[4])
            else:
                self.assertEqual(frame[1], "gap")
                covered.extend(range(frame[3]["first"], frame[3]["last"] + 1))
        self.assertEqual(delivered, sorted(set(delivered)))
        self.assertEqual(sorted(delivered + covered), list(range(1, next_seq)))
