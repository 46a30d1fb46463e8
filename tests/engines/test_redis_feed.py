"""
The change feed and the replication waiter without Redis: their exact
commands on a StringTransport, fed RESP replies by hand, and the frames a
watcher (the daemon's own ChannelReader) gets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx.engines.redis.changes import STALL, ChangeFeed, stream_epoch
from lttx.engines.redis.replication import POLL, Replication
from lttx.engines.redis.resp import RedisAddress, RedisClient, RedisProtocol, encode_command
from lttx.engines.redis.scripts import FEED_START
from lttx.errors import Unavailable
from lttx.server.reader import ChannelReader
from lttx.state.channels import ChannelRegistry
from lttx.wire import codec

from ..common import frames_of

REPLID = "a" * 40
INFO = f"# Replication\r\nrole:master\r\nmaster_replid:{REPLID}\r\n".encode()


def resp(value: Any) -> bytes:
    """A RESP2 reply: bytes as bulk strings, ints, None as nil, lists as arrays."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)


def connected_client(clock: Clock) -> tuple[RedisClient, StringTransport]:
    client = RedisClient(clock, RedisAddress(), scripts=(FEED_START,))
    protocol = RedisProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    client.protocol = protocol
    return client, transport


def change_body(op: str, args: list[Any], revision: int) -> bytes:
    return codec.encode([op, args, revision])


class ReplicationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client, self.transport = connected_client(self.clock)
        self.replication = Replication(self.client, 1, 0.25, self.clock)

    def test_one_wait_per_reactor_turn(self) -> None:
        """The writes of one turn are confirmed by one WAIT, sent after them."""
        first, second = self.replication.confirm(), self.replication.confirm()
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), encode_command(["WAIT", 1, 250]))
        self.assertNoResult(first)
        self.client.protocol.dataReceived(b":1\r\n")  # type: ignore[union-attr]
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(self.replication.status()["confirmed"], 2)

    def test_too_few_replicas_is_unavailable(self) -> None:
        """Fewer replicas than asked: every write of the turn fails, saying so."""
        writes = [self.replication.confirm() for _ in range(3)]
        self.clock.advance(0)
        self.client.protocol.dataReceived(b":0\r\n")  # type: ignore[union-attr]
        for d in writes:
            error = self.failureResultOf(d, Unavailable).value
            self.assertIn("only 0 of 1 replicas acknowledged it within 0.25 s", error.message)
        self.assertEqual(self.replication.status()["refused"], 3)

    def test_short_of_replicas_refuses_at_once_until_they_are_back(self) -> None:
        """After a short WAIT, writes are refused without one (no stall of the
        connection) while INFO replication is read every POLL seconds; once
        enough replicas are online, WAIT confirms writes again."""
        protocol = self.client.protocol
        assert protocol is not None
        first = self.replication.confirm()
        self.clock.advance(0)
        protocol.dataReceived(b":0\r\n")
        self.failureResultOf(first, Unavailable)
        self.transport.clear()
        second = self.replication.confirm()
        self.clock.advance(0)
        self.assertIn("fewer than 1 replicas are online",
                      self.failureResultOf(second, Unavailable).value.message)
        self.assertEqual(self.transport.value(), b"")  # no WAIT
        self.clock.advance(POLL)
        self.assertEqual(self.transport.value(), encode_command(["INFO", "replication"]))
        self.transport.clear()
        syncing = b"role:master\r\nslave0:ip=127.0.0.1,port=7,state=wait_bgsave,offset=0,lag=0\r\n"
        protocol.dataReceived(resp(syncing))
        self.clock.advance(POLL)
        self.transport.clear()
        online = b"role:master\r\nslave0:ip=127.0.0.1,port=7,state=online,offset=9,lag=0\r\n"
        protocol.dataReceived(resp(online))
        third = self.replication.confirm()
        self.clock.advance(0)
        self.assertEqual(self.transport.value(), encode_command(["WAIT", 1, 250]))
        protocol.dataReceived(b":1\r\n")
        self.assertIsNone(self.successResultOf(third))
        self.assertFalse(self.replication.status()["short"])

    def test_connection_changed_before_the_wait(self) -> None:
        """A write made on a connection lost before its WAIT is not confirmed
        on the next one: Unavailable, and no WAIT is sent for it."""
        d = self.replication.confirm()
        self.client.protocol = None
        self.clock.advance(0)
        self.assertIn("connection it was made on was lost",
                      self.failureResultOf(d, Unavailable).value.message)
        self.assertEqual(self.transport.value(), b"")

    def test_connection_lost_during_the_wait(self) -> None:
        d = self.replication.confirm()
        self.clock.advance(0)
        self.client.protocol.connectionLost()  # type: ignore[union-attr]
        self.assertIn("could not be confirmed", self.failureResultOf(d, Unavailable).value.message)


class FeedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client, self.transport = connected_client(self.clock)
        self.registry = ChannelRegistry(clock=self.clock.seconds)
        self.feed = ChangeFeed(self.client, self.registry, ("t:changes", "t:changes:epoch"),
                               page=10, block_ms=500)
        self.registry.changes_source = self.feed
        self.out = StringTransport()
        self.reader = ChannelReader(self.out, self.registry, reading=lambda on: None)

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def reply(self, *values: Any) -> None:
        self.client.protocol.dataReceived(b"".join(map(resp, values)))  # type: ignore

    def start(self, epoch: bytes = b"1700000000000000", first: int = 1, last: int = 0) -> Any:
        ready = self.feed.ready()
        assert ready is not None
        self.assertEqual(self.sent(), encode_command(
            ["EVALSHA", FEED_START.sha, 2, "t:changes", "t:changes:epoch"])
            + encode_command(["INFO", "replication"]))
        self.reply([epoch, b"%d" % first, b"%d" % last], INFO)
        return ready

    def reconnect(self) -> None:
        """The feed's connection lost, and another made (what the client's
        ClientService does, then the feed's wait for it)."""
        self.client.protocol.connectionLost()  # type: ignore[union-attr]
        self.client.protocol = RedisProtocol()
        self.transport = StringTransport()
        self.client.protocol.makeConnection(self.transport)
        self.feed._sync()

    def xread(self, after: int) -> bytes:
        return encode_command(["XREAD", "COUNT", 10, "BLOCK", 500, "STREAMS", "t:changes",
                               b"0-%d" % after])

    def entries(self, *items: tuple[int, str, bytes]) -> list[Any]:
        return [[b"t:changes", [[b"0-%d" % seq, [b"n", name.encode(), b"c", body]]
                                for seq, name, body in items]]]

    def test_first_watch_loads_the_stream_then_follows_it(self) -> None:
        """The first watch waits until the retained stream is loaded; the watcher
        then gets the changes after it, with the stream's seqs and epoch."""
        ready = self.start(first=1, last=3)
        self.assertEqual(self.sent(), self.xread(0))
        self.assertNoResult(ready)
        put = change_body("put", [1], 7)
        self.reply(self.entries((1, "", b""), (2, "x", put), (3, "y", put)))
        self.assertIsNone(self.successResultOf(ready))
        self.assertIsNone(self.feed.ready())
        self.assertEqual(self.sent(), self.xread(3))
        epoch = stream_epoch(b"1700000000000000", REPLID)
        answer = self.registry.watch(self.reader, ["x*"], lambda name: True,
                                     resume=[epoch, 1])
        self.assertEqual(answer, {"epoch": epoch, "next": 4, "from": 2})
        self.registry.flush()
        self.assertEqual(frames_of(self.out.value()), [[3, None, "x", ["put", [1], 7], 2]])
        self.out.clear()
        # A write's reply waits until the feed has read its change.
        read = self.feed.reached(4)
        assert read is not None
        self.reply(self.entries((4, "x2", change_body("delete", [], 8))))
        self.assertIsNone(self.successResultOf(read))
        self.assertIsNone(self.feed.reached(4))
        self.assertEqual(frames_of(self.out.value()), [[3, None, "x2", ["delete", [], 8], 4]])

    def test_a_hung_feed_does_not_hold_replies(self) -> None:
        """Replies waiting for the feed are let go when its connection gives no
        reply at all for STALL seconds (an XREAD returns every BLOCK_MS at most)."""
        self.start(first=1, last=1)
        self.reply(self.entries((1, "", b"")))
        read = self.feed.reached(2)
        self.clock.advance(STALL - 0.1)
        self.reply(None)  # an idle BLOCK timeout: the connection lives
        self.clock.advance(0.2)
        self.assertNoResult(read)
        self.clock.advance(STALL)
        self.assertIsNone(self.successResultOf(read))
        self.assertEqual(self.feed.status()["stalls"], 1)

    def test_hole_in_the_stream_is_a_missed_notice(self) -> None:
        """Changes trimmed from the stream before this daemon read them: its
        watchers are told exactly which, and read on."""
        self.start(first=1, last=1)
        self.reply(self.entries((1, "", b"")))
        self.registry.watch(self.reader, ["*"], lambda name: True)
        self.sent()
        self.reply(self.entries((5, "x", change_body("incr", [2], 3))))
        notice, change = frames_of(self.out.value())
        self.assertEqual(notice[:2], [codec.NOTICE, "missed"])
        self.assertEqual((notice[3]["first"], notice[3]["last"]), (2, 4))
        self.assertEqual(change, [3, None, "x", ["incr", [2], 3], 5])
        self.assertEqual(self.feed.status()["holes"], 1)

    def test_another_epoch_after_an_idle_check(self) -> None:
        """An idle XREAD ends with a check of the epoch: a stream made again (or
        another master) tells every watcher it missed changes, and it reads
        on from the new stream's end."""
        self.start(first=1, last=1)
        self.reply(self.entries((1, "", b"")))
        old = self.feed.epoch
        self.registry.watch(self.reader, ["*"], lambda name: True)
        self.sent()
        self.reply(None)  # BLOCK timed out: check the epoch
        self.assertIn(b"EVALSHA", self.sent())
        self.reply([b"1800000000000000", b"1", b"2"], INFO)
        new = stream_epoch(b"1800000000000000", REPLID)
        self.assertEqual(self.sent(), self.xread(0))
        self.reply(self.entries((1, "", b""), (2, "y", change_body("put", [0], 1))))
        self.reply(self.entries((3, "x", change_body("put", [1], 2))))
        # A stream made again is all new: the watcher reads it from its start.
        notice, *changes = frames_of(self.out.value())
        self.assertEqual(notice[3], {"first": 2, "last": None, "epoch": new,
                                     "previous_epoch": old, "from": 1})
        self.assertEqual(changes, [[3, None, "y", ["put", [0], 1], 2],
                                   [3, None, "x", ["put", [1], 2], 3]])

    def test_a_promoted_replica_is_read_from_its_end(self) -> None:
        """The same stream on another master (a failover: same epoch key, another
        replication id): another epoch, and the watcher reads on from its end
        (the promoted replica's stream holds what the watcher had, or less)."""
        self.start(first=1, last=2)
        self.reply(self.entries((1, "", b""), (2, "x", change_body("put", [0], 1))))
        old = self.feed.epoch
        self.registry.watch(self.reader, ["*"], lambda name: True)
        self.sent()
        self.reconnect()
        self.assertIn(b"EVALSHA", self.sent())
        self.reply([b"1700000000000000", b"1", b"2"],
                   INFO.replace(REPLID.encode(), b"b" * 40))
        new = stream_epoch(b"1700000000000000", "b" * 40)
        self.assertEqual(self.sent(), self.xread(0))
        self.reply(self.entries((1, "", b""), (2, "x", change_body("put", [0], 1))))
        self.reply(self.entries((3, "x", change_body("put", [1], 2))))
        notice, change = frames_of(self.out.value())
        self.assertEqual(notice[3], {"first": 3, "last": None, "epoch": new,
                                     "previous_epoch": old, "from": 3})
        self.assertEqual(change, [3, None, "x", ["put", [1], 2], 3])

    def test_redis_down_at_the_first_watch(self) -> None:
        """The first watch fails with Unavailable when Redis cannot be read; the
        next one tries again."""
        ready = self.feed.ready()
        assert ready is not None
        self.client.protocol.connectionLost()  # type: ignore[union-attr]
        self.failureResultOf(ready, Unavailable)
        self.assertEqual(self.feed.state, "idle")
        self.client.protocol = None
        again: Deferred[None] = self.feed.ready()  # type: ignore[assignment]
        self.failureResultOf(again, Unavailable)
