"""
The file session of a daemon on a shared Redis (lttx.server.shared_files), on
StringTransports with an in-memory file directory: exact frames of list,
superseded and a download of a file whose holder is down; what a connection
of another daemon may do; the upload that lists itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx.diskio import run_inline
from lttx.engines.redis.filedir import Entry
from lttx.errors import Unavailable
from lttx.server.factory import LTtxFactory
from lttx.server.files import FileService
from lttx.server.shared_files import DAEMON_GRANT, SharedFiles
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator, parse_roles
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.frames import PREFIX

from ..common import TOKEN, frame, frames_of
from .test_file_session import FileConnectionMixin

R, E = codec.REPLY, codec.ERROR
ME, A = "m" * 32, "a" * 32
DAEMON_TOKEN = "daemon-secret"
ROLES = {"tokens": [
    {"name": "admin", "token": TOKEN, "rights": ["all"]},
    {"name": "reports", "token": "tok-reports", "rights": ["download:report_*"]},
]}


class MemoryFileDirectory:
    """The FileDirectory's calls on a dict; ``down`` makes each fail as Redis away does."""

    def __init__(self) -> None:
        self.holder_id = ME
        self.entries_by_name: dict[str, Entry] = {}
        self.down = False

    def _answer(self, value: Any) -> "Deferred[Any]":
        return fail(Unavailable("Redis (redis://x) is unavailable")) if self.down \
            else succeed(value)

    def register(self, name: str, size: int, md5: Optional[str], mtime: float,
                 only_new: bool = False) -> "Deferred[Any]":
        old = self.entries_by_name.get(name)
        if old is not None and (only_new or old.holder != ME and old.mtime > mtime):
            return self._answer((old, False))
        if not self.down:
            self.entries_by_name[name] = Entry(ME, size, md5, mtime)
        return self._answer((old, True))

    def lookup(self, name: str) -> "Deferred[Any]":
        return self._answer(self.entries_by_name.get(name))

    def entries(self) -> "Deferred[Any]":
        return self._answer(dict(self.entries_by_name))

    def remove(self, name: str) -> "Deferred[Any]":
        entry = self.entries_by_name.get(name)
        if self.down or entry is None or entry.holder != ME:
            return self._answer(False)
        del self.entries_by_name[name]
        return self._answer(True)


class NoDaemons:
    """A daemon directory where no other daemon is alive."""

    def holding(self, files_id: str) -> None:
        return None


class FolderIdTests(SynchronousTestCase):
    def test_made_once_then_kept(self) -> None:
        """A folder's id is made the first time, hidden from listings, the same after;
        a file holding something else refuses to start."""
        from lttx.server.shared_files import FOLDER_ID, folder_id

        folder = self.mktemp()
        first = folder_id(folder)
        self.assertRegex(first, r"^[0-9a-f]{32}$")
        self.assertEqual(folder_id(folder), first)
        self.assertEqual(os.listdir(folder), [FOLDER_ID])
        service = FileService(folder, run_inline)
        service.startService()
        self.assertEqual(service.list(), [])
        with open(os.path.join(folder, FOLDER_ID), "w") as f:
            f.write("not an id\n")
        with self.assertRaises(ValueError):
            folder_id(folder)


