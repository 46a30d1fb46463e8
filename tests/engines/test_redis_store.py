"""
The Redis store against the same model as the memory store (tests.test_store),
on a real redis-server, plus what only the Redis layout shows.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from lttx.errors import IndexOutOfRange, NotFound, WrongTypeError
from lttx.engines.redis.store import RedisStore, compare_form, decode_item, encode_item
from lttx.state.store import MISSING, strict_equal

from ..redis_server import RedisClientTestCase
from ..state.test_store import StoreMachine


class _Blocking:
    """A RedisStore called from a thread, each call run in the reactor."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._store, name)
        return lambda *args, **kwargs: threads.blockingCallFromThread(
            reactor, method, *args, **kwargs)

    def __len__(self) -> int:
        return int(threads.blockingCallFromThread(
            reactor, self._store.client.execute, "HLEN", self._store.prefix + "types"))


class ItemEncodingTests(TestCase):
    def test_comparison_form(self) -> None:
        """Items strictly equal have one comparison form; -0.0 survives storage."""
        a, b = {"b": [0.0], "a": 1}, {"a": 1, "b": [-0.0]}
        self.assertTrue(strict_equal(a, b))
        self.assertEqual(compare_form(a), compare_form(b))
        self.assertNotEqual(compare_form(1), compare_form(1.0))
        self.assertNotEqual(compare_form(1), compare_form(True))
        # Strict equality reaches dict keys (issue 19, finding 13).
        self.assertFalse(strict_equal({1: "a"}, {1.0: "a"}))
        self.assertNotEqual(compare_form({1: "a"}), compare_form({1.0: "a"}))
        self.assertEqual(compare_form(float("nan")), compare_form(-float("nan")))
        stored = encode_item(b)
        self.assertEqual(stored[0], 0xC1)
        self.assertEqual(repr(decode_item(stored)), repr(b))
        self.assertEqual(decode_item(encode_item([1, "x"])), [1, "x"])


class RedisStoreTests(RedisClientTestCase):

    def test_model(self) -> Any:
        """Random operation sequences give what the memory store gives."""
        prefixes = (f"t{n}:" for n in itertools.count())
        client = self.client

        class RedisMachine(StoreMachine):
            def make_clock(self) -> Clock:
                # Whole seconds ahead of Redis's clock: Redis's own expiry of
                # the value keys never runs first, and the ms are exact.
                clock = Clock()
                clock.advance(int(time.time()) + 3600)
                return clock

            def make_store(self) -> Any:
                return _Blocking(RedisStore(client, next(prefixes), self.clock.seconds))

        return threads.deferToThread(run_state_machine_as_test, RedisMachine, settings=settings(
            max_examples=25, stateful_step_count=30, deadline=None))

    @defer.inlineCallbacks
    def test_layout_is_in_place(self) -> Any:
        """A dict is a Redis hash and a list a Redis list: one field or item per change."""
        store = RedisStore(self.client, "p:")
        yield store.put("d", {"a": 1})
        yield store.dict_change("d", "b", [2])
        yield store.put("l", [])
        yield store.list_append("l", "x")
        yield store.list_append("l", "y")
        fields = yield self.client.execute("HLEN", "p:v:d")
        items = yield self.client.execute("LRANGE", "p:v:l", 0, -1)
        self.assertEqual(fields, 2)
        self.assertEqual(items, [b"\xa1x", b"\xa1y"])
        self.assertEqual((yield store.list_pop("l", 0)), "x")
        self.assertEqual((yield store.list_pop("l")), "y")
        # Empty: Redis dropped the list, the variable is still an empty list.
        self.assertEqual((yield store.get("l")), [])
        self.assertEqual((yield store.exists("l")), True)
        self.assertEqual((yield store.keys("*")), ["d", "l"])

    @defer.inlineCallbacks
    def test_errors_and_messages(self) -> Any:
        """Refusals are the memory store's typed errors and change nothing."""
        store = RedisStore(self.client, "e:")
        yield store.put("s", 5)
        e = yield self.assertFailure(store.dict_change("s", "k", 1), WrongTypeError)
        self.assertEqual(str(e), "dict_change needs a dict, but 's' holds a int")
        yield self.assertFailure(store.list_pop("nope"), NotFound)
        yield store.put("l", [1])
        e = yield self.assertFailure(store.get_list_value("l", 3), IndexOutOfRange)
        self.assertEqual(str(e), "index 3 out of range for 'l' of length 1")
        self.assertEqual((yield store.get("s")), 5)
        self.assertIs((yield store.get("nope")), MISSING)

    @defer.inlineCallbacks
    def test_script_flush(self) -> Any:
        """After SCRIPT FLUSH, EVALSHA's NOSCRIPT falls back to EVAL."""
        store = RedisStore(self.client, "f:")
        yield self.client.execute("SCRIPT", "FLUSH")
        yield store.put("x", 1)
        self.assertEqual((yield store.get("x")), 1)
