"""
Unit tests of :mod:`lttx.server.files` and :mod:`lttx.client.files`: names, and file sessions driven
through a StringTransport with exact frames.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import sys
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec
from lttx.state.auth import TokenAuthenticator
from lttx.client import ConnectionSettings
from lttx.errors import BadFileName, ChecksumMismatch, FileBusy, NotFound, StorageError
from lttx.errors import TimeoutError as LTtxTimeoutError
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.client.files import delete_file, list_files, recv_file, send_file
from lttx.diskio import _write_chunks, run_inline, storage_error
from lttx.server.files import FileService
from lttx.wire.frames import FILE_CHUNK_SIZE as CHUNK_SIZE
from lttx.wire.names import MAX_FILE_NAME_BYTES as MAX_NAME_BYTES
from lttx.wire.names import check_file_name as check_name
from lttx.state.store import MemoryStore
from lttx.tap import Options

from .common import TOKEN, frame, frames_of

HOSTILE = ["", ".", "..", "../etc/passwd", "a/b", "/abs", "a\\b", "..\\x", "nul\x00",
           ".hidden", ".partial", "x" * (MAX_NAME_BYTES + 1), "é" * 128, "\udcff", 7, None,
           b"bytes", "a\nb", "cr\rx", "\x1b[2J", "rtl\u202etxt.exe", "\ufeffbom"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def raw(data: bytes) -> bytes:
    """A raw data frame: the length prefix, then the bytes as they are."""
    return struct.pack("!I", len(data)) + data


class NameTests(SynchronousTestCase):

    def test_hostile_names_refused(self) -> None:
        """Separators, '..', NUL, a leading dot, empty, over 255 bytes, non-strings: refused."""
        for name in HOSTILE:
            self.assertRaises(BadFileName, check_name, name)

    def test_plain_names_accepted(self) -> None:
        """Ordinary names, Unicode and exactly 255 bytes are plain names."""
        for name in ["report.csv", "a..b", "浦发银行.parquet", "x" * MAX_NAME_BYTES,
                     "weights-2026-11-26.pt", "a b"]:
            self.assertEqual(check_name(name), name)

    def test_bad_file_name_is_a_bad_request(self) -> None:
        """BadFileName is caught by ``except BadRequest`` and has its own wire code."""
        from lttx.errors import BadRequest, error_from_wire

        self.assertTrue(issubclass(BadFileName, BadRequest))
        self.assertIsInstance(error_from_wire("bad_file_name", "x"), BadFileName)

    @given(st.text(min_size=1, max_size=80))
    def test_accepted_names_stay_in_the_folder(self, name: str) -> None:
        """Any accepted name, joined to the folder, names an entry directly inside it."""
        try:
            name = check_name(name)
        except BadFileName:
            return
        path = os.path.normpath(os.path.join("/srv/files", name))
        self.assertEqual(os.path.dirname(path), "/srv/files")
        self.assertFalse(os.path.basename(path).startswith("."))


class ManualRunner:
    """A thread runner whose jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_all(self) -> None:
        while self.jobs:
            d, f, args = self.jobs.pop(0)
            try:
                result = f(*args)
            except Exception as e:
                d.errback(e)
            else:
                d.callback(result)


class SessionTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.runner: Callable[..., Any] = run_inline
        self.service = FileService(self.directory, lambda f, *a: self.runner(f, *a),
                                   max_file_size=64 * 1024 * 1024)
        self.service.startService()
        self.factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN),
                                   files=self.service))

    def connect(self) -> tuple[Any, StringTransport]:
        """An authenticated file connection; the hello reply is checked and cleared."""
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        proto = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [TOKEN, {"mode": "file"}]]))
        [reply] = frames_of(transport.value())
        self.assertEqual(reply[:2], [codec.REPLY, 0])
        transport.clear()
        return proto, transport

    def request(self, proto: Any, request_id: int, command: str, *args: Any) -> None:
        proto.dataReceived(frame([codec.REQUEST, request_id, command, list(args)]))

    def sent(self, transport: StringTransport) -> list[Any]:
        out = frames_of(transport.value())
        transport.clear()
        return out

    def visible(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if not n.startswith("."))

    def partials(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, ".partial")))

    def stored(self, name: str) -> bytes:
        with open(os.path.join(self.directory, name), "rb") as f:
            return f.read()


