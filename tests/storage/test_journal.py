"""
The on-disk formats and recovery (:mod:`lttx.journal`), on real files.
"""

from __future__ import annotations

import os
import struct
import zlib

from hypothesis import given
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.storage import journal
from lttx.errors import EncodeError, RecoveryError
from lttx.storage.journal import (
    DICT_CHANGE,
    HEADER_SIZE,
    JOURNAL_MAGIC,
    LIST_APPEND,
    LIST_POP,
    PUT,
    SNAPSHOT_END,
    SNAPSHOT_ITEMS,
    SNAPSHOT_MAGIC,
    RecordReader,
    encode_header,
    encode_record,
    journal_name,
    recover,
    snapshot_name,
)
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.ext import Encoded

from ..strategies import values

RECORDS = [
    [PUT, "pos", {"600000.SH": 100}],
    [DICT_CHANGE, "pos", "000001.SZ", 200],
    [LIST_APPEND, "orders", {"id": 1}],
    [LIST_APPEND, "orders", {"id": 2}],
    [LIST_POP, "orders", 0],
    [PUT, "raw", b"\x00\xff"],
]
STATE = {"pos": {"600000.SH": 100, "000001.SZ": 200}, "orders": [{"id": 2}], "raw": b"\x00\xff"}


def write_journal(directory: str, generation: int, records: list, tail: bytes = b"") -> str:
    path = os.path.join(directory, journal_name(generation))
    with open(path, "wb") as f:
        f.write(encode_header(JOURNAL_MAGIC, generation))
        for record in records:
            f.write(encode_record(record))
        f.write(tail)
    return path


def write_snapshot(directory: str, generation: int, state: dict) -> str:
    """A snapshot in format 1 (as the previous version wrote it)."""
    path = os.path.join(directory, snapshot_name(generation))
    items = [x for pair in state.items() for x in pair]
    with open(path, "wb") as f:
        f.write(encode_header(SNAPSHOT_MAGIC, generation, 1))
        f.write(encode_record([SNAPSHOT_ITEMS, items]))
        f.write(encode_record([SNAPSHOT_END, len(state)]))
    return path


def newer_header(magic: bytes, generation: int) -> bytes:
    head = struct.pack(">8sHHIQ", magic, journal.FORMAT_VERSION + 1, 0, 0, generation)
    return head + struct.pack(">I", zlib.crc32(head))


