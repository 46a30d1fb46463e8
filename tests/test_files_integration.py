"""
End-to-end file transfer: the real ``twistd -n lttx``, the blocking client,
and raw sockets where a test must misbehave (cut a transfer, corrupt it,
vanish).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import uuid
from typing import Any

from twisted.trial.unittest import TestCase

import lttx
from lttx.wire import codec
from lttx.client.files import partial_path
from lttx.wire.frames import FILE_CHUNK_SIZE as CHUNK_SIZE

from .common import PACKAGE_ROOT, TOKEN, Daemon

MiB = 1024 * 1024


def make_file(path: str, size: int) -> str:
    """A file of ``size`` pseudo-random bytes, written in 1 MiB blocks; its MD5."""
    md5 = hashlib.md5()
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            # A counter in every block keeps blocks distinct, so a chunk sent
            # twice or out of place changes the MD5.
            chunk = (struct.pack("!Q", counter) + block)[:min(MiB, size - written)]
            f.write(chunk)
            md5.update(chunk)
            written += len(chunk)
            counter += 1
    return md5.hexdigest()


def md5_of(path: str) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            md5.update(block)
    return md5.hexdigest()


class RawFileConnection:
    """A file connection spoken by hand, to misbehave as no real client would."""

    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.next_id = 0
        reply = self.request("hello", token, {"mode": "file"})
        assert reply[0] == codec.REPLY, reply

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack("!I", len(payload)) + payload)

    def recv_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            more = self.sock.recv(count - len(data))
            if not more:
                raise ConnectionError("closed by the daemon")
            data += more
        return data

    def recv_frame(self) -> bytes:
        (length,) = struct.unpack("!I", self.recv_exact(4))
        return self.recv_exact(length)

    def request(self, command: str, *args: Any) -> list[Any]:
        """Send a request; the decoded reply or error frame."""
        self.next_id += 1
        self.send_frame(codec.encode([codec.REQUEST, self.next_id, command, list(args)]))
        return codec.decode(self.recv_frame())  # type: ignore[no-any-return]

    def send_data(self, path: str, start: int, end: int, corrupt_at: int = -1) -> None:
        with open(path, "rb") as f:
            f.seek(start)
            position = start
            while position < end:
                chunk = bytearray(f.read(min(CHUNK_SIZE, end - position)))
                if position <= corrupt_at < position + len(chunk):
                    chunk[corrupt_at - position] ^= 0xFF
                self.send_frame(bytes(chunk))
                position += len(chunk)

    def reset(self) -> None:
        """Vanish: close with a RST, as a crashed host's kernel would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class FilesTestCase(TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()
        self.files_dir = os.path.join(self.daemon.data_dir, "files")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    def visible_files(self) -> list[str]:
        """What a reader of the files folder sees (hidden entries aside)."""
        return sorted(n for n in os.listdir(self.files_dir) if not n.startswith("."))

    def partial_files(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.files_dir, ".partial")))

    def raw(self) -> RawFileConnection:
        conn = RawFileConnection(self.daemon.port)
        self.addCleanup(conn.close)
        return conn


