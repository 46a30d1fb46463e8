"""
Cloud variables: the store interface and the in-memory store.

Plain Python, no reactor: values in, values or typed errors out.  A store
refuses an operation before changing anything, so a refused operation leaves
every variable as it was.

Values are owned by the store once passed in: the daemon hands it values it
has just decoded, and encodes what it gets back before anyone else can touch
them, so nothing is copied on the way.

Revisions: every variable has one, an int that grows by one with each change
of it (so a watcher sees consecutive revisions per variable).  A variable
created (again) starts one above the highest revision the store ever gave
(its *top*), so a delete followed by a re-create never reuses a revision,
without keeping anything of deleted names.  The top survives restarts in the
journal and snapshot (:mod:`lttx.storage`) and in Redis.

Expiry: a deadline is absolute wall-clock time (seconds since the epoch, from
the injected ``clock``); an expired variable is removed by the first command
that touches it, or by :meth:`MemoryStore.sweep`, whichever comes first, as a
change of its own (op ``"expire"``).

Every applied change is reported to the store's ``observer`` (if any) as a
:class:`Change`: the daemon's change log (watch and mirror,
:mod:`lttx.state.changelog`) is fed from these.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

from twisted.internet.task import Cooperator
from zope.interface import Interface, implementer

from ..errors import BadRequest, Conflict, IndexOutOfRange, NotFound, WrongTypeError
from ..wire.names import check_variable_name
from .patterns import SLICE, check_pattern, cooperator_on, scan_names, select

#: Marks "no such variable / key" in results where None is a legitimate value.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()

#: The range of an integer counter (Redis's INCR range).
INT_MIN, INT_MAX = -2**63, 2**63 - 1


class Change(NamedTuple):
    """
    One applied change: ``op`` is the command that made it (``"put"``,
    ``"delete"``, ``"expire"``, ``"dict_change"``, ``"list_append"``,
    ``"list_pop"``, ``"list_remove"``, ``"incr"``), ``args`` its arguments
    after the name (``list_pop``: the index; ``incr``: the amount), and
    ``revision`` the variable's revision after it (a delete's or expiry's:
    the revision the removal had).
    """

    name: str
    op: str
    args: tuple[Any, ...]
    revision: int


class IVariableStore(Interface):
    """
    What the daemon needs of a variable store.

    Each method may return its result directly or a Deferred that fires with
    it (an engine backed by a remote server); it raises, or fails with, an
    :class:`lttx.errors.LTtxError` subclass when it refuses.
    """

    def put(name: str, value: Any, if_revision: Optional[int] = None,
            ttl: Optional[float] = None) -> None:
        """Set ``name`` to ``value``; with ``ttl``, it expires ``ttl`` seconds
        from now, without, any expiry it had is cleared.

        :raises Conflict: ``if_revision`` was given and is not the current
            revision (0: the variable exists)."""

    def get(name: str, revision: bool = False) -> Any:
        """The value of ``name``, or :data:`MISSING`; with ``revision``,
        ``(value, revision)``, or ``(MISSING, 0)``."""

    def delete(name: str, if_revision: Optional[int] = None) -> bool:
        """Remove ``name``; whether it existed."""

    def incr(name: str, by: Any = 1) -> Any:
        """Add ``by`` (int or float) to the number ``name`` (created at 0); the new value."""

    def expire(name: str, seconds: float) -> bool:
        """Make ``name`` expire ``seconds`` from now; whether it exists."""

    def ttl(name: str) -> Optional[float]:
        """Seconds until ``name`` expires; None if it has no expiry or does not exist."""

    def exists(name: str) -> bool:
        """Whether ``name`` exists."""

    def keys(pattern: str) -> Any:
        """The sorted names matching a glob ``pattern`` (``*``, ``?``, ``[...]``),
        or a Deferred of them; bounded as :mod:`lttx.state.patterns` says
        (pattern length, names per reply)."""

    def dict_change(name: str, key: Any, value: Any, if_revision: Optional[int] = None) -> None:
        """``d[key] = value`` on the dict ``name``, created if absent (every
        in-place operation takes ``if_revision`` as :meth:`put` does)."""

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
        # The keys' types too: ``{1: x}`` and ``{1.0: x}`` have equal keys in Python.
        return (a.keys() == b.keys() and _typed_keys(a) == _typed_keys(b)
                and all(strict_equal(v, b[k]) for k, v in a.items()))
    if isinstance(a, float) and a != a:
        return b != b  # NaN is equal to NaN here, so a NaN can be removed
    return bool(a == b)


def _typed_keys(d: dict[Any, Any]) -> set[tuple[type, Any]]:
    return {(type(k), k) for k in d}


def check_index(index: Any) -> int:
    if type(index) is not int:
        raise BadRequest(f"a list index must be an int, not {type(index).__name__}")
    return index


def check_dict_key(key: Any) -> Any:
    # The keys MessagePack maps carry and Python dicts hash alike.
    if type(key) not in (str, int, bytes):
        raise BadRequest(f"a dict key must be str, int or bytes, not {type(key).__name__}")
    return key


def check_revision(revision: Any) -> Optional[int]:
    if revision is not None and (type(revision) is not int or revision < 0):
        raise BadRequest(f"if_revision must be an int >= 0, not {revision!r:.40}")
    return revision


def check_seconds(seconds: Any, what: str) -> float:
    """A finite number of seconds (an int or float, not a bool)."""
    if type(seconds) not in (int, float) or not math.isfinite(seconds):
        raise BadRequest(f"{what} must be a finite number of seconds, not {seconds!r:.40}")
    return float(seconds)


def check_ttl(ttl: Any) -> Optional[float]:
    if ttl is None:
        return None
    if check_seconds(ttl, "ttl") <= 0:
        raise BadRequest(f"ttl must be positive, not {ttl!r}")
    return float(ttl)


def add_numbers(name: str, current: Any, by: Any) -> Any:
    """``current + by`` for incr, or the error incr refuses it with."""
    if type(by) not in (int, float):
        raise BadRequest(f"incr needs an int or float amount, not {type(by).__name__}")
    if type(current) not in (int, float):
        raise WrongTypeError(
            f"incr needs an int or float, but {name!r} holds a {_type_name(current)}")
    result = current + by
    if type(result) is int and not INT_MIN <= result <= INT_MAX:
        raise BadRequest(f"incr of {name!r} would overflow a 64-bit integer")
    if type(result) is float and not math.isfinite(result):
        raise BadRequest(f"incr of {name!r} would give {result}")
    return result


def conflict(name: str, current: int, expected: int) -> Conflict:
    if expected == 0:
        return Conflict(f"{name!r} exists (revision {current}); if_revision=0 "
                        "needs it absent")
    if current == 0:
        return Conflict(f"{name!r} does not exist; if_revision={expected}")
    return Conflict(f"{name!r} is at revision {current}, not {expected}")


def _type_name(value: Any) -> str:
    return {dict: "dict", list: "list"}.get(type(value), type(value).__name__)


@implementer(IVariableStore)
class MemoryStore:
    """
    The embedded store: a dict of names to plain values, in the daemon's memory.

    :param clock: the wall clock (seconds since the epoch) deadlines are
        measured on; None: nothing expires, as while a journal is replayed
        (replay must redo exactly what was done, and the expiries that
        happened are records of their own), and ttls are refused.
    """

    #: Called with each applied :class:`Change`, after it is applied (None:
    #: no Change is even built, which keeps writes as cheap as they were).
    observer: Optional[Callable[[Change], None]] = None
    #: Called with a name just before its expiry removes it (the durable
    #: store keeps a snapshot's view of it, as before any change).
    expiring: Optional[Callable[[str], None]] = None
    #: Called with a name just after its expiry removed it (the durable
    #: store journals the removal).
    expired: Optional[Callable[[str], None]] = None

    def __init__(self, clock: Optional[Callable[[], float]] = time.time) -> None:
        self.clock = clock
        self._values: dict[str, Any] = {}
        self._revisions: dict[str, int] = {}
        #: The highest revision ever given (a new variable starts above it).
        self.top = 0
        self._deadlines: dict[str, float] = {}
        # (deadline, name), with stale entries left in until they are due.
        self._heap: list[tuple[float, str]] = []
        # Runs the steps of a large keys scan (None: the global reactor).
        self._scans: Optional[Cooperator] = None

    def schedule_scans_on(self, clock: Any) -> None:
        """Run the slices of large ``keys`` scans in ``clock``'s reactor."""
        self._scans = cooperator_on(clock)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def expiring_count(self) -> int:
        """How many variables have an expiry."""
        return len(self._deadlines)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every (name, value); for snapshots."""
        return iter(self._values.items())

    def names(self) -> list[str]:
        """Every name, unsorted (for snapshots: a C-speed copy of the table's keys)."""
        return list(self._values)

    def entry(self, name: str) -> tuple[Any, int, Optional[float]]:
        """``(value, revision, deadline)`` as stored, expired or not (for snapshots)."""
        return (self._values.get(name, MISSING), self._revisions.get(name, 0),
                self._deadlines.get(name))

    def restore(self, name: str, value: Any, revision: int, deadline: Optional[float]) -> None:
        """Put back a variable as a snapshot holds it (no change is reported)."""
        self._values[check_variable_name(name)] = value
        self._revisions[name] = revision
        self.top = max(self.top, revision)
        if deadline is not None:
            self._set_deadline(name, deadline)

    # -- revisions, expiry, observation ---------------------------------------

    def _live(self, name: str) -> None:
        """Expire ``name`` now if its deadline has passed."""
        deadline = self._deadlines.get(name)
        if deadline is not None and self.clock is not None and deadline <= self.clock():
            self.expire_now(name)

    def expire_now(self, name: str) -> bool:
        """Remove ``name`` as expired (a change, op ``"expire"``); whether it existed."""
        if name not in self._values:
            return False
        if self.expiring is not None:
            self.expiring(name)
        revision = self._bump(name)
        del self._values[name]
        del self._revisions[name]
        self._deadlines.pop(name, None)
        if self.expired is not None:
            self.expired(name)
        self._report(name, "expire", (), revision)
        return True

    def _bump(self, name: str) -> int:
        current = self._revisions.get(name)
        revision = current + 1 if current else self.top + 1
        self._revisions[name] = revision
        if revision > self.top:
            self.top = revision
        return revision

    def _check(self, name: str, expected: Optional[int]) -> None:
        if expected is not None:
            current = self._revisions.get(name, 0)
            if current != check_revision(expected):
                raise conflict(name, current, expected)

    def _report(self, name: str, op: str, args: tuple[Any, ...], revision: int) -> None:
        if self.observer is not None:
            self.observer(Change(name, op, args, revision))

    def _changed(self, name: str, op: str, *args: Any) -> None:
        self._report(name, op, args, self._bump(name))

    def _set_deadline(self, name: str, deadline: float) -> None:
        self._deadlines[name] = deadline
        heapq.heappush(self._heap, (deadline, name))
        if len(self._heap) > 2 * len(self._deadlines) + 1024:
            # Mostly stale entries (leases renewed long before they were
            # due): rebuild, amortised O(1) per deadline set.
            self._heap = [(d, n) for n, d in self._deadlines.items()]
            heapq.heapify(self._heap)

    def _typed(self, name: str, kind: type, operation: str) -> Any:
        if self._deadlines:
            self._live(check_variable_name(name))
        value = self._values.get(check_variable_name(name), MISSING)
        if value is not MISSING and type(value) is not kind:
            raise WrongTypeError(
                f"{operation} needs a {kind.__name__}, but {name!r} holds a {_type_name(value)}")
        return value

    def revision(self, name: str) -> int:
        """The current revision of ``name`` (0: absent)."""
        if self._deadlines:
            self._live(name)
        return self._revisions.get(name, 0)

    def deadline(self, name: str) -> Optional[float]:
        """The wall-clock time ``name`` expires at, or None."""
        return self._deadlines.get(name)

    def due(self, name: str) -> bool:
        """Whether ``name`` has expired but is not removed yet."""
        deadline = self._deadlines.get(name)
        return deadline is not None and self.clock is not None and deadline <= self.clock()

    def sweep(self, limit: int = 1000) -> int:
        """Remove at most ``limit`` expired variables, soonest first; how many."""
        if self.clock is None:
            return 0
        now, heap, removed = self.clock(), self._heap, 0
        while heap and heap[0][0] <= now and removed < limit:
            deadline, name = heapq.heappop(heap)
            if self._deadlines.get(name) == deadline:  # not a stale entry
                self.expire_now(name)
                removed += 1
        return removed

    # -- the commands ----------------------------------------------------------

    def put(self, name: str, value: Any, if_revision: Optional[int] = None,
            ttl: Optional[float] = None) -> None:
        if ttl is not None:
            if self.clock is None:
                raise BadRequest("this store has no clock: it cannot expire variables")
            return self.put_until(name, value, self.clock() + check_ttl(ttl), if_revision)
        check_variable_name(name)
        deadlines = self._deadlines
        if deadlines:
            self._live(name)
            self._check(name, if_revision)
            deadlines.pop(name, None)
        elif if_revision is not None:
            self._check(name, if_revision)
        self._values[name] = value
        # The hot path: _bump and _report inlined.
        revisions = self._revisions
        current = revisions.get(name)
        revision = revisions[name] = current + 1 if current else self.top + 1
        if revision > self.top:
            self.top = revision
        if self.observer is not None:
            self.observer(Change(name, "put", (value,), revision))
        return None

    def put_until(self, name: str, value: Any, deadline: float,
                  if_revision: Optional[int] = None) -> None:
        """``put`` with an absolute deadline (a ttl, or journal replay)."""
        check_variable_name(name)
        if self._deadlines:
            self._live(name)
        self._check(name, if_revision)
        self._values[name] = value
        self._set_deadline(name, deadline)
        self._changed(name, "put", value)

    def get(self, name: str, revision: bool = False) -> Any:
        if self._deadlines:
            self._live(check_variable_name(name))
        value = self._values.get(check_variable_name(name), MISSING)
        if revision:
            return value, self._revisions.get(name, 0)
        return value

    def delete(self, name: str, if_revision: Optional[int] = None) -> bool:
        check_variable_name(name)
        if self._deadlines:
            self._live(name)
        self._check(name, if_revision)
        if name not in self._values:
            return False
        revision = self._bump(name)
        del self._values[name]
        del self._revisions[name]
        self._deadlines.pop(name, None)
        self._report(name, "delete", (), revision)
        return True

    def exists(self, name: str) -> bool:
        if self._deadlines:
            self._live(check_variable_name(name))
        return check_variable_name(name) in self._values

    def keys(self, pattern: str = "*") -> Any:
        """The sorted names matching ``pattern``: a list for a store of at most
        :data:`~lttx.state.patterns.SLICE` names, else a Deferred computed in
        slices (:mod:`lttx.state.patterns`)."""
        check_pattern(pattern)
        # Expired names are left out of the reply, not swept here: a sweep of
        # every expired variable (each journalled) would be one more unbounded
        # stall of the reactor; the periodic sweep removes them in batches.
        if len(self._values) <= SLICE:
            return self._unexpired(select(list(self._values), pattern))
        found = scan_names(list(self._values), pattern, self._scans)
        return found.addCallback(self._unexpired)

    def _unexpired(self, names: list[str]) -> list[str]:
        """``names`` but those past their deadline (the reply is sorted: so is this)."""
        if not self._deadlines or self.clock is None:
            return names
        now, deadlines = self.clock(), self._deadlines
        return [n for n in names if (d := deadlines.get(n)) is None or d > now]

    def incr(self, name: str, by: Any = 1) -> Any:
        current = self.get(name)
        value = add_numbers(name, 0 if current is MISSING else current, by)
        self._values[name] = value
        self._changed(name, "incr", by)
        return value

    def expire(self, name: str, seconds: Any) -> bool:
        seconds = check_seconds(seconds, "expire")
        if not self.exists(name):
            return False
        if self.clock is None:
            raise BadRequest("this store has no clock: it cannot expire variables")
        if seconds <= 0:
            return self.expire_now(name)
        self._set_deadline(name, self.clock() + seconds)
        return True

    def expire_at(self, name: str, deadline: Optional[float]) -> None:
        """Set (or with None clear) the deadline of an existing ``name`` (replay)."""
        if name in self._values:
            if deadline is None:
                self._deadlines.pop(name, None)
            else:
                self._set_deadline(name, deadline)

    def ttl(self, name: str) -> Optional[float]:
        if not self.exists(name):
            return None
        deadline = self._deadlines.get(name)
        if deadline is None or self.clock is None:
            return None
        return max(0.0, deadline - self.clock())

    def dict_change(self, name: str, key: Any, value: Any,
                    if_revision: Optional[int] = None) -> None:
        check_dict_key(key)
        d = self._typed(name, dict, "dict_change")
        self._check(name, if_revision)
        if d is MISSING:
            self._values[name] = {key: value}
        else:
            d[key] = value
        self._changed(name, "dict_change", key, value)

    def get_dict_value(self, name: str, key: Any) -> Any:
        check_dict_key(key)
        d = self._typed(name, dict, "get_dict_value")
        return MISSING if d is MISSING else d.get(key, MISSING)

    def list_append(self, name: str, item: Any, if_revision: Optional[int] = None) -> int:
        lst = self._typed(name, list, "list_append")
        self._check(name, if_revision)
        if lst is MISSING:
            self._values[name] = lst = []
        lst.append(item)
        self._changed(name, "list_append", item)
        return len(lst)

    def _list(self, name: str, operation: str) -> list[Any]:
        lst = self._typed(name, list, operation)
        if lst is MISSING:
            raise NotFound(f"no variable named {name!r}")
        return lst

    def list_pop(self, name: str, index: int = -1, if_revision: Optional[int] = None) -> Any:
        check_index(index)
        lst = self._list(name, "list_pop")
        self._check(name, if_revision)
        if not lst:
            raise IndexOutOfRange(f"pop from the empty list {name!r}")
        if not -len(lst) <= index < len(lst):
            raise IndexOutOfRange(f"index {index} out of range for {name!r} of length {len(lst)}")
        item = lst.pop(index)
        self._changed(name, "list_pop", index)
        return item

    def list_remove(self, name: str, item: Any, if_revision: Optional[int] = None) -> bool:
        lst = self._typed(name, list, "list_remove")
        self._check(name, if_revision)
        if lst is MISSING:
            return False
        for i, candidate in enumerate(lst):
            if strict_equal(candidate, item):
                del lst[i]
                self._changed(name, "list_remove", item)
                return True
        return False

    def get_list_value(self, name: str, index: int) -> Any:
        check_index(index)
        lst = self._list(name, "get_list_value")
        if not -len(lst) <= index < len(lst):
            raise IndexOutOfRange(f"index {index} out of range for {name!r} of length {len(lst)}")
        return lst[index]
