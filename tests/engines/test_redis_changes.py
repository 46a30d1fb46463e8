"""
The change stream the Redis store's scripts write (``<prefix>changes``), on a
real redis-server: each entry is the change the memory store reports for the
same operation, encoded as a watcher gets it; the stream's epoch and marker.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from lttx.engines.redis.changes import master_replid, stream_epoch
from lttx.engines.redis.store import RedisStore
from lttx.state.store import Change, MemoryStore
from lttx.wire import codec

from ..redis_server import RedisClientTestCase

#: Operations on both stores, each (method, args): refusals included.
OPERATIONS: list[tuple[str, tuple[Any, ...]]] = [
    ("put", ("d", {f"k{i}": i for i in range(20)})),        # a map16 head
    ("put", ("d", {"a": [1, 2.5, None], "b": {"c": b"\x00"}})),
    ("dict_change", ("d", "z", -(2 ** 40))),
    ("put", ("l", list(range(17)))),                        # an array16 head
    ("list_append", ("l", {"x": -0.0})),                     # a tagged item
    ("list_pop", ("l", 0)),
    ("list_pop", ("l", -1)),
    ("list_remove", ("l", 5)),
    ("list_remove", ("l", 99)),                              # no change
    ("incr", ("n", 2 ** 62)),
    ("incr", ("n", -1)),
    ("incr", ("f", 0.25)),
    ("put", ("s", "naïve")),
    ("expire", ("s", 0)),                                    # removed at once: op expire
    ("delete", ("d",)),
    ("delete", ("d",)),                                      # no change
    ("put", ("", 1)),                                        # refused: a bad name
    ("put", ("big", [])),
    ("put", ("big", {})),
]


class ChangeStreamTests(RedisClientTestCase):
    @defer.inlineCallbacks
    def test_entries_are_the_memory_stores_changes(self) -> Any:
        """Every applied operation adds one entry, ``0-<seq>`` with consecutive
        seqs after the marker ``0-1``, whose body decodes to the Change the
        memory store reports for it (refusals and no-ops add none)."""
        store = RedisStore(self.client, "t:", clock=lambda: 1000.0)
        memory = MemoryStore(clock=lambda: 1000.0)
        expected: list[Change] = []
        shown: list[str] = []  # the args as reported (the value is the store's own)
        memory.observer = lambda change: (expected.append(change),
                                          shown.append(repr(change.args)))
        for method, args in OPERATIONS:
            try:
                getattr(memory, method)(*args)
            except ValueError:
                pass  # a BadRequest: both refuse
            try:
                yield getattr(store, method)(*args)
            except ValueError:
                pass
        entries = yield self.client.execute("XRANGE", "t:changes", "-", "+")
        self.assertEqual([e[0] for e in entries],
                         [b"0-%d" % i for i in range(1, len(expected) + 2)])
        self.assertEqual(entries[0][1], [b"n", b"", b"c", b""])  # the stream's marker
        got = []
        for _, fields in entries[1:]:
            self.assertEqual((fields[0], fields[2]), (b"n", b"c"))
            op, args, revision = codec.decode(fields[3])
            got.append(Change(fields[1].decode(), op, tuple(args), revision))
        self.assertEqual([(c.name, c.op, c.revision) for c in got],
                         [(c.name, c.op, c.revision) for c in expected])
        self.assertEqual([repr(c.args) for c in got], shown)  # -0.0 and types too

    @defer.inlineCallbacks
    def test_a_stream_made_again_has_another_epoch(self) -> Any:
        """The epoch key is set when the stream is made: a stream deleted (a Redis
        restarted empty) comes back with another epoch."""
        store = RedisStore(self.client, "t:", clock=Clock().seconds)
        yield store.put("x", 1)
        first = yield self.client.execute("GET", "t:changes:epoch")
        info = yield self.client.execute("INFO", "replication")
        replid = master_replid(info)
        self.assertEqual(len(replid), 40)
        yield self.client.execute("DEL", "t:changes")
        yield store.put("x", 2)
        second = yield self.client.execute("GET", "t:changes:epoch")
        self.assertNotEqual(first, second)
        self.assertNotEqual(stream_epoch(first, replid), stream_epoch(second, replid))
        self.assertNotEqual(stream_epoch(first, replid), stream_epoch(first, "0" * 40))
        entries = yield self.client.execute("XRANGE", "t:changes", "-", "+")
        self.assertEqual([e[0] for e in entries], [b"0-1", b"0-2"])
