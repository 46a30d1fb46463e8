"""
The memory store against a plain Python model, under random operation sequences.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import BadRequest, IndexOutOfRange, LTtxError, NotFound, WrongTypeError
from lttx.state.store import MISSING, MemoryStore, strict_equal
from lttx.wire.ext import Encoded

from ..strategies import dict_keys, values

names = st.sampled_from(["a", "b", "c", "pos", "orders"])
# Items that are == in Python but different on the wire, so that list_remove's
# strict equality is exercised, not just random values that never collide.
items = st.sampled_from([0, 1, 1.0, True, False, "1", b"1", None, [1], [True], {"a": 1},
                         {"a": 1.0}, Encoded("numpy.ndarray", b"1"),
                         Encoded("pandas.Series", b"1")]) | values
indexes = st.integers(-4, 4)


def model_op(model: dict[str, Any], op: str, name: str, *args: Any) -> Any:
    """What each operation means, written as plainly as Python allows."""
    current = model.get(name, MISSING)
    if op == "put":
        model[name] = args[0]
        return None
    if op == "get":
        return current
    if op == "delete":
        return model.pop(name, MISSING) is not MISSING
    if op == "dict_change":
        if current is MISSING:
            model[name] = {args[0]: args[1]}
        elif type(current) is not dict:
            raise WrongTypeError()
        else:
            current[args[0]] = args[1]
        return None
    if op == "get_dict_value":
        if current is MISSING:
            return MISSING
        if type(current) is not dict:
            raise WrongTypeError()
        return current.get(args[0], MISSING)
    if op == "list_append":
        if current is MISSING:
            model[name] = current = []
        elif type(current) is not list:
            raise WrongTypeError()
        current.append(args[0])
        return len(current)
    if op == "list_remove":
        if current is MISSING:
            return False
        if type(current) is not list:
            raise WrongTypeError()
        for i, item in enumerate(current):
            if strict_equal(item, args[0]):
                del current[i]
                return True
        return False
    # list_pop, get_list_value
    if current is MISSING:
        raise NotFound()
    if type(current) is not list:
        raise WrongTypeError()
    try:
        return current.pop(args[0]) if op == "list_pop" else current[args[0]]
    except IndexError:
        raise IndexOutOfRange() from None


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.model: dict[str, Any] = {}

    def check(self, op: str, name: str, *args: Any) -> None:
        # The store owns what it is given, so store and model get separate copies.
        try:
            expected: Any = model_op(self.model, op, name, *copy.deepcopy(args))
        except LTtxError as e:
            expected = type(e)
        try:
            actual: Any = getattr(self.store, op)(name, *copy.deepcopy(args))
        except LTtxError as e:
            actual = type(e)
        assert (expected is actual) or strict_equal(actual, expected), \
            (op, name, args, expected, actual)

    @rule(name=names, value=values)
    def put(self, name: str, value: Any) -> None:
        self.check("put", name, value)

    @rule(name=names)
    def get(self, name: str) -> None:
        self.check("get", name)

    @rule(name=names)
    def delete(self, name: str) -> None:
        self.check("delete", name)

    @rule(name=names, key=dict_keys, value=values)
    def dict_change(self, name: str, key: Any, value: Any) -> None:
        self.check("dict_change", name, key, value)

    @rule(name=names, key=dict_keys)
    def get_dict_value(self, name: str, key: Any) -> None:
        self.check("get_dict_value", name, key)

    @rule(name=names, item=items)
    def list_append(self, name: str, item: Any) -> None:
        self.check("list_append", name, item)

    @rule(name=names, index=indexes)
    def list_pop(self, name: str, index: int) -> None:
        self.check("list_pop", name, index)

    @rule(name=names, item=items)
    def list_remove(self, name: str, item: Any) -> None:
        self.check("list_remove", name, item)

    @rule(name=names, index=indexes)
    def get_list_value(self, name: str, index: int) -> None:
        self.check("get_list_value", name, index)

    @rule(pattern=st.sampled_from(["*", "p*", "?", "[ab]", "orders", "x*"]))
    def keys(self, pattern: str) -> None:
        expected = sorted(n for n in self.model if fnmatch.fnmatchcase(n, pattern))
        assert self.store.keys(pattern) == expected

    @invariant()
    def same_contents(self) -> None:
        assert len(self.store) == len(self.model)
        for name, value in self.model.items():
            assert strict_equal(self.store.get(name), value), name


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
