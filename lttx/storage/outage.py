"""
A journal that cannot be written (a full disk), and writing it again once it can.

- :class:`JournalJob`: one batch of the journal's work (records before a
  rotation, the rotation, records after it, the fsync) and the replies that
  wait for it.  Each step is marked done as it succeeds, so a job that failed
  half-way is retried from the step that failed, never written twice.
- :class:`Outage`: the facts of one spell without a writable journal (since
  when, how many attempts, how many writes were refused), for its two log
  lines and the store's status.

When a journal write fails, the changes of the failed job are already applied
in memory (readers see them): their replies wait until the job is written, as
Redis keeps its AOF buffer and rewrites it, so a write is acknowledged only
once it is in the journal, and a write that was refused (``storage``) changed
nothing.  Bytes a failed ``write(2)`` left in the file are cut before the
next attempt (:meth:`~lttx.storage.journal.AppendFile.write`), so the journal
never holds a torn record followed by good ones.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

#: Seconds between two attempts to write the journal while it fails.
RETRY_INTERVAL = 1.0


class JournalJob:
    """One batch for the journal lane, and who waits for it."""

    def __init__(self, before: bytes, rotate_to: Optional[int], after: bytes, sync: bool,
                 waiters: list[tuple["Deferred[Any]", Any]],
                 rotated: "Optional[Deferred[None]]") -> None:
        self.before = before
        self.rotate_to = rotate_to
        self.after = after
        self.sync = sync
        self.synced = False
        self.waiters = waiters
        self.rotated = rotated

    def __len__(self) -> int:
        """How many replies wait for this job."""
        return len(self.waiters)

    def settle(self) -> None:
        """The job is written: its replies go."""
        waiters, self.waiters = self.waiters, []
        rotated, self.rotated = self.rotated, None
        for d, result in waiters:
            d.callback(result)
        if rotated is not None:
            rotated.callback(None)

    def refuse(self, error: Exception) -> None:
        """The job will never be written: its replies fail with ``error``."""
        waiters, self.waiters = self.waiters, []
        rotated, self.rotated = self.rotated, None
        for d, _ in waiters:
            d.errback(error)
        if rotated is not None:
            rotated.errback(error)


class Outage:
    """One spell of a journal that cannot be written."""

    def __init__(self, failure: Failure, started: float) -> None:
        self.failure = failure
        self.started = started
        self.attempts = 1
        self.refused = 0
        self.job: Optional[JournalJob] = None
        self.retry_call: Any = None

    @property
    def reason(self) -> str:
        """What the last attempt said, short (``No space left on device``)."""
        value = self.failure.value
        return str(getattr(value, "strerror", None) or self.failure.getErrorMessage())[:200]

    def cancel_retry(self) -> None:
        if self.retry_call is not None and self.retry_call.active():
            self.retry_call.cancel()
        self.retry_call = None


__all__ = ["JournalJob", "Outage", "RETRY_INTERVAL"]
