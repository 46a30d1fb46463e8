"""
The change log (lttx.state.changelog) and its place in the channel registry:
names kept beside the frames through compaction, filtered positions, the
registry's memory bound, nothing recorded before the first watch.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lttx.state.changelog import ChangeLog, WatchPosition
from lttx.state.channellog import key_of
from lttx.state.channels import ChannelRegistry
from lttx.state.store import MemoryStore
from lttx.wire import codec


class FakeWatcher:
    def __init__(self) -> None:
        self.positions: dict[str, Any] = {}
        self.watch: Any = None
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class ChangeLogTests(SynchronousTestCase):
    def test_names_follow_the_frames_through_compaction(self) -> None:
        """After many appends and drops (compacting the lists), each retained
        change's name is the key of its frame, and its frame decodes to it."""
        rng = random.Random(7)
        log = ChangeLog(history_bytes=20_000)
        for i in range(20_000):
            name = f"v{rng.randrange(50)}"
            log.record(name, "incr", (i,), i + 1)
        self.assertGreater(log.dropped, 4096)
        for seq in range(log.first_seq, log.next_seq):
            frame = log.frame_of(seq)
            self.assertEqual(key_of(frame), log.name_of(seq))
            self.assertEqual(codec.decode(frame[4:])[3:], [["incr", [seq - 1], seq], seq])

    def test_position_filters_by_pattern_and_right(self) -> None:
        """A position reads past every change but returns only the frames of
        names matching its patterns that it may read."""
        log = ChangeLog(history_bytes=1 << 20)
        for name in ["pos_A", "cfg", "pos_secret", "pos_B", "other"]:
            log.record(name, "delete", (), 1)
        position = WatchPosition(log, 1, lambda name: "secret" not in name)
        position.set_patterns(["pos_*", "cfg"])
        missed, frames = position.read(100)
        self.assertIsNone(missed)
        self.assertEqual([key_of(f) for f in frames], ["pos_A", "cfg", "pos_B"])
        self.assertEqual(position.next, 6)


class RegistryChangeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = ChannelRegistry(clock=lambda: 0.0, history_bytes=1 << 20,
                                        history_memory=50_000)
        self.store = MemoryStore()
        self.store.observer = self.registry.record_change

    def test_nothing_recorded_before_the_first_watch(self) -> None:
        """A daemon nobody ever watched keeps no change."""
        self.store.put("a", 1)
        self.assertEqual((len(self.registry.changes), self.registry.retained), (0, 0))
        watcher = FakeWatcher()
        self.registry.watch(watcher, ["*"], lambda name: True)
        self.store.put("a", 2)
        self.assertEqual(len(self.registry.changes), 1)
        self.registry.flush()
        self.assertEqual(watcher.woken, 1)

    def test_history_memory_cuts_the_change_log_too(self) -> None:
        """The change log counts in --history-memory: past it, its oldest
        changes go, and the registry's total stays under the bound."""
        self.registry.watch(FakeWatcher(), ["*"], lambda name: True)
        for i in range(2_000):
            self.store.put(f"v{i % 10}", "x" * 100)
        self.assertGreater(self.registry.changes.dropped, 0)
        self.assertLessEqual(self.registry.retained, 50_000)
        self.assertEqual(self.registry.retained, self.registry.changes.bytes)
        self.assertEqual(self.registry.status()["evicted_for_memory"],
                         self.registry.changes.dropped)

    def test_rate(self) -> None:
        """status shows the changes per second since the last sample."""
        now = [0.0]
        registry = ChannelRegistry(clock=lambda: now[0])
        self.store.observer = registry.record_change
        registry.watch(FakeWatcher(), ["*"], lambda name: True)
        for i in range(30):
            self.store.put("a", i)
        now[0] = 2.0
        registry.sample()
        self.assertEqual(registry.changes.status()["rate"], 15.0)

    def test_remove_forgets_the_watcher(self) -> None:
        """A closed connection's watch position is gone from the change log."""
        watcher = FakeWatcher()
        self.registry.watch(watcher, ["*"], lambda name: True)
        self.registry.remove(watcher)
        self.assertEqual(self.registry.changes.status()["watchers"], 0)
