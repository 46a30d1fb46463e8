"""
A file connection's session through the daemon's protocol on a StringTransport:
its rights (exact frames), its errors and their log lines.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lttx.diskio import run_inline
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.server.file_session import IFileConnection
from lttx.server.files import FileService
from lttx.state.auth import TokenAuthenticator, parse_roles
from lttx.state.store import MemoryStore
from lttx.wire import codec

from ..common import TOKEN, frame, frames_of

R, E = codec.REPLY, codec.ERROR

ROLES = {"tokens": [
    {"name": "files", "token": "tok-files", "rights": ["upload:report_*", "download:report_*"]},
    {"name": "reader", "token": "tok-reader", "rights": ["read"]},
    {"name": "admin", "token": TOKEN, "rights": ["all"]},
]}


class BuggyFileService(FileService):
    """A file service whose listing fails the first time, as a bug would."""

    broken = True

    def list(self) -> list[dict[str, Any]]:
        if self.broken:
            self.broken = False
            raise ZeroDivisionError("bug")
        return super().list()


class FileConnectionMixin:
    """File connections through ``self.factory``'s protocol on StringTransports."""

    factory: Any

    def connect(self, token: str = TOKEN) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        proto = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [token, {"mode": "file"}]]))
        assert frames_of(transport.value())[0][:2] == [R, 0], transport.value()
        transport.clear()
        return proto, transport

    def request(self, proto: Any, transport: StringTransport, request_id: int,
                command: str, *args: Any) -> list[Any]:
        transport.clear()
        proto.dataReceived(frame([codec.REQUEST, request_id, command, list(args)]))
        return frames_of(transport.value())


class FileSessionTestCase(FileConnectionMixin, SynchronousTestCase):

    service_class = FileService

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.service = self.service_class(self.directory, run_inline)
        self.service.startService()
        for name in ("report_1.csv", "secret.csv"):
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(b"1,2\n")
        auth = TokenAuthenticator.from_roles(parse_roles(json.dumps(ROLES)))
        self.factory = LTtxFactory(ServerState(MemoryStore(), auth, files=self.service))
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)


class FileConnectionTests(FileSessionTestCase):

    def test_protocol_provides_the_file_connection(self) -> None:
        """The session needs of the protocol only what IFileConnection names."""
        proto, _ = self.connect()
        verifyObject(IFileConnection, proto)

    def test_unknown_command_and_arity(self) -> None:
        """The same texts as on a command connection; the connection stays."""
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 1, "put", "x", 1),
                         [[E, 1, "bad_request", "unknown command 'put'"]])
        self.assertEqual(self.request(proto, transport, 2, "upload", "x"),
                         [[E, 2, "bad_request", "upload takes 2 to 4 arguments, not 1"]])
        self.assertEqual(self.request(proto, transport, 3, "list"),
                         [[R, 3, [f for f in self.service.list()]]])
        self.assertFalse(transport.disconnecting)

    def test_refused_file_command_logs_the_reason(self) -> None:
        """A refusal is one log line whose reason is the error text (not a field message)."""
        proto, transport = self.connect()
        self.request(proto, transport, 1, "download", "nothing", 0, None)
        [event] = [e for e in self.events if "refused" in e["log_format"]]
        self.assertEqual(event["reason"], "no file named nothing")
        self.assertEqual((event["command"], event["code"]), ("download", "not_found"))
        # trial's legacy observer sets "message" to () in every event: the text is not there.
        self.assertNotIn("{message}", event["log_format"])
        self.assertEqual(formatEvent(event), "127.0.0.1:40000: 'download' refused: "
                                             "not_found: no file named nothing")

    def test_refused_frame_logs_the_reason(self) -> None:
        """A frame that is not a request is refused with a nil id and one log line."""
        proto, transport = self.connect()
        proto.dataReceived(frame([codec.PUBLISH, "hq", "k", 1]))
        text = "a file connection takes request frames [0, id, command, args]"
        self.assertEqual(frames_of(transport.value()), [[E, None, "bad_request", text]])
        [event] = [e for e in self.events if "refused" in e["log_format"]]
        self.assertEqual(event["reason"], text)


