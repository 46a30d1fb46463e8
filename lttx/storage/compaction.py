"""
One compaction of the journal: a snapshot of the variables as they were at
the instant the journal was rotated, encoded cooperatively between reactor
turns while writes go on, written by the snapshot lane, then sealed (the
journals it replaces removed).  :class:`~lttx.storage.durable.DurableStore`
starts one when its journal has grown enough, and applies the result.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..state.store import MISSING, MemoryStore
from .journal import SNAPSHOT_ENTRIES, SnapshotWriter, encode_record, remove_generations_before

#: Encoded snapshot bytes handed to the writer thread before the encoder waits
#: for it (bounds the memory a compaction uses on a slow disk).
SNAPSHOT_BACKLOG = 16 * 1024 * 1024


class Compaction:
    """
    One snapshot being written, of the state at the instant the journal was
    rotated.

    Consistency while values keep changing: at that instant only the list of
    names is copied (~10 ms for a million names; a copy of the whole table
    would take 2-3 times that).  The encoder then walks that list in slices
    between reactor turns, reading each value from the live store.  To still
    see the state of the rotation instant, the store calls :meth:`preserve`
    before *every* change during the compaction (copy-on-write): the first
    change to a name keeps its value as it was then (the object itself when
    a put or delete replaces it, which nobody mutates afterwards; a shallow
    copy when an in-place operation is about to mutate it, which only ever
    touches the top level), and the encoder prefers the kept value.  Names
    created after the rotation are not in the list, so they are not in the
    snapshot; journal G+1 holds them.
    """

    def __init__(self, directory: str, generation: int, names: list[str],
                 values: MemoryStore, chunk: int, started_at: float) -> None:
        self.directory = directory
        self.generation = generation
        self.names = names
        self.values = values
        self.preimages: dict[str, tuple[Any, int, Any]] = {}
        #: The highest revision given at the rotation.
        self.top = values.top
        self.chunk = chunk
        self.writer = SnapshotWriter(directory, generation)
        self.started = time.perf_counter()
        self.started_at = started_at
        self.copy_pause = 0.0
        self.longest_pause = 0.0
        self.error: Optional[Failure] = None
        self.task: Any = None
        self.waiters: list[Deferred[None]] = []
        self.encoded = False

    def preserve(self, name: str, in_place: bool) -> None:
        """Keep ``name``'s value as of the rotation before it changes (see above)."""
        if not self.encoded and name not in self.preimages:
            current, revision, deadline = self.values.entry(name)
            if in_place and type(current) in (dict, list):
                current = current.copy()
            self.preimages[name] = (current, revision, deadline)

    def note_pause(self, seconds: float) -> None:
        self.longest_pause = max(self.longest_pause, seconds)

    def note_error(self, failure: Failure) -> None:
        if self.error is None:
            self.error = failure

    def records(self) -> Iterator[bytes]:
        """The snapshot's item records, encoded a chunk at a time."""
        preimages, live = self.preimages, self.values.entry
        batch: list[Any] = []
        for name in self.names:
            entry = preimages.get(name, MISSING)
            batch.append(name)
            batch.extend(live(name) if entry is MISSING else entry)
            if len(batch) >= 4 * self.chunk:
                yield encode_record([SNAPSHOT_ENTRIES, batch])
                batch = []
        if batch:
            yield encode_record([SNAPSHOT_ENTRIES, batch])

    def encode(self, lane: Any) -> Iterator[Optional["Deferred[Any]"]]:
        """For a Cooperator: encode a chunk per step, hand it to the snapshot lane."""
        lane.run(self.writer.open).addErrback(self.note_error)
        backlog = 0
        for record in self.records():
            written = lane.run(self.writer.write, record)
            written.addErrback(self.note_error)
            backlog += len(record)
            if backlog >= SNAPSHOT_BACKLOG:
                backlog = 0
                yield written  # let the writer thread catch up
            else:
                yield None
        self.encoded = True
        self.preimages = {}
        yield lane.run(lambda: None)  # every write above has finished
        if self.error is not None:
            self.error.raiseException()

    def seal(self) -> tuple[int, list[str]]:
        """In the snapshot lane: finish the snapshot, then drop what it replaces."""
        size = self.writer.finish(len(self.names), self.top)
        return size, remove_generations_before(self.directory, self.generation)


def first_failure(results: list[tuple[bool, Any]]) -> None:
    """Raise the first failure of a DeferredList's results (consumed errors)."""
    for success, result in results:
        if not success:
            result.raiseException()


__all__ = ["Compaction", "SNAPSHOT_BACKLOG", "first_failure"]
