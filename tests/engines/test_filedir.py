"""
The Redis file directory: the sweep's decisions (plain Python, with
hypothesis), the INFO replication parser, and the directory's scripts on a
real redis-server (the last completed upload wins, removal only by the holder).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from lttx.engines.redis.filedir import Entry, FileDirectory, plan_sweep
from lttx.engines.redis.replicas import parse_replication

from ..redis_server import RedisClientTestCase

ME, OTHER = "a" * 32, "b" * 32


class PlanSweepTests(SynchronousTestCase):
    def test_each_case(self) -> None:
        """Unknown files are listed, changed ones updated, vanished ones unlisted, copies
        replaced elsewhere deleted, newer ones listed again; busy names left alone."""
        local = {"new": (1, 10.0), "same": (2, 20.0), "changed": (3, 30.0),
                 "older": (4, 40.0), "newer": (5, 50.0), "busy": (6, 60.0)}
        entries = {"same": Entry(ME, 2, "m", 20.0), "changed": Entry(ME, 9, "m", 30.0),
                   "older": Entry(OTHER, 4, "m", 41.0), "newer": Entry(OTHER, 5, "m", 49.0),
                   "gone": Entry(ME, 7, "m", 70.0), "theirs": Entry(OTHER, 8, "m", 80.0),
                   "busy": Entry(ME, 1, "m", 1.0)}
        plan = plan_sweep(ME, local, entries, busy={"busy"})
        self.assertEqual(plan.register_new, ["new"])
        self.assertEqual(plan.register, ["changed", "newer"])
        self.assertEqual(plan.remove, ["gone"])
        self.assertEqual(plan.superseded, ["older"])

    @given(st.dictionaries(st.sampled_from("abcdef"), st.tuples(st.integers(0, 3),
                                                                st.sampled_from([1.0, 2.0]))),
           st.dictionaries(st.sampled_from("abcdefgh"), st.builds(
               Entry, st.sampled_from([ME, OTHER]), st.integers(0, 3), st.none(),
               st.sampled_from([1.0, 2.0]))),
           st.sets(st.sampled_from("abcdefgh")))
    def test_never_touches_what_it_must_not(self, local: dict[str, Any],
                                            entries: dict[str, Entry], busy: set[str]) -> None:
        """A name lands in one list at most; only this daemon's entries are removed, only
        local files deleted, never a busy name, never the copy the directory lists."""
        plan = plan_sweep(ME, local, entries, busy)
        lists = [plan.register_new, plan.register, plan.remove, plan.superseded]
        names = [name for names in lists for name in names]
        self.assertEqual(len(names), len(set(names)))
        self.assertFalse(set(names) & busy)
        for name in plan.remove:
            self.assertEqual(entries[name].holder, ME)
            self.assertNotIn(name, local)
        for name in plan.superseded:
            self.assertIn(name, local)
            self.assertEqual(entries[name].holder, OTHER)
            self.assertGreaterEqual(entries[name].mtime, local[name][1])
        for name in plan.register_new:
            self.assertNotIn(name, entries)
        for name in set(local) - busy:
            entry = entries.get(name)
            listed_right = entry is not None and entry.holder == ME and \
                (entry.size, entry.mtime) == local[name]
            self.assertEqual(name not in names, listed_right, name)

    def test_entries_of_others_are_read_back(self) -> None:
        """An entry round-trips through its JSON; a foreign value is skipped, not fatal."""
        entry = Entry(ME, 5, None, 1.5)
        self.assertEqual(Entry.decode(entry.encode()), entry)
        for junk in (b"not json", b"{}", b'{"daemon": "x", "size": "big", "mtime": 1}'):
            self.assertIsNone(Entry.decode(junk))


INFO_MASTER = (
    "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"
    "slave0:ip=10.0.0.2,port=6380,state=online,offset=1000,lag=0\r\n"
    "slave1:ip=10.0.0.3,port=6381,state=wait_bgsave,offset=0,lag=3\r\n"
    "master_failover_state:no-failover\r\nmaster_repl_offset:1234\r\n")
INFO_REPLICA = (
    "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n"
    "master_link_status:down\r\nslave_repl_offset:99\r\nmaster_repl_offset:99\r\n")


class ReplicationTests(SynchronousTestCase):
    def test_master_with_two_replicas(self) -> None:
        """Each replica's address, state, offset, bytes behind the master and lag."""
        self.assertEqual(parse_replication(INFO_MASTER), {
            "role": "master", "offset": 1234, "replicas": [
                {"address": "10.0.0.2:6380", "state": "online", "offset": 1000,
                 "lag_bytes": 234, "lag_s": 0},
                {"address": "10.0.0.3:6381", "state": "wait_bgsave", "offset": 0,
                 "lag_bytes": 1234, "lag_s": 3}]})

    def test_replica(self) -> None:
        """Connected to a replica: its master and the link's state."""
        self.assertEqual(parse_replication(INFO_REPLICA), {
            "role": "slave", "offset": 99, "master": "10.0.0.1:6379", "link": "down"})

    def test_garbage_is_unknown_not_an_error(self) -> None:
        self.assertEqual(parse_replication("nonsense\r\nmaster_repl_offset:x\r\n"),
                         {"role": "unknown", "offset": None, "master": "?:?",
                          "link": "unknown"})


class FileDirectoryTests(RedisClientTestCase):
    @inlineCallbacks
    def test_last_completed_upload_wins_whatever_reaches_redis_first(self) -> Any:
        """A later copy replaces an earlier one; an earlier copy registered late does
        not replace a later one; only_new never replaces; removal only by the holder."""
        mine = FileDirectory(self.client, "t:", ME)
        theirs = FileDirectory(self.client, "t:", OTHER)
        self.assertEqual((yield mine.register("f", 10, "m1", 100.0)), (None, True))
        found, replaced = yield theirs.register("f", 20, "m2", 200.0)
        self.assertEqual((found, replaced), (Entry(ME, 10, "m1", 100.0), True))
        # Ours completed at 150, before theirs, but reaches Redis after: it stays out.
        found, replaced = yield mine.register("f", 30, "m3", 150.0)
        self.assertEqual((found.holder, replaced), (OTHER, False))
        self.assertEqual((yield mine.lookup("f")), Entry(OTHER, 20, "m2", 200.0))
        self.assertEqual((yield mine.register("f", 1, None, 999.0, only_new=True))[1], False)
        self.assertFalse((yield mine.remove("f")))  # not ours to remove
        self.assertEqual(sorted((yield mine.entries())), ["f"])
        self.assertTrue((yield theirs.remove("f")))
        self.assertIsNone((yield mine.lookup("f")))
        self.assertEqual((yield mine.entries()), {})
