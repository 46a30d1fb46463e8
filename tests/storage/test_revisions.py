"""
Revisions and deadlines on disk: what a restart, a compaction and a data
directory of the previous format (1) give back; expiries journalled as changes.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.state.store import MISSING, Change, MemoryStore
from lttx.storage import journal
from lttx.storage.journal import (
    DICT_CHANGE,
    JOURNAL_MAGIC,
    PUT,
    encode_header,
    encode_record,
    journal_name,
    recover,
)

from .test_durable import compacted, open_store
from .test_journal import write_snapshot


class RevisionsOnDiskTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    def reopen(self, store: object) -> object:
        self.successResultOf(store.stopService())  # type: ignore[attr-defined]
        again = open_store(self.dir, "no", self.clock)
        self.addCleanup(again.stopService)
        return again

    def test_delete_and_recreate_never_reuses_a_revision_after_compaction(self) -> None:
        """The top revision is in the snapshot: a deleted variable's revisions stay spent."""
        store = open_store(self.dir, "no", self.clock)
        store.startService()
        store.put("other", 1)
        for _ in range(10):
            store.incr("n")
        store.delete("n")  # revision 12: above every live one
        self.successResultOf(compacted(store, self.clock))
        store = self.reopen(store)
        store.put("n", "again")
        self.assertEqual(store.get("n", revision=True), ("again", 13))
        self.assertEqual(store.get("other", revision=True), (1, 1))

    def test_deadlines_survive_compaction_and_restart(self) -> None:
        """A deadline comes back from the snapshot; past it, the variable is gone."""
        store = open_store(self.dir, "no", self.clock)
        store.startService()
        put_at = self.clock.seconds()
        store.put("lease", "me", ttl=30)
        store.put("later", 1)
        store.expire("later", 90)
        self.successResultOf(compacted(store, self.clock))
        store = self.reopen(store)
        self.assertEqual(store.ttl("lease"), put_at + 30 - self.clock.seconds())
        self.assertEqual(store.status()["expiring"], 2)
        self.clock.advance(put_at + 30 - self.clock.seconds())
        self.assertIs(store.get("lease"), MISSING)
        self.assertEqual(store.ttl("later"), 60)

    def test_an_expiry_is_a_journalled_change(self) -> None:
        """The sweep's removal is a change the observer sees and the journal keeps."""
        store = open_store(self.dir, "no", self.clock)
        store.startService()
        changes: list[Change] = []
        store.observer = changes.append
        store.put("lease", 1, ttl=1)
        store.put("lease", 2, ttl=1)
        self.clock.advance(1)
        self.assertEqual(store.sweep(), 1)
        self.assertEqual(changes, [Change("lease", "put", (1,), 1),
                                   Change("lease", "put", (2,), 2),
                                   Change("lease", "expire", (), 3)])
        store = self.reopen(store)
        self.assertEqual(len(store), 0)  # gone from the journal, not by a new expiry
        store.put("lease", 3)
        self.assertEqual(store.get("lease", revision=True), (3, 4))

    def test_format_1_directory_recovers_and_continues_in_format_2(self) -> None:
        """A data directory of the previous version loads; its journal is not appended to."""
        os.makedirs(self.dir)
        write_snapshot(self.dir, 2, {"pos": {"a": 1}, "n": 5})
        with open(os.path.join(self.dir, journal_name(2)), "wb") as f:
            f.write(encode_header(JOURNAL_MAGIC, 2, 1))
            f.write(encode_record([DICT_CHANGE, "pos", "b", 2]))
            f.write(encode_record([PUT, "n", 6]))
        store = open_store(self.dir, "no", self.clock)
        self.assertEqual(store.get("pos", revision=True), ({"a": 1, "b": 2}, 2))
        self.assertEqual(store.get("n", revision=True), (6, 3))
        store.incr("n")
        store = self.reopen(store)
        self.assertEqual(store.get("n", revision=True), (7, 4))
        with open(os.path.join(self.dir, journal_name(3)), "rb") as f:
            self.assertEqual(f.read(10)[8:], b"\x00\x02")  # the new journal: format 2
        self.assertEqual(os.path.getsize(os.path.join(self.dir, journal_name(2))),
                         journal.HEADER_SIZE + len(
                             encode_record([DICT_CHANGE, "pos", "b", 2]))
                         + len(encode_record([PUT, "n", 6])))

    def test_replay_expires_nothing_by_itself(self) -> None:
        """Replayed long after its deadline, a change to a variable applies as it did."""
        store = open_store(self.dir, "no", self.clock)
        store.put("d", {"a": 1}, ttl=5)
        store.dict_change("d", "b", 2)
        self.successResultOf(store.stopService())
        memory = MemoryStore(lambda: 1e12)  # far past the deadline
        recovered = recover(self.dir, memory)
        self.addCleanup(recovered.journal.close)
        self.assertEqual(memory.entry("d"), ({"a": 1, "b": 2}, 2, 1_800_000_005.0))
