"""
What a hostile or clumsy file client can no longer do (issue 19, findings 11
and 12): follow or plant links in the files folder, use names that forge
lines or reorder what is shown, store two files under one visible name, or
hold a name by going silent.  Driven through the daemon's protocol on a
StringTransport, with exact frames and a Clock.
"""

from __future__ import annotations

import hashlib
import os
import struct
import unicodedata
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.diskio import run_inline
from lttx.errors import BadFileName
from lttx.server.factory import LTtxFactory
from lttx.server.files import IDLE_TIMEOUT, FileService
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.names import check_file_name, printable

from ..common import TOKEN, frame
from .test_file_session import FileConnectionMixin

R, E = codec.REPLY, codec.ERROR

#: Names that would forge a listing line, drive the terminal, or hide their
#: real order (Trojan Source): all refused.
DECEPTIVE = ["a\nb", "a\rb", "tab\tname", "\x1b[31mred", "del\x7f", "c1\x85",
             "invoice\u202efdp.exe", "iso\u2066late", "mark\u200f", "\ufeffbom.txt",
             "alm\u061c"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def raw(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


class NameRuleTests(SynchronousTestCase):
    def test_deceptive_names_are_refused(self) -> None:
        """Control, bidi-override and invisible formatting characters: BadFileName, named."""
        for name in DECEPTIVE:
            with self.assertRaises(BadFileName) as caught:
                check_file_name(name)
            self.assertIn("U+", caught.exception.message)
            self.assertNotIn("\n", caught.exception.message)

    def test_names_are_compared_in_nfc(self) -> None:
        """'café' typed with a combining accent is the same name as the composed one."""
        decomposed = unicodedata.normalize("NFD", "café.txt")
        self.assertNotEqual(decomposed, "café.txt")
        self.assertEqual(check_file_name(decomposed), "café.txt")

    @given(st.text(min_size=1, max_size=40))
    def test_printable_never_prints_a_control_or_bidi_character(self, text: str) -> None:
        """printable() output has no character a terminal would act on."""
        shown = printable(text)
        for char in shown:
            self.assertTrue(char.isprintable() and unicodedata.category(char) != "Cf",
                            repr(shown))


class FileFolderTestCase(FileConnectionMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.realpath(self.mktemp())
        self.outside = os.path.realpath(self.mktemp())
        os.makedirs(self.outside)
        self.clock = Clock()
        self.service = FileService(self.directory, run_inline, clock=self.clock)
        self.service.startService()
        self.factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN),
                                               files=self.service, clock=self.clock))

    def upload(self, name: str, data: bytes) -> list[Any]:
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 1, "upload", name, len(data), 0, None),
                         [[R, 1, {"offset": 0}]])
        proto.dataReceived(raw(data))
        return self.request(proto, transport, 2, "upload_end", md5(data))


class LinkTests(FileFolderTestCase):
    def test_a_link_in_the_files_folder_is_not_followed(self) -> None:
        """A symlink to a file outside is neither listed nor served: not_found."""
        secret = os.path.join(self.outside, "passwd")
        with open(secret, "wb") as f:
            f.write(b"root:x:0:0\n")
        os.symlink(secret, os.path.join(self.directory, "passwd"))
        proto, transport = self.connect()
        self.assertEqual(self.request(proto, transport, 1, "list"), [[R, 1, []]])
        self.assertEqual(self.request(proto, transport, 2, "download", "passwd", 0, None),
                         [[E, 2, "not_found", "no file named passwd"]])

    def test_a_link_planted_as_a_partial_is_not_written_through(self) -> None:
        """An upload whose partial is a link to a file outside writes a fresh partial:
        the outside file is untouched and the upload lands in the folder."""
        victim = os.path.join(self.outside, "victim")
        with open(victim, "wb") as f:
            f.write(b"precious")
        os.symlink(victim, os.path.join(self.service.partial_directory, "up.bin"))
        [reply] = self.upload("up.bin", b"new bytes")
        self.assertEqual(reply[:2], [R, 2])
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        with open(os.path.join(self.directory, "up.bin"), "rb") as f:
            self.assertEqual(f.read(), b"new bytes")

    def test_a_partial_folder_replaced_by_a_link_is_refused(self) -> None:
        """.partial turned into a link to another folder: the upload is refused with
        storage_error and nothing is written outside."""
        partial = self.service.partial_directory
        os.rmdir(partial)
        os.symlink(self.outside, partial)
        proto, transport = self.connect()
        [error] = self.request(proto, transport, 1, "upload", "x.bin", 3, 0, None)
        self.assertEqual(error[:3], [E, 1, "storage"])
        self.assertIn("outside", error[3])
        self.assertEqual(os.listdir(self.outside), [])

    def test_nfc_and_nfd_names_are_one_file(self) -> None:
        """Uploaded as NFD 'café.txt', the file is found as NFC and listed once."""
        [reply] = self.upload(unicodedata.normalize("NFD", "café.txt"), b"menu")
        self.assertEqual(reply[2]["name"], "café.txt")
        proto, transport = self.connect()
        [[_, _, listing]] = self.request(proto, transport, 1, "list")
        self.assertEqual([f["name"] for f in listing], ["café.txt"])
        [[kind, _, header]] = self.request(proto, transport, 2, "download", "café.txt", 0, None)[:1]
        self.assertEqual((kind, header["size"]), (R, 4))

    def test_names_the_rules_refuse_are_not_listed(self) -> None:
        """A file put in the folder by other means with a forged-line name is not listed."""
        with open(os.path.join(self.directory, "a\nfake  line"), "wb") as f:
            f.write(b"x")
        with open(os.path.join(self.directory, "ok.txt"), "wb") as f:
            f.write(b"x")
        proto, transport = self.connect()
        [[_, _, listing]] = self.request(proto, transport, 1, "list")
        self.assertEqual([f["name"] for f in listing], ["ok.txt"])


class SilentPeerTests(FileFolderTestCase):
    def test_a_silent_uploader_is_closed_and_frees_the_name(self) -> None:
        """An upload that stops sending is aborted after the idle timeout; the name is
        free again and the partial is kept for a resume."""
        proto, transport = self.connect()
        self.request(proto, transport, 1, "upload", "big.bin", 1000, 0, None)
        proto.dataReceived(raw(b"a" * 400))
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(raw(b"b" * 100))  # progress: the clock starts again
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)  # aborted
        proto.connectionLost(None)
        self.assertEqual(self.service.uploading, set())
        other, other_transport = self.connect()
        self.assertEqual(self.request(other, other_transport, 2, "partial", "big.bin"),
                         [[R, 2, {"offset": 500}]])

    def test_a_short_upload_gets_no_reply_but_is_closed(self) -> None:
        """A client that announces 1000 bytes, sends 4 and then upload_end: the request
        is taken as data (the stream cannot tell), and the idle timeout ends it."""
        proto, transport = self.connect()
        self.request(proto, transport, 1, "upload", "s.bin", 1000, 0, None)
        proto.dataReceived(raw(b"abcd"))
        transport.clear()
        proto.dataReceived(frame([codec.REQUEST, 2, "upload_end", [md5(b"abcd")]]))
        self.assertEqual(transport.value(), b"")
        self.clock.advance(IDLE_TIMEOUT + 1)
        self.assertTrue(transport.disconnected)

    def test_an_idle_file_connection_is_closed(self) -> None:
        """A file connection that never asks for anything is closed after the timeout."""
        _, transport = self.connect()
        self.clock.advance(IDLE_TIMEOUT + 1)
        self.assertTrue(transport.disconnected)
