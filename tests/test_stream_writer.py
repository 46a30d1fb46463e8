"""
lttx.diskio.StreamWriter: the chunks are hashed and written by two jobs in
flight together, each taking its chunks in order at its own pace (a job
running takes the chunks given meanwhile: no new job per chunk), errors of
either job are kept and reported once, the producer is paused and resumed at
the water marks, a job's run is bounded, and the disk is started on the
pages written every WRITEBACK_EVERY bytes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lttx import diskio
from lttx.diskio import StreamWriter, _hash_chunks, _write_chunks


class HeldRunner:
    """A RunInThread whose jobs run only when the test releases them."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def release(self, which: Callable[..., Any]) -> None:
        """Run the first held job of function ``which``."""
        for i, (f, args, d) in enumerate(self.jobs):
            if f is which:
                del self.jobs[i]
                try:
                    result = f(*args)
                except Exception:
                    d.errback(Failure())
                else:
                    d.callback(result)
                return
        raise AssertionError(f"no job of {which.__name__} is held")


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


class StreamWriterTests(TestCase):

    def make(self, **kw: Any) -> tuple[StreamWriter, HeldRunner, io.BytesIO, Producer,
                                       list[Failure]]:
        run, file, producer, errors = HeldRunner(), io.BytesIO(), Producer(), []
        writer = StreamWriter(file, hashlib.md5(), run, producer, errors.append, **kw)
        return writer, run, file, producer, errors

    def test_hash_and_write_are_in_flight_together(self) -> None:
        """A batch starts both jobs at once; drained fires only after both."""
        writer, run, file, _, _ = self.make()
        writer.write(b"a" * 5000)
        self.assertEqual(sorted(f.__name__ for f, _, _ in run.jobs),
                         ["_hash_chunks", "_write_chunks"])
        drained = writer.drained()
        run.release(_write_chunks)
        self.assertNoResult(drained)
        run.release(_hash_chunks)
        self.successResultOf(drained)
        self.assertEqual(file.getvalue(), b"a" * 5000)
        self.assertEqual(writer.md5.hexdigest(), hashlib.md5(b"a" * 5000).hexdigest())

    def test_each_job_takes_its_chunks_in_order_at_its_own_pace(self) -> None:
        """Chunks given while the jobs run start no new job (no hand-off per chunk);
        the write goes on while the MD5 is still busy, and the other way round."""
        writer, run, file, _, _ = self.make()
        writer.write(b"1" * 3000)
        writer.write(b"2" * 3000)
        writer.write(b"3" * 3000)
        self.assertEqual(len(run.jobs), 2)  # one job each, for all three chunks
        run.release(_write_chunks)
        self.assertEqual(file.getvalue(), b"1" * 3000 + b"2" * 3000 + b"3" * 3000)
        self.assertEqual(writer.queued, 9000)  # written, not yet hashed
        writer.write(b"4" * 3000)  # the writer had stopped: started again; the MD5 runs
        self.assertEqual(sorted(f.__name__ for f, _, _ in run.jobs),
                         ["_hash_chunks", "_write_chunks"])
        run.release(_hash_chunks)  # hashes 1, 2, 3 and 4, in order
        run.release(_write_chunks)
        self.assertEqual(run.jobs, [])
        self.successResultOf(writer.drained())
        data = b"1" * 3000 + b"2" * 3000 + b"3" * 3000 + b"4" * 3000
        self.assertEqual(file.getvalue(), data)
        self.assertEqual(writer.md5.hexdigest(), hashlib.md5(data).hexdigest())
        self.assertEqual(writer.queued, 0)

    def test_a_job_in_a_thread_takes_chunks_given_while_it_runs(self) -> None:
        """In real threads: the MD5 job, held inside its first update, finds the
        chunks given meanwhile and hashes them all in that one run, in order."""
        started: list[str] = []
        inside, go = threading.Event(), threading.Event()

        def in_thread(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
            started.append(f.__name__)
            d: Deferred[Any] = Deferred()

            def job() -> None:
                try:
                    result = f(*args)
                except BaseException:
                    reactor.callFromThread(d.errback, Failure())
                else:
                    reactor.callFromThread(d.callback, result)
            threading.Thread(target=job).start()
            return d

        class HeldMD5:
            def __init__(self) -> None:
                self.md5 = hashlib.md5()

            def update(self, data: bytes) -> None:
                inside.set()
                go.wait(30)
                self.md5.update(data)

        file, producer, errors = io.BytesIO(), Producer(), []
        writer = StreamWriter(file, HeldMD5(), in_thread, producer, errors.append,
                              high=10 ** 9, low=10 ** 8)
        writer.write(b"first")
        self.assertTrue(inside.wait(30))
        chunks = [b"%05d" % i * 100 for i in range(100)]
        for chunk in chunks:
            writer.write(chunk)
        go.set()

        def check(_: Any) -> None:
            self.assertEqual(started.count("_hash_chunks"), 1)
            self.assertEqual(writer.md5.md5.hexdigest(),
                             hashlib.md5(b"first" + b"".join(chunks)).hexdigest())
            self.assertEqual(file.getvalue(), b"first" + b"".join(chunks))
            self.assertEqual(errors, [])
        return writer.drained().addCallback(check)

    def test_write_error_is_kept_and_reported_once(self) -> None:
        """A failing write: on_error gets the error itself; later chunks are dropped;
        drained fails once the MD5 job still running has stopped too."""
        writer, run, file, _, errors = self.make()
        file.close()  # writing a closed file raises ValueError
        writer.write(b"x" * 4000)
        writer.write(b"x" * 4000)
        run.release(_write_chunks)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].check(ValueError))
        drained = writer.drained()
        self.assertNoResult(drained)  # the MD5 job is still out
        run.release(_hash_chunks)
        self.failureResultOf(drained, ValueError)
        writer.write(b"y" * 4000)
        self.assertEqual(run.jobs, [])
        self.assertEqual(len(errors), 1)
        self.failureResultOf(writer.drained(), ValueError)

    def test_a_job_that_fails_before_running_is_an_error(self) -> None:
        """The runner's own failure (the job never ran) fails the writer; drained ends."""
        errors: list[Failure] = []
        writer = StreamWriter(io.BytesIO(), hashlib.md5(),
                              lambda f, *a: fail(OSError(28, "No space left on device"))
                              if f is _write_chunks else maybeDeferred(f, *a),
                              Producer(), errors.append)
        writer.write(b"w" * 100)
        self.assertEqual(len(errors), 1)
        self.failureResultOf(writer.drained(), OSError)

    def test_hash_error_is_reported(self) -> None:
        """A failing MD5 job fails the writer as a failing write does."""
        writer, run, _, _, errors = self.make()
        writer.md5 = None  # type: ignore[assignment]
        writer.write(b"z" * 4000)
        run.release(_write_chunks)
        run.release(_hash_chunks)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].check(AttributeError))
        self.failureResultOf(writer.drained(), AttributeError)

    def test_pauses_over_high_and_resumes_at_low(self) -> None:
        """More than ``high`` bytes waiting pauses the producer; the slower job
        stops at ``low`` so the producer is resumed while work remains, then goes on."""
        writer, run, _, producer, _ = self.make(high=10000, low=7000)
        writer.write(b"a" * 6000)
        writer.write(b"b" * 6000)
        self.assertEqual(producer.calls, ["pause"])
        writer.write(b"c" * 6000)  # (what was already read still arrives)
        self.assertEqual(producer.calls, ["pause"])
        run.release(_write_chunks)  # the budget (high) ends the run after two chunks
        self.assertEqual(producer.calls, ["pause"])
        run.release(_write_chunks)
        run.release(_hash_chunks)  # 12000 hashed: 6000 left <= low: stops, resumed
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(writer.queued, 6000)
        self.assertEqual([f.__name__ for f, _, _ in run.jobs], ["_hash_chunks"])
        run.release(_hash_chunks)
        self.assertEqual(writer.queued, 0)
        self.successResultOf(writer.drained())
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_with_call_from_thread_the_job_goes_on_past_the_low_mark(self) -> None:
        """With the reactor's callFromThread (pool_runner), the job that reaches the
        low mark asks the reactor thread once to resume the producer and goes on
        with its chunks in the same run; the producer is resumed once."""
        writer, run, _, producer, _ = self.make(high=13000, low=7000)
        hashing = writer._lanes[1][0]
        asked: list[tuple[int, Callable[[], None]]] = []
        # What pool_runner's call_from_thread gives: here, noted with the bytes hashed.
        writer._from_thread = lambda f: asked.append((hashing.done, f))
        for c in b"abc":
            writer.write(bytes([c]) * 6000)
        self.assertEqual(producer.calls, ["pause"])
        run.release(_write_chunks)
        run.release(_hash_chunks)  # a, b (down to 6000 <= low: asks), then c, same run
        self.assertEqual([done for done, _ in asked], [12000])
        self.assertEqual(hashing.done, 18000)
        self.assertEqual(run.jobs, [])  # it did not stop at the low mark
        asked[0][1]()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(writer.md5.hexdigest(),
                         hashlib.md5(b"a" * 6000 + b"b" * 6000 + b"c" * 6000).hexdigest())

    def test_a_late_resume_request_does_not_resume_over_the_mark(self) -> None:
        """A job's request to resume that runs after the producer was resumed and
        paused again (the backlog over the low mark again) does not resume it."""
        writer, run, _, producer, _ = self.make(high=13000, low=7000)
        asked: list[Callable[[], None]] = []
        writer._from_thread = asked.append
        for c in b"abc":
            writer.write(bytes([c]) * 6000)
        run.release(_write_chunks)
        run.release(_hash_chunks)  # asks at the low mark; then stops: resumed by _stopped
        self.assertEqual(producer.calls, ["pause", "resume"])
        for c in b"def":
            writer.write(bytes([c]) * 6000)  # over high: paused again
        self.assertEqual(producer.calls, ["pause", "resume", "pause"])
        asked[0]()  # the late request
        self.assertEqual(producer.calls, ["pause", "resume", "pause"])

    def test_pool_runner_offers_call_from_thread(self) -> None:
        """pool_runner's runner carries the reactor's callFromThread; run_inline does not."""
        self.assertEqual(diskio.pool_runner(reactor).call_from_thread,  # type: ignore
                         reactor.callFromThread)
        self.assertFalse(hasattr(diskio.run_inline, "call_from_thread"))

    def test_a_run_is_bounded_by_the_high_mark(self) -> None:
        """A job hands its pool thread back after ``high`` bytes and is started again."""
        writer, run, file, _, _ = self.make(high=10000, low=1000)
        for i in range(4):
            writer.write(bytes([65 + i]) * 6000)
        run.release(_write_chunks)
        self.assertEqual(len(file.getvalue()), 12000)
        self.assertIn(_write_chunks, [f for f, _, _ in run.jobs])  # started again
        run.release(_write_chunks)
        self.assertEqual(file.getvalue(), b"".join(bytes([65 + i]) * 6000 for i in range(4)))