class BuggyServiceTests(FileSessionTestCase):

    service_class = BuggyFileService

    def test_unexpected_exception_is_internal_and_serving_goes_on(self) -> None:
        """A bug in a file handler: internal for that request, logged; the next is served."""
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 1, "list"),
                         [[E, 1, "internal", "list failed in the daemon"]])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue([e for e in self.events if e.get("log_failure")])
        self.assertFalse(transport.disconnecting)
        [[kind, request_id, listed]] = self.request(proto, transport, 2, "list")
        self.assertEqual((kind, request_id), (R, 2))
        self.assertEqual([f["name"] for f in listed], ["report_1.csv", "secret.csv"])


class FileRightsTests(FileSessionTestCase):
    """Each file command needs its right on the file it names, exactly."""

    def test_list_needs_download_and_shows_only_allowed_names(self) -> None:
        proto, transport = self.connect("tok-files")
        [[kind, _, listed]] = self.request(proto, transport, 1, "list")
        self.assertEqual((kind, [f["name"] for f in listed]), (R, ["report_1.csv"]))
        proto, transport = self.connect("tok-reader")
        self.assertEqual(self.request(proto, transport, 2, "list"), [
            [E, 2, "forbidden", "the token 'reader' may not download anything"]])

    def test_each_command_needs_its_right_on_the_name(self) -> None:
        """upload, partial and delete need upload; download needs download."""
        proto, transport = self.connect("tok-files")
        for request_id, (command, args, action) in enumerate([
                ("upload", ["secret.csv", 4, 0, None], "upload"),
                ("partial", ["secret.csv"], "upload"),
                ("delete", ["secret.csv"], "upload"),
                ("download", ["secret.csv", 0, None], "download")], 1):
            self.assertEqual(self.request(proto, transport, request_id, command, *args), [
                [E, request_id, "forbidden",
                 f"the token 'files' may not {action} 'secret.csv'"]], command)
        self.assertEqual(self.request(proto, transport, 5, "partial", "report_1.csv"),
                         [[R, 5, {"offset": 0}]])
        self.assertEqual(self.request(proto, transport, 6, "delete", "report_1.csv"),
                         [[R, 6, True]])
        self.assertEqual(sorted(os.listdir(self.directory)), [".partial", "secret.csv"])

    def test_hostile_name_is_a_bad_file_name_before_rights(self) -> None:
        """upload, partial and download check the name before the token's right."""
        proto, transport = self.connect("tok-files")
        for request_id, (command, args) in enumerate([
                ("upload", ["../x", 4, 0, None]), ("partial", ["../x"]),
                ("download", ["../x", 0, None])], 1):
            [reply] = self.request(proto, transport, request_id, command, *args)
            self.assertEqual(reply[:3], [E, request_id, "bad_file_name"], command)


class ScansOffTheReactorTests(FileSessionTestCase):
    """Issue 19, finding 3: list and status scan the folder in the I/O thread."""

    def setUp(self) -> None:
        super().setUp()
        self.waiting: list[tuple[Any, Deferred[Any]]] = []

        def later(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.waiting.append((lambda: f(*args), d))
            return d
        self.service.run_in_thread = later

    def run_waiting(self) -> None:
        while self.waiting:
            f, d = self.waiting.pop(0)
            d.callback(f())

    def test_list_and_status_wait_for_the_io_thread(self) -> None:
        """Neither list nor status answers before the scan handed to the I/O
        thread has run: the reactor never scans the folder itself."""
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 1, "list"), [])
        self.assertEqual(len(self.waiting), 1)
        self.run_waiting()
        [[kind, _, files]] = frames_of(transport.value())
        self.assertEqual((kind, [f["name"] for f in files]), (R, ["report_1.csv", "secret.csv"]))
        status = self.factory.state.status()
        self.assertIsInstance(status, Deferred)
        self.run_waiting()
        self.assertEqual(self.successResultOf(status)["files"]["files"], 2)
