"""
End-to-end durability: the real ``twistd -n lttx`` restarted, killed and
given damaged files, with the blocking client.
"""

from __future__ import annotations

import os
import threading
import zlib
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

import lttx
from lttx.storage.journal import HEADER_SIZE, PUT, encode_record, journal_name, snapshot_name

from ..common import Daemon
from .test_durable import compacted, open_store


def journal_path(daemon: Daemon, generation: int = 1) -> str:
    return os.path.join(daemon.data_dir, "variables", journal_name(generation))


def refused(testcase: TestCase, data_dir: str) -> Daemon:
    """Start a daemon that must refuse this data directory; it, exited."""
    daemon = Daemon(testcase, data_dir=data_dir, start=False)
    testcase.assertRaises(AssertionError, daemon.start, 15)
    assert daemon.process is not None
    daemon.process.wait(15)
    return daemon


def read_all(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


class RestartTests(TestCase):
    """Variables outlive the daemon."""

    def test_values_and_in_place_operations_survive_a_restart(self) -> None:
        """Every kind of change is there after SIGTERM and a new start on the same dir."""
        daemon = Daemon(self)
        c = daemon.connect()
        c.put("pos", {"600000.SH": 100, "name": "浦发银行"})
        c.dict_change("pos", "000001.SZ", 200)
        c.dict_change("new", 7, b"\x00")
        for i in range(4):
            c.list_append("orders", {"id": i})
        self.assertEqual(c.list_pop("orders", 0), {"id": 0})
        self.assertEqual(c.list_pop("orders"), {"id": 3})
        self.assertTrue(c.list_remove("orders", {"id": 1}))
        c.put("gone", 1)
        self.assertTrue(c.delete("gone"))
        c.put("none", None)
        c.close()
        daemon.stop()
        daemon.wait_for_log(r"journal flushed and synced \(\d+ bytes\)")

        again = Daemon(self, data_dir=daemon.data_dir)
        again.wait_for_log(r"recovered 4 from .* \(snapshot 0 bytes, 13 journal records\)")
        c = again.connect()
        self.assertEqual(c.get("pos"), {"600000.SH": 100, "name": "浦发银行", "000001.SZ": 200})
        self.assertEqual(c.get("new"), {7: b"\x00"})
        self.assertEqual(c.get("orders"), [{"id": 2}])
        self.assertFalse(c.exists("gone"))
        self.assertTrue(c.exists("none"))

    def test_kill_during_writes_loses_no_acknowledged_write(self) -> None:
        """With --fsync always, kill -9 mid-stream: every acknowledged write is recovered."""
        daemon = Daemon(self, "--fsync", "always")
        enough = threading.Event()
        acknowledged: list[list[int]] = [[] for _ in range(3)]

        def write(writer: int, client: Any) -> None:
            n = 0
            try:
                while True:
                    client.list_append("log", [writer, n])
                    client.put(f"last-{writer}", n)
                    acknowledged[writer].append(n)
                    n += 1
                    if sum(map(len, acknowledged)) >= 300:
                        enough.set()
            except (lttx.LTtxError, OSError):
                return  # the daemon was killed under us

        clients = [daemon.connect(timeout=5) for _ in acknowledged]
        threads = [threading.Thread(target=write, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        self.assertTrue(enough.wait(30), "the writers did not get 300 writes through")
        daemon.kill()
        for t in threads:
            t.join(30)

        again = Daemon(self, data_dir=daemon.data_dir)
        c = again.connect()
        log = c.get("log")
        for writer, numbers in enumerate(acknowledged):
            self.assertGreater(len(numbers), 0)
            mine = [n for w, n in log if w == writer]
            # In order, with nothing acknowledged missing (one more may have
            # reached the disk without its reply getting out).
            self.assertEqual(mine[:len(numbers)], numbers)
            self.assertIn(c.get(f"last-{writer}"), (numbers[-1], numbers[-1] + 1))

    def test_snapshot_written_by_compaction_is_loaded(self) -> None:
        """A data directory compacted into a snapshot plus journal starts with the same state."""
        data_dir = self.mktemp()
        clock = Clock()
        store = open_store(os.path.join(data_dir, "variables"), "no", clock)
        store.put("pos", {"a": 1})
        store.put("big", list(range(1000)))
        self.successResultOf(compacted(store, clock))
        store.dict_change("pos", "b", 2)
        self.successResultOf(store.stopService())

        daemon = Daemon(self, data_dir=data_dir)
        daemon.wait_for_log(r"recovered 2 .* \(snapshot \d+ bytes, 1 journal records\)")
        c = daemon.connect()
        self.assertEqual(c.get("pos"), {"a": 1, "b": 2})
        self.assertEqual(c.get_list_value("big", -1), 999)


class DamageTests(TestCase):
    """Damaged files: a torn tail is cut off, anything else refused."""

    def written(self) -> Daemon:
        daemon = Daemon(self)
        c = daemon.connect()
        c.put("a", 1)
        c.list_append("l", "x")
        c.close()
        daemon.stop()
        return daemon

    def test_truncated_tail_is_cut_off_and_reported(self) -> None:
        """A record torn by a crash is dropped with a log line; the daemon starts."""
        daemon = self.written()
        torn = encode_record([PUT, "torn", "y" * 100])[:-30]
        with open(journal_path(daemon), "ab") as f:
            f.write(torn)
        again = Daemon(self, data_dir=daemon.data_dir)
        again.wait_for_log(rf"cut off {len(torn)} bytes; the 2 records before it were recovered")
        c = again.connect()
        self.assertEqual((c.get("a"), c.get("l"), c.exists("torn")), (1, ["x"], False))
        c.put("b", 2)  # appended after the cut, so readable at the next start
        c.close()
        again.stop()
        third = Daemon(self, data_dir=daemon.data_dir)
        self.assertEqual(third.connect().get("b"), 2)

    def test_bit_flip_in_tail_is_cut_off_and_reported(self) -> None:
        """A corrupt last record fails its checksum; records before it are recovered."""
        daemon = self.written()
        path = journal_path(daemon)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.seek(size - 1)
            last = f.read(1)
            f.seek(size - 1)
            f.write(bytes([last[0] ^ 0x08]))
        last_record = len(encode_record([4, "l", "x"]))
        again = Daemon(self, data_dir=daemon.data_dir)
        again.wait_for_log(rf"\(a checksum mismatch\): cut off {last_record} bytes")
        c = again.connect()
        self.assertEqual((c.get("a"), c.exists("l")), (1, False))

    def test_corrupt_snapshot_is_refused(self) -> None:
        """A damaged snapshot stops the daemon with a clear message; no file is touched."""
        data_dir = self.mktemp()
        variables = os.path.join(data_dir, "variables")
        clock = Clock()
        store = open_store(variables, "no", clock)
        store.put("pos", {"a": 1})
        self.successResultOf(compacted(store, clock))
        self.successResultOf(store.stopService())
        path = os.path.join(variables, snapshot_name(2))
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + 12)
            f.write(b"\xff")
        before = read_all(variables)
        daemon = refused(self, data_dir)
        self.assertNotEqual(daemon.process.returncode, 0)
        self.assertIn(f"lttx: refusing to start: snapshot {path} is corrupt", daemon.log_text())
        self.assertEqual(read_all(variables), before)

    def test_newer_journal_version_is_refused(self) -> None:
        """A journal from a newer LTtx is refused, not overwritten."""
        daemon = self.written()
        path = journal_path(daemon)
        with open(path, "r+b") as f:
            data = bytearray(f.read())
        data[8:10] = (99).to_bytes(2, "big")  # the format version, after the magic
        data[24:28] = zlib.crc32(bytes(data[:24])).to_bytes(4, "big")
        with open(path, "wb") as f:
            f.write(data)
        before = read_all(os.path.dirname(path))
        again = refused(self, daemon.data_dir)
        self.assertNotEqual(again.process.returncode, 0)
        self.assertIn("format version 99 by a newer LTtx", again.log_text())
        self.assertEqual(read_all(os.path.dirname(path)), before)