class WritebackTests(TestCase):
    """The writing job starts the disk on the pages written every WRITEBACK_EVERY bytes."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.file = open(self.path, "wb")
        self.addCleanup(self.file.close)
        self.calls: list[int] = []

    def writer(self, errors: list[Failure]) -> StreamWriter:
        return StreamWriter(self.file, hashlib.md5(), maybeDeferred, Producer(), errors.append)

    def test_started_every_writeback_every_bytes(self) -> None:
        """20 MiB in 256 KiB chunks: two writebacks, each after its 8 MiB were flushed."""
        sizes: list[int] = []

        def record(fd: int) -> bool:
            self.assertEqual(fd, self.file.fileno())
            sizes.append(os.fstat(fd).st_size)  # flushed to the file before
            return True

        self.patch(diskio, "start_writeback", record)
        errors: list[Failure] = []
        writer = self.writer(errors)
        chunk = os.urandom(256 * 1024)
        for _ in range(80):
            writer.write(chunk)
        self.successResultOf(writer.drained())
        self.assertEqual(sizes, [diskio.WRITEBACK_EVERY, 2 * diskio.WRITEBACK_EVERY])
        self.assertEqual(errors, [])
        self.file.close()
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), chunk * 80)

    def test_not_supported_is_not_asked_again(self) -> None:
        """A file system without it (False): the stream goes on, never asking again."""
        calls: list[int] = []
        self.patch(diskio, "start_writeback", lambda fd: calls.append(fd) and False)
        writer = self.writer([])
        for _ in range(3):
            writer.write(b"w" * diskio.WRITEBACK_EVERY)
        self.successResultOf(writer.drained())
        self.assertEqual(len(calls), 1)

    def test_disk_error_is_the_write_error(self) -> None:
        """ENOSPC from the writeback fails the stream as a failing write does: 'disk full'."""
        def full(fd: int) -> bool:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(diskio, "start_writeback", full)
        errors: list[Failure] = []
        writer = self.writer(errors)
        writer.write(b"f" * diskio.WRITEBACK_EVERY)
        [error] = errors
        self.assertIn("disk full", str(diskio.storage_error(error.value, "f.bin")))
        self.failureResultOf(writer.drained(), OSError)

    def test_the_real_call(self) -> None:
        """On Linux the call is made on a file; a pipe is told apart (False), not an error."""
        if diskio._sync_file_range is None:
            raise self.skipTest("no sync_file_range here")
        self.file.write(b"x" * 100_000)
        self.file.flush()
        self.assertTrue(diskio.start_writeback(self.file.fileno()))
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        self.assertFalse(diskio.start_writeback(write))
