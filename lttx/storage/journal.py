"""
The on-disk formats of durable cloud variables, and recovery from them.

Plain blocking file I/O, no reactor: :mod:`lttx.durable` runs the writing
parts in a thread, and :func:`recover` runs once at start-up, before the
daemon listens.  The formats are described in ``docs/storage.md``.

A data directory holds, for the current *generation* G:

- ``snapshot-G.snap``: every variable as it was when journal G was started
  (absent for generation 1 and until the first compaction),
- ``journal-G.log``: every change applied since, in order.

Both files start with a header (magic, format version, generation, CRC) and
then hold records ``[u32 length][u32 crc32 of length+payload][payload]``,
each payload one MessagePack array.  A compaction starts journal G+1 and
writes snapshot G+1 from the state at that instant; only once the snapshot is
on disk (fsynced, renamed into place, directory fsynced) are the files of
older generations deleted, so a crash at any point leaves a set of files
that recovers the same state.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from twisted.logger import Logger

from ..diskio import fsync_directory, sync_data
from ..errors import BadRequest, LTtxError, RecoveryError
from ..state.store import MemoryStore
from ..wire import codec

#: Version 2 (revisions, counters, expiry) added the record kinds PUT_UNTIL,
#: INCR, EXPIRE and EXPIRE_AT, and snapshots that carry revisions and
#: deadlines; version 1 files are still read (see docs/storage.md).
FORMAT_VERSION = 2
JOURNAL_MAGIC = b"LTTXJRNL"
SNAPSHOT_MAGIC = b"LTTXSNAP"

# magic, format version, reserved (0), flags (0), generation; then a CRC32 of these.
_HEADER = struct.Struct(">8sHHIQ")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
# length, CRC32 over the 4 length bytes then the payload.  The CRC covers the
# length so a run of zeros (a file extended but never written, after a power
# loss) is not read as an empty record.
_RECORD = struct.Struct(">II")
RECORD_OVERHEAD = _RECORD.size
MAX_RECORD = 2**32 - 1

# Journal record payloads: [op, name, *args].
PUT = 1
DELETE = 2
DICT_CHANGE = 3
LIST_APPEND = 4
LIST_POP = 5
LIST_REMOVE = 6
# Format 2.  Revisions are not in the records: replaying the same changes in
# the same order from the snapshot's revisions gives the same revisions.
PUT_UNTIL = 7  # [7, name, value, deadline]: put with a ttl (an absolute deadline)
INCR = 8  # [8, name, by]
EXPIRE = 9  # [9, name]: removed by its expiry
EXPIRE_AT = 10  # [10, name, deadline]: the expire command
OP_NAMES = {PUT: "put", DELETE: "delete", DICT_CHANGE: "dict_change",
            LIST_APPEND: "list_append", LIST_POP: "list_pop", LIST_REMOVE: "list_remove",
            PUT_UNTIL: "put", INCR: "incr", EXPIRE: "expire", EXPIRE_AT: "expire_at"}
_ARITY = {PUT: 1, DELETE: 0, DICT_CHANGE: 2, LIST_APPEND: 1, LIST_POP: 1, LIST_REMOVE: 1,
          PUT_UNTIL: 2, INCR: 1, EXPIRE: 0, EXPIRE_AT: 1}

# Snapshot record payloads: format 1 [SNAPSHOT_ITEMS, [name, value, name,
# value, ...]], format 2 [SNAPSHOT_ENTRIES, [name, value, revision, deadline,
# ...]] (deadline nil: none); then exactly one [SNAPSHOT_END, number of
# variables] (format 2: [SNAPSHOT_END, number, top revision]) as the last record.
SNAPSHOT_END = 0
SNAPSHOT_ITEMS = 1
SNAPSHOT_ENTRIES = 2

_NAME = re.compile(r"^(journal|snapshot)-(\d{12})\.(log|snap)$")


def journal_name(generation: int) -> str:
    return f"journal-{generation:012d}.log"


def snapshot_name(generation: int) -> str:
    return f"snapshot-{generation:012d}.snap"


def encode_header(magic: bytes, generation: int, version: int = FORMAT_VERSION) -> bytes:
    head = _HEADER.pack(magic, version, 0, 0, generation)
    return head + _CRC.pack(zlib.crc32(head))


def encode_record(payload: Any, encoder: Optional[codec.Encoder] = None) -> bytes:
    """
    One framed record.

    :param encoder: the writer's own, if it has one (a Packer kept for reuse).
    :raises EncodeError: if ``payload`` holds a value MessagePack cannot carry.
    """
    # A large DataFrame or array stays out of MessagePack's buffer: the
    # record is joined once from the pieces.
    pieces = (codec.encode_pieces(payload) if encoder is None
              else encoder.encode_pieces(payload))
    if len(pieces) == 1:  # (the common record: no large extension data)
        piece = pieces[0]
        if len(piece) <= MAX_RECORD:
            length = _CRC.pack(len(piece))
            return length + _CRC.pack(zlib.crc32(piece, zlib.crc32(length))) + piece
    size = sum(map(len, pieces))
    if size > MAX_RECORD:
        raise RecoveryError(f"a record of {size} bytes is over the format's 4 GiB limit")
    length = _CRC.pack(size)
    crc = zlib.crc32(length)
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return b"".join([length, _CRC.pack(crc), *pieces])


def header_of(path: str, data: bytes, magic: bytes) -> tuple[int, int]:
    """The generation and format version of a file's header; refuses a
    foreign or newer file."""
    what = "journal" if magic == JOURNAL_MAGIC else "snapshot"
    head = data[:_HEADER.size]
    found_magic, version, _, _, generation = _HEADER.unpack(head)
    if found_magic != magic:
        raise RecoveryError(f"{path} is not an LTtx {what} (bad magic {found_magic!r})")
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if crc != zlib.crc32(head):
        raise RecoveryError(f"{path}: the {what} header is corrupt (checksum mismatch)")
    if version > FORMAT_VERSION:
        raise RecoveryError(
            f"{path} was written in {what} format version {version} by a newer LTtx; "
            f"this daemon reads versions up to {FORMAT_VERSION}. Upgrade LTtx to use "
            "this data directory.")
    return int(generation), int(version)


@dataclass
class Damage:
    """Where and why a file stops being readable."""

    offset: int
    reason: str


class RecordReader:
    """
    The records of one file, stopping at the first damaged one.

    After iterating, :attr:`end` is the offset just past the last good record
    and :attr:`damage` says why reading stopped early (or is None).
    """

    def __init__(self, data: bytes, start: int = HEADER_SIZE) -> None:
        self.data = data
        self.end = start
        self.damage: Optional[Damage] = None

    def __iter__(self) -> Iterator[Any]:
        data, offset, size = self.data, self.end, len(self.data)
        view = memoryview(data)
        while offset < size:
            if size - offset < RECORD_OVERHEAD:
                self.damage = Damage(offset, "a truncated record header")
                return
            length, crc = _RECORD.unpack_from(data, offset)
            start = offset + RECORD_OVERHEAD
            if length > size - start:
                self.damage = Damage(offset, f"a record of {length} bytes cut short")
                return
            payload = data[start:start + length]
            if zlib.crc32(payload, zlib.crc32(view[offset:offset + 4])) != crc:
                self.damage = Damage(offset, "a checksum mismatch")
                return
            try:
                value = codec.decode(payload)
            except BadRequest as e:  # the checksum matched, so this is not a torn write
                self.damage = Damage(offset, f"an undecodable record ({e.message})")
                return
            if not isinstance(value, list) or not value or type(value[0]) is not int:
                self.damage = Damage(offset, "a record that is not a tagged array")
                return
            offset = start + length
            self.end = offset
            yield value


#: Where a record could start: 8 header bytes, then a payload that opens with
#: a MessagePack array head (fixarray, array16, array32) and an int tag.
_RECORD_START = re.compile(rb"(?=.{8}[\x90-\x9f\xdc\xdd][\x00-\x7f])", re.DOTALL)
#: Candidates :func:`intact_record_after` checks before it gives up looking
#: (then the damage is taken for a torn tail, as before).
_SCAN_CANDIDATES = 1_000_000


def intact_record_after(data: bytes, damaged: int) -> Optional[int]:
    """
    The offset of an intact record somewhere after the damage at ``damaged``,
    or None if the rest of the file holds none (a torn last write).

    First the place where the damaged record's own length says the next one
    starts (a flipped bit inside a record leaves its length intact), then
    every later offset whose bytes could start a record (found by a regular
    expression, at C speed), each checked by its CRC.
    """
    size = len(data)
    view = memoryview(data)

    def intact_at(offset: int) -> bool:
        if size - offset < RECORD_OVERHEAD + 2:
            return False
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + RECORD_OVERHEAD
        if length < 2 or length > size - start:
            return False
        return zlib.crc32(view[start:start + length], zlib.crc32(view[offset:offset + 4])) == crc

    if size - damaged >= RECORD_OVERHEAD:
        (length,) = _RECORD.unpack_from(data, damaged)[:1]
        following = damaged + RECORD_OVERHEAD + length
        if following < size and intact_at(following):
            return following
    for checked, match in enumerate(_RECORD_START.finditer(data, damaged + 1)):
        if checked >= _SCAN_CANDIDATES:
            break
        if intact_at(match.start()):
            return match.start()
    return None


def apply_record(store: MemoryStore, record: list[Any]) -> None:
    """
    Apply one journal record to ``store``.

    :raises RecoveryError: if the record is malformed or the store refuses it
        (it was applied once, so refusing it now means the files disagree).
    """
    op = record[0]
    if op not in _ARITY or len(record) != 2 + _ARITY[op]:
        raise RecoveryError(f"unknown journal record {record[:2]!r:.80}")
    name, args = record[1], record[2:]
    try:
        if op == PUT:
            store.put(name, args[0])
        elif op == DELETE:
            store.delete(name)
        elif op == DICT_CHANGE:
            store.dict_change(name, args[0], args[1])
        elif op == LIST_APPEND:
            store.list_append(name, args[0])
        elif op == LIST_POP:
            store.list_pop(name, args[0])
        elif op == LIST_REMOVE:
            if not store.list_remove(name, args[0]):
                raise RecoveryError("list_remove found no equal item")
        elif op == PUT_UNTIL:
            store.put_until(name, args[0], _deadline(args[1]))
        elif op == INCR:
            store.incr(name, args[0])
        elif op == EXPIRE:
            if not store.expire_now(name):
                raise RecoveryError("expire found no such variable")
        elif op == EXPIRE_AT:
            if not store.exists(name):
                raise RecoveryError("expire_at found no such variable")
            store.expire_at(name, _deadline(args[0]))
    except LTtxError as e:
        raise RecoveryError(
            f"{OP_NAMES[op]} {name!r:.60} cannot be replayed: {e.message}") from None


def _deadline(value: Any) -> float:
    if type(value) not in (int, float):
        raise RecoveryError(f"a deadline that is not a number: {value!r:.40}")
    return float(value)


# -- writing (blocking; lttx.durable runs these in a thread) -----------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class AppendFile:
    """A journal open for appending (one thread at a time uses it)."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        #: A write failed part-way: bytes past ``size`` are a torn record.
        self.torn = False

    @classmethod
    def create(cls, directory: str, generation: int) -> "AppendFile":
        """A new journal with its header, durable before anything is appended."""
        path = os.path.join(directory, journal_name(generation))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            _write_all(fd, encode_header(JOURNAL_MAGIC, generation))
            sync_data(fd)
            fsync_directory(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, HEADER_SIZE)

    @classmethod
    def reopen(cls, path: str, size: int) -> "AppendFile":
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(path, fd, size)

    def write(self, data: bytes) -> None:
        """Append ``data`` whole.  After a failed write (a full disk), whatever
        part of it reached the file is cut first, so a retry appends after the
        last whole record, never after a torn one."""
        if self.torn:
            os.ftruncate(self.fd, self.size)
            self.torn = False
        try:
            _write_all(self.fd, data)
        except BaseException:
            self.torn = True
            raise
        self.size += len(data)

    def sync(self) -> None:
        sync_data(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SnapshotWriter:
    """
    Writes ``snapshot-G.snap`` beside the journals: to a temporary name
    first, renamed into place only when complete and synced.
    """

    def __init__(self, directory: str, generation: int) -> None:
        self.directory = directory
        self.generation = generation
        self.path = os.path.join(directory, snapshot_name(generation))
        self.temporary = self.path + ".tmp"
        self.size = 0
        self.fd = -1

    def open(self) -> None:
        self.fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.write(encode_header(SNAPSHOT_MAGIC, self.generation))

    def write(self, data: bytes) -> None:
        _write_all(self.fd, data)
        self.size += len(data)

    def finish(self, count: int, top: int) -> int:
        """Seal with the end record (the count, the top revision), sync,
        rename into place; the file's size."""
        self.write(encode_record([SNAPSHOT_END, count, top]))
        sync_data(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.temporary, self.path)
        fsync_directory(self.directory)
        return self.size

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):  # never opened: nothing to remove
            os.unlink(self.temporary)


