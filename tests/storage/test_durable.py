"""
The durable store (:mod:`lttx.durable`): fsync policies, group commit,
compaction, shutdown; on real files, with a :class:`Clock` and lanes the test
drives instead of threads.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.storage.durable import DurableStore, InlineLane
from lttx.errors import (
    EncodeError,
    IndexOutOfRange,
    LTtxError,
    RecoveryError,
    StorageError,
    Unavailable,
    WrongTypeError,
)
from lttx.storage.journal import HEADER_SIZE, journal_name, snapshot_name
from lttx.state.store import MISSING, MemoryStore, strict_equal

from ..common import frame, frames_of, server_protocol


class ManualLane:
    """Holds jobs until the test releases them, to see what waits for the disk."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def release(self) -> None:
        f, args, d = self.jobs.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)

    def release_all(self) -> None:
        while self.jobs:
            self.release()

    def stop(self) -> None:
        pass


def open_store(directory: str, fsync: str = "always", clock: Any = None,
               journal_lane: Any = None, snapshot_lane: Any = None,
               **tuning: Any) -> DurableStore:
    return DurableStore.open(directory, fsync, clock or Clock(),
                             journal_lane or InlineLane(),
                             snapshot_lane or InlineLane(), **tuning)


def contents(store: Any) -> dict[str, Any]:
    return dict(store.items())


def compacted(store: DurableStore, clock: Clock) -> "Deferred[None]":
    """Run a compaction to its end on the clock."""
    d = store.compact()
    while not d.called:
        clock.advance(1)
    return d


