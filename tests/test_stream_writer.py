"""
lttx.diskio.StreamWriter: each batch is hashed and written by two jobs in
flight together, the next batch waits for both, the MD5 sees every chunk in
order, errors of either job are kept and reported, and the producer is
paused and resumed at the water marks.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

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

    def test_next_batch_waits_for_both_jobs_and_keeps_the_order(self) -> None:
        """Chunks given while a batch is in flight go in one later batch, hashed in order."""
        writer, run, file, _, _ = self.make()
        writer.write(b"1" * 3000)
        writer.write(b"2" * 3000)
        writer.write(b"3" * 3000)
        run.release(_hash_chunks)
        self.assertEqual(len(run.jobs), 1)  # the write of batch 1 still runs: no batch 2 yet
        run.release(_write_chunks)
        self.assertEqual(len(run.jobs), 2)  # batch 2 (chunks 2 and 3), both jobs
        self.assertEqual(run.jobs[0][1][1], [b"2" * 3000, b"3" * 3000])
        run.release(_write_chunks)
        run.release(_hash_chunks)
        self.successResultOf(writer.drained())
        data = b"1" * 3000 + b"2" * 3000 + b"3" * 3000
        self.assertEqual(file.getvalue(), data)
        self.assertEqual(writer.md5.hexdigest(), hashlib.md5(data).hexdigest())
        self.assertEqual(writer.queued, 0)

    def test_write_error_is_kept_and_reported_once(self) -> None:
        """A failing write: on_error gets the OSError itself; later chunks are dropped."""
        writer, run, file, _, errors = self.make()
        file.close()  # writing a closed file raises ValueError
        writer.write(b"x" * 4000)
        run.release(_hash_chunks)
        run.release(_write_chunks)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].check(ValueError))
        writer.write(b"y" * 4000)
        self.assertEqual(run.jobs, [])
        self.failureResultOf(writer.drained(), ValueError)

    def test_hash_error_is_reported(self) -> None:
        """A failing MD5 job fails the writer as a failing write does."""
        writer, run, _, _, errors = self.make()
        writer.md5 = None  # type: ignore[assignment]
        writer.write(b"z" * 4000)
        run.release(_write_chunks)
        run.release(_hash_chunks)
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].check(AttributeError))

    def test_pauses_over_high_and_resumes_at_low(self) -> None:
        """More than ``high`` bytes waiting pauses the producer; both jobs done resumes it."""
        writer, run, _, producer, _ = self.make(high=10000, low=5000)
        writer.write(b"a" * 6000)
        writer.write(b"b" * 6000)
        self.assertEqual(producer.calls, ["pause"])
        run.release(_write_chunks)
        run.release(_hash_chunks)  # batch 1 done: 6000 still queued, over low
        self.assertEqual(producer.calls, ["pause"])
        run.release(_write_chunks)
        run.release(_hash_chunks)
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(writer.queued, 0)
