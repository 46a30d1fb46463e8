"""
Durable cloud variables: a :class:`MemoryStore` whose every applied change
is appended to a journal in the data directory, and compacted into snapshots.

The store applies a change in memory on the reactor thread, encodes it as a
journal record, and queues the record; fsyncs, rotations and snapshots run in
a thread of their own (a *lane*: one job at a time, in order), never on the
reactor.  Plain appends (``everysec`` and ``no``) are written by the reactor
at the end of its turn when the lane is idle, as Redis writes its AOF buffer.
The ``--fsync`` policy decides when records reach the disk, with Redis's
meanings:

``always``
    Each write's reply waits for the fsync covering its record.  Records
    queued in the same reactor turn, or while an fsync is running, share the
    next fsync (group commit), so throughput grows with concurrency.
``everysec``
    Each write's reply waits for its record to be written to the OS (not
    synced); the journal is fsynced once a second.  A crash of the daemon
    loses no acknowledged write; a power loss or kernel crash up to about a
    second of them.
``no``
    As ``everysec``, but never fsynced while running: the OS decides when
    (on Linux within about 30 s).

Only applied changes are journalled: a refused operation changes nothing and
writes nothing.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import Any, Callable, Iterator, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator, LoopingCall, TaskDone, TaskStopped
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..diskio import InlineLane, ThreadLane, lane_for
from ..errors import RecoveryError, StorageError, Unavailable
from ..state.store import IVariableStore, MemoryStore
from .compaction import Compaction, first_failure
from .journal import HEADER_SIZE, AppendFile, recover
from .outage import RETRY_INTERVAL, JournalJob, Outage
from .writes import JournalledWrites

FSYNC_POLICIES = ("always", "everysec", "no")

#: Compact when the journal is past this size and past ``growth`` times the
#: last snapshot (Redis: auto-aof-rewrite-min-size 64mb, percentage 100).
DEFAULT_COMPACT_MIN_BYTES = 64 * 1024 * 1024
DEFAULT_COMPACT_GROWTH = 1.0
#: Variables per snapshot record, and how long one compaction slice may hold
#: the reactor before yielding to it.
DEFAULT_SNAPSHOT_CHUNK = 1000
DEFAULT_COMPACTION_SLICE = 0.01


def _lock(directory: str) -> int:
    """Hold ``directory/lock``: two daemons appending to one journal corrupt it."""
    path = os.path.join(directory, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RecoveryError(f"{directory} is in use by another LTtx daemon "
                            f"(it holds {path})") from None
    return fd


def _deadline(seconds: float) -> Callable[[], bool]:
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end


@implementer(IVariableStore)
class DurableStore(JournalledWrites, Service):
    """
    The daemon's variable store: a :class:`MemoryStore` plus its journal.

    Build it with :meth:`open`, which recovers the state from the data
    directory.  It is a Service: :meth:`stopService` flushes and fsyncs the
    journal before the daemon exits.
    """

    log = Logger()

    def __init__(
        self,
        directory: str,
        fsync: str,
        clock: IReactorTime,
        memory: MemoryStore,
        journal: AppendFile,
        generation: int,
        journal_lane: Any,
        snapshot_lane: Any,
        *,
        snapshot_bytes: int = 0,
        lock_fd: int = -1,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        compact_growth: float = DEFAULT_COMPACT_GROWTH,
        snapshot_chunk: int = DEFAULT_SNAPSHOT_CHUNK,
        compaction_slice: float = DEFAULT_COMPACTION_SLICE,
        compaction_gap: float = 0.0,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.directory = directory
        self.policy = fsync
        self._clock = clock
        self._memory = memory
        # Recovered (replay expires nothing): from now on deadlines count,
        # and expiries are journalled.
        memory.clock = clock.seconds
        memory.expired = self._expired
        memory.expiring = lambda name: self._preserve(name, False)
        self._file = journal  # used by lane jobs only, one at a time
        self._generation = generation
        self._journal_lane = journal_lane
        self._snapshot_lane = snapshot_lane
        self._lock_fd = lock_fd
        self._compact_min_bytes = compact_min_bytes
        self._compact_growth = compact_growth
        self._snapshot_chunk = snapshot_chunk
        self._compaction_slice = compaction_slice
        # Between slices the reactor serves its I/O; a gap of 0 still yields
        # a full reactor iteration (tests use a gap to step slice by slice).
        self._compaction_gap = compaction_gap

        self._journal_bytes = journal.size
        self._snapshot_bytes = snapshot_bytes
        self._base_bytes = snapshot_bytes
        # Records for the current journal, and, while a rotation waits for
        # the lane, the records that still belong to the journal before it.
        self._buffer: list[bytes] = []
        self._before_rotation: list[bytes] = []
        self._rotate_to: Optional[int] = None
        self._rotated: Optional[Deferred[None]] = None
        self._waiters: list[tuple[Deferred[Any], Any]] = []
        self._sync_requested = False
        self._unsynced = False
        self._in_flight = False
        self._flush_call: Any = None
        # Chunks of received requests being served (chunk_begun/chunk_done):
        # meanwhile a plain append waits for the chunk's end, not a callLater.
        self._chunks = 0
        self._flush_after_chunk = False
        self._drain_waiters: list[Deferred[None]] = []
        self._failure: Optional[Failure] = None
        #: While the journal cannot be written: the held job, retried on a timer.
        self._outage: Optional[Outage] = None
        self._outages = 0
        self._writes_refused = 0
        self._retry_interval = retry_interval
        self._closing = False
        self._stop_waiters: list[Deferred[None]] = []
        self._fsyncs = 0
        self._compaction: Optional[Compaction] = None
        self._last_compaction: Optional[dict[str, Any]] = None
        self._ticker: Optional[LoopingCall] = None
        self._cooperator = Cooperator(
            terminationPredicateFactory=lambda: _deadline(self._compaction_slice),
            scheduler=self._schedule_slice)

    @classmethod
    def open(cls, directory: str, fsync: str, reactor: Any, journal_lane: Any = None,
             snapshot_lane: Any = None, **tuning: Any) -> "DurableStore":
        """
        Recover the variables kept in ``directory`` (created if absent).

        :param reactor: an :class:`IReactorTime`; also runs the I/O threads
            unless both lanes are given (a reactor without threads gets
            :class:`InlineLane` lanes).
        :raises RecoveryError: the directory is locked by another daemon, or
            cannot be loaded without losing variables.
        """
        os.makedirs(directory, exist_ok=True)
        lock_fd = _lock(directory)
        memory = MemoryStore()
        try:
            recovered = recover(directory, memory)
        except BaseException:
            os.close(lock_fd)
            raise
        cls.log.info(
            "variables: recovered {variables} from {directory} in {seconds:.2f}s "
            "(snapshot {snapshot_bytes} bytes, {records} journal records); fsync {policy}",
            variables=len(memory), directory=directory, seconds=recovered.seconds,
            snapshot_bytes=recovered.snapshot_bytes, records=recovered.journal_records,
            policy=fsync)
        return cls(
            directory, fsync, reactor, memory, recovered.journal, recovered.generation,
            journal_lane or lane_for(reactor, "lttx-journal"),
            snapshot_lane or lane_for(reactor, "lttx-snapshot"),
            snapshot_bytes=recovered.snapshot_bytes, lock_fd=lock_fd, **tuning)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.policy == "everysec":
            self._ticker = LoopingCall(self._every_second)
            self._ticker.clock = self._clock
            self._ticker.start(1.0, now=False)
        self._maybe_compact()

    def stopService(self) -> "Deferred[None]":
        """Refuse further writes, flush and fsync the journal, release the directory."""
        if self._closing:  # stopped already (or stopping): the files are closed once
            d: Deferred[None] = Deferred()
            self._stop_waiters.append(d)
            if self._lock_fd < 0:
                self._fire_stopped()
            return d
        super().stopService()
        self._closing = True
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._compaction is not None and self._compaction.task is not None:
            # A large snapshot can take seconds; the journals already hold
            # every change, so drop it rather than delay the exit.
            try:
                self._compaction.task.stop()
            except TaskDone:
                # Encoded already: it is being sealed, which the lane waits for.
                self.log.info("stopping: the snapshot is encoded; sealing it before the exit")
        if self._outage is not None:
            self._outage.cancel_retry()
            if not self._in_flight:
                self._retry()  # space may be back: one last attempt, else give up
        else:
            self._flush()  # now, not at the end of the turn: nothing else is coming
        d = self._drained()
        d.addCallback(lambda _: self._journal_lane.run(self._close_file))
        # The snapshot lane finishes (or removes) the snapshot before the exit.
        d.addCallback(lambda size: self._snapshot_lane.run(lambda: size))
        d.addBoth(self._stopped)
        return d

    def _close_file(self) -> int:
        if self._failure is None:
            self._file.sync()
        self._file.close()
        return self._file.size

    def _stopped(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.log.failure("the journal could not be closed cleanly", result)
        elif self._failure is not None:
            self.log.warn("journal closed after a write failure: the changes refused "
                          "since were not written")
        else:
            self.log.info("journal flushed and synced ({size} bytes); variables are safe",
                          size=result)
        self._journal_lane.stop()
        self._snapshot_lane.stop()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._fire_stopped()

    def _fire_stopped(self) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    # -- reads ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, name: str, revision: bool = False) -> Any:
        return self._memory.get(name, revision)

    def ttl(self, name: str) -> Any:
        return self._memory.ttl(name)

    def exists(self, name: str) -> bool:
        return self._memory.exists(name)

    def keys(self, pattern: str = "*") -> Any:
        return self._memory.keys(pattern)

    def schedule_scans_on(self, clock: Any) -> None:
        """Run the slices of large ``keys`` scans in ``clock``'s reactor."""
        self._memory.schedule_scans_on(clock)

    def get_dict_value(self, name: str, key: Any) -> Any:
        return self._memory.get_dict_value(name, key)

    def get_list_value(self, name: str, index: int) -> Any:
        return self._memory.get_list_value(name, index)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every (name, value)."""
        return self._memory.items()

    def _writable(self) -> None:
        if self._outage is not None:
            self._outage.refused += 1
            self._writes_refused += 1
            raise StorageError(
                f"the journal cannot be written ({self._outage.reason}); writes are "
                "refused until it can be written again (the daemon retries every "
                f"{self._retry_interval:g} s)")
        if self._closing:
            raise Unavailable("the daemon is shutting down")

    def _preserve(self, name: str, in_place: bool) -> None:
        if self._compaction is not None:
            self._compaction.preserve(name, in_place)

    def _append(self, record: bytes, result: Any) -> Any:
        self._record(record)
        # Every policy replies once the record is in the OS (so a crash of the
        # daemon loses no acknowledged write, as with Redis, which writes its
        # AOF buffer before sending replies); ``always`` also waits for fsync.
        reply: Deferred[Any] = Deferred()
        self._waiters.append((reply, result))
        return reply

    def _record(self, record: bytes) -> None:
        """Queue a record no reply waits for (an expiry)."""
        self._buffer.append(record)
        self._unsynced = True
        self._journal_bytes += len(record)
        self._schedule()
        self._maybe_compact()

    # -- the journal lane -------------------------------------------------------

    def _every_second(self) -> None:
        if self._unsynced:
            self._sync_requested = True
            self._schedule()

    def _has_work(self) -> bool:
        return bool(self._buffer or self._before_rotation or self._sync_requested
                    or self._rotate_to is not None)

    def _schedule(self) -> None:
        # The first record of a reactor turn schedules the flush for the end
        # of the turn, so the records of every connection served in that turn
        # share one job (and, with ``always``, one fsync).  Without fsync, a
        # chunk's records are written at its end instead (chunk_done).
        if self._flush_call is None and not self._in_flight:
            if self._chunks and self.policy != "always":
                self._flush_after_chunk = True
            else:
                self._flush_call = self._clock.callLater(0, self._flush)

    def chunk_begun(self) -> None:
        """A connection starts serving a chunk of received requests."""
        self._chunks += 1

    def chunk_done(self) -> None:
        """That chunk is served: write what its changes queued (not with
        ``always``), then their replies go, as at the end of the turn."""
        self._chunks -= 1
        if not self._chunks and self._flush_after_chunk:
            self._flush_after_chunk = False
            self._flush()  # (a job in flight or an outage: it returns, as a callLater would)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._in_flight or self._outage is not None:
            return  # (during an outage, what is queued goes out once the held job is written)
        if (self._buffer and not self._before_rotation and self._rotate_to is None
                and not self._sync_requested and self.policy != "always"):
            # Appends only: what the job below does, without building it.
            after = b"".join(self._buffer)
            waiters, self._buffer, self._waiters = self._waiters, [], []
            try:
                self._file.write(after)
            except OSError:
                job = JournalJob(b"", None, after, False, waiters, None)
                self._write_failed(Failure(), job)
                return
            self._failure = None
            for d, result in waiters:
                d.callback(result)
            self._flush() if self._has_work() else self._fire_drained()
            return
        if not self._has_work():
            self._fire_drained()
            return
        before = b"".join(self._before_rotation)
        after = b"".join(self._buffer)
        rotate_to = self._rotate_to
        sync = self._sync_requested or rotate_to is not None or (
            self.policy == "always" and bool(before or after))
        job = JournalJob(before, rotate_to, after, sync, self._waiters, self._rotated)
        self._before_rotation, self._buffer, self._waiters = [], [], []
        self._rotate_to, self._rotated = None, None
        self._sync_requested = False
        if not sync and rotate_to is None and not before:
            # Only appends, no fsync, and the lane is idle (nothing else uses
            # the file now): write(2) them here, as Redis writes its AOF
            # buffer on its event loop before replying.  A write to the page
            # cache takes microseconds; the thread hop it saves is most of a
            # single client's wait under everysec and no.
            try:
                self._file.write(after)
            except OSError:
                job.after = after
                self._write_failed(Failure(), job)
                return
            job.after = b""
            self._written(None, job)
            return
        if sync:
            self._unsynced = False  # this job's fsync covers everything queued so far
        self._run_job(job)

    def _run_job(self, job: JournalJob) -> None:
        self._in_flight = True
        d = self._journal_lane.run(self._write, job)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(job,),
                       errbackArgs=(job,))

    def _write(self, job: JournalJob) -> None:
        """In the lane's thread: append, rotate, append, fsync; each step once,
        however many attempts the job takes."""
        if job.before:
            self._file.write(job.before)
            job.before = b""
        if job.rotate_to is not None:
            if self._file.fd >= 0:  # (closed already by an attempt that failed to create)
                self._file.sync()
                self._file.close()
            self._file = AppendFile.create(self.directory, job.rotate_to)
            job.rotate_to = None
        if job.after:
            self._file.write(job.after)
            job.after = b""
        if job.sync and not job.synced:
            self._file.sync()
            job.synced = True

    def _written(self, _: None, job: JournalJob) -> None:
        self._in_flight = False
        outage, self._outage = self._outage, None
        self._failure = None
        if outage is not None:
            outage.cancel_retry()
            self.log.info(
                "the journal can be written again after {seconds:.1f} s ({attempts} "
                "attempts, {refused} writes refused meanwhile); {held} waiting changes "
                "written, variable writes resume", seconds=self._clock.seconds() - outage.started,
                attempts=outage.attempts, refused=outage.refused, held=len(job))
        if job.synced:
            self._fsyncs += 1
        job.settle()
        # Whatever arrived while this job ran goes out now, as one job.
        self._flush()

    def _write_failed(self, failure: Failure, job: JournalJob) -> None:
        """A job could not be written: hold it (its changes are applied in
        memory, their replies wait) and retry it on a timer; refuse new writes."""
        self._in_flight = False
        self._failure = failure
        outage = self._outage
        if outage is None:
            outage = self._outage = Outage(failure, self._clock.seconds())
            self._outages += 1
            if failure.check(OSError):
                self.log.error(
                    "the journal could not be written ({reason}); variable writes are "
                    "refused until it can be (retried every {interval:g} s); {held} "
                    "changes applied in memory wait for the disk",
                    reason=outage.reason, interval=self._retry_interval, held=len(job))
            else:
                self.log.failure("the journal could not be written; variable writes are "
                                 "refused until it can be", failure)
        else:
            outage.failure = failure
        outage.job = job
        if self._closing:
            self._give_up()
        else:
            outage.retry_call = self._clock.callLater(self._retry_interval, self._retry)

    def _retry(self) -> None:
        outage = self._outage
        assert outage is not None and outage.job is not None
        outage.retry_call = None
        outage.attempts += 1
        self._run_job(outage.job)

    def _give_up(self) -> None:
        """Stopping while the journal cannot be written: what waits for it is lost."""
        outage = self._outage
        assert outage is not None
        error = StorageError(
            f"the journal could not be written ({outage.reason}); this change was "
            "applied in memory only and is lost as the daemon stops")
        if outage.job is not None:
            outage.job.refuse(error)
        JournalJob(b"", None, b"", False, self._waiters, self._rotated).refuse(error)
        self._before_rotation, self._buffer, self._waiters = [], [], []
        self._rotate_to, self._rotated, self._sync_requested = None, None, False
        self._fire_drained()

    def _drained(self) -> "Deferred[None]":
        if not self._in_flight and not self._has_work():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)
        return d

    def _fire_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)

    # -- compaction ---------------------------------------------------------------

    def _maybe_compact(self) -> None:
        threshold = max(self._compact_min_bytes, self._compact_growth * self._base_bytes)
        if (self._compaction is None and not self._closing and self._failure is None
                and self._journal_bytes >= threshold):
            # A failure is logged by _compaction_failed; nobody else waits here.
            self.compact().addErrback(lambda _: None)

    def compact(self) -> "Deferred[None]":
        """
        Write a snapshot of the current state and drop the journal it replaces.

        Fires when the snapshot is on disk (at once with the running
        compaction's result if one runs).
        """
        done: Deferred[None] = Deferred()
        if self._compaction is not None:
            self._compaction.waiters.append(done)
            return done
        if self._failure is not None or self._closing:
            done.errback(Unavailable("the journal is closed"))
            return done
        started = time.perf_counter()
        # Rotate: records from now on go to the next journal; the snapshot is
        # of the state after every record of the current one.
        generation = self._generation + 1
        self._generation = generation
        self._before_rotation, self._buffer = self._buffer, []
        self._rotate_to = generation
        rotated: Deferred[None] = Deferred()
        self._rotated = rotated
        self._journal_bytes = HEADER_SIZE
        compaction = Compaction(self.directory, generation, self._memory.names(),
                                self._memory, self._snapshot_chunk, self._clock.seconds())
        compaction.waiters.append(done)
        self._compaction = compaction
        self._schedule()
        compaction.task = self._cooperator.cooperate(compaction.encode(self._snapshot_lane))
        compaction.copy_pause = time.perf_counter() - started
        compaction.note_pause(compaction.copy_pause)
        # Both the rotation and the encoding must be over before sealing (or,
        # on failure, before another compaction may rotate again).
        finished = DeferredList([rotated, compaction.task.whenDone()], consumeErrors=True)
        finished.addCallback(first_failure)
        finished.addCallback(lambda _: self._snapshot_lane.run(compaction.seal))
        finished.addCallbacks(self._compacted, self._compaction_failed,
                              callbackArgs=(compaction,), errbackArgs=(compaction,))
        return done

    def _schedule_slice(self, step: Callable[[], None]) -> Any:
        def timed() -> None:
            started = time.perf_counter()
            step()
            if self._compaction is not None:
                self._compaction.note_pause(time.perf_counter() - started)
        return self._clock.callLater(self._compaction_gap, timed)

    def _compacted(self, result: tuple[int, list[str]], compaction: Compaction) -> None:
        size, removed = result
        self._compaction = None
        self._snapshot_bytes = self._base_bytes = size
        seconds = time.perf_counter() - compaction.started
        self._last_compaction = {
            "at": compaction.started_at,
            "generation": compaction.generation,
            "variables": len(compaction.names),
            "snapshot_bytes": size,
            "seconds": seconds,
            "longest_pause": compaction.longest_pause,
            "rotation_pause": compaction.copy_pause,
        }
        self.log.info(
            "compaction to generation {generation}: {variables} variables, snapshot "
            "{snapshot_bytes} bytes in {seconds:.2f}s, longest reactor pause "
            "{pause_ms:.1f} ms (rotation {rotation_ms:.1f} ms); removed {removed}",
            generation=compaction.generation, rotation_ms=compaction.copy_pause * 1000,
            variables=len(compaction.names), snapshot_bytes=size, seconds=seconds,
            pause_ms=compaction.longest_pause * 1000, removed=", ".join(removed) or "nothing")
        for d in compaction.waiters:
            d.callback(None)
        self._maybe_compact()

    def _compaction_failed(self, failure: Failure, compaction: Compaction) -> None:
        self._compaction = None
        if failure.check(TaskStopped):
            self.log.info("compaction to generation {generation} abandoned at shutdown; "
                          "the journals hold every change", generation=compaction.generation)
        else:
            self.log.failure("compaction to generation {generation} failed; the journals "
                             "hold every change", failure, generation=compaction.generation)
        self._snapshot_lane.run(compaction.writer.abort).addErrback(
            lambda f: self.log.failure("could not remove {path}", f,
                                       path=compaction.writer.temporary))
        for d in compaction.waiters:
            d.errback(StorageError(f"compaction failed: {failure.getErrorMessage()}"))

    # -- status -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``lttx status`` shows of the variables and their files."""
        return {
            "variables": len(self._memory),
            "fsync": self.policy,
            "journal_bytes": self._journal_bytes,
            "snapshot_bytes": self._snapshot_bytes,
            "generation": self._generation,
            "compacting": self._compaction is not None,
            "last_compaction": dict(self._last_compaction) if self._last_compaction else None,
            "journal_fsyncs": self._fsyncs,
            "expiring": self._memory.expiring_count,
            "top_revision": self._memory.top,
            "writable": self._failure is None and not self._closing,
            # A journal that could not be written: how often, and what it cost.
            "journal_outages": self._outages,
            "writes_refused": self._writes_refused,
            "unwritable_seconds": (self._clock.seconds() - self._outage.started
                                   if self._outage is not None else 0.0),
        }


__all__ = ["DurableStore", "FSYNC_POLICIES", "InlineLane", "ThreadLane"]
