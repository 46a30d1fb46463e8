"""
The client's side of watching variables: :class:`Change`, :class:`Watch`,
and :class:`WatchSet`, what one client remembers of its watches across
connections.

The daemon sends a connection's watched changes as MESSAGE frames with a nil
channel (``[3, nil, name, [op, args, revision], seq]``, ``docs/protocol.md``,
"Watch"), in the order it applied them, filtered by the union of the
connection's patterns; the client routes each to the watches (and mirrors)
whose own pattern matches, in the reactor thread, before any reply that
came after it (so that once a change of this client returns, its mirrors
show it).  It remembers the change log's epoch and the last seq received,
and resumes from there after a reconnection; a ``missed`` notice (the
daemon dropped changes this client had not read, or restarted) is passed to
every watch: :meth:`Watch.get` raises :class:`~lttx.errors.MissedChanges` in
order with the changes, a callback gets a :class:`Change` whose op is
``"missed"`` (or ``on_missed`` is called), a mirror reloads itself.
"""

from __future__ import annotations

import collections
import fnmatch
import re
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

from twisted.logger import Logger

from ..errors import MissedChanges, TimeoutError

#: The op of the Change a callback watch gets when it missed changes.
MISSED = "missed"


class Change(NamedTuple):
    """
    One change of a watched variable: ``op`` is the command that made it
    (``"put"``, ``"delete"``, ``"expire"``, ``"dict_change"``,
    ``"list_append"``, ``"list_pop"``, ``"list_remove"``, ``"incr"``), ``args``
    its arguments after the name (``put``: the value; ``dict_change``: the key
    and the value; ``list_pop``: the index; ``incr``: the amount), and
    ``revision`` the variable's revision after it.

    A callback watch without ``on_missed`` gets ``Change(pattern, "missed",
    (first, last), 0)`` when changes were missed (``first``/``last``: the
    change seqs, None when unknown).
    """

    name: str
    op: str
    args: tuple[Any, ...]
    revision: int


