"""
A local copy of a set of variables, kept fresh by the daemon: :class:`Mirror`.

A mirror is a listener of the client's :class:`~lttx.client.watch.WatchSet`
like a watch.  It is made in this order, so that no change falls between
the load and the stream: the watch starts first (the daemon streams every
change of the pattern from then on), then the mirror loads (``keys`` and a
``get`` with its revision of each name, all pipelined), then it applies the
changes that came meanwhile whose revision is above the loaded one, and
from then on every change as it comes.  Changes are applied in the
client's reactor thread, before the reply of any request that came after
them, so once a change made by this client returns, the mirror shows it.

Values are replaced, never changed in place (a ``dict_change`` makes a new
dict): a value read from a mirror never changes under its reader, in any
thread.  After a ``missed`` notice the mirror reloads itself (reads go on
meanwhile, from the copy as it was).
"""

from __future__ import annotations

import collections.abc
import threading
from typing import Any, Callable, Iterator, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from .watch import Change, Watch

#: Loads a pattern: a Deferred of ``{name: (value, revision)}``.
Loader = Callable[[str], "Deferred[dict[str, tuple[Any, int]]]"]


class Mirror(collections.abc.Mapping):  # type: ignore[type-arg]
    """
    A read-only mapping of every variable matching ``pattern``, kept in sync.

    Made by ``client.mirror(pattern)``.  ``m[name]`` and the other reads are
    local dictionary lookups.  :meth:`revision` gives a name's revision,
    :attr:`reloads` counts the reloads after missed changes, and
    :meth:`close` stops it.
    """

    log = Logger()

    def __init__(self, pattern: str, loader: Loader,
                 on_close: Optional[Callable[["Mirror"], Any]] = None) -> None:
        self.pattern = pattern
        self.matches = Watch(pattern).matches
        self._loader = loader
        self._on_close = on_close
        self._values: dict[str, Any] = {}
        self._revisions: dict[str, int] = {}
        self._lock = threading.Lock()  # held by writers and by iteration
        # While (re)loading: the changes that arrive, applied once it is loaded.
        self._pending: Optional[list[Change]] = None
        self._reload_asked = False
        self._broken = False  # a reload failed: the next change tries again
        #: Reloads after missed changes (or an inconsistency).
        self.reloads = 0
        self.closed = False
        self.armed = False  # see Watch.armed

    # -- the mapping ----------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._values))

    def snapshot(self) -> dict[str, Any]:
        """A plain dict of the mirror as it is now (consistent: taken under its lock)."""
        with self._lock:
            return dict(self._values)

    # The views are of a snapshot: the reactor thread may change the mirror
    # while another thread goes through them.
    def keys(self) -> Any:
        return self.snapshot().keys()

    def items(self) -> Any:
        return self.snapshot().items()

    def values(self) -> Any:
        return self.snapshot().values()

    def revision(self, name: str) -> int:
        """The revision of ``name`` in the mirror (0: absent)."""
        return self._revisions.get(name, 0)

    @property
    def loading(self) -> bool:
        """Whether the mirror is (re)loading (reads show the copy as it was)."""
        return self._pending is not None

    def close(self) -> Any:
        """Stop keeping the mirror (it keeps its last contents); a Deferred or
        None from the client."""
        if self.closed:
            return None
        self.closed = True
        return self._on_close(self) if self._on_close is not None else None

    # -- the reactor thread -------------------------------------------------------

    def load(self) -> "Deferred[Mirror]":
        """(Re)load: the watch must be running already."""
        self._pending = []
        d = self._loader(self.pattern)
        d.addCallback(self._loaded)
        return d

    def _loaded(self, found: dict[str, tuple[Any, int]]) -> "Mirror":
        values = {name: value for name, (value, revision) in found.items() if revision}
        revisions = {name: revision for name, (value, revision) in found.items() if revision}
        pending, self._pending = self._pending or [], None
        with self._lock:
            self._values, self._revisions = values, revisions
        self._apply(pending, loaded=revisions)
        return self

    def deliver(self, changes: list[Change]) -> None:
        if self.closed:
            return
        if self._pending is not None:
            self._pending.extend(changes)
            return
        if self._broken:
            self._broken = False
            self._reload()
            self._pending.extend(changes)  # type: ignore[union-attr]
            return
        self._apply(changes)

    def missed_changes(self, first: Optional[int], last: Optional[int]) -> None:
        if self.closed:
            return
        self._reload()

    def _reload(self) -> None:
        if self._pending is not None:
            # Reloading already: reload again once this one is done.
            self._reload_asked = True
            return
        self.reloads += 1
        self.log.info("mirror of {pattern} reloads", pattern=self.pattern)
        self.load().addCallbacks(self._reloaded, self._reload_failed)

    def _reloaded(self, _: Any) -> None:
        if self._reload_asked:
            self._reload_asked = False
            self._reload()

    def _reload_failed(self, failure: Any) -> None:
        self._pending = None
        self._broken = True
        self.log.warn("mirror of {pattern} could not reload ({error}); it tries again at "
                      "the next change", pattern=self.pattern, error=failure.getErrorMessage())

    def _apply(self, changes: list[Change], loaded: Optional[dict[str, int]] = None) -> None:
        values, revisions = self._values, self._revisions
        failed = None
        with self._lock:
            for change in changes:
                name = change.name
                if loaded is not None and change.revision <= loaded.get(name, 0):
                    continue  # in the load already
                try:
                    _APPLY[change.op](values, name, change.args)
                except Exception as e:  # a broad net: any mismatch means a reload
                    failed = (change, e)
                    break
                if name in values:
                    revisions[name] = change.revision
                else:
                    revisions.pop(name, None)
        if failed is not None:
            self.log.warn("mirror of {pattern}: cannot apply {op} to {name} ({error}); "
                          "reloading", pattern=self.pattern, op=failed[0].op,
                          name=failed[0].name, error=repr(failed[1]))
            self._reload()


