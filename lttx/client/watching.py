"""
The watch and mirror methods of :class:`~lttx.client.asyncclient.AsyncClient`
(:class:`Watching`): each returns a Deferred; the blocking client waits for
them.  What they build is in :mod:`lttx.client.watch` and
:mod:`lttx.client.mirror`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from .mirror import Mirror, load_pattern
from .watch import Change, Watch, WatchSet


class Watching:
    """Watch and mirror, for a client with ``call`` and a :class:`WatchSet` ``watches``."""

    watches: WatchSet

    def call(self, command: str, *args: Any) -> "Deferred[Any]":
        raise NotImplementedError

    def watch(self, pattern: str, callback: Optional[Callable[[Change], None]] = None,
              on_missed: Optional[Callable[[Optional[int], Optional[int]], None]] = None,
              ) -> "Deferred[Watch]":
        """
        Watch every change of the variables matching the glob ``pattern`` (of
        those this client's token may read), in order, from now on.

        :param callback: called in the reactor thread with each
            :class:`~lttx.client.watch.Change`; without it, the changes wait in
            the watch for ``get``.
        :param on_missed: called with ``(first, last)`` (change seqs, None:
            unknown) when changes were missed; without it, the callback gets a
            Change whose op is ``"missed"``, and ``get`` raises
            :class:`~lttx.errors.MissedChanges`.
        :return: (a Deferred of) the :class:`~lttx.client.watch.Watch`.
        """
        watch = Watch(pattern, callback, on_missed)
        return self._listen(watch).addCallback(lambda _: watch)

    def _listen(self, listener: Any) -> "Deferred[Any]":
        self.watches.add(listener)

        def refused(failure: Failure) -> Failure:
            self.watches.remove(listener)
            return failure

        d = self.call("watch", [listener.pattern])
        return d.addCallbacks(lambda reply: self.watches.watched(reply, listener), refused)

    def unwatch(self, pattern: str) -> "Deferred[list[str]]":
        """Stop every watch and mirror of ``pattern``; the patterns still watched."""
        for listener in self.watches.remove_pattern(pattern):
            listener.closed = True
        return self.call("unwatch", [pattern])

    def mirror(self, pattern: str) -> "Deferred[Mirror]":
        """
        A local, read-only copy of every variable matching ``pattern``, loaded
        now and kept in sync from the watch stream (see :mod:`lttx.client.mirror`).

        :return: (a Deferred of) the :class:`~lttx.client.mirror.Mirror`, once loaded.
        """
        mirror = Mirror(pattern, lambda p: load_pattern(self.call, p), self._close_mirror)

        def not_loaded(failure: Failure) -> Failure:
            mirror.closed = True
            self._close_mirror(mirror).addErrback(lambda _: None)
            return failure

        return self._listen(mirror).addCallback(lambda _: mirror.load().addErrback(not_loaded))

    def _close_mirror(self, mirror: Mirror) -> "Deferred[Any]":
        if self.watches.remove(mirror):
            return self.call("unwatch", [mirror.pattern])
        return succeed(None)


__all__ = ["Watching"]
