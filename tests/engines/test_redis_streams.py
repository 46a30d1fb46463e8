"""
The channel streams' mapping (seq <-> stream id) with hypothesis, and the two
Lua scripts (APPEND, OPEN) against a real redis-server.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from lttx.engines.redis.streams import (
    APPEND,
    OPEN,
    Keys,
    Opened,
    appended,
    entry_frames,
    max_length,
    seq_of,
    stream_id,
)
from lttx.wire.frames import MESSAGE_HEAD, PREFIX, pack_seq

from ..redis_server import RedisClientTestCase

SEQS = st.integers(min_value=0, max_value=2**64 - 1)


class MappingTests(SynchronousTestCase):
    @given(SEQS)
    def test_round_trip(self, seq: int) -> None:
        self.assertEqual(seq_of(stream_id(seq)), seq)

    @given(SEQS, SEQS)
    def test_order_is_kept(self, a: int, b: int) -> None:
        """Redis orders ids 0-a < 0-b exactly when a < b (same ms part)."""
        ms_a, sq_a = map(int, stream_id(a).split(b"-"))
        ms_b, sq_b = map(int, stream_id(b).split(b"-"))
        self.assertEqual((ms_a, sq_a) < (ms_b, sq_b), a < b)

    @given(st.integers(min_value=1, max_value=2**48), SEQS)
    def test_other_ids_refused(self, ms: int, seq: int) -> None:
        """Ids another program's XADD makes (a time part) are not LTtx seqs."""
        with self.assertRaises(ValueError):
            seq_of(b"%d-%d" % (ms, seq))

    def test_malformed_refused(self) -> None:
        for bad in (b"", b"0-", b"-1", b"0-01", b"0-1-2", b"0-x", b"1"):
            with self.assertRaises(ValueError, msg=bad):
                seq_of(bad)
        for bad in (-1, 1.5, "1", True):
            with self.assertRaises(ValueError):
                stream_id(bad)  # type: ignore[arg-type]

    @given(SEQS.filter(lambda n: n > 0), st.binary(max_size=40))
    def test_entry_frame(self, seq: int, tail: bytes) -> None:
        """An entry's frame is the MESSAGE frame of its seq around the stored bytes."""
        [(got_seq, frame)] = entry_frames([[stream_id(seq), [b"m", tail]]])
        payload = MESSAGE_HEAD + tail + pack_seq(seq)
        self.assertEqual((got_seq, frame), (seq, PREFIX.pack(len(payload)) + payload))

    def test_foreign_entries_refused(self) -> None:
        with self.assertRaises(ValueError):
            entry_frames([[b"0-1", [b"other", b"x"]]])

    def test_max_length(self) -> None:
        self.assertEqual(max_length(64 * 1024 * 1024, 100 * 36, 100), 64 * 1024 * 1024 // 100)
        self.assertEqual(max_length(10, 10**6, 1), 1)


class ScriptTests(RedisClientTestCase):
    keys = Keys(b"t:", "hq").all()

    def append(self, epoch: int, items: list[tuple[Any, bytes]], maxlen: int = 1000,
               limit: int = 100) -> "defer.Deferred[Any]":
        args: list[Any] = [epoch, maxlen, limit]
        for key, data in items:
            args += [msgpack.packb(key), data]
        return self.client.evalsha(APPEND, self.keys, args).addCallback(appended)

    def open(self, epoch: int, known_epoch: Any = "", known_last: Any = "") -> Any:
        return self.client.evalsha(OPEN, self.keys, [epoch, known_epoch, known_last]).addCallback(
            Opened)

    @defer.inlineCallbacks
    def test_append_numbers_from_one_and_keeps_the_epoch(self) -> Any:
        self.assertEqual((yield self.append(11, [("a", b"1"), ("b", b"2")])), (11, 1))
        self.assertEqual((yield self.append(22, [("a", b"3")])), (11, 3))
        entries = yield self.client.execute("XRANGE", b"t:s:hq", "-", "+")
        self.assertEqual([(seq_of(i), f) for i, f in entries],
                         [(1, [b"m", b"1"]), (2, [b"m", b"2"]), (3, [b"m", b"3"])])
        opened = yield self.open(33)
        self.assertEqual((opened.epoch, opened.first, opened.last, opened.length), (11, 1, 3, 3))

    @defer.inlineCallbacks
    def test_open_before_any_message(self) -> Any:
        """The first subscriber makes the empty stream and its epoch; the first
        message then has seq 1 of that epoch."""
        opened = yield self.open(5)
        self.assertEqual((opened.epoch, opened.first, opened.last, opened.length), (5, 1, 0, 0))
        self.assertEqual((yield self.append(6, [("k", b"x")])), (5, 1))

    @defer.inlineCallbacks
    def test_stream_lost_new_epoch(self) -> Any:
        """The stream deleted (or Redis restarted empty): a new epoch, seqs from
        1, the last values of the old one gone."""
        yield self.append(1, [("a", b"1"), ("b", b"2")])
        yield self.client.execute("DEL", b"t:s:hq")
        self.assertEqual((yield self.append(2, [("c", b"3")])), (2, 1))
        self.assertEqual((yield self.client.execute("HKEYS", b"t:v:hq")), [msgpack.packb("c")])

    @defer.inlineCallbacks
    def test_tail_lost_new_epoch(self) -> Any:
        """A reader that read up to seq 5 of epoch 1 finds the stream at 3 (a
        failover lost 4 and 5): a new epoch; a reader at 3 keeps epoch 1."""
        yield self.append(1, [("a", b"x")] * 3)
        self.assertEqual((yield self.open(9, 1, 3)).epoch, 1)
        opened = yield self.open(9, 1, 5)
        self.assertEqual((opened.epoch, opened.last), (9, 3))
        self.assertEqual((yield self.append(10, [("a", b"y")])), (9, 4))

    @defer.inlineCallbacks
    def test_maxlen_trims_about_there(self) -> Any:
        for _ in range(10):
            yield self.append(1, [(i, b"x" * 10) for i in range(100)], maxlen=100)
        length = yield self.client.execute("XLEN", b"t:s:hq")
        self.assertTrue(100 <= length < 300, length)
        opened = yield self.open(1)
        self.assertEqual(opened.last, 1000)
        self.assertEqual(opened.first, 1000 - length + 1)

    @defer.inlineCallbacks
    def test_last_values_bounded(self) -> Any:
        """The newest message per key; past the bound (plus a 16th) the least
        recently updated keys go, down to the bound."""
        yield self.append(1, [(i, b"%d" % i) for i in range(16)], limit=16)
        yield self.append(1, [(3, b"new 3")], limit=16)
        self.assertEqual((yield self.client.execute("HGET", b"t:v:hq", msgpack.packb(3))),
                         b"new 3")
        self.assertEqual((yield self.client.execute("ZSCORE", b"t:w:hq", msgpack.packb(3))),
                         b"17")
        yield self.append(1, [(i, b"x") for i in range(100, 110)], limit=16)
        keys = yield self.client.execute("ZRANGE", b"t:w:hq", 0, -1)
        self.assertEqual(len(keys), 16)
        self.assertEqual((yield self.client.execute("HLEN", b"t:v:hq")), 16)
        self.assertNotIn(msgpack.packb(0), keys)
        self.assertIn(msgpack.packb(3), keys)  # updated recently
