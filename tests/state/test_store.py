"""
The memory store against a plain Python model, under random operation sequences.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any, Callable, Optional

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import (
    BadRequest,
    Conflict,
    IndexOutOfRange,
    LTtxError,
    NotFound,
    WrongTypeError,
)
from lttx.state.store import MISSING, Change, MemoryStore, strict_equal
from lttx.wire.ext import Encoded

from ..strategies import dict_keys, values

names = st.sampled_from(["a", "b", "c", "pos", "orders"])
# Items that are == in Python but different on the wire, so that list_remove's
# strict equality is exercised, not just random values that never collide.
items = st.sampled_from([0, 1, 1.0, True, False, "1", b"1", None, [1], [True], {"a": 1},
                         {"a": 1.0}, {1: "a"}, {1.0: "a"}, Encoded("numpy.ndarray", b"1"),
                         Encoded("pandas.Series", b"1")]) | values
indexes = st.integers(-4, 4)
picks = st.integers(0, 6)
ttls = st.sampled_from([None, None, 0.5, 1, 2.5])
amounts = st.sampled_from([1, -2, 2**62, 0.5, float("inf"), True, "1"])


def model_op(model: "Model", op: str, name: str, *args: Any, **options: Any) -> Any:
    """What each operation means, written as plainly as Python allows."""
    model.live(name)
    current = model.values.get(name, MISSING)
    revision = model.revisions.get(name, 0)
    expected = options.get("if_revision")

    def guard() -> None:
        if expected is not None and expected != revision:
            raise Conflict()

    if op == "put":
        guard()
        model.values[name] = args[0]
        model.deadlines.pop(name, None)
        if options.get("ttl") is not None:
            model.deadlines[name] = model.now() + options["ttl"]
        model.bump(name)
        return None
    if op == "get":
        if options.get("revision"):
            return (current, revision)
        return current
    if op == "delete":
        guard()
        if current is MISSING:
            return False
        model.remove(name)
        return True
    if op == "incr":
        by = args[0]
        if type(by) not in (int, float):
            raise BadRequest()
        base = 0 if current is MISSING else current
        if type(base) not in (int, float):
            raise WrongTypeError()
        result = base + by
        if type(result) is int and not -2**63 <= result < 2**63:
            raise BadRequest()
        if type(result) is float and not math.isfinite(result):
            raise BadRequest()
        model.values[name] = result
        model.bump(name)
        return result
    if op == "expire":
        if current is MISSING:
            return False
        if args[0] <= 0:
            model.remove(name)
        else:
            model.deadlines[name] = model.now() + args[0]
        return True
    if op == "ttl":
        if current is MISSING or name not in model.deadlines:
            return None
        return model.deadlines[name] - model.now()
    if op == "dict_change":
        if current is MISSING:
            guard()
            model.values[name] = {args[0]: args[1]}
        elif type(current) is not dict:
            raise WrongTypeError()
        else:
            guard()
            current[args[0]] = args[1]
        model.bump(name)
        return None
    if op == "get_dict_value":
        if current is MISSING:
            return MISSING
        if type(current) is not dict:
            raise WrongTypeError()
        return current.get(args[0], MISSING)
    if op == "list_append":
        if current is not MISSING and type(current) is not list:
            raise WrongTypeError()
        guard()
        if current is MISSING:
            model.values[name] = current = []
        current.append(args[0])
        model.bump(name)
        return len(current)
    if op == "list_remove":
        if current is not MISSING and type(current) is not list:
            raise WrongTypeError()
        guard()
        if current is MISSING:
            return False
        for i, item in enumerate(current):
            if strict_equal(item, args[0]):
                del current[i]
                model.bump(name)
                return True
        return False
    # list_pop, get_list_value
    if current is MISSING:
        raise NotFound()
    if type(current) is not list:
        raise WrongTypeError()
    if op == "list_pop":
        guard()
    try:
        item = current.pop(args[0]) if op == "list_pop" else current[args[0]]
    except IndexError:
        raise IndexOutOfRange() from None
    if op == "list_pop":
        model.bump(name)
    return item


class Model:
    """Variables, their revisions and deadlines, plainly."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.values: dict[str, Any] = {}
        self.revisions: dict[str, int] = {}
        self.deadlines: dict[str, float] = {}
        self.top = 0

    def bump(self, name: str) -> None:
        # One more per change; a new variable starts above every revision given.
        revision = self.revisions[name] + 1 if name in self.revisions else self.top + 1
        self.revisions[name] = revision
        self.top = max(self.top, revision)

    def remove(self, name: str) -> None:
        self.bump(name)
        del self.values[name], self.revisions[name]
        self.deadlines.pop(name, None)

    def live(self, name: str) -> None:
        if name in self.deadlines and self.deadlines[name] <= self.now():
            self.remove(name)