class RoundTripTests(FilesTestCase):

    def test_big_file_round_trips_in_bounded_memory(self) -> None:
        """160 MiB up and down: equal MD5, and the daemon's RSS grows by less than 64 MiB."""
        source = self.path("big.bin")
        expected = make_file(source, 160 * MiB)
        self.addCleanup(os.unlink, source)
        baseline = self.daemon.rss_kib()
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], self.daemon.rss_kib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            sent = self.client.send_file(source)
            dest = self.path("down")
            os.makedirs(dest)
            received = self.client.recv_file("big.bin", dest)
        finally:
            stop.set()
            sampler.join()
        self.addCleanup(os.unlink, received["path"])
        self.assertEqual(sent, {"name": "big.bin", "size": 160 * MiB, "md5": expected})
        self.assertEqual(received["md5"], expected)
        self.assertEqual(md5_of(os.path.join(dest, "big.bin")), expected)
        self.assertEqual(os.listdir(dest), ["big.bin"])
        self.assertEqual(md5_of(os.path.join(self.files_dir, "big.bin")), expected)
        growth_mib = (peak[0] - baseline) / 1024
        self.assertLess(growth_mib, 64, f"RSS grew by {growth_mib:.1f} MiB")
        self.daemon.wait_for_log(r"upload of big\.bin finished: 167772160 bytes, md5 " + expected)
        # Over plain TCP the daemon sends with os.sendfile (hashing in a thread).
        self.daemon.wait_for_log(r"download of big\.bin finished: 167772160 bytes, md5 "
                                 + expected + r", .* \(sendfile, md5 recorded at upload\)")

    def test_list_delete_and_name(self) -> None:
        """A file stored under another name is listed with its size, then deleted."""
        source = self.path("report.csv")
        with open(source, "wb") as f:
            f.write(b"date,pnl\n2026-11-26,1.5\n")
        self.assertEqual(self.client.send_file(source, name="pnl.csv")["size"], 24)
        self.assertEqual(self.client.send_file(self.path("report.csv"))["name"], "report.csv")
        listed = self.client.list_files()
        self.assertEqual([(f["name"], f["size"]) for f in listed],
                         [("pnl.csv", 24), ("report.csv", 24)])
        self.assertTrue(self.client.delete_file("pnl.csv"))
        self.assertFalse(self.client.delete_file("pnl.csv"))
        self.assertEqual([f["name"] for f in self.client.list_files()], ["report.csv"])

    def test_empty_file(self) -> None:
        """A file of 0 bytes round-trips."""
        source = self.path("empty")
        open(source, "wb").close()
        self.assertEqual(self.client.send_file(source)["md5"], hashlib.md5().hexdigest())
        received = self.client.recv_file("empty", self.path("copy"))
        self.assertEqual(os.path.getsize(received["path"]), 0)

    def test_transfer_does_not_block_other_calls(self) -> None:
        """Variables are served on the same client while a transfer runs."""
        source = self.path("mid.bin")
        make_file(source, 64 * MiB)
        done = threading.Event()
        results: list[Any] = []

        def upload() -> None:
            try:
                results.append(self.client.send_file(source))
            finally:
                done.set()

        threading.Thread(target=upload, daemon=True).start()
        self.daemon.wait_for_log(r"upload of mid\.bin started")
        self.client.put("during", 1)
        self.assertEqual(self.client.get("during"), 1)
        self.assertTrue(done.wait(30))
        self.assertEqual(results[0]["size"], 64 * MiB)

    def test_max_file_size(self) -> None:
        """An upload over --max-file-size is a StorageError and nothing is written."""
        daemon = Daemon(self, "--max-file-size", "1MiB")
        client = daemon.connect()
        source = self.path("toobig")
        make_file(source, MiB + 1)
        with self.assertRaises(lttx.StorageError) as caught:
            client.send_file(source)
        self.assertIn("--max-file-size", str(caught.exception))
        self.assertEqual(client.list_files(), [])

    def test_disk_reserve(self) -> None:
        """An upload that would eat into --disk-reserve is a StorageError naming the
        option, and nothing is written; variable writes go on."""
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        stats = os.statvfs(data_dir)
        reserve = stats.f_blocks * stats.f_frsize + MiB  # more than the whole disk
        daemon = Daemon(self, "--disk-reserve", str(reserve), data_dir=data_dir)
        client = daemon.connect()
        source = self.path("small")
        make_file(source, 1000)
        with self.assertRaises(lttx.StorageError) as caught:
            client.send_file(source)
        self.assertIn("--disk-reserve", str(caught.exception))
        self.assertEqual(client.list_files(), [])
        client.put("still", 1)
        self.assertEqual(client.status()["files"]["uploads_refused"], 1)


HOSTILE_NAMES = ["", ".", "..", "../escape-{tag}", "a/../../escape-{tag}", "/tmp/escape-{tag}",
                 "sub/escape-{tag}", "..\\escape-{tag}", "nul\x00escape-{tag}",
                 ".hidden-{tag}", ".partial", "x" * 256, "é" * 128]


