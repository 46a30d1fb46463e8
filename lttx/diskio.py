"""
Blocking disk work and where it runs: off the reactor thread, always.

- Runners: a callable ``run(f, *args) -> Deferred`` of ``f(*args)``.
  :class:`ThreadLane` runs its jobs one after another in a thread of its own
  (the journal, the snapshot writer); :func:`pool_runner` in the reactor's
  thread pool (file transfers, many at once); :class:`InlineLane` at once on
  the calling thread (reactors without threads, tests).
- Durability: :func:`sync_data`, :func:`sync_file`, :func:`fsync_directory`,
  and :func:`start_writeback` (the disk started early on a stream's pages).
- :class:`StreamWriter`: chunks written and hashed in order off the reactor,
  with backpressure on the producer that feeds it (both ends of a file
  transfer receive through one).
- :func:`hash_file_prefix` (resuming a transfer), :func:`storage_error` (an
  ``OSError`` as the :class:`~lttx.errors.StorageError` a client is told),
  and the two knobs of a file stream's transport, :func:`read_big` and
  :func:`stop_sender`.

Used by the storage layer, the daemon and the client alike.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import sys
import threading
from typing import Any, Callable, Optional

from twisted.internet.defer import (
    Deferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .errors import StorageError

#: ``run(f, *args)`` -> a Deferred of ``f(*args)``, run somewhere else.
RunInThread = Callable[..., "Deferred[Any]"]

_HASH_BLOCK = 1024 * 1024
#: The receiving side pauses its producer while more than this waits to be written...
WRITE_HIGH_WATER = 8 * 1024 * 1024
#: ... and resumes it once the backlog is down to this.
WRITE_LOW_WATER = 2 * 1024 * 1024


# -- where blocking work runs -----------------------------------------------

class ThreadLane:
    """Runs blocking jobs one after another in a thread of its own."""

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._started = False

    def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """Run ``f(*args)`` after every job run before it; its result."""
        if not self._started:
            self._pool.start()
            self._started = True
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def stop(self) -> None:
        """Join the thread (call once every job has finished)."""
        if self._started:
            self._pool.stop()
            self._started = False


class InlineLane:
    """
    Runs each job at once on the calling thread: for reactors without
    threads (``MemoryReactorClock`` in tests) and for tools working on a data
    directory with no reactor running.
    """

    def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        return maybeDeferred(f, *args)

    def stop(self) -> None:
        """Nothing runs in the background: nothing to stop."""


def lane_for(reactor: Any, name: str) -> "ThreadLane | InlineLane":
    """A :class:`ThreadLane` on a reactor with threads, else an :class:`InlineLane`."""
    if IReactorFromThreads.providedBy(reactor) and IReactorThreads.providedBy(reactor):
        return ThreadLane(reactor, name)
    return InlineLane()


def pool_runner(reactor: Any) -> RunInThread:
    """``run(f, *args)`` -> a Deferred of ``f(*args)`` run in the reactor's thread
    pool (at once, on a reactor without threads, as :func:`lane_for` does)."""
    if not IReactorThreads.providedBy(reactor):
        return run_inline
    return _PoolRunner(reactor)


class _PoolRunner:
    """A :data:`RunInThread` of the reactor's pool; its jobs may also call
    ``call_from_thread`` (the reactor's ``callFromThread``) while they run."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.call_from_thread = reactor.callFromThread

    def __call__(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)


def run_inline(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """A :data:`RunInThread` that runs ``f`` at once (tests, tiny files)."""
    return maybeDeferred(f, *args)


# -- durability ----------------------------------------------------------------

def sync_data(fd: int) -> None:
    """Make what was written to ``fd`` durable (fdatasync: the inode times are
    skipped, the size an append changed is not)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def sync_file(file: Any) -> None:
    """Flush a Python file object and fsync it."""
    file.flush()
    os.fsync(file.fileno())


#: A stream being written hands its dirty pages to the disk every this many
#: bytes (:func:`start_writeback`), so its final fsync waits only for the last ones.
WRITEBACK_EVERY = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _find_sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux; Python's os has none), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _find_sync_file_range()


def start_writeback(fd: int) -> bool:
    """
    Start writing the dirty pages of ``fd`` to the disk, without waiting for
    them (``sync_file_range(SYNC_FILE_RANGE_WRITE)``; the GIL is released):
    the fsync that ends a stream then waits only for what came after.  It
    makes nothing durable by itself.  Whether it could (not on a file system
    or platform without it).

    :raises OSError: if the disk reports an error (EIO, ENOSPC).
    """
    if _sync_file_range is None:
        return False
    if _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code))


def fsync_directory(path: str) -> None:
    """Make a create, rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove ``path``; one that is already gone is what was wanted."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def storage_error(error: Optional[BaseException], what: str) -> StorageError:
    """The StorageError a failed write (an OSError, normally) stands for."""
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full: no space left to write {what}")
    if code == errno.EFBIG:
        return StorageError(f"{what} is larger than the file system allows")
    return StorageError(f"cannot write {what}: {getattr(error, 'strerror', None) or error}")


# -- hashing -----------------------------------------------------------------

def hash_prefix(file: Any, length: int, md5: Any) -> str:
    """Feed the first ``length`` bytes of an open file to ``md5``; its hex digest."""
    file.seek(0)
    left = length
    while left > 0:
        block = file.read(min(_HASH_BLOCK, left))
        if not block:
            break
        md5.update(block)
        left -= len(block)
    return str(md5.hexdigest())


def hash_range(fd: int, offset: int, count: int, md5: Any,
               block: int = 1024 * 1024) -> str:
    """
    In a thread: feed bytes ``offset`` to ``offset + count`` of ``fd`` to
    ``md5`` (with ``os.pread``: the file position is left alone) and close
    ``fd``, which the caller handed over (a duplicate of its own); the hex digest.

    :raises OSError: if the file cannot be read or is shorter than that.
    """
    try:
        end = offset + count
        while offset < end:
            data = os.pread(fd, min(block, end - offset), offset)
            if not data:
                raise OSError("the file is shorter than when the download began")
            md5.update(data)
            offset += len(data)
        return str(md5.hexdigest())
    finally:
        os.close(fd)


def hash_file_prefix(path: str, length: int) -> tuple[Any, str]:
    """The MD5 object and hex digest of the first ``length`` bytes of ``path``."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        digest = hash_prefix(f, length, md5)
    return md5, digest


# -- the receiving side of a stream ------------------------------------------

class _Lane:
    """
    One of a :class:`StreamWriter`'s two jobs (writing the chunks, or hashing
    them): its own queue of the chunks, in order, and whether a thread is on it.

    ``chunks`` and ``running`` change only under the writer's lock; ``done``
    (bytes this lane has finished) only in the thread running the lane.
    """

    __slots__ = ("chunks", "done", "running", "step", "writer")

    def __init__(self, writer: "StreamWriter", step: Callable[[bytes], Any]) -> None:
        self.writer = writer
        self.step = step
        self.chunks: collections.deque[bytes] = collections.deque()
        self.running = False
        self.done = 0

    def drain(self) -> None:
        """
        In a thread: take this lane's chunks in order until none is left or
        ``high`` bytes were handled in this run (a pool thread is not held by
        one transfer for long).  Once the writer is paused and its backlog is
        down to its low mark, the reactor thread is asked to resume the
        producer while this goes on (with a runner that has no
        ``call_from_thread``, this stops instead, and the reactor thread
        resumes the producer and starts the lane again).
        """
        writer = self.writer
        lock, chunks, step, from_thread = writer._lock, self.chunks, self.step, writer._from_thread
        budget = writer._high
        try:
            while True:
                ask = False
                with lock:
                    low = writer.paused and writer.queued <= writer._low
                    if not chunks or budget <= 0 or (low and from_thread is None):
                        self.running = False
                        return
                    if low and not writer._resuming:
                        writer._resuming = ask = True
                    chunk = chunks.popleft()
                if ask:  # the reactor thread resumes the producer; this job goes on
                    from_thread(writer._resume)
                step(chunk)
                self.done += len(chunk)
                budget -= len(chunk)
        except BaseException:
            with lock:
                self.running = False
            raise


def _write_chunks(lane: _Lane) -> None:
    # Runs in a thread: file writes release the GIL on big buffers.
    lane.drain()


def _hash_chunks(lane: _Lane) -> None:
    # Runs in another thread beside _write_chunks: hashlib releases the GIL
    # for buffers over 2 KiB, so the MD5 and the write overlap.
    lane.drain()


class StreamWriter:
    """
    Write chunks to a file in order, in a thread, hashing them as they go.

    Two jobs take the chunks, each in order and at its own pace, in threads
    of ``run_in_thread``: one writes them to ``file``, the other feeds them to
    ``md5`` (a write costs less than the MD5: the stream goes at the pace of
    the slower job, not of their sum).  Every :data:`WRITEBACK_EVERY` bytes
    the writing job starts the disk on the pages written so far
    (:func:`start_writeback`), so the fsync at the end of the stream does
    not wait for the whole file.  A job runs for as long as it has
    chunks: the reactor thread only appends a chunk to both queues (one lock,
    no hand-off per chunk or per batch) and starts a job that had stopped.

    While more than ``high`` bytes wait to be written or hashed, ``producer``
    (the receiving protocol) is paused, so a fast sender and a slow disk
    cannot make the receiver's memory grow; it is resumed at ``low``.  The
    first error of either job is kept; ``on_error`` is told of it once and
    later chunks are dropped.
    """

    def __init__(self, file: Any, md5: Any, run_in_thread: RunInThread, producer: Any,
                 on_error: Callable[[Failure], None],
                 high: int = WRITE_HIGH_WATER, low: int = WRITE_LOW_WATER) -> None:
        self.file = file
        self.md5 = md5
        self._run = run_in_thread
        self._producer = producer
        self._on_error = on_error
        self._high = high
        self._low = low
        self._lock = threading.Lock()
        # The reactor's callFromThread, if the runner has it (pool_runner):
        # a job asks it to resume the producer without stopping.
        self._from_thread = getattr(run_in_thread, "call_from_thread", None)
        self._resuming = False  # a job asked for _resume, not yet run
        # (The steps look the file and the MD5 up when they run: a test may
        # swap either.)
        self._lanes = ((_Lane(self, self._write_step), _write_chunks),
                       (_Lane(self, lambda chunk: self.md5.update(chunk)), _hash_chunks))
        try:
            self._fd: Optional[int] = file.fileno()
        except (OSError, ValueError, AttributeError):  # not a file of the disk (tests)
            self._fd = None
        self._unsent = 0  # bytes written since the last start_writeback
        self.received = 0  # bytes given to write()
        self.paused = False
        self.error: Optional[Failure] = None
        self._waiters: list[Deferred[None]] = []

    def _write_step(self, chunk: bytes) -> None:
        # In the writing job's thread.
        self.file.write(chunk)
        if self._fd is None:
            return
        self._unsent += len(chunk)
        if self._unsent >= WRITEBACK_EVERY:
            self._unsent = 0
            self.file.flush()
            if not start_writeback(self._fd):
                self._fd = None  # not here: the final fsync writes it all

    @property
    def queued(self) -> int:
        """Bytes given and not yet both written and hashed."""
        return self.received - min(lane.done for lane, _ in self._lanes)

    def write(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        self.received += len(chunk)
        start = []
        with self._lock:
            for lane, job in self._lanes:
                lane.chunks.append(chunk)
                if not lane.running:
                    lane.running = True
                    start.append((lane, job))
        for lane, job in start:
            self._start(lane, job)
        if not self.paused and self.queued > self._high:
            self.paused = True
            self._producer.pauseProducing()

    def _start(self, lane: _Lane, job: Callable[[_Lane], None]) -> None:
        self._run(job, lane).addCallbacks(self._stopped, self._failed, errbackArgs=(lane,))

    def _resume(self) -> None:
        """Asked by a job (in the reactor thread): the backlog is down to the low mark."""
        self._resuming = False
        # (Resumed meanwhile and paused again: not yet; a job asks again at low.)
        if self.paused and self.error is None and self.queued <= self._low:
            self.paused = False
            self._producer.resumeProducing()

    def _stopped(self, _: Any = None) -> None:
        """A job ran out of chunks (or paused, or used its budget): in the reactor thread."""
        if self.error is not None:
            self._settle()
            return
        if self.paused and self.queued <= self._low:
            self.paused = False
            self._producer.resumeProducing()  # (may give more chunks at once)
        if self.error is None:
            start = []
            with self._lock:
                for lane, job in self._lanes:
                    if lane.chunks and not lane.running:
                        lane.running = True
                        start.append((lane, job))
            for lane, job in start:
                self._start(lane, job)
        self._settle()

    def _failed(self, failure: Failure, lane: _Lane) -> None:
        with self._lock:
            lane.running = False  # (a job may fail before it ran at all)
        if self.error is None:
            self.error = failure
            with self._lock:  # the other job stops at its next chunk
                for other, _ in self._lanes:
                    other.chunks.clear()
            self._on_error(failure)
        self._settle()

    def _idle(self) -> bool:
        return not any(lane.running or lane.chunks for lane, _ in self._lanes)

    def _settle(self) -> None:
        """Tell drained() waiters, once no job runs any more."""
        if not self._waiters or not self._idle():
            return
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if self.error is not None:
                d.errback(self.error)
            else:
                d.callback(None)

    def drained(self) -> "Deferred[None]":
        """Fires once every chunk given so far is written and hashed and no job
        runs any more (fails with the first error, once the jobs stopped)."""
        if self._idle():
            return fail(self.error) if self.error is not None else succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d


def stop_sender(sender: Any) -> None:
    """Stop a :class:`~twisted.protocols.basic.FileSender` for good:
    ``stopProducing`` alone lets the transport pull the rest of the file."""
    sender.stopProducing()
    sender.file = None


def read_big(transport: Any) -> None:
    """Read up to 1 MiB per recv on a file connection instead of Twisted's 64 KiB:
    far fewer calls for a stream of file data."""
    if isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = READ_SIZE


def read_size(transport: Any, big: bool) -> None:
    """Read up to 1 MiB per recv while ``big`` (a long frame is arriving on a
    command connection: a 100 MB DataFrame in 64 KiB reads takes 1,600 turns
    of the reactor), Twisted's 64 KiB otherwise (a recv allocates its size)."""
    size = getattr(transport, "bufferSize", None)
    if isinstance(size, int) and (size == READ_SIZE) != big:
        transport.bufferSize = READ_SIZE if big else SMALL_READ_SIZE


#: Bytes read from the socket at once on a file connection (:func:`read_big`).
READ_SIZE = 1024 * 1024
#: Twisted's own read size (``FileDescriptor.bufferSize``).
SMALL_READ_SIZE = 64 * 1024

__all__ = ["WRITEBACK_EVERY", "InlineLane", "RunInThread", "StreamWriter", "ThreadLane",
           "fsync_directory", "hash_file_prefix", "hash_prefix", "hash_range", "lane_for",
           "pool_runner", "read_big", "read_size", "run_inline", "start_writeback", "stop_sender",
           "storage_error", "sync_data", "sync_file", "unlink_quietly"]