class RecordTests(SynchronousTestCase):
    """Framing: length, CRC over length and payload, MessagePack array."""

    @given(values)
    def test_a_record_is_length_crc_payload(self, value: object) -> None:
        """Any record (large extension data too): its 4-byte length, the CRC-32
        of that length and the payload, then the payload as codec.encode writes it."""
        for payload in ([PUT, "v", value], [PUT, "v", [value, Encoded(
                "numpy.ndarray", b"d" * codec.SPLICE_FROM)]]):
            body = codec.encode(payload)
            length = struct.pack(">I", len(body))
            self.assertEqual(encode_record(payload), length + struct.pack(
                ">I", zlib.crc32(length + body)) + body)

    def test_records_round_trip(self) -> None:
        """Records read back equal, in order, and the reader ends at the last one."""
        data = encode_header(JOURNAL_MAGIC, 1) + b"".join(map(encode_record, RECORDS))
        reader = RecordReader(data)
        self.assertEqual(list(reader), RECORDS)
        self.assertIsNone(reader.damage)
        self.assertEqual(reader.end, len(data))

    def test_every_truncation_is_detected(self) -> None:
        """A record cut at any byte is not read; everything before it is."""
        good = encode_header(JOURNAL_MAGIC, 1) + encode_record(RECORDS[0])
        last = encode_record(RECORDS[1])
        for cut in range(1, len(last)):
            reader = RecordReader(good + last[:cut])
            self.assertEqual(list(reader), RECORDS[:1], cut)
            self.assertEqual(reader.damage.offset, len(good))

    def test_every_bit_flip_is_detected(self) -> None:
        """Flipping any single bit of the last record stops reading before it."""
        good = encode_header(JOURNAL_MAGIC, 1) + encode_record(RECORDS[0])
        last = encode_record(RECORDS[1])
        for bit in range(len(last) * 8):
            flipped = bytearray(last)
            flipped[bit // 8] ^= 1 << (bit % 8)
            reader = RecordReader(good + bytes(flipped))
            self.assertEqual(list(reader), RECORDS[:1], bit)
            self.assertEqual(reader.end, len(good))
            self.assertIsNotNone(reader.damage)

    def test_zeroed_tail_is_not_a_record(self) -> None:
        """A tail of zeros (a file extended but never written) is damage, not empty records."""
        reader = RecordReader(encode_header(JOURNAL_MAGIC, 1) + b"\x00" * 64)
        self.assertEqual(list(reader), [])
        self.assertEqual(reader.damage.reason, "a checksum mismatch")

    def test_unencodable_value_raises_encode_error(self) -> None:
        """A record holding a set is refused before anything is written."""
        self.assertRaises(EncodeError, encode_record, [PUT, "x", {1, 2}])


class RecoveryTests(SynchronousTestCase):
    """Start-up: snapshot, journals, damaged tails, refusals."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def recover(self) -> tuple[MemoryStore, journal.Recovered]:
        store = MemoryStore()
        recovered = recover(self.dir, store)
        self.addCleanup(recovered.journal.close)
        return store, recovered

    def files(self) -> dict[str, bytes]:
        out = {}
        for name in sorted(os.listdir(self.dir)):
            with open(os.path.join(self.dir, name), "rb") as f:
                out[name] = f.read()
        return out

    def assertRefused(self, fragment: str) -> None:
        before = self.files()
        error = self.assertRaises(RecoveryError, recover, self.dir, MemoryStore())
        self.assertIn(fragment, str(error))
        self.assertEqual(self.files(), before, "a refused directory must be left as it was")

    def test_empty_directory_starts_generation_one(self) -> None:
        """A new data directory gets journal 1, holding just its header."""
        store, recovered = self.recover()
        self.assertEqual(len(store), 0)
        self.assertEqual(recovered.generation, 1)
        self.assertEqual(os.path.getsize(os.path.join(self.dir, journal_name(1))), HEADER_SIZE)

    def test_journal_is_replayed(self) -> None:
        """Every record of the journal is applied in order."""
        write_journal(self.dir, 1, RECORDS)
        store, recovered = self.recover()
        self.assertEqual(dict(store.items()), STATE)
        self.assertEqual(recovered.journal_records, len(RECORDS))

    def test_snapshot_then_journal(self) -> None:
        """The newest snapshot is loaded, then its journal replayed; older files go."""
        write_journal(self.dir, 1, [[PUT, "old", 1]])
        write_snapshot(self.dir, 2, {"pos": {"600000.SH": 1}, "n": 5})
        write_journal(self.dir, 2, [[DICT_CHANGE, "pos", "x", 2]])
        store, recovered = self.recover()
        self.assertEqual(dict(store.items()), {"pos": {"600000.SH": 1, "x": 2}, "n": 5})
        self.assertEqual(recovered.generation, 2)
        self.assertEqual(sorted(os.listdir(self.dir)), [journal_name(2), snapshot_name(2)])

    def test_truncated_tail_is_cut_and_logged(self) -> None:
        """A torn last record is cut off, the log says how many bytes, the rest recovers."""
        torn = encode_record([PUT, "lost", "x" * 50])[:-7]
        path = write_journal(self.dir, 1, RECORDS, tail=torn)
        good_size = os.path.getsize(path) - len(torn)
        store, recovered = self.recover()
        self.assertEqual(dict(store.items()), STATE)
        self.assertEqual(recovered.dropped_bytes, len(torn))
        self.assertEqual(os.path.getsize(path), good_size)
        [event] = [e for e in self.events if "dropped" in e]
        self.assertEqual(event["dropped"], len(torn))
        self.assertIn(f"cut off {len(torn)} bytes", formatEvent(event))

    def test_bit_flip_in_the_last_record_is_cut(self) -> None:
        """A corrupt last record (nothing intact after it) is a torn tail: cut off;
        everything before recovers, and appending goes on after it."""
        bad = bytearray(encode_record([PUT, "bad", 1]))
        bad[-1] ^= 0x40
        path = write_journal(self.dir, 1, RECORDS, tail=bytes(bad))
        store, recovered = self.recover()
        self.assertEqual(dict(store.items()), STATE)
        self.assertEqual(recovered.dropped_bytes, len(bad))
        recovered.journal.write(encode_record([PUT, "new", 3]))
        recovered.journal.close()
        store2, _ = self.recover()
        self.assertEqual(dict(store2.items()), dict(STATE, new=3))
        self.assertEqual(os.path.getsize(path), recovered.journal.size)

    def test_damage_followed_by_intact_records_refuses_to_start(self) -> None:
        """A corrupt record with intact ones after it is not a torn write: recovery
        refuses, naming both places, and the journal is left exactly as it was
        (issue 19, finding 7: it used to cut the 491 good records after a flip)."""
        bad = bytearray(encode_record([PUT, "bad", 1]))
        bad[-1] ^= 0x40
        after = b"".join(encode_record([PUT, f"after{i}", i]) for i in range(491))
        path = write_journal(self.dir, 1, RECORDS, tail=bytes(bad) + after)
        with open(path, "rb") as f:
            before = f.read()
        with self.assertRaises(RecoveryError) as caught:
            self.recover()
        self.assertIn("an intact record follows", str(caught.exception))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_damaged_length_followed_by_intact_records_refuses_to_start(self) -> None:
        """Damage in a record's length field: the scan still finds the intact records."""
        bad = bytearray(encode_record([PUT, "bad", "x" * 50]))
        bad[1] ^= 0x10  # the length now points past the end of the file
        after = encode_record([PUT, "after", 2])
        write_journal(self.dir, 1, RECORDS, tail=bytes(bad) + after)
        self.assertRaises(RecoveryError, self.recover)

    def test_a_zeroed_tail_is_a_torn_tail(self) -> None:
        """A tail of zeroes (a crash with preallocated blocks) holds nothing intact: cut."""
        write_journal(self.dir, 1, RECORDS, tail=b"\0" * 100_000)
        store, recovered = self.recover()
        self.assertEqual(dict(store.items()), STATE)
        self.assertEqual(recovered.dropped_bytes, 100_000)

    def test_torn_journal_header_is_dropped(self) -> None:
        """A journal cut inside its header (crash at creation) is replaced."""
        with open(os.path.join(self.dir, journal_name(1)), "wb") as f:
            f.write(encode_header(JOURNAL_MAGIC, 1)[:10])
        store, recovered = self.recover()
        self.assertEqual(len(store), 0)
        self.assertEqual(recovered.dropped_bytes, 10)
        self.assertEqual(recovered.journal.size, HEADER_SIZE)

    def test_corrupt_snapshot_is_refused(self) -> None:
        """A snapshot with a flipped byte is refused with a clear message, files intact."""
        path = write_snapshot(self.dir, 2, STATE)
        write_journal(self.dir, 2, [])
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + 20)
            byte = f.read(1)
            f.seek(HEADER_SIZE + 20)
            f.write(bytes([byte[0] ^ 1]))
        self.assertRefused("is corrupt")

    def test_truncated_snapshot_is_refused(self) -> None:
        """A snapshot without its end record is refused, not loaded in part."""
        path = write_snapshot(self.dir, 2, STATE)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - len(encode_record([SNAPSHOT_END, 3])))
        self.assertRefused("end record")

    def test_newer_journal_version_is_refused(self) -> None:
        """A journal written by a newer format version is refused, naming both versions."""
        with open(os.path.join(self.dir, journal_name(1)), "wb") as f:
            f.write(newer_header(JOURNAL_MAGIC, 1) + encode_record([PUT, "x", 1]))
        self.assertRefused(f"format version {journal.FORMAT_VERSION + 1} by a newer LTtx")

    def test_newer_snapshot_version_is_refused(self) -> None:
        """A snapshot in a newer format is refused."""
        with open(os.path.join(self.dir, snapshot_name(3)), "wb") as f:
            f.write(newer_header(SNAPSHOT_MAGIC, 3))
        self.assertRefused("newer LTtx")

    def test_foreign_file_is_refused(self) -> None:
        """A file named like a journal but holding something else is refused."""
        with open(os.path.join(self.dir, journal_name(1)), "wb") as f:
            f.write(b"{'not': 'a journal'} and some more bytes")
        self.assertRefused("is not an LTtx journal")

    def test_damage_before_a_newer_journal_is_refused(self) -> None:
        """Damage in a journal that newer journals follow is not a torn write: refused."""
        write_journal(self.dir, 1, RECORDS, tail=b"\x00\x00\x00\x05junk!")
        write_journal(self.dir, 2, [[PUT, "y", 1]])
        self.assertRefused("newer journals follow it")

    def test_missing_generation_is_refused(self) -> None:
        """A gap in the journals (or a journal without its snapshot) is refused."""
        write_journal(self.dir, 1, [])
        write_journal(self.dir, 3, [])
        self.assertRefused("generation 2 is missing")

    def test_journal_without_its_snapshot_is_refused(self) -> None:
        """Journal 4 alone means snapshot 4 was lost: refused."""
        write_journal(self.dir, 4, [[PUT, "y", 1]])
        self.assertRefused("snapshot is missing")

    def test_inapplicable_record_is_refused(self) -> None:
        """A record with a good checksum that cannot be applied means the files disagree."""
        write_journal(self.dir, 1, [[LIST_POP, "none", -1]])
        self.assertRefused("cannot be replayed")

    def test_unfinished_snapshot_is_ignored_and_removed(self) -> None:
        """A snapshot still under its temporary name (crash mid-compaction) is not used."""
        write_journal(self.dir, 1, RECORDS)
        with open(os.path.join(self.dir, snapshot_name(2) + ".tmp"), "wb") as f:
            f.write(b"partial")
        store, _ = self.recover()
        self.assertEqual(dict(store.items()), STATE)
        self.assertEqual(os.listdir(self.dir), [journal_name(1)])


class MissingJournalTests(SynchronousTestCase):
    def test_a_snapshot_without_its_journal_refuses_to_start(self) -> None:
        """Snapshot 2 with journal 2 gone: the writes after it are missing, so refuse."""
        directory = self.mktemp()
        os.makedirs(directory)
        writer = journal.SnapshotWriter(directory, 2)
        writer.open()
        writer.write(encode_record([journal.SNAPSHOT_ITEMS, ["a", 1]]))
        writer.finish(1, 1)
        with self.assertRaises(RecoveryError) as caught:
            journal.recover(directory, MemoryStore())
        self.assertIn("has no journal of its generation", str(caught.exception))