def _same(actual: Any, expected: Any) -> bool:
    if expected is actual:
        return True
    if (type(expected) is float and type(actual) is float  # a ttl: Redis counts in ms
            and math.isfinite(expected) and math.isfinite(actual)):
        return abs(actual - expected) < 0.002
    return strict_equal(actual, expected)  # (inf - inf is nan: a stored inf is compared here)


class StoreMachine(RuleBasedStateMachine):
    """
    A store against :class:`Model`.  Subclasses replace :meth:`make_store`
    (the durable store, the Redis store) and :meth:`settle` (a Deferred result).
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = self.make_clock()
        self.store = self.make_store()
        self.model = Model(self.clock.seconds)

    def make_clock(self) -> Clock:
        return Clock()

    def make_store(self) -> Any:
        return MemoryStore(self.clock.seconds)

    def settle(self, result: Any) -> Any:
        return result

    def check(self, op: str, name: str, *args: Any, **options: Any) -> None:
        options = {k: v for k, v in options.items() if v is not None}
        # The store owns what it is given, so store and model get separate copies.
        try:
            expected: Any = model_op(self.model, op, name, *copy.deepcopy(args), **options)
        except LTtxError as e:
            expected = type(e)
        try:
            actual: Any = self.settle(getattr(self.store, op)(name, *copy.deepcopy(args),
                                                              **options))
        except LTtxError as e:
            actual = type(e)
        if isinstance(expected, tuple) and isinstance(actual, tuple):
            assert actual[1] == expected[1] and _same(actual[0], expected[0]), \
                (op, name, args, options, expected, actual)
            return
        assert _same(actual, expected), (op, name, args, options, expected, actual)

    def revision_for(self, name: str, pick: int) -> Optional[int]:
        """None, 0, the current revision, or one off it: both outcomes of a CAS."""
        current = self.model.revisions.get(name, 0)
        return [None, None, 0, current, current, current + 1, max(0, current - 1)][pick]

    @rule(name=names, value=values, pick=picks, ttl=ttls)
    def put(self, name: str, value: Any, pick: int, ttl: Optional[float]) -> None:
        self.check("put", name, value, if_revision=self.revision_for(name, pick), ttl=ttl)

    @rule(name=names, revision=st.booleans())
    def get(self, name: str, revision: bool) -> None:
        self.check("get", name, revision=revision or None)

    @rule(name=names, pick=picks)
    def delete(self, name: str, pick: int) -> None:
        self.check("delete", name, if_revision=self.revision_for(name, pick))

    @rule(name=names, by=amounts)
    def incr(self, name: str, by: Any) -> None:
        self.check("incr", name, by)

    @rule(name=names, seconds=st.sampled_from([-1, 0, 0.5, 1, 3]))
    def expire(self, name: str, seconds: float) -> None:
        self.check("expire", name, seconds)

    @rule(name=names)
    def ttl(self, name: str) -> None:
        self.check("ttl", name)

    @rule(seconds=st.sampled_from([0.25, 1, 2]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self.settle(self.store.sweep())
        for name in list(self.model.values):
            self.model.live(name)

    @rule(name=names, key=dict_keys, value=values, pick=picks)
    def dict_change(self, name: str, key: Any, value: Any, pick: int) -> None:
        self.check("dict_change", name, key, value, if_revision=self.revision_for(name, pick))

    @rule(name=names, key=dict_keys)
    def get_dict_value(self, name: str, key: Any) -> None:
        self.check("get_dict_value", name, key)

    @rule(name=names, item=items, pick=picks)
    def list_append(self, name: str, item: Any, pick: int) -> None:
        self.check("list_append", name, item, if_revision=self.revision_for(name, pick))

    @rule(name=names, index=indexes, pick=picks)
    def list_pop(self, name: str, index: int, pick: int) -> None:
        self.check("list_pop", name, index, if_revision=self.revision_for(name, pick))

    @rule(name=names, item=items, pick=picks)
    def list_remove(self, name: str, item: Any, pick: int) -> None:
        self.check("list_remove", name, item, if_revision=self.revision_for(name, pick))

    @rule(name=names, index=indexes)
    def get_list_value(self, name: str, index: int) -> None:
        self.check("get_list_value", name, index)

    @rule(pattern=st.sampled_from(["*", "p*", "?", "[ab]", "orders", "x*"]))
    def keys(self, pattern: str) -> None:
        for name in list(self.model.values):
            self.model.live(name)
        expected = sorted(n for n in self.model.values if fnmatch.fnmatchcase(n, pattern))
        assert self.settle(self.store.keys(pattern)) == expected

    @invariant()
    def same_contents(self) -> None:
        # Expired but not yet removed variables count, in the store as in the model.
        assert len(self.store) == len(self.model.values), (len(self.store), self.model.values)
        for name in list(self.model.values):
            self.check("get", name, revision=True)


class StoreModelTests(SynchronousTestCase):
    def test_store_behaves_like_a_plain_model(self) -> None:
        """Random operation sequences give the results and contents of a dict of plain values."""
        run_state_machine_as_test(StoreMachine, settings=settings(
            max_examples=100, stateful_step_count=40, deadline=None))


class StoreTests(SynchronousTestCase):
    def test_strict_equality(self) -> None:
        """1, 1.0 and True are different items; dicts compare regardless of order."""
        self.assertFalse(strict_equal(1, 1.0))
        self.assertFalse(strict_equal(1, True))
        self.assertFalse(strict_equal([1], [True]))
        self.assertTrue(strict_equal({"a": 1, "b": [2]}, {"b": [2], "a": 1}))
        self.assertTrue(strict_equal(float("nan"), float("nan")))

    def test_strict_equality_reaches_dict_keys(self) -> None:
        """list_remove of {1.0: 'a'} does not remove {1: 'a'} (issue 19, finding 13)."""
        self.assertFalse(strict_equal({1: "a"}, {1.0: "a"}))
        self.assertFalse(strict_equal({"x": {1: "a"}}, {"x": {1.0: "a"}}))
        store = MemoryStore()
        store.list_append("l", {1: "a"})
        self.assertFalse(store.list_remove("l", {1.0: "a"}))
        self.assertEqual(store.get("l"), [{1: "a"}])
        self.assertTrue(store.list_remove("l", {1: "a"}))

    def test_every_change_is_reported_with_its_revision(self) -> None:
        """The observer sees (name, op, args after the name, revision) of each
        applied change, and nothing of a refused or empty one."""
        clock = Clock()
        store = MemoryStore(clock.seconds)
        changes: list[Change] = []
        store.observer = changes.append
        store.dict_change("d", "k", [1])
        store.list_append("l", "a")
        store.list_append("l", "b")
        store.list_pop("l", 0)
        self.assertFalse(store.list_remove("l", "zz"))
        self.assertTrue(store.list_remove("l", "b"))
        self.assertRaises(Conflict, store.put, "d", 1, if_revision=5)
        store.incr("n", 2.5)
        store.put("d", None, if_revision=1)
        self.assertTrue(store.delete("d"))
        store.put("lease", 1, ttl=1)
        clock.advance(1)
        self.assertFalse(store.exists("lease"))
        self.assertEqual(changes, [
            Change("d", "dict_change", ("k", [1]), 1),
            Change("l", "list_append", ("a",), 2),
            Change("l", "list_append", ("b",), 3),
            Change("l", "list_pop", (0,), 4),
            Change("l", "list_remove", ("b",), 5),
            Change("n", "incr", (2.5,), 6),
            Change("d", "put", (None,), 2),
            Change("d", "delete", (), 3),
            Change("lease", "put", (1,), 7),
            Change("lease", "expire", (), 8),
        ])

    def test_renewed_leases_keep_the_expiry_queue_small(self) -> None:
        """A lease renewed long before its deadline leaves no growing queue behind."""
        clock = Clock()
        store = MemoryStore(clock.seconds)
        for i in range(10_000):
            store.put("lease", i, ttl=3600)
            clock.advance(0.1)
        self.assertLessEqual(len(store._heap), 1026)
        clock.advance(3600)
        self.assertEqual(store.sweep(), 1)
        self.assertEqual(len(store), 0)

    def test_bad_names(self) -> None:
        store = MemoryStore()
        for name in ("", None, 1, b"x"):
            self.assertRaises(BadRequest, store.put, name, 1)
        self.assertEqual(len(store), 0)

    def test_refused_operation_changes_nothing(self) -> None:
        store = MemoryStore()
        store.put("l", [1, 2])
        self.assertRaises(WrongTypeError, store.dict_change, "l", "k", 1)
        self.assertRaises(IndexOutOfRange, store.list_pop, "l", 2)
        self.assertRaises(BadRequest, store.dict_change, "new", ["unhashable"], 1)
        self.assertEqual(store.get("l"), [1, 2])
        self.assertFalse(store.exists("new"))