class UploadTests(SessionTestCase):

    def test_upload_exact_frames(self) -> None:
        """partial, upload, raw data split at awkward points, upload_end: the file appears."""
        proto, transport = self.connect()
        data = os.urandom(3 * CHUNK_SIZE + 17)
        self.request(proto, 1, "partial", "r.bin")
        self.assertEqual(self.sent(transport), [[codec.REPLY, 1, {"offset": 0}]])
        self.request(proto, 2, "upload", "r.bin", len(data), 0, None)
        self.assertEqual(self.sent(transport), [[codec.REPLY, 2, {"offset": 0}]])
        stream = b"".join(raw(data[i:i + 100_000]) for i in range(0, len(data), 100_000))
        stream += frame([codec.REQUEST, 3, "upload_end", [md5(data)]])
        for i in range(0, len(stream), 65_537):  # frames cut anywhere
            proto.dataReceived(stream[i:i + 65_537])
        self.assertEqual(self.sent(transport), [
            [codec.REPLY, 3, {"name": "r.bin", "size": len(data), "md5": md5(data)}]])
        self.assertEqual(self.stored("r.bin"), data)
        self.assertEqual(self.partials(), [])
        self.assertEqual(self.service.uploading, set())

    def test_corrupted_stream_leaves_no_file(self) -> None:
        """Bytes that do not match the client's MD5: a checksum error, no file, no partial."""
        proto, transport = self.connect()
        data = b"0123456789" * 1000
        self.request(proto, 1, "upload", "c.bin", len(data), 0, None)
        proto.dataReceived(raw(data[:5000]) + raw(b"X" + data[5001:]))
        self.request(proto, 2, "upload_end", md5(data))
        replies = self.sent(transport)
        self.assertEqual(replies[1][:3], [codec.ERROR, 2, "checksum"])
        self.assertIn("was not kept", replies[1][3])
        self.assertEqual(self.visible(), [])
        self.assertEqual(self.partials(), [])
        self.assertFalse(transport.disconnecting)

    def test_more_data_than_announced_is_fatal(self) -> None:
        """A data frame past the announced size closes the connection; nothing is kept."""
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "o.bin", 10, 0, None)
        proto.dataReceived(raw(b"123456") + raw(b"789abc"))
        replies = self.sent(transport)
        self.assertEqual(replies[1][:3], [codec.ERROR, None, "bad_request"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.partials(), [])

    def test_resume_from_matching_partial(self) -> None:
        """A partial whose bytes match the client's prefix MD5 is continued from its end."""
        data = os.urandom(50_000)
        with open(os.path.join(self.directory, ".partial", "p.bin"), "wb") as f:
            f.write(data[:20_000])
        proto, transport = self.connect()
        self.request(proto, 1, "partial", "p.bin")
        self.request(proto, 2, "upload", "p.bin", len(data), 20_000, md5(data[:20_000]))
        proto.dataReceived(raw(data[20_000:]))
        self.request(proto, 3, "upload_end", md5(data))
        self.assertEqual(self.sent(transport), [
            [codec.REPLY, 1, {"offset": 20_000}],
            [codec.REPLY, 2, {"offset": 20_000}],
            [codec.REPLY, 3, {"name": "p.bin", "size": len(data), "md5": md5(data)}]])
        self.assertEqual(self.stored("p.bin"), data)

    def test_resume_from_foreign_partial_restarts(self) -> None:
        """A partial of other bytes (prefix MD5 differs) is not trusted: offset 0."""
        with open(os.path.join(self.directory, ".partial", "p.bin"), "wb") as f:
            f.write(b"z" * 100)
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "p.bin", 200, 100, md5(b"a" * 100))
        self.assertEqual(self.sent(transport), [[codec.REPLY, 1, {"offset": 0}]])
        proto.dataReceived(raw(b"a" * 200))
        self.request(proto, 2, "upload_end", md5(b"a" * 200))
        self.assertEqual(self.sent(transport)[0][:2], [codec.REPLY, 2])
        self.assertEqual(self.stored("p.bin"), b"a" * 200)

    def test_lost_connection_keeps_partial_hidden(self) -> None:
        """A connection lost mid-upload leaves the bytes in the hidden partial area only."""
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "h.bin", 100, 0, None)
        proto.dataReceived(raw(b"a" * 40))
        proto.connectionLost(None)
        self.assertEqual(self.visible(), [])
        self.assertEqual(self.partials(), ["h.bin"])
        self.assertEqual(self.service.uploading, set())
        self.assertEqual(self.successResultOf(self.service.status())["uploads"], 0)

    def test_stop_discards_uploads_in_flight(self) -> None:
        """Stopping the service discards an upload in flight, partial included, and closes."""
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "s.bin", 100, 0, None)
        proto.dataReceived(raw(b"a" * 40))
        d = self.service.stopService()
        self.successResultOf(d)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.partials(), [])
        self.assertEqual(self.service.uploading, set())

    def test_second_upload_of_a_name_is_busy(self) -> None:
        """Two uploads of one name cannot interleave: the second is refused as busy."""
        first, _ = self.connect()
        second, transport = self.connect()
        self.request(first, 1, "upload", "same", 10, 0, None)
        self.request(second, 1, "upload", "same", 10, 0, None)
        self.request(second, 2, "partial", "same")
        self.assertEqual([r[:3] for r in self.sent(transport)],
                         [[codec.ERROR, 1, "busy"], [codec.ERROR, 2, "busy"]])
        self.assertEqual(self.successResultOf(self.service.status())["uploads"], 1)

    def test_hostile_names_refused_on_every_command(self) -> None:
        """upload, download, partial and delete refuse each hostile name with bad_file_name."""
        proto, transport = self.connect()
        request_id = 0
        for name in HOSTILE:
            if name == "\udcff":
                continue  # not encodable: it cannot reach the daemon at all
            for command, args in (("upload", [name, 1, 0, None]), ("download", [name, 0, None]),
                                  ("partial", [name]), ("delete", [name])):
                request_id += 1
                self.request(proto, request_id, command, *args)
                [reply] = self.sent(transport)
                self.assertEqual(reply[:3], [codec.ERROR, request_id, "bad_file_name"],
                                 (command, name))
        self.assertEqual(os.listdir(self.directory), [".partial"])
        self.assertEqual(self.partials(), [])

    def test_max_file_size(self) -> None:
        """An upload over --max-file-size is refused with a storage error before any data."""
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "big", 64 * 1024 * 1024 + 1, 0, None)
        [reply] = self.sent(transport)
        self.assertEqual(reply[:3], [codec.ERROR, 1, "storage"])
        self.assertIn("--max-file-size", reply[3])
        self.assertEqual(self.partials(), [])

    def test_full_disk_is_a_storage_error_and_removes_the_partial(self) -> None:
        """A write failing with ENOSPC: a 'disk full' error, the connection closed, no partial."""
        def runner(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
            if f is _write_chunks:
                return fail(OSError(errno.ENOSPC, "No space left on device"))
            return maybeDeferred(f, *args)

        self.runner = runner
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "full", 100, 0, None)
        proto.dataReceived(raw(b"a" * 50))
        replies = self.sent(transport)
        self.assertEqual(replies[1][:3], [codec.ERROR, None, "storage"])
        self.assertIn("disk full", replies[1][3])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.partials(), [])
        self.assertEqual(self.service.uploading, set())

    def test_receiver_pauses_while_writes_lag(self) -> None:
        """More than the high-water mark waiting to be written pauses the transport; once
        written, reading resumes and the buffered frames are processed."""
        self.runner = runner = ManualRunner()
        proto, transport = self.connect()
        self.request(proto, 1, "upload", "slow", 12 * 1024 * 1024, 0, None)
        runner.run_all()  # opening the partial
        self.assertEqual(self.sent(transport), [[codec.REPLY, 1, {"offset": 0}]])
        chunk = b"s" * CHUNK_SIZE
        for _ in range(40):  # 10 MiB
            proto.dataReceived(raw(chunk))
        self.assertEqual(transport.producerState, "paused")
        runner.run_all()
        self.assertEqual(transport.producerState, "producing")
        for _ in range(8):
            proto.dataReceived(raw(chunk))
        runner.run_all()
        self.request(proto, 2, "upload_end", md5(chunk * 48))
        runner.run_all()
        self.assertEqual(self.sent(transport)[0][:2], [codec.REPLY, 2])
        self.assertEqual(os.path.getsize(os.path.join(self.directory, "slow")), 48 * CHUNK_SIZE)