def remove_generations_before(directory: str, generation: int) -> list[str]:
    """Delete the journals and snapshots older than ``generation``; their names."""
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _NAME.match(name)
        if match and int(match.group(2)) < generation:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    if removed:
        fsync_directory(directory)
    return removed


# -- recovery (blocking, at start-up) ----------------------------------------


@dataclass
class Recovered:
    """What :func:`recover` found and left behind."""

    generation: int
    journal: AppendFile
    snapshot_bytes: int = 0
    journal_records: int = 0
    dropped_bytes: int = 0
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)


def read_snapshot(path: str, store: MemoryStore) -> int:
    """
    Load a snapshot into an empty ``store``; its generation.

    :raises RecoveryError: if the file is damaged in any way: a snapshot is
        written aside and renamed only when complete, so damage is never a
        torn write, and loading part of it would silently lose variables.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_SIZE:
        raise RecoveryError(f"snapshot {path} is corrupt: {len(data)} bytes, shorter than "
                            "its header; refusing to start rather than lose variables")
    generation, version = header_of(path, data, SNAPSHOT_MAGIC)
    reader = RecordReader(data)
    count = 0
    ended = None
    top = None
    for record in reader:
        if ended is not None:
            raise RecoveryError(f"snapshot {path} is corrupt: data after its end record")
        if record[0] == SNAPSHOT_ITEMS and len(record) == 2 and isinstance(record[1], list):
            # Format 1: no revisions yet; each variable gets the next one.
            items = record[1]
            for i in range(0, len(items) - 1, 2):
                store.put(items[i], items[i + 1])
            count += len(items) // 2
        elif (record[0] == SNAPSHOT_ENTRIES and len(record) == 2 and version >= 2
              and isinstance(record[1], list) and len(record[1]) % 4 == 0):
            entries = record[1]
            for i in range(0, len(entries), 4):
                revision, deadline = entries[i + 2], entries[i + 3]
                if type(revision) is not int or revision < 1:
                    raise RecoveryError(f"snapshot {path} is corrupt: revision {revision!r:.40}")
                store.restore(entries[i], entries[i + 1], revision,
                              None if deadline is None else _deadline(deadline))
            count += len(entries) // 4
        elif record[0] == SNAPSHOT_END and len(record) == 2 + (version >= 2):
            ended = record[1]
            top = record[2] if version >= 2 else None
        else:
            raise RecoveryError(f"snapshot {path} is corrupt: unknown record {record[0]!r}")
    if reader.damage is not None:
        raise RecoveryError(
            f"snapshot {path} is corrupt at byte {reader.damage.offset} "
            f"({reader.damage.reason}); refusing to start rather than lose variables. "
            "Restore it from a backup, or move it aside to start without it.")
    if ended is None or ended != count or len(store) != count:
        raise RecoveryError(
            f"snapshot {path} is corrupt: it holds {count} variables but its end record "
            f"says {ended!r}; refusing to start rather than lose variables")
    if top is not None:
        if type(top) is not int or top < store.top:
            raise RecoveryError(f"snapshot {path} is corrupt: top revision {top!r:.40}")
        store.top = top
    return generation


class _Plan:
    """The files of a data directory, sorted by generation."""

    def __init__(self, directory: str) -> None:
        self.snapshots: dict[int, str] = {}
        self.journals: dict[int, str] = {}
        self.temporaries: list[str] = []
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.endswith(".snap.tmp"):
                self.temporaries.append(path)
                continue
            match = _NAME.match(name)
            if match:
                kind = self.snapshots if match.group(1) == "snapshot" else self.journals
                kind[int(match.group(2))] = path


class Recovery:
    """Rebuild a :class:`MemoryStore` from a data directory (blocking)."""

    log = Logger()

    def __init__(self, directory: str, store: MemoryStore) -> None:
        self.directory = directory
        self.store = store
        #: The format version of each journal read, by generation.
        self.versions: dict[int, int] = {}

    def run(self) -> Recovered:
        """
        Load the newest snapshot, replay the journals after it, cut off a torn
        tail of the last journal.  Nothing on disk changes unless every file
        was read successfully.

        :raises RecoveryError: a damaged snapshot or older journal, a missing
            generation, a file in a newer format.
        """
        clock, self.store.clock = self.store.clock, None  # replay expires nothing
        try:
            return self._run()
        finally:
            self.store.clock = clock

    def _run(self) -> Recovered:
        started = time.perf_counter()
        plan = _Plan(self.directory)
        base = max(plan.snapshots) if plan.snapshots else None
        snapshot_bytes = 0
        if base is not None:
            path = plan.snapshots[base]
            if read_snapshot(path, self.store) != base:
                raise RecoveryError(f"snapshot {path} names another generation in its header")
            snapshot_bytes = os.path.getsize(path)
        journals = sorted(g for g in plan.journals if base is None or g >= base)
        first = base if base is not None else 1
        if base is not None and base not in plan.journals:
            # The snapshot is sealed only after its journal was created by the
            # rotation: without it, the writes made since are gone.
            raise RecoveryError(
                f"snapshot {plan.snapshots[base]} has no journal of its generation "
                f"({journal_name(base)}): the writes made after it are missing; refusing "
                "to start")
        if journals and journals[0] != first:
            raise RecoveryError(
                f"journal {plan.journals[journals[0]]} follows generation {first}, whose "
                f"{'journal' if base else 'snapshot'} is missing; refusing to start with "
                "variables missing")
        for before, after in zip(journals, journals[1:]):
            if after != before + 1:
                raise RecoveryError(f"journal generation {before + 1} is missing between "
                                    f"{plan.journals[before]} and {plan.journals[after]}")
        records = 0
        cut: Optional[tuple[str, int, int]] = None  # path, good size, bytes dropped
        for generation in journals:
            last = generation == journals[-1]
            records_here, cut = self._replay(plan.journals[generation], generation, last)
            records += records_here

        # Every file was read: now it is safe to change the directory.
        removed = [os.path.basename(p) for p in plan.temporaries]
        for path in plan.temporaries:
            os.unlink(path)
        dropped = 0
        if cut is not None:
            path, good, dropped = cut
            if good < HEADER_SIZE:  # a journal torn before its header was complete
                os.unlink(path)
                journals.pop()
            else:
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
        if base is not None:
            removed += remove_generations_before(self.directory, base)
        elif plan.temporaries:
            fsync_directory(self.directory)
        if journals and self.versions[journals[-1]] < FORMAT_VERSION:
            # A journal of an older format is not appended to (an older daemon
            # could then no longer say why it cannot read it): the next
            # generation's journal, in this format, follows it.
            generation = journals[-1] + 1
            journal = AppendFile.create(self.directory, generation)
            self.log.info("journal {path} is in format {old}; continuing in {new}, format "
                          "{version}", path=plan.journals[journals[-1]],
                          old=self.versions[journals[-1]], new=journal.path,
                          version=FORMAT_VERSION)
        elif journals:
            generation = journals[-1]
            path = plan.journals[generation]
            journal = AppendFile.reopen(path, os.path.getsize(path))
        else:
            generation = first
            journal = AppendFile.create(self.directory, generation)
        return Recovered(generation, journal, snapshot_bytes, records, dropped,
                         time.perf_counter() - started, removed)

    def _replay(self, path: str, generation: int,
                last: bool) -> tuple[int, Optional[tuple[str, int, int]]]:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < HEADER_SIZE:
            if not last:
                raise RecoveryError(f"journal {path} is shorter than its header")
            self.log.warn(
                "journal {path}: torn header ({dropped} bytes), a crash while it was "
                "created; removed it (no record was in it)", path=path, dropped=len(data))
            return 0, (path, 0, len(data))
        named, self.versions[generation] = header_of(path, data, JOURNAL_MAGIC)
        if named != generation:
            raise RecoveryError(f"journal {path} names another generation in its header")
        reader = RecordReader(data)
        count = 0
        for record in reader:
            apply_record(self.store, record)
            count += 1
        if reader.damage is None:
            return count, None
        damage = reader.damage
        dropped = len(data) - damage.offset
        if not last:
            raise RecoveryError(
                f"journal {path} is damaged at byte {damage.offset} ({damage.reason}) but "
                "newer journals follow it, so this is not a torn write; refusing to start")
        intact = intact_record_after(data, damage.offset)
        if intact is not None:
            # Not a torn last write: cutting here would destroy good records.
            raise RecoveryError(
                f"journal {path} is damaged at byte {damage.offset} ({damage.reason}) and "
                f"an intact record follows at byte {intact}, so this is not a torn write; "
                "refusing to start rather than drop the records after the damage (keep a "
                "copy of the data directory and see docs/storage.md, \"Damaged journals\")")
        self.log.warn(
            "journal {path}: damaged tail at byte {offset} ({reason}): cut off {dropped} "
            "bytes; the {records} records before it were recovered",
            path=path, offset=damage.offset, reason=damage.reason, dropped=dropped,
            records=count)
        return count, (path, damage.offset, dropped)


def recover(directory: str, store: MemoryStore) -> Recovered:
    """Rebuild ``store`` from ``directory``; see :meth:`Recovery.run`."""
    return Recovery(directory, store).run()
