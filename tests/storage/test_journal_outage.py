"""
A journal that cannot be written (a full disk) and writes resuming by
themselves once it can (:mod:`lttx.storage.outage`, issue 19 finding 5): on
real files, the failure injected at the write of the journal file, a
:class:`Clock` for the retries.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import StorageError
from lttx.state.store import MISSING
from lttx.storage import journal
from lttx.storage.durable import DurableStore
from lttx.storage.journal import journal_name

from .test_durable import ManualLane, contents, open_store


class Disk:
    """The journal's ``write(2)``, which can be made to fail as a full disk does:
    the first part of the data reaches the file, then ENOSPC."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.full = False
        self.failures = 0
        real = journal._write_all

        def write_all(fd: int, data: bytes) -> None:
            if self.full:
                self.failures += 1
                real(fd, data[:len(data) // 2])  # a torn record, as a full disk leaves
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, data)

        testcase.patch(journal, "_write_all", write_all)


class OutageTests(SynchronousTestCase):
    """Writes stop when the journal cannot be written and resume once it can."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.clock = Clock()
        self.lane = ManualLane()
        self.disk = Disk(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def store(self, fsync: str) -> DurableStore:
        store = open_store(self.dir, fsync, self.clock, journal_lane=self.lane)
        store.startService()
        return store

    def settle(self) -> None:
        self.clock.advance(0)
        self.lane.release_all()

    def lines(self, text: str) -> list[str]:
        return [e["log_format"] for e in self.events if text in e["log_format"]]

    def reopened(self, store: DurableStore) -> dict[str, Any]:
        stopped = store.stopService()
        self.lane.release_all()
        self.successResultOf(stopped)
        return contents(open_store(self.dir, "always", Clock()))

    def test_writes_resume_once_the_disk_has_room_again(self) -> None:
        """The write in flight waits, later ones are refused; once the disk takes
        writes again the retry writes the held one, its reply comes, writes go on;
        one log line each way; after a restart every acknowledged write is there
        and the torn bytes of the failed attempts are gone."""
        for fsync in ("always", "everysec"):
            with self.subTest(fsync=fsync):
                self.dir = self.mktemp()
                store = self.store(fsync)
                self.successResultOf(self.put(store, "before", 1))
                self.disk.full = True
                held = store.incr("n", 5)
                self.settle()
                self.assertNoResult(held)
                self.assertEqual(store.get("n"), 5)  # applied in memory, readers see it
                refused = self.assertRaises(StorageError, store.incr, "n", 1)
                self.assertIn("No space left on device", refused.message)
                self.assertEqual(store.get("n"), 5)  # a refusal changes nothing
                self.clock.advance(1)  # a retry: the disk is still full
                self.lane.release_all()
                self.assertNoResult(held)
                status = store.status()
                self.assertEqual((status["writable"], status["journal_outages"],
                                  status["writes_refused"], status["unwritable_seconds"]),
                                 (False, 1, 1, 1.0))
                self.disk.full = False  # space is back
                self.clock.advance(1)
                self.lane.release_all()
                self.assertEqual(self.successResultOf(held), 5)
                self.assertEqual(self.successResultOf(self.put(store, "after", 2)), None)
                status = store.status()
                self.assertEqual((status["writable"], status["unwritable_seconds"]),
                                 (True, 0.0))
                self.assertEqual(self.reopened(store), {"before": 1, "n": 5, "after": 2})
        self.assertEqual(len(self.lines("could not be written")), 2)
        self.assertEqual(len(self.lines("can be written again")), 2)
        self.assertGreaterEqual(self.disk.failures, 4)

    def put(self, store: DurableStore, name: str, value: Any) -> Any:
        d = store.put(name, value)
        self.settle()
        return d

    def test_a_rotation_that_fails_is_retried(self) -> None:
        """A compaction's new journal that cannot be created (its header does not fit)
        is created by the retry: the writes queued behind it go on; the snapshot
        that did not fit either fails the compaction (the journals hold everything)."""
        store = self.store("always")
        self.successResultOf(self.put(store, "a", 1))
        self.disk.full = True
        compacted = store.compact()
        written = store.put("b", 2)  # queued behind the rotation
        self.settle()
        self.assertNoResult(written)
        self.disk.full = False
        while not compacted.called:
            self.clock.advance(1)
            self.lane.release_all()
        self.failureResultOf(compacted, StorageError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.successResultOf(written)
        self.assertTrue(os.path.exists(os.path.join(self.dir, journal_name(2))))
        self.assertEqual(self.reopened(store), {"a": 1, "b": 2})

    def test_stopping_while_full_fails_the_held_writes(self) -> None:
        """A stop while the disk is still full tries once more, then fails the held
        writes with StorageError (they were never acknowledged) and exits cleanly."""
        store = self.store("always")
        self.disk.full = True
        held = store.put("x", 1)
        self.settle()
        stopped = store.stopService()
        self.lane.release_all()
        self.successResultOf(stopped)
        self.assertIn("lost as the daemon stops",
                      self.failureResultOf(held, StorageError).value.message)
        self.assertIs(open_store(self.dir, "always", Clock()).get("x"), MISSING)

    def test_expiries_during_an_outage_are_journalled_after_it(self) -> None:
        """A variable that expires while the journal cannot be written is journalled as
        expired once it can: a later incr does not replay onto its old value."""
        store = self.store("always")
        self.successResultOf(self.put(store, "t", 10))
        d = store.expire("t", 5)
        self.settle()
        self.successResultOf(d)
        self.disk.full = True
        held = store.put("other", 1)
        self.settle()
        self.clock.advance(6)
        self.assertIs(store.get("t"), MISSING)  # expired (on this read)
        self.disk.full = False
        self.clock.advance(1)
        self.lane.release_all()
        self.successResultOf(held)
        self.successResultOf(self.put(store, "u", 0))
        d = store.incr("t", 1)
        self.settle()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(self.reopened(store), {"other": 1, "u": 0, "t": 1})