class DownloadTests(SessionTestCase):

    def store(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(data)

    def pump(self, transport: StringTransport) -> None:
        """Let the pull producer (FileSender) run as a socket with room would."""
        while transport.producer is not None:
            transport.producer.resumeProducing()

    def test_download_exact_frames(self) -> None:
        """The header reply, raw chunk frames, then download_end with the MD5."""
        data = os.urandom(CHUNK_SIZE + 1000)
        self.store("d.bin", data)
        proto, transport = self.connect()
        self.request(proto, 1, "download", "d.bin", 0, None)
        self.pump(transport)
        value = transport.value()
        header = frame([codec.REPLY, 1, {"name": "d.bin", "size": len(data), "offset": 0}])
        self.assertEqual(value, header + raw(data[:CHUNK_SIZE]) + raw(data[CHUNK_SIZE:]))
        transport.clear()
        self.request(proto, 2, "download_end", md5(data))
        self.assertEqual(self.sent(transport), [[codec.REPLY, 2, {"md5": md5(data)}]])

    def test_download_resumes_after_matching_prefix(self) -> None:
        """Given the MD5 of the bytes it holds, the client gets only the rest."""
        data = os.urandom(5000)
        self.store("d.bin", data)
        proto, transport = self.connect()
        self.request(proto, 1, "download", "d.bin", 3000, md5(data[:3000]))
        self.pump(transport)
        self.assertEqual(transport.value(), frame(
            [codec.REPLY, 1, {"name": "d.bin", "size": 5000, "offset": 3000}])
            + raw(data[3000:]))
        transport.clear()
        self.request(proto, 2, "download_end", md5(data))
        self.assertEqual(self.sent(transport), [[codec.REPLY, 2, {"md5": md5(data)}]])

    def test_download_with_foreign_prefix_restarts(self) -> None:
        """A prefix MD5 that does not match (or an offset past the end) restarts at 0."""
        self.store("d.bin", b"abc")
        proto, transport = self.connect()
        self.request(proto, 1, "download", "d.bin", 2, md5(b"xx"))
        self.pump(transport)
        self.assertEqual(transport.value(), frame(
            [codec.REPLY, 1, {"name": "d.bin", "size": 3, "offset": 0}]) + raw(b"abc"))
        transport.clear()
        self.request(proto, 2, "download_end", md5(b"abc"))
        self.request(proto, 3, "download", "d.bin", 10, md5(b"abc" + b"x" * 7))
        self.pump(transport)
        self.assertEqual(transport.value(), frame([codec.REPLY, 2, {"md5": md5(b"abc")}])
                         + frame([codec.REPLY, 3, {"name": "d.bin", "size": 3, "offset": 0}])
                         + raw(b"abc"))

    def test_client_md5_mismatch_is_a_checksum_error(self) -> None:
        """download_end with another MD5 is refused with a checksum error."""
        self.store("d.bin", b"abc")
        proto, transport = self.connect()
        self.request(proto, 1, "download", "d.bin", 0, None)
        self.pump(transport)
        transport.clear()
        self.request(proto, 2, "download_end", md5(b"abd"))
        self.assertEqual(self.sent(transport)[0][:3], [codec.ERROR, 2, "checksum"])

    def test_missing_file_is_not_found(self) -> None:
        """A name that is not stored: not_found."""
        proto, transport = self.connect()
        self.request(proto, 1, "download", "nothing", 0, None)
        self.assertEqual(self.sent(transport),
                         [[codec.ERROR, 1, "not_found", "no file named nothing"]])

    def test_request_during_download_is_fatal(self) -> None:
        """While a download streams the client must stay silent: a request closes."""
        self.store("d.bin", b"x" * (3 * CHUNK_SIZE))
        proto, transport = self.connect()
        self.request(proto, 1, "download", "d.bin", 0, None)
        self.request(proto, 2, "list")
        self.assertTrue(transport.disconnecting)


class ListDeleteStatusTests(SessionTestCase):

    def test_list_delete_status(self) -> None:
        """list shows visible files by name; delete says whether it deleted; status counts."""
        for name, data in (("b.csv", b"22"), ("a.csv", b"1")):
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(data)
        with open(os.path.join(self.directory, ".partial", "c.csv"), "wb") as f:
            f.write(b"partial")
        proto, transport = self.connect()
        self.request(proto, 1, "list")
        [reply] = self.sent(transport)
        self.assertEqual([(f["name"], f["size"]) for f in reply[2]], [("a.csv", 1), ("b.csv", 2)])
        self.assertEqual(self.successResultOf(self.factory.state.status())["files"],
                         {"files": 2, "bytes": 3, "uploads": 0, "downloads": 0,
                          "partials": 1, "disk_reserve": 0, "owned_partials": 0,
                          "uploads_refused": 0})
        self.request(proto, 2, "delete", "a.csv")
        self.request(proto, 3, "delete", "a.csv")
        self.assertEqual(self.sent(transport), [[codec.REPLY, 2, True], [codec.REPLY, 3, False]])

    def test_unknown_command_and_arity(self) -> None:
        """Unknown commands and wrong argument counts are bad requests; the connection stays."""
        proto, transport = self.connect()
        self.request(proto, 1, "put", "x", 1)
        self.request(proto, 2, "upload", "x")
        self.assertEqual([r[:3] for r in self.sent(transport)],
                         [[codec.ERROR, 1, "bad_request"], [codec.ERROR, 2, "bad_request"]])
        self.assertFalse(transport.disconnecting)

    def test_daemon_without_files(self) -> None:
        """A factory without a file service refuses mode file at hello."""
        factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN)))
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(transport)
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [TOKEN, {"mode": "file"}]]))
        self.assertEqual(frames_of(transport.value())[0][:3], [codec.ERROR, 0, "bad_request"])
        self.assertTrue(transport.disconnecting)