class PolicyTests(SynchronousTestCase):
    """What each --fsync policy waits for."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.clock = Clock()
        self.lane = ManualLane()

    def store(self, fsync: str) -> DurableStore:
        store = open_store(self.dir, fsync, self.clock, journal_lane=self.lane)
        store.startService()
        return store

    def test_always_replies_after_the_fsync(self) -> None:
        """With always, a write's result comes only once the job that fsyncs it is done."""
        store = self.store("always")
        d = store.list_append("orders", 1)
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertNoResult(d)
        self.assertEqual(len(self.lane.jobs), 1)
        self.lane.release()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(store.status()["journal_fsyncs"], 1)

    def test_group_commit(self) -> None:
        """Writes of one reactor turn share one fsync; so do writes made while it runs."""
        store = self.store("always")
        first = [store.put(f"v{i}", i) for i in range(5)]
        self.clock.advance(0)
        second = [store.dict_change("d", i, i) for i in range(5)]
        self.clock.advance(0)
        self.assertEqual(len(self.lane.jobs), 1, "one job at a time")
        self.lane.release()
        for d in first:
            self.assertIsNone(self.successResultOf(d))
        for d in second:
            self.assertNoResult(d)
        self.lane.release()
        for d in second:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(store.status()["journal_fsyncs"], 2)
        self.assertEqual(self.lane.jobs, [])

    def test_everysec_replies_after_the_write_and_syncs_each_second(self) -> None:
        """With everysec, a result comes once the record is written to the OS (by the
        reactor at the end of its turn, the lane being idle); the fsync within a second."""
        store = self.store("everysec")
        d = store.list_append("l", "x")
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertEqual(self.lane.jobs, [])
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(store.status()["journal_fsyncs"], 0)
        self.assertEqual(os.path.getsize(os.path.join(self.dir, journal_name(1))),
                         store.status()["journal_bytes"])
        self.clock.advance(1)
        self.lane.release_all()
        self.assertEqual(store.status()["journal_fsyncs"], 1)
        self.clock.advance(1)  # nothing new: no fsync
        self.assertEqual(self.lane.jobs, [])

    def test_appends_wait_for_a_running_fsync(self) -> None:
        """While the lane runs a job (an fsync), new records queue and go out with the
        next job: the reactor never writes to the file the lane is using."""
        store = self.store("everysec")
        self.successResultOf(_settle(store.put("a", 1), self.clock, self.lane))
        self.clock.advance(1)  # the fsync job starts
        self.assertEqual(len(self.lane.jobs), 1)
        d = store.put("b", 2)
        self.clock.advance(0)
        self.assertNoResult(d)
        self.lane.release()  # the fsync ends; the queued record goes out next
        self.lane.release_all()
        self.assertIsNone(self.successResultOf(d))
        size = os.path.getsize(os.path.join(self.dir, journal_name(1)))
        self.assertEqual(size, store.status()["journal_bytes"])

    def test_inline_write_failure_refuses_later_writes(self) -> None:
        """A failing write(2) on the reactor (everysec) holds its write like the lane's:
        later writes are refused with StorageError, nothing new is applied."""
        store = self.store("everysec")

        def full(data: bytes) -> None:
            raise OSError(28, "No space left on device")

        store._file.write = full  # type: ignore[method-assign]
        d = store.put("x", 1)
        self.clock.advance(0)
        self.assertNoResult(d)
        error = self.assertRaises(StorageError, store.put, "y", 2)
        self.assertIn("No space left", error.message)
        self.assertIs(store.get("y"), MISSING)

    def test_no_never_syncs_while_running(self) -> None:
        """With no, records are written each turn but only fsynced at shutdown."""
        store = self.store("no")
        for i in range(3):
            store.put("x", i)
            self.clock.advance(1)
            self.lane.release_all()
        self.assertEqual(store.status()["journal_fsyncs"], 0)
        size = os.path.getsize(os.path.join(self.dir, journal_name(1)))
        self.assertEqual(size, store.status()["journal_bytes"])

    def test_reply_frame_waits_for_the_disk(self) -> None:
        """Through the protocol, the reply frame of a put is sent after its fsync."""
        store = self.store("always")
        proto, transport = server_protocol(store=store)
        proto.dataReceived(frame([0, 7, "put", ["pos", {"a": 1}]]))
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.lane.release()
        self.assertEqual(frames_of(transport.value()), [[1, 7, None]])

    def test_everysec_writes_a_chunk_at_its_end(self) -> None:
        """Through the protocol, with everysec: a chunk's puts are written to
        the journal in one write(2) at the chunk's end, before their replies,
        which leave in the same call (no reactor pass): acknowledged is still
        written."""
        store = self.store("everysec")
        proto, transport = server_protocol(store=store)
        path = os.path.join(self.dir, journal_name(1))
        writes: list[int] = []
        real_write = store._file.write

        def write(data: bytes) -> None:
            self.assertEqual(transport.value(), b"", "a reply before its write")
            real_write(data)
            writes.append(len(data))

        store._file.write = write  # type: ignore[method-assign]
        proto.dataReceived(frame([0, 7, "put", ["a", 1]]) + frame([0, 8, "put", ["b", 2]]))
        self.assertEqual(frames_of(transport.value()), [[1, 7, None], [1, 8, None]])
        self.assertEqual(len(writes), 1)
        self.assertEqual(os.path.getsize(path), store.status()["journal_bytes"])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [1.0])  # the fsync

    def test_always_keeps_its_group_commit_across_connections(self) -> None:
        """With always, the chunks of two connections served in one turn
        still share one fsync, and no reply leaves before it."""
        store = self.store("always")
        first, first_transport = server_protocol(store=store)
        second, second_transport = server_protocol(store=store, peer=("127.0.0.1", 40001))
        first.dataReceived(frame([0, 1, "put", ["a", 1]]))
        second.dataReceived(frame([0, 1, "put", ["b", 2]]))
        self.assertEqual((first_transport.value(), second_transport.value()), (b"", b""))
        self.clock.advance(0)
        self.assertEqual(len(self.lane.jobs), 1)
        self.lane.release()
        self.assertEqual(frames_of(first_transport.value()), [[1, 1, None]])
        self.assertEqual(frames_of(second_transport.value()), [[1, 1, None]])
        self.assertEqual(store.status()["journal_fsyncs"], 1)

    def test_a_failed_chunk_write_holds_its_replies(self) -> None:
        """A write at a chunk's end that fails holds the replies (the journal
        outage): nothing is acknowledged that is not written."""
        store = self.store("everysec")
        proto, transport = server_protocol(store=store)

        def full(data: bytes) -> None:
            raise OSError(28, "No space left on device")

        store._file.write = full  # type: ignore[method-assign]
        proto.dataReceived(frame([0, 7, "put", ["a", 1]]))
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(frame([0, 8, "put", ["b", 2]]))
        [[kind, request_id, code, _]] = frames_of(transport.value())
        self.assertEqual((kind, request_id, code), (2, 8, "storage"))

    def test_a_failing_flush_still_ends_the_chunk(self) -> None:
        """The subscribers' flush at a chunk's end raises (a transport's
        write failing, say): the chunk is still ended, its put is written and
        answered, and later chunks of every connection are written as before
        (a chunk left open would hold every later write of the daemon)."""
        store = self.store("everysec")
        proto, transport = server_protocol(store=store)
        channels = proto.state.channels
        real_flush = channels.flush
        failures: list[int] = []

        def failing_flush() -> None:
            failures.append(1)
            channels.flush = real_flush  # type: ignore[method-assign]
            raise RuntimeError("a subscriber's write failed")

        channels.flush = failing_flush  # type: ignore[method-assign]
        with self.assertRaises(RuntimeError):
            proto.dataReceived(frame([0, 7, "put", ["a", 1]]))
        self.assertEqual(failures, [1])
        self.assertEqual(store._chunks, 0)
        other, other_transport = server_protocol(store=store, peer=("127.0.0.1", 40001))
        other.dataReceived(frame([0, 8, "put", ["b", 2]]))
        self.assertEqual(frames_of(other_transport.value()), [[1, 8, None]])
        self.assertEqual(frames_of(transport.value()), [[1, 7, None]])

    def test_refused_operations_write_nothing(self) -> None:
        """A refused operation changes nothing and queues nothing for the disk."""
        store = self.store("always")
        self.successResultOf(_settle(store.put("l", [1]), self.clock, self.lane))
        before = store.status()["journal_bytes"]
        self.assertRaises(WrongTypeError, store.dict_change, "l", "k", 1)
        self.assertRaises(IndexOutOfRange, store.list_pop, "l", 5)
        self.assertRaises(EncodeError, store.put, "s", {1, 2})
        self.assertFalse(store.delete("none"))
        self.assertFalse(store.list_remove("l", 2))
        self.clock.advance(0)
        self.assertEqual(self.lane.jobs, [])
        self.assertEqual(store.status()["journal_bytes"], before)
        self.assertEqual(contents(store), {"l": [1]})

    def test_write_failure_refuses_later_writes(self) -> None:
        """If the journal cannot be written, waiting writes wait (they are applied in
        memory) and later ones are refused; stopping then fails the waiting ones."""
        store = self.store("always")
        d = store.put("x", 1)
        self.clock.advance(0)
        queued = store.put("z", 3)  # waits behind the job in flight
        f, args, job = self.lane.jobs.pop(0)
        job.errback(OSError(28, "No space left on device"))
        self.assertNoResult(d)
        self.assertNoResult(queued)
        error = self.assertRaises(StorageError, store.put, "y", 2)
        self.assertIn("refused until it can be written again", error.message)
        self.assertIs(store.get("y"), MISSING)
        self.assertEqual(self.lane.jobs, [])
        stopped = store.stopService()  # one last attempt of the held job...
        _, _, job = self.lane.jobs.pop(0)
        job.errback(OSError(28, "No space left on device"))  # ... fails: given up
        for waiting in (d, queued):
            self.assertIn("lost as the daemon stops",
                          self.failureResultOf(waiting, StorageError).value.message)
        self.lane.release_all()  # only the close job
        self.successResultOf(stopped)


