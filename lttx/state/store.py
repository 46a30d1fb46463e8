"""
Cloud variables: the store interface and the in-memory store.

Plain Python, no reactor: values in, values or typed errors out.  A store
refuses an operation before changing anything, so a refused operation leaves
every variable as it was.

Values are owned by the store once passed in: the daemon hands it values it
has just decoded, and encodes what it gets back before anyone else can touch
them, so nothing is copied on the way.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterator

from zope.interface import Interface, implementer

from ..errors import BadRequest, IndexOutOfRange, NotFound, WrongTypeError
from ..wire.names import check_variable_name

#: Marks "no such variable / key" in results where None is a legitimate value.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class IVariableStore(Interface):
    """
    What the daemon needs of a variable store.

    Each method may return its result directly or a Deferred that fires with
    it (an engine backed by a remote server); it raises, or fails with, an
    :class:`lttx.errors.LTtxError` subclass when it refuses.
    """

    def put(name: str, value: Any) -> None:
        """Set ``name`` to ``value``."""

    def get(name: str) -> Any:
        """The value of ``name``, or :data:`MISSING`."""

    def delete(name: str) -> bool:
        """Remove ``name``; whether it existed."""

    def exists(name: str) -> bool:
        """Whether ``name`` exists."""

    def keys(pattern: str) -> list[str]:
        """The sorted names matching a glob ``pattern`` (``*``, ``?``, ``[...]``)."""

    def dict_change(name: str, key: Any, value: Any) -> None:
        """``d[key] = value`` on the dict ``name``, created if absent."""

    def get_dict_value(name: str, key: Any) -> Any:
        """``d[key]``, or :data:`MISSING` if the variable or the key is absent."""

    def list_append(name: str, item: Any) -> int:
        """Append to the list ``name``, created if absent; the new length."""

    def list_pop(name: str, index: int) -> Any:
        """``l.pop(index)`` on the list ``name``."""

    def list_remove(name: str, item: Any) -> bool:
        """Remove the first item strictly equal to ``item``; whether one was."""

    def get_list_value(name: str, index: int) -> Any:
        """``l[index]`` of the list ``name``."""

    def __len__() -> int:
        """The number of variables."""


def strict_equal(a: Any, b: Any) -> bool:
    """
    Equality as a user of typed values expects it: ``1``, ``1.0`` and ``True``
    are three different values, as they are on the wire; dicts compare
    regardless of key order.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(strict_equal, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, float) and a != a:
        return b != b  # NaN is equal to NaN here, so a NaN can be removed
    return bool(a == b)


def check_index(index: Any) -> int:
    if type(index) is not int:
        raise BadRequest(f"a list index must be an int, not {type(index).__name__}")
    return index


def check_dict_key(key: Any) -> Any:
    # The keys MessagePack maps carry and Python dicts hash alike.
    if type(key) not in (str, int, bytes):
        raise BadRequest(f"a dict key must be str, int or bytes, not {type(key).__name__}")
    return key


def _type_name(value: Any) -> str:
    return {dict: "dict", list: "list"}.get(type(value), type(value).__name__)


@implementer(IVariableStore)
class MemoryStore:
    """The embedded store: a dict of names to plain values, in the daemon's memory."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every (name, value); for snapshots."""
        return iter(self._values.items())

    def names(self) -> list[str]:
        """Every name, unsorted (for snapshots: a C-speed copy of the table's keys)."""
        return list(self._values)

    def _typed(self, name: str, kind: type, operation: str) -> Any:
        value = self._values.get(check_variable_name(name), MISSING)
        if value is not MISSING and type(value) is not kind:
            raise WrongTypeError(
                f"{operation} needs a {kind.__name__}, but {name!r} holds a {_type_name(value)}")
        return value

    def put(self, name: str, value: Any) -> None:
        self._values[check_variable_name(name)] = value

    def get(self, name: str) -> Any:
        return self._values.get(check_variable_name(name), MISSING)

    def delete(self, name: str) -> bool:
        return self._values.pop(check_variable_name(name), MISSING) is not MISSING

    def exists(self, name: str) -> bool:
        return check_variable_name(name) in self._values

    def keys(self, pattern: str = "*") -> list[str]:
        if not isinstance(pattern, str):
            raise BadRequest("a key pattern must be a string")
        if pattern == "*":
            return sorted(self._values)
        return sorted(n for n in self._values if fnmatch.fnmatchcase(n, pattern))

    def dict_change(self, name: str, key: Any, value: Any) -> None:
        check_dict_key(key)
        d = self._typed(name, dict, "dict_change")
        if d is MISSING:
            self._values[name] = {key: value}
        else:
            d[key] = value

    def get_dict_value(self, name: str, key: Any) -> Any:
        check_dict_key(key)
        d = self._typed(name, dict, "get_dict_value")
        return MISSING if d is MISSING else d.get(key, MISSING)

    def list_append(self, name: str, item: Any) -> int:
        lst = self._typed(name, list, "list_append")
        if lst is MISSING:
            self._values[name] = lst = []
        lst.append(item)
        return len(lst)

    def _list(self, name: str, operation: str) -> list[Any]:
        lst = self._typed(name, list, operation)
        if lst is MISSING:
            raise NotFound(f"no variable named {name!r}")
        return lst

    def list_pop(self, name: str, index: int = -1) -> Any:
        check_index(index)
        lst = self._list(name, "list_pop")
        if not lst:
            raise IndexOutOfRange(f"pop from the empty list {name!r}")
        if not -len(lst) <= index < len(lst):
            raise IndexOutOfRange(f"index {index} out of range for {name!r} of length {len(lst)}")
        return lst.pop(index)

    def list_remove(self, name: str, item: Any) -> bool:
        lst = self._typed(name, list, "list_remove")
        if lst is MISSING:
            return False
        for i, candidate in enumerate(lst):
            if strict_equal(candidate, item):
                del lst[i]
                return True
        return False

    def get_list_value(self, name: str, index: int) -> Any:
        check_index(index)
        lst = self._list(name, "get_list_value")
        if not -len(lst) <= index < len(lst):
            raise IndexOutOfRange(f"index {index} out of range for {name!r} of length {len(lst)}")
        return lst[index]