class SharedSessionTests(FileConnectionMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = self.mktemp()
        self.service = FileService(self.folder, run_inline)
        self.service.startService()
        self.directory = MemoryFileDirectory()
        self.shared = SharedFiles(self.service, self.directory,  # type: ignore[arg-type]
                                  NoDaemons(), Clock())  # type: ignore[arg-type]
        auth = TokenAuthenticator.from_roles(parse_roles(json.dumps(ROLES)))
        auth.add_daemon_token(DAEMON_TOKEN, DAEMON_GRANT)
        state = ServerState(MemoryStore(), auth, files=self.service)
        state.file_sessions = self.shared.session  # type: ignore[method-assign,assignment]
        self.factory = LTtxFactory(state)

    def stored(self, name: str, data: bytes, mtime: float = 1000.0) -> None:
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (mtime, mtime))

    def test_list_is_the_directory_filtered_by_rights(self) -> None:
        """Every daemon's files with md5 and holder; a token sees only what it may download."""
        self.directory.entries_by_name = {
            "report_1.csv": Entry(A, 6, "b1946ac92492d2347c6235b4d2611184", 1796000000.5),
            "secret.bin": Entry(ME, 3, None, 5.0)}
        proto, transport = self.connect("tok-reports")
        self.assertEqual(self.request(proto, transport, 8, "list"), [[R, 8, [
            {"name": "report_1.csv", "size": 6, "mtime": 1796000000.5,
             "md5": "b1946ac92492d2347c6235b4d2611184", "holder": A}]]])

    def test_holder_down_is_unavailable_naming_it(self) -> None:
        """Download and delete of a file whose holder is not in the daemon directory."""
        self.directory.entries_by_name["a.txt"] = Entry(A, 6, None, 1.0)
        proto, transport = self.connect()
        message = (f"a.txt is held by the daemon of files folder {A}, which is down "
                   "(not in the daemon directory)")
        self.assertEqual(self.request(proto, transport, 5, "download", "a.txt", 0, None),
                         [[E, 5, "unavailable", message]])
        self.assertEqual(self.request(proto, transport, 6, "delete", "a.txt"),
                         [[E, 6, "unavailable", message]])
        # The connection goes on: the next transfer starts as usual.
        self.assertEqual(self.request(proto, transport, 7, "download", "none", 0, None),
                         [[E, 7, "not_found", "no file named none"]])

    def test_redis_away_list_and_download_are_unavailable(self) -> None:
        self.stored("here.txt", b"x")
        self.directory.down = True
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 2, "list"),
                         [[E, 2, "unavailable", "Redis (redis://x) is unavailable"]])
        self.assertEqual(self.request(proto, transport, 3, "download", "here.txt", 0, None),
                         [[E, 3, "unavailable", "Redis (redis://x) is unavailable"]])

    def test_file_held_here_is_served_here(self) -> None:
        """A download of a file the directory says this daemon holds: from disk, as on one."""
        self.stored("a.txt", b"hello\n")
        self.directory.entries_by_name["a.txt"] = Entry(ME, 6, None, 1000.0)
        proto, transport = self.connect()
        self.assertEqual(
            self.request(proto, transport, 5, "download", "a.txt", 0, None)[0],
            [R, 5, {"name": "a.txt", "size": 6, "offset": 0}])

    def test_superseded_between_daemons_only(self) -> None:
        """superseded: bad_request for a client; for a daemon, the copy goes if the entry
        names a copy elsewhere completed no earlier, and stays otherwise."""
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 2, "superseded", "a.txt"),
                         [[E, 2, "bad_request", "superseded is a request between daemons"]])
        self.stored("a.txt", b"old", mtime=1000.0)
        self.stored("b.txt", b"new", mtime=3000.0)
        self.directory.entries_by_name = {"a.txt": Entry(A, 5, None, 2000.0),
                                          "b.txt": Entry(A, 5, None, 2000.0)}
        proto, transport = self.connect(DAEMON_TOKEN)
        self.assertEqual(self.request(proto, transport, 2, "superseded", "a.txt"),
                         [[R, 2, True]])
        self.assertEqual(self.request(proto, transport, 3, "superseded", "b.txt"),
                         [[R, 3, False]])
        self.assertEqual(sorted(n for n in os.listdir(self.folder) if n[0] != "."),
                         ["b.txt"])

    def test_daemon_connection_gets_this_daemons_files_only(self) -> None:
        """Another daemon's connection lists the folder, not the directory, and may not
        read variables (it is a file connection only)."""
        self.stored("local.txt", b"abc")
        self.directory.entries_by_name["remote.txt"] = Entry(A, 1, None, 1.0)
        proto, transport = self.connect(DAEMON_TOKEN)
        self.assertEqual([f["name"] for f in self.request(proto, transport, 2, "list")[0][2]],
                         ["local.txt"])
        self.assertEqual(self.request(proto, transport, 3, "download", "remote.txt", 0, None),
                         [[E, 3, "not_found", "no file named remote.txt"]])
        self.assertIsNone(self.factory.state.auth.authenticate(DAEMON_TOKEN + "x"))
        self.assertIs(self.factory.state.auth.authenticate(DAEMON_TOKEN), DAEMON_GRANT)
        self.assertFalse(DAEMON_GRANT.allows("read", "pos"))

    def test_upload_is_listed_when_it_completes(self) -> None:
        """upload_end: the file is in place, then its entry names this daemon with its MD5."""
        proto, transport = self.connect()
        data = b"hello\n"
        md5 = hashlib.md5(data).hexdigest()
        self.request(proto, transport, 2, "upload", "a.txt", 6, 0, None)
        proto.dataReceived(PREFIX.pack(6) + data)
        self.assertEqual(self.request(proto, transport, 3, "upload_end", md5),
                         [[R, 3, {"name": "a.txt", "size": 6, "md5": md5}]])
        entry = self.directory.entries_by_name["a.txt"]
        self.assertEqual((entry.holder, entry.size, entry.md5), (ME, 6, md5))
        self.assertEqual(entry.mtime, os.stat(os.path.join(self.folder, "a.txt")).st_mtime)