def _settle(d: Any, clock: Clock, lane: ManualLane) -> Any:
    clock.advance(0)
    lane.release_all()
    return d


class LifecycleTests(SynchronousTestCase):
    """Restart, shutdown, locking, status."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.clock = Clock()

    def test_every_operation_survives_a_restart(self) -> None:
        """Values and every in-place operation are there after stop and reopen."""
        store = open_store(self.dir, "no", self.clock)
        store.startService()
        store.put("pos", {"600000.SH": 100})
        store.dict_change("pos", "000001.SZ", 200)
        store.put("gone", 1)
        store.delete("gone")
        for item in ({"id": 1}, {"id": 2}, {"id": 3}, float("nan")):
            store.list_append("orders", item)
        store.list_pop("orders", 0)
        store.list_remove("orders", {"id": 3})
        store.list_remove("orders", float("nan"))
        store.dict_change("fresh", b"\x01", None)
        expected = contents(store)
        self.successResultOf(store.stopService())
        again = open_store(self.dir, "no", self.clock)
        self.addCleanup(again.stopService)
        self.assertEqual(contents(again), expected)
        self.assertEqual(again.get("orders"), [{"id": 2}])

    def test_dataframes_survive_journal_and_snapshot(self) -> None:
        """DataFrames and arrays (opaque Encoded values, small and over the
        splice size) come back byte for byte from the journal, then from a
        snapshot after compaction; list_remove finds them after a restart."""
        from lttx.wire.codec import SPLICE_FROM
        from lttx.wire.ext import Encoded

        small = Encoded("numpy.ndarray", b"\x01\x03<f8\x00" + b"\x00" * 8)
        large = Encoded("pandas.DataFrame", bytes(range(256)) * (SPLICE_FROM // 128))
        store = open_store(self.dir, "no", self.clock)
        store.startService()
        store.put("bars", large)
        store.dict_change("book", "arr", small)
        for item in (large, small, large):
            store.list_append("hist", item)
        store.list_remove("hist", large)
        expected = contents(store)
        self.successResultOf(store.stopService())
        again = open_store(self.dir, "no", self.clock)
        again.startService()
        self.assertEqual(contents(again), expected)
        self.successResultOf(compacted(again, self.clock))
        self.successResultOf(again.stopService())
        snapshots = [n for n in os.listdir(self.dir) if n.endswith(".snap")]
        self.assertEqual(len(snapshots), 1)
        snapshot_size = os.path.getsize(os.path.join(self.dir, snapshots[0]))
        self.assertGreater(snapshot_size, 2 * len(large.data))  # bars and a list item
        third = open_store(self.dir, "no", self.clock)
        self.addCleanup(third.stopService)
        self.assertEqual(contents(third), expected)
        self.assertEqual(third.get("bars").data, large.data)
        self.assertTrue(third.list_remove("hist", large))
        self.assertEqual(third.get("hist"), [small])

    def test_stop_flushes_syncs_and_refuses_later_writes(self) -> None:
        """stopService writes and fsyncs everything queued, then refuses writes."""
        lane = ManualLane()
        store = open_store(self.dir, "everysec", self.clock, journal_lane=lane)
        store.startService()
        store.put("x", 1)
        d = store.stopService()
        self.assertNoResult(d)
        self.clock.advance(0)
        lane.release_all()  # the write job, then the sync-and-close job
        self.successResultOf(d)
        self.assertRaises(Unavailable, store.put, "y", 2)
        again = open_store(self.dir, "no", self.clock)
        self.addCleanup(again.stopService)
        self.assertEqual(contents(again), {"x": 1})

    def test_second_store_on_a_directory_is_refused(self) -> None:
        """Two daemons on one data directory would corrupt it: the second is refused."""
        store = open_store(self.dir)
        error = self.assertRaises(RecoveryError, open_store, self.dir)
        self.assertIn("in use by another LTtx daemon", str(error))
        self.successResultOf(store.stopService())
        self.successResultOf(open_store(self.dir).stopService())

    def test_status(self) -> None:
        """status() reports variables, file sizes and the last compaction."""
        store = open_store(self.dir, "always", self.clock)
        self.addCleanup(store.stopService)
        store.put("a", 1)
        store.put("b", [1, 2])
        self.clock.advance(0)
        status = store.status()
        self.assertEqual(status["variables"], 2)
        self.assertEqual(status["journal_bytes"],
                         os.path.getsize(os.path.join(self.dir, journal_name(1))))
        self.assertEqual((status["snapshot_bytes"], status["last_compaction"]), (0, None))
        self.clock.advance(5)
        self.successResultOf(compacted(store, self.clock))
        status = store.status()
        self.assertEqual(status["snapshot_bytes"],
                         os.path.getsize(os.path.join(self.dir, snapshot_name(2))))
        self.assertEqual(status["last_compaction"]["at"], 5)
        self.assertEqual(status["last_compaction"]["variables"], 2)
        self.assertEqual(status["generation"], 2)


class CompactionTests(SynchronousTestCase):
    """Snapshots: exact state, consistency while values change, triggers."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.clock = Clock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def reopen(self, store: DurableStore) -> DurableStore:
        self.successResultOf(store.stopService())
        again = open_store(self.dir, "no", self.clock)
        self.addCleanup(again.stopService)
        return again

    def test_snapshot_is_the_state_at_rotation(self) -> None:
        """Changes made while the snapshot is encoded, in place or not, land once each."""
        store = open_store(self.dir, "no", self.clock, snapshot_chunk=1, compaction_slice=0,
                           compaction_gap=1)
        for name in "abcdef":
            store.put(name, {"n": 0})
        store.put("list", [1, 2, 3])
        done = store.compact()
        # Every name is still to be encoded: change them all, in every way.
        store.dict_change("a", "n", 1)
        store.dict_change("a", "m", 2)
        store.put("b", {"n": "replaced"})
        store.delete("c")
        store.list_pop("list", 0)
        store.list_append("list", 4)
        self.clock.advance(1)  # one slice: one variable encoded
        store.dict_change("f", "late", True)
        store.put("new", 1)
        while not done.called:
            self.clock.advance(1)
            store.dict_change("d", "n", store.get("d")["n"] + 1)
        self.successResultOf(done)
        expected = contents(store)
        self.assertEqual(sorted(os.listdir(self.dir)),
                         [journal_name(2), "lock", snapshot_name(2)])
        self.assertEqual(contents(self.reopen(store)), expected)

    def test_snapshot_alone_holds_the_state_at_rotation(self) -> None:
        """The snapshot itself is the state when compaction began, not later."""
        store = open_store(self.dir, "no", self.clock, snapshot_chunk=1, compaction_slice=0,
                           compaction_gap=1)
        store.put("a", {"n": 0})
        store.put("l", [0])
        done = store.compact()
        store.dict_change("a", "n", 1)
        store.list_append("l", 1)
        while not done.called:
            self.clock.advance(1)
        self.successResultOf(store.stopService())
        # Empty the journal after it (its header stays: a missing one is refused).
        os.truncate(os.path.join(self.dir, journal_name(2)), HEADER_SIZE)
        snapshot_only = open_store(self.dir, "no", self.clock)
        self.addCleanup(snapshot_only.stopService)
        self.assertEqual(contents(snapshot_only), {"a": {"n": 0}, "l": [0]})

    def test_compaction_starts_when_the_journal_outgrows_the_data(self) -> None:
        """Past the minimum size and the last snapshot's size, the journal is compacted."""
        store = open_store(self.dir, "no", self.clock, compact_min_bytes=2000)
        self.addCleanup(store.stopService)
        for i in range(200):
            store.put("counter", i)
            self.clock.advance(0)
        status = store.status()
        self.assertGreaterEqual(status["generation"], 2)
        self.assertLess(status["journal_bytes"], 2000)
        logged = [e for e in self.events if e.get("log_format", "").startswith("compaction")]
        self.assertTrue(logged)
        self.assertIn("longest reactor pause", logged[0]["log_format"])

    def test_shutdown_abandons_a_running_compaction(self) -> None:
        """Stopping mid-snapshot removes the partial file; the journals keep everything."""
        store = open_store(self.dir, "no", self.clock, snapshot_chunk=1, compaction_slice=0,
                           compaction_gap=1)
        for i in range(10):
            store.put(f"v{i}", i)
        done = store.compact()
        self.clock.advance(1)
        store.put("after", 1)
        expected = contents(store)
        self.successResultOf(store.stopService())
        self.failureResultOf(done, StorageError)
        self.assertNotIn(snapshot_name(2) + ".tmp", os.listdir(self.dir))
        self.assertEqual(contents(self.reopen(store)), expected)

    def test_failed_compaction_keeps_every_change(self) -> None:
        """A snapshot that cannot be written is removed; the journals recover everything."""
        class FailingOnce(InlineLane):
            failed = False

            def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
                if getattr(f, "__name__", "") == "write" and not self.failed:
                    self.failed = True
                    return maybeDeferred(_raise, OSError(28, "No space left on device"))
                return super().run(f, *args)

        store = open_store(self.dir, "no", self.clock, snapshot_lane=FailingOnce())
        store.put("a", [1])
        self.failureResultOf(compacted(store, self.clock), StorageError)
        self.flushLoggedErrors(OSError)
        store.list_append("a", 2)
        self.assertEqual(sorted(os.listdir(self.dir)),
                         [journal_name(1), journal_name(2), "lock"])
        self.successResultOf(compacted(store, self.clock))  # the next one works
        store.list_append("a", 3)
        self.assertEqual(contents(self.reopen(store)), {"a": [1, 2, 3]})