class Watch:
    """
    The changes of the variables matching one glob pattern.

    Made by ``client.watch(pattern)``.  Without a callback the changes wait
    here for :meth:`get`; with one, they are passed to it and :meth:`get`
    has nothing.

    :ivar pattern: the glob pattern (``fnmatch``, case-sensitive).
    """

    log = Logger()

    def __init__(self, pattern: str, callback: Optional[Callable[[Change], None]] = None,
                 on_missed: Optional[Callable[[Optional[int], Optional[int]], None]] = None,
                 ) -> None:
        self.pattern = pattern
        self.matches = re.compile(fnmatch.translate(pattern)).match
        self._callback = callback
        self._on_missed = on_missed
        self._changes: "collections.deque[Any]" = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        #: How many times this watch was told it missed changes.
        self.missed = 0
        self.closed = False
        #: Set by the daemon's reply to its watch request: the changes that
        #: arrive before it were made before the watch, and are not its own.
        self.armed = False

    # -- the reactor thread -------------------------------------------------

    def deliver(self, changes: list[Change]) -> None:
        """Changes of matching variables, in order."""
        if self._callback is not None:
            for change in changes:
                self._call(self._callback, change)
            return
        with self._ready:
            self._changes.extend(changes)
            self._ready.notify()

    def missed_changes(self, first: Optional[int], last: Optional[int]) -> None:
        """The daemon says changes ``first`` to ``last`` will not arrive."""
        self.missed += 1
        if self._on_missed is not None:
            self._call(lambda _: self._on_missed(first, last), None)  # type: ignore[misc]
        elif self._callback is not None:
            self._call(self._callback, Change(self.pattern, MISSED, (first, last), 0))
        else:
            with self._ready:
                self._changes.append(MissedChanges(
                    f"changes of {self.pattern!r} were missed (seqs "
                    f"{'?' if first is None else first} to {'?' if last is None else last}): "
                    f"the watcher lagged past what the daemon retains, or it restarted",
                    first, last))
                self._ready.notify()

    def _call(self, callback: Callable[[Any], None], change: Any) -> None:
        try:
            callback(change)
        except Exception:
            # The user's code failed; later changes still reach it.
            self.log.failure("a watch callback failed on {pattern}", pattern=self.pattern)

    # -- any thread -----------------------------------------------------------

    def get(self, timeout: Optional[float] = None) -> Change:
        """
        The next change, waiting at most ``timeout`` seconds (None: for ever).

        :raises MissedChanges: in place of the changes this watch missed
            (once per notice; the next call goes on with later changes).
        :raises lttx.TimeoutError: if none came in time (a ``builtins.TimeoutError``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._changes:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no change of {self.pattern!r} within {timeout} s")
                self._ready.wait(left)
            item = self._changes.popleft()
        if isinstance(item, MissedChanges):
            raise item
        return item  # type: ignore[no-any-return]

    def qsize(self) -> int:
        """Changes waiting for :meth:`get`."""
        return len(self._changes)


class WatchSet:
    """
    Every watch and mirror of one client, and where the client is in the
    daemon's change log (its epoch and the last seq received).
    """

    log = Logger()

    def __init__(self) -> None:
        #: The listeners (Watch or Mirror: ``pattern``, ``matches``,
        #: ``deliver``, ``missed_changes``), in the order they were made.
        self.listeners: list[Any] = []
        self.epoch: Optional[int] = None
        self.last = 0

    @property
    def patterns(self) -> list[str]:
        """The patterns watched, each once."""
        return sorted({listener.pattern for listener in self.listeners})

    def add(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove_pattern(self, pattern: str) -> list[Any]:
        """Forget every listener of ``pattern``; those forgotten."""
        gone = [w for w in self.listeners if w.pattern == pattern]
        self.listeners = [w for w in self.listeners if w.pattern != pattern]
        return gone

    def remove(self, listener: Any) -> bool:
        """Forget one listener; whether its pattern has no listener left."""
        if listener in self.listeners:
            self.listeners.remove(listener)
        return all(w.pattern != listener.pattern for w in self.listeners)

    def watched(self, reply: Any, listener: Any = None) -> Any:
        """A watch reply, ``{"epoch", "next", "from"}``, for ``listener`` (None:
        a resumption); the reply."""
        if listener is not None:
            listener.armed = True
        if not isinstance(reply, dict):
            return reply
        if reply.get("epoch") != self.epoch:
            self.epoch, self.last = reply.get("epoch"), reply.get("from", 1) - 1
        else:
            self.last = max(self.last, reply.get("from", 1) - 1)
        return reply

    @property
    def resume_point(self) -> Optional[list[Any]]:
        return None if self.epoch is None else [self.epoch, self.last]

    def received(self, frames: list[Any]) -> None:
        """Messages with a nil channel: ``Message(None, name, [op, args, revision], seq)``."""
        if not frames:
            return
        changes = []
        for message in frames:
            op, args, revision = message.data
            changes.append(Change(message.key, op, tuple(args), revision))
        last = frames[-1].seq
        if last > self.last:
            self.last = last
        for listener in list(self.listeners):
            if not listener.armed:
                continue
            mine = [c for c in changes if listener.matches(c.name)]
            if mine:
                listener.deliver(mine)

    def missed(self, text: str, detail: dict[str, Any]) -> None:
        """A ``missed`` notice."""
        first, last = detail.get("first"), detail.get("last")
        self.log.warn("watched changes were missed ({first} to {last}): {text}",
                      first="?" if first is None else first,
                      last="?" if last is None else last, text=text)
        if "previous_epoch" in detail:  # the log was made again: read on from "from"
            start = detail.get("from")
            self.epoch, self.last = detail.get("epoch"), (
                start - 1 if type(start) is int and start > 0 else 0)
        elif isinstance(last, int) and last > self.last:
            self.last = last
        for listener in list(self.listeners):
            listener.missed_changes(first, last)


__all__ = ["Change", "MISSED", "Watch", "WatchSet"]