class RelayTests(FileConnectionMixin, SynchronousTestCase):
    """A download of a file another daemon holds, relayed: the other daemon's side is a
    PeerFileProtocol on a StringTransport, the client's a StringTransport."""

    def setUp(self) -> None:
        from lttx.server.peer_files import PeerFileProtocol

        self.folder = self.mktemp()
        self.service = FileService(self.folder, run_inline)
        self.service.startService()
        self.directory = MemoryFileDirectory()
        self.directory.entries_by_name["big.bin"] = Entry(A, 10, None, 1.0)
        self.peer = PeerFileProtocol("tok", "daemon X (h, 10.0.0.1:2025; files folder A)",
                                     Clock())
        self.peer_transport = StringTransport()
        self.peer.makeConnection(self.peer_transport)
        self.peer.dataReceived(frame([R, 0, {"server": "lttx"}]))  # its hello reply
        self.peer_transport.clear()
        shared = SharedFiles(self.service, self.directory,  # type: ignore[arg-type]
                             NoDaemons(), Clock())  # type: ignore[arg-type]
        shared.connect = lambda name, entry: succeed(self.peer)  # type: ignore[method-assign]
        state = ServerState(MemoryStore(), TokenAuthenticator(TOKEN), files=self.service)
        state.file_sessions = shared.session  # type: ignore[method-assign,assignment]
        self.factory = LTtxFactory(state)

    def test_relayed_frames_flow_control_and_md5_from_the_holder(self) -> None:
        """The client gets the holder's header and its raw frames as they come; while
        they stream the holder's connection is the producer of the client's (a full
        client buffer pauses the reading from the holder); download_end goes on to the
        holder, whose reply (or checksum error) the client gets."""
        proto, transport = self.connect()
        transport.clear()
        proto.dataReceived(frame([codec.REQUEST, 5, "download", ["big.bin", 4, "p"]]))
        self.assertEqual(frames_of(self.peer_transport.value()),
                         [[codec.REQUEST, 1, "download", ["big.bin", 4, "p"]]])
        self.assertEqual(transport.value(), b"")  # nothing before the holder's header
        self.peer.dataReceived(frame([R, 1, {"name": "big.bin", "size": 10, "offset": 4}])
                               + PREFIX.pack(2) + b"ef")
        self.assertEqual(transport.value(),
                         frame([R, 5, {"name": "big.bin", "size": 10, "offset": 4}])
                         + PREFIX.pack(2) + b"ef")
        self.assertIs(transport.producer, self.peer_transport)
        self.assertTrue(transport.streaming)
        transport.producer.pauseProducing()  # the client's buffer is full
        self.assertEqual(self.peer_transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.peer.dataReceived(PREFIX.pack(4) + b"ghij")
        self.assertIsNone(transport.producer)  # the data is through: unregistered
        self.assertEqual(self.peer_transport.producerState, "producing")
        transport.clear()
        self.peer_transport.clear()
        proto.dataReceived(frame([codec.REQUEST, 6, "download_end", ["m" * 32]]))
        self.assertEqual(frames_of(self.peer_transport.value()),
                         [[codec.REQUEST, 2, "download_end", ["m" * 32]]])
        self.peer.dataReceived(frame([E, 2, "checksum", "big.bin: the daemon sent MD5 x, "
                                                        "the client computed m"]))
        self.assertEqual(frames_of(transport.value()), [
            [E, 6, "checksum", "big.bin: the daemon sent MD5 x, the client computed m"]])
        self.assertTrue(self.peer_transport.disconnecting)  # closed after the transfer

    def test_client_gone_mid_relay_closes_the_holders_connection(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(frame([codec.REQUEST, 5, "download", ["big.bin", 0, None]]))
        self.peer.dataReceived(frame([R, 1, {"name": "big.bin", "size": 10, "offset": 0}])
                               + PREFIX.pack(3) + b"abc")
        proto.connectionLost()
        self.assertTrue(self.peer_transport.disconnecting)