def _raise(error: Exception) -> None:
    raise error


NAMES = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([1.5, "x", b"y"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["k", "j"]), SCALARS, max_size=2))
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("put"), NAMES, VALUES),
    st.tuples(st.just("delete"), NAMES),
    st.tuples(st.just("dict_change"), NAMES, st.sampled_from(["k", "j", 1]), VALUES),
    st.tuples(st.just("list_append"), NAMES, VALUES),
    st.tuples(st.just("list_pop"), NAMES, st.integers(-2, 1)),
    st.tuples(st.just("list_remove"), NAMES, SCALARS),
    st.tuples(st.just("compact")),
    st.tuples(st.just("step")),
    st.tuples(st.just("restart")),
), max_size=40)


class PropertyTests(SynchronousTestCase):
    """Random operations, compactions and restarts agree with a MemoryStore model."""

    @settings(max_examples=80, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(OPERATIONS, st.sampled_from(["always", "everysec", "no"]))
    def test_random_operations_survive_compaction_and_restart(
            self, operations: list[tuple[Any, ...]], policy: str) -> None:
        """After any sequence, reloading from disk gives exactly the model's state."""
        directory = tempfile.mkdtemp()
        self.clock = clock = Clock()
        model = MemoryStore()

        def start() -> DurableStore:
            return open_store(directory, policy, clock, snapshot_chunk=1, compaction_slice=0,
                              compaction_gap=1, compact_min_bytes=300)

        store = start()
        try:
            for op, *args in operations:
                if op == "compact":
                    store.compact().addErrback(lambda f: f.trap(StorageError))
                elif op == "step":
                    clock.advance(1)
                elif op == "restart":
                    self.successResultOf(store.stopService())
                    store = start()
                    self.assertState(store, model)
                else:
                    self.assertSameOutcome(store, model, op, args)
            self.successResultOf(store.stopService())
            store = start()
            self.assertState(store, model)
        finally:
            self.successResultOf(store.stopService())
            shutil.rmtree(directory)

    def assertSameOutcome(self, store: DurableStore, model: MemoryStore, op: str,
                          args: list[Any]) -> None:
        try:
            # Each store owns the values passed in: give the model its own copy.
            expected: Any = getattr(model, op)(*copy.deepcopy(args))
        except LTtxError as e:
            self.assertRaises(type(e), getattr(store, op), *args)
            return
        result = getattr(store, op)(*args)
        if isinstance(result, Deferred):
            self.clock.advance(0)
            result = self.successResultOf(result)
        self.assertTrue(strict_equal(result, expected), (op, args, result, expected))

    def assertState(self, store: DurableStore, model: MemoryStore) -> None:
        self.assertTrue(strict_equal(contents(store), contents(model)),
                        (contents(store), contents(model)))


__all__ = ["ManualLane", "open_store", "compacted"]