def load_pattern(call: Callable[..., "Deferred[Any]"],
                 pattern: str) -> "Deferred[dict[str, tuple[Any, int]]]":
    """Every variable of ``pattern`` with its revision, by ``keys`` and pipelined ``get``."""
    def got_names(names: list[str]) -> "Deferred[dict[str, tuple[Any, int]]]":
        gets = [call("get", name, {"revision": True}) for name in names]
        return gatherResults(gets, consumeErrors=True).addCallback(
            lambda found: {name: (f[0], f[1]) if f else (None, 0)
                           for name, f in zip(names, found)})

    return call("keys", pattern).addCallback(got_names)


def _same(a: Any, b: Any) -> bool:
    """The daemon's equality of ``list_remove`` (lttx.state.store.strict_equal)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


def _put(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    values[name] = args[0]


def _remove(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    values.pop(name, None)


def _dict_change(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    current = values.get(name)
    new = dict(current) if current is not None else {}
    new[args[0]] = args[1]
    values[name] = new


def _list_append(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    values[name] = [*values.get(name, ()), args[0]]


def _list_pop(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    new = list(values[name])
    new.pop(args[0])
    values[name] = new


def _list_remove(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    new = list(values[name])
    for i, item in enumerate(new):
        if _same(item, args[0]):
            del new[i]
            break
    values[name] = new


def _incr(values: dict[str, Any], name: str, args: tuple[Any, ...]) -> None:
    values[name] = values.get(name, 0) + args[0]


_APPLY: dict[str, Callable[[dict[str, Any], str, tuple[Any, ...]], None]] = {
    "put": _put, "delete": _remove, "expire": _remove, "dict_change": _dict_change,
    "list_append": _list_append, "list_pop": _list_pop, "list_remove": _list_remove,
    "incr": _incr,
}

__all__ = ["Mirror", "load_pattern"]