class OptionsTests(SynchronousTestCase):

    def test_max_file_size_option(self) -> None:
        """--max-file-size takes a size with a unit; 0 (no limit) by default."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["max-file-size"], 0)
        options = Options()
        options.parseOptions(["--max-file-size", "2GiB"])
        self.assertEqual(options["max-file-size"], 2 * 1024**3)

    def test_make_service_serves_files_from_the_data_dir(self) -> None:
        """makeService builds a file service on <data-dir>/files with --max-file-size."""
        from lttx.tap import makeService

        data_dir = self.mktemp()
        options = Options()
        options.parseOptions(["--data-dir", data_dir, "--max-file-size", "5MiB",
                              "--listen", "tcp:0:interface=127.0.0.1", "--token", TOKEN])
        top = makeService(options, reactor=MemoryReactorClock())
        [files] = [s for s in top if isinstance(s, FileService)]
        self.assertEqual(files.directory, os.path.abspath(os.path.join(data_dir, "files")))
        self.assertEqual(files.max_file_size, 5 * 1024 * 1024)
        files.startService()
        self.assertTrue(os.path.isdir(os.path.join(data_dir, "files", ".partial")))

    def test_storage_error_message_for_full_disk(self) -> None:
        """ENOSPC reads as a full disk."""

        error = storage_error(OSError(errno.ENOSPC, "No space"), "x")
        self.assertIsInstance(error, StorageError)
        self.assertEqual(error.message, "disk full: no space left to write x")


class StalePartialTests(SessionTestCase):

    def test_old_partials_are_removed_recent_ones_kept(self) -> None:
        """Partials untouched past the age limit go; recent ones stay for resume."""
        partial_dir = os.path.join(self.directory, ".partial")
        for name, age in (("old", 8 * 86400), ("new", 3600)):
            path = os.path.join(partial_dir, name)
            with open(path, "wb") as f:
                f.write(b"x")
            os.utime(path, (1_000_000 - age, 1_000_000 - age))
        self.assertEqual(self.service.remove_stale_partials(1_000_000), 1)
        self.assertEqual(self.partials(), ["new"])


class _MemoryEndpoint:
    """Connects a client protocol to a new server protocol of ``factory`` in memory."""

    def __init__(self, factory: LTtxFactory, pumps: list[Any], clock: Any,
                 tamper: Callable[[bytes], bytes]) -> None:
        self.factory, self.pumps, self.clock, self.tamper = factory, pumps, clock, tamper

    def connect(self, protocol_factory: Any) -> "Deferred[Any]":
        client = protocol_factory.buildProtocol(None)
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        server_io = iosim.makeFakeServer(server)
        client_io = iosim.makeFakeClient(client)
        pump = iosim.connect(server, server_io, client, client_io, greet=False,
                             clock=self.clock)
        original = server_io.getOutBuffer
        server_io.getOutBuffer = lambda: (lambda data: data and self.tamper(data))(original())
        self.pumps.append(pump)
        return succeed(client)


def _memory_settings(endpoint: Any) -> ConnectionSettings:
    """Settings whose connections all go to ``endpoint`` (an in-memory daemon)."""
    return ConnectionSettings("memory", 0, TOKEN, connector=lambda reactor, host, port: endpoint)


class ClientInMemoryTests(SessionTestCase):
    """The real client functions against the real file session, pumped in memory."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = MemoryReactorClock()
        self.pumps: list[Any] = []
        self.tamper: Callable[[bytes], bytes] = lambda data: data
        endpoint = _MemoryEndpoint(self.factory, self.pumps, self.clock,
                                   lambda data: self.tamper(data))
        self.settings = _memory_settings(endpoint)
        self.work = self.mktemp()
        os.makedirs(self.work)

    def run_until_done(self, d: "Deferred[Any]") -> None:
        self.run_until_done_or(d, lambda: self.fail("the transfer did not finish"))

    def run_until_done_or(self, d: "Deferred[Any]", otherwise: Callable[[], None]) -> None:
        """Pump until ``d`` fires or nothing moves any more."""
        while not d.called:
            if not any([pump.pump() for pump in self.pumps]):
                otherwise()
                return

    def source(self, data: bytes) -> str:
        path = os.path.join(self.work, "source.bin")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_round_trip_with_progress_bar(self) -> None:
        """send_file then recv_file through the session: same bytes, a tqdm bar with a rate."""
        data = os.urandom(3 * CHUNK_SIZE + 5)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        d = send_file(self.clock, self.settings, self.source(data), "x.bin", progress=True,
                      run_in_thread=run_inline)
        self.run_until_done(d)
        self.assertEqual(self.successResultOf(d),
                         {"name": "x.bin", "size": len(data), "md5": md5(data)})
        self.assertIn("B/s", stderr.getvalue())
        dest = os.path.join(self.work, "down")
        d = recv_file(self.clock, self.settings, "x.bin", dest + "/",
                      run_in_thread=run_inline)
        self.run_until_done(d)
        result = self.successResultOf(d)
        self.assertEqual(result["md5"], md5(data))
        with open(result["path"], "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(dest), ["x.bin"])

    def test_upload_frames_fit_a_small_max_frame(self) -> None:
        """With --max-frame below the chunk size, the client sends smaller raw frames."""
        self.factory.state.max_frame = 4096
        data = os.urandom(50_000)
        d = send_file(self.clock, self.settings, self.source(data), "s.bin",
                      run_in_thread=run_inline)
        self.run_until_done(d)
        self.assertEqual(self.successResultOf(d)["md5"], md5(data))
        self.assertEqual(self.stored("s.bin"), data)

    def test_full_disk_reaches_the_client_asstorage_error(self) -> None:
        """The daemon's disk fills mid-upload: send_file fails with StorageError, no file."""
        def runner(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
            if f is _write_chunks:
                return fail(OSError(errno.ENOSPC, "No space left on device"))
            return maybeDeferred(f, *args)

        self.runner = runner
        d = send_file(self.clock, self.settings, self.source(b"d" * (2 * CHUNK_SIZE)),
                      run_in_thread=run_inline)
        self.run_until_done(d)
        failure = self.failureResultOf(d, StorageError)
        self.assertIn("disk full", failure.getErrorMessage())
        self.assertEqual(self.visible(), [])
        self.assertEqual(self.partials(), [])

    def test_corrupted_download_leaves_nothing(self) -> None:
        """A byte flipped on the way down: ChecksumMismatch, and nothing at the destination."""
        data = b"q" * 5000
        with open(os.path.join(self.directory, "q.bin"), "wb") as f:
            f.write(data)

        def flip(chunk: bytes) -> bytes:
            return chunk.replace(b"qqqq", b"qqqr", 1)

        self.tamper = flip
        dest = os.path.join(self.work, "dest")
        os.makedirs(dest)
        d = recv_file(self.clock, self.settings, "q.bin", dest,
                      run_in_thread=run_inline)
        self.run_until_done(d)
        self.failureResultOf(d, ChecksumMismatch)
        self.assertEqual(os.listdir(dest), [])

    def test_two_downloads_to_one_target_do_not_mix(self) -> None:
        """A second download to a target being downloaded to is FileBusy; the first is intact."""
        data = os.urandom(2 * CHUNK_SIZE)
        with open(os.path.join(self.directory, "w.bin"), "wb") as f:
            f.write(data)
        first = recv_file(self.clock, self.settings, "w.bin", self.work,
                          run_in_thread=run_inline)
        second = recv_file(self.clock, self.settings, "w.bin", self.work,
                           run_in_thread=run_inline)
        self.failureResultOf(second, FileBusy)
        self.run_until_done(first)
        self.assertEqual(self.successResultOf(first)["md5"], md5(data))
        self.assertEqual(os.listdir(self.work), ["w.bin"])

    def test_missing_file_leaves_nothing(self) -> None:
        """recv_file of a name the daemon lacks: NotFound, no file at all."""
        d = recv_file(self.clock, self.settings, "none", self.work,
                      run_in_thread=run_inline)
        self.run_until_done(d)
        self.failureResultOf(d, NotFound)
        self.assertEqual(os.listdir(self.work), [])

    def test_list_and_delete(self) -> None:
        """list_files and delete_file through a file connection."""
        with open(os.path.join(self.directory, "a"), "wb") as f:
            f.write(b"1")
        d = list_files(self.clock, self.settings)
        self.run_until_done(d)
        self.assertEqual([f["name"] for f in self.successResultOf(d)], ["a"])
        d = delete_file(self.clock, self.settings, "a")
        self.run_until_done(d)
        self.assertTrue(self.successResultOf(d))

    def test_silent_daemon_is_a_timeout(self) -> None:
        """A daemon that never answers: the call fails with TimeoutError after the timeout."""
        class Silent(Protocol):
            def dataReceived(self, data: bytes) -> None:
                pass

        silent = _MemoryEndpoint(Factory.forProtocol(Silent), self.pumps, self.clock,
                                 lambda data: data)
        d = list_files(self.clock, _memory_settings(silent))
        self.run_until_done_or(d, lambda: None)
        self.assertNoResult(d)
        self.clock.advance(31)
        self.run_until_done(d)
        self.failureResultOf(d, LTtxTimeoutError)


class OneTransferAtATimeTests(SessionTestCase):

    def test_pipelined_second_download_is_refused(self) -> None:
        """A second download sent while the first is still opening is refused, not mixed in."""
        self.runner = runner = ManualRunner()
        with open(os.path.join(self.directory, "a"), "wb") as f:
            f.write(b"a" * 10)
        proto, transport = self.connect()
        self.request(proto, 1, "download", "a", 0, None)
        self.request(proto, 2, "download", "a", 0, None)
        self.assertEqual(self.sent(transport)[0][:3], [codec.ERROR, 2, "bad_request"])
        runner.run_all()
        while transport.producer is not None:
            transport.producer.resumeProducing()
        self.assertEqual(transport.value(), frame(
            [codec.REPLY, 1, {"name": "a", "size": 10, "offset": 0}]) + raw(b"a" * 10))
