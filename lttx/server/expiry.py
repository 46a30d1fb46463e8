"""
The periodic sweep of expired variables: :class:`ExpirySweeper`.

An expired variable is already gone for every command (each checks on
access); the sweep removes the ones nobody touches, so their memory is freed
and their removal (a change, op ``"expire"``) is journalled and seen without
waiting for a reader.  Each run removes at most ``slice_size`` variables at a
time, yielding to the reactor between slices, so a million leases expiring
together never hold the reactor for long.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..errors import Unavailable

#: Variables one slice of the sweep may remove.
DEFAULT_SLICE = 1000


class ExpirySweeper:
    """
    Calls ``store.sweep(slice_size)`` until a slice removes fewer than a
    full slice; a :class:`~twisted.application.internet.TimerService` runs
    :meth:`run` (once a second in the daemon).

    :param store: has ``sweep(limit) -> int`` (or a Deferred of it).
    :param clock: schedules the next slice of a long sweep.
    :param after: called after each slice (the channel registry's ``flush``:
        watchers are told of the expiries at once).
    """

    log = Logger()

    def __init__(self, store: Any, clock: IReactorTime, slice_size: int = DEFAULT_SLICE,
                 after: Optional[Callable[[], None]] = None) -> None:
        self.store = store
        self._after = after
        self.clock = clock
        self.slice_size = slice_size
        self.removed = 0
        self._running = False

    def run(self) -> None:
        """Start a sweep unless one is still running."""
        if not self._running:
            self._running = True
            self._slice()

    def _slice(self) -> None:
        d: Deferred[Any] = maybeDeferred(self.store.sweep, self.slice_size)
        d.addCallbacks(self._swept, self._failed)

    def _swept(self, removed: int) -> None:
        self.removed += removed
        if self._after is not None:
            self._after()
        if removed >= self.slice_size:
            self.clock.callLater(0, self._slice)
        else:
            self._running = False

    def _failed(self, failure: Any) -> None:
        self._running = False
        if failure.check(Unavailable):
            return  # Redis is down: its client logs the outage once; the next run retries
        self.log.warn("sweep of expired variables failed: {reason}",
                      reason=failure.getErrorMessage())


__all__ = ["ExpirySweeper", "DEFAULT_SLICE"]