class HostileNameTests(FilesTestCase):

    def test_hostile_names_refused_everywhere(self) -> None:
        """Each hostile name is refused on upload, download and delete; nothing is written
        outside the files folder, and nothing inside it."""
        tag = uuid.uuid4().hex
        names = [n.format(tag=tag) for n in HOSTILE_NAMES]
        source = self.path("payload")
        with open(source, "wb") as f:
            f.write(b"payload")
        conn = self.raw()
        for name in names:
            with self.assertRaises(lttx.BadFileName, msg=repr(name)):
                self.client.send_file(source, name=name)
            with self.assertRaises(lttx.BadFileName, msg=repr(name)):
                self.client.recv_file(name, self.work)
            with self.assertRaises(lttx.BadFileName, msg=repr(name)):
                self.client.delete_file(name)
            # The client checks download names itself; ask the daemon directly too.
            for command, args in (("download", [name, 0, None]),
                                  ("upload", [name, 7, 0, None]),
                                  ("partial", [name]), ("delete", [name])):
                reply = conn.request(command, *args)
                self.assertEqual(reply[:3], [codec.ERROR, conn.next_id, "bad_file_name"],
                                 f"{command} {name!r}")
        self.assertEqual(self.visible_files(), [])
        self.assertEqual(self.partial_files(), [])
        self.assertEqual(os.listdir(self.work), ["payload"])
        for root, dirs, files in os.walk(self.daemon.data_dir):
            self.assertEqual([n for n in dirs + files if tag in n], [], root)
        for folder in (self.daemon.data_dir, os.path.dirname(self.daemon.data_dir),
                       os.getcwd(), "/tmp", self.files_dir):
            self.assertEqual([n for n in os.listdir(folder) if tag in n], [], folder)
        self.daemon.wait_for_log(r"'upload' refused: bad_file_name")


class InterruptedTransferTests(FilesTestCase):

    def test_upload_cut_off_half_way_is_resumed(self) -> None:
        """An upload cut off at half resumes from the byte the daemon holds, and the whole
        file's MD5 is checked."""
        source = self.path("half.bin")
        expected = make_file(source, 24 * MiB + 12345)
        size = os.path.getsize(source)
        conn = self.raw()
        self.assertEqual(conn.request("upload", "half.bin", size, 0, None)[2], {"offset": 0})
        half = 12 * MiB + 777
        conn.send_data(source, 0, half)
        conn.close()
        self.daemon.wait_for_log(r"upload of half\.bin interrupted at \d+ of")
        self.assertEqual(self.visible_files(), [])
        held = os.path.getsize(os.path.join(self.files_dir, ".partial", "half.bin"))
        self.assertEqual(held, half)
        result = self.client.send_file(source)
        self.assertEqual(result, {"name": "half.bin", "size": size, "md5": expected})
        self.daemon.wait_for_log(rf"upload of half\.bin started at byte {half} of {size}")
        self.assertEqual(md5_of(os.path.join(self.files_dir, "half.bin")), expected)
        self.assertEqual(self.partial_files(), [])

    def test_resume_with_other_bytes_starts_afresh(self) -> None:
        """A partial holding another file's bytes is not resumed from: the upload restarts."""
        other = self.path("other")
        make_file(other, 4 * MiB)
        conn = self.raw()
        conn.request("upload", "f.bin", 8 * MiB, 0, None)
        conn.send_data(other, 0, 2 * MiB)
        conn.close()
        self.daemon.wait_for_log(r"upload of f\.bin interrupted")
        source = self.path("f.bin")
        expected = make_file(source, 8 * MiB)
        self.assertEqual(self.client.send_file(source)["md5"], expected)
        self.daemon.wait_for_log(r"upload of f\.bin started at byte 0 of 8388608", start=0)

    def test_download_cut_off_half_way_is_resumed(self) -> None:
        """A download cut off at half resumes from the bytes the client holds; the result
        is verified and the partial is gone."""
        source = self.path("dl.bin")
        expected = make_file(source, 20 * MiB + 1)
        self.client.send_file(source)
        dest = self.path("dest")
        os.makedirs(dest)
        target = os.path.join(dest, "dl.bin")
        conn = self.raw()
        header = conn.request("download", "dl.bin", 0, None)
        self.assertEqual(header[2], {"name": "dl.bin", "size": 20 * MiB + 1, "offset": 0})
        received = 0
        with open(partial_path(target), "wb") as f:
            while received < 9 * MiB:
                chunk = conn.recv_frame()
                f.write(chunk)
                received += len(chunk)
        conn.reset()
        self.daemon.wait_for_log(r"download of dl\.bin interrupted")
        result = self.client.recv_file("dl.bin", dest)
        self.daemon.wait_for_log(rf"download of dl\.bin started at byte {received} of")
        self.assertEqual(result["md5"], expected)
        self.assertEqual(md5_of(target), expected)
        self.assertEqual(os.listdir(dest), ["dl.bin"])

    def test_corrupted_upload_leaves_no_file(self) -> None:
        """One flipped byte in the stream: ChecksumMismatch, and no file, not even a partial."""
        source = self.path("c.bin")
        expected = make_file(source, 3 * MiB)
        conn = self.raw()
        conn.request("upload", "c.bin", 3 * MiB, 0, None)
        conn.send_data(source, 0, 3 * MiB, corrupt_at=MiB + 5)
        reply = conn.request("upload_end", expected)
        self.assertEqual(reply[:3], [codec.ERROR, conn.next_id, "checksum"])
        self.assertEqual(self.client.list_files(), [])
        self.assertEqual(self.visible_files(), [])
        self.assertEqual(self.partial_files(), [])

    def test_missing_file_is_not_found_and_leaves_nothing(self) -> None:
        """Downloading a file the daemon lacks is NotFound, and nothing appears at dest."""
        dest = self.path("dest")
        os.makedirs(dest)
        with self.assertRaises(lttx.NotFound):
            self.client.recv_file("absent.csv", dest)
        with self.assertRaises(lttx.NotFound):
            self.client.recv_file("absent.csv", os.path.join(dest, "renamed.csv"))
        self.assertEqual(os.listdir(dest), [])

    def test_vanished_raw_client_leaves_no_partial_visible(self) -> None:
        """A client whose connection is reset mid-upload leaves nothing a reader sees."""
        source = self.path("v.bin")
        make_file(source, 8 * MiB)
        conn = self.raw()
        conn.request("upload", "v.bin", 8 * MiB, 0, None)
        conn.send_data(source, 0, 3 * MiB)
        conn.reset()
        self.daemon.wait_for_log(r"upload of v\.bin interrupted")
        self.assertEqual(self.client.list_files(), [])
        self.assertEqual(self.visible_files(), [])
        with self.assertRaises(lttx.NotFound):
            self.client.recv_file("v.bin", self.work)

    def test_killed_client_process_leaves_no_partial_visible(self) -> None:
        """A client process killed mid-upload leaves nothing a reader sees."""
        source = self.path("k.bin")
        make_file(source, 512 * MiB)
        self.addCleanup(os.unlink, source)
        script = ("import lttx, sys\n"
                  "c = lttx.connect('127.0.0.1', int(sys.argv[1]), token=sys.argv[2])\n"
                  "c.send_file(sys.argv[3])\n")
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        process = subprocess.Popen([sys.executable, "-c", script, str(self.daemon.port),
                                    TOKEN, source], env=env)
        self.addCleanup(process.wait)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.daemon.wait_for_log(r"upload of k\.bin started")
        process.kill()
        process.wait()
        line = self.daemon.wait_for_log(r"upload of k\.bin (interrupted|finished)")
        self.assertIn("interrupted", line)
        self.assertEqual(self.client.list_files(), [])
        self.assertEqual(self.visible_files(), [])


class ShutdownTests(FilesTestCase):

    def test_sigterm_mid_upload_discards_the_file_in_flight(self) -> None:
        """SIGTERM during an upload: the daemon exits cleanly, the file in flight is
        discarded (no file, no partial), the client gets a typed error."""
        source = self.path("t.bin")
        make_file(source, 512 * MiB)
        self.addCleanup(os.unlink, source)
        errors: list[BaseException] = []
        done = threading.Event()

        def upload() -> None:
            try:
                self.client.send_file(source)
            except lttx.LTtxError as e:
                errors.append(e)
            finally:
                done.set()

        threading.Thread(target=upload, daemon=True).start()
        self.daemon.wait_for_log(r"upload of t\.bin started")
        # twistd shuts down cleanly, then exits with the signal's status (as Twisted does).
        self.assertIn(self.daemon.stop(), (0, -15))
        self.daemon.wait_for_log(r"Server Shut Down")
        self.assertTrue(done.wait(30))
        self.assertIsInstance(errors[0], lttx.ConnectionLost)
        self.daemon.wait_for_log(r"upload of t\.bin discarded at \d+ of \d+ bytes: "
                                 "the daemon is stopping")
        self.assertEqual(self.visible_files(), [])
        self.assertEqual(self.partial_files(), [])
        self.assertNotIn("Traceback", self.daemon.log_text())
        self.assertNotIn("Unhandled", self.daemon.log_text())
