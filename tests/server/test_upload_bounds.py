"""
What uploads may take of the disk (issue 19 finding 5,
:mod:`lttx.server.upload_bounds`): the free-space reserve for the journal,
partial uploads per host or per token, abandoned partials removed within a
day.  Through the daemon's protocol on StringTransports, exact error frames,
a free-space function of the test's own and a Clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx.diskio import run_inline
from lttx.server.factory import LTtxFactory
from lttx.server.files import FileService
from lttx.server.state import ServerState
from lttx.server.upload_bounds import PARTIAL_MAX_AGE, UploadBounds
from lttx.state.auth import TokenAuthenticator, parse_roles
from lttx.state.store import MemoryStore
from lttx.wire import codec

from ..common import TOKEN, frame, frames_of

R, E = codec.REPLY, codec.ERROR
KiB = 1024
MiB = 1024 * KiB
ROLES = {"tokens": [{"name": "reports", "token": "tok-reports", "rights": ["upload:report_*"]},
                    {"name": "ops", "token": "tok-ops", "rights": ["all"]}]}


def raw(data: bytes) -> bytes:
    """A data frame of an upload."""
    return struct.pack("!I", len(data)) + data


class UploadBoundsTestCase(SynchronousTestCase):
    """A file service whose disk has ``self.free`` bytes free."""

    per_token = False

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.free = 100 * MiB
        self.clock = Clock()
        self.bounds = UploadBounds(reserve=10 * MiB, max_partials=2,
                                   max_partial_bytes=30 * MiB,
                                   free_space=lambda path: self.free)
        self.service = FileService(self.directory, run_inline, clock=self.clock,
                                   bounds=self.bounds, per_token=self.per_token)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        auth = (TokenAuthenticator.from_roles(parse_roles(json.dumps(ROLES)))
                if self.per_token else TokenAuthenticator(TOKEN))
        self.factory = LTtxFactory(ServerState(MemoryStore(), auth, files=self.service,
                                               clock=self.clock))

    def connect(self, host: str = "10.0.0.1", token: str = TOKEN) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", host, 40000)
        proto = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [token, {"mode": "file"}]]))
        assert frames_of(transport.value())[0][:2] == [R, 0], transport.value()
        transport.clear()
        return proto, transport

    def upload(self, proto: Any, transport: StringTransport, name: str, size: int,
               offset: int = 0) -> list[Any]:
        """An upload request; from ``offset``, it resumes a partial of that many x bytes."""
        transport.clear()
        prefix = hashlib.md5(b"x" * offset).hexdigest() if offset else None
        proto.dataReceived(frame([codec.REQUEST, 1, "upload", [name, size, offset, prefix]]))
        return frames_of(transport.value())

    def abandon(self, name: str, size: int, host: str = "10.0.0.1",
                token: str = TOKEN) -> None:
        """Start an upload of ``name``, send 1 KiB of it, vanish: a partial is left."""
        proto, transport = self.connect(host, token)
        self.assertEqual(self.upload(proto, transport, name, size), [[R, 1, {"offset": 0}]])
        proto.dataReceived(raw(b"x" * KiB))
        proto.connectionLost(None)


class ReserveTests(UploadBoundsTestCase):

    def test_an_upload_may_not_take_the_journals_reserve(self) -> None:
        """An upload that would leave less than --disk-reserve free is refused with a
        storage error naming the option; one that leaves it is accepted; uploads in
        flight count for what they will still write."""
        self.bounds.max_partial_bytes = 0
        proto, transport = self.connect()
        self.assertEqual(self.upload(proto, transport, "big.bin", 91 * MiB), [
            [E, 1, "storage", f"an upload of {91 * MiB} more bytes would leave {9 * MiB} "
             f"bytes free, under the daemon's --disk-reserve of {10 * MiB} bytes kept "
             "for its journal"]])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.upload(proto, transport, "a.bin", 60 * MiB),
                         [[R, 1, {"offset": 0}]])
        other, other_transport = self.connect("10.0.0.2")
        # 60 MiB still to come on the first upload: 30 MiB more would eat the reserve.
        [[kind, _, code, message]] = self.upload(other, other_transport, "b.bin", 35 * MiB)
        self.assertEqual((kind, code), (E, "storage"))
        self.assertIn("--disk-reserve", message)
        self.assertEqual(self.upload(other, other_transport, "b.bin", 30 * MiB),
                         [[R, 1, {"offset": 0}]])
        self.assertEqual(self.bounds.refused, 2)

    def test_a_resume_needs_room_for_the_rest_only(self) -> None:
        """A resumed upload reserves the bytes it still has to write, not its whole size."""
        self.abandon("r.bin", 20 * MiB)
        self.free = 10 * MiB + 20 * MiB - 1  # the whole file would not fit above the reserve
        proto, transport = self.connect()
        [[kind, _, code, _]] = self.upload(proto, transport, "r.bin", 20 * MiB, 0)
        self.assertEqual((kind, code), (E, "storage"))
        self.assertEqual(self.upload(proto, transport, "r.bin", 20 * MiB, KiB),
                         [[R, 1, {"offset": KiB}]])


class PartialsPerHostTests(UploadBoundsTestCase):

    def test_a_host_holds_at_most_max_partials(self) -> None:
        """Past --max-partials abandoned uploads a host is refused with `limit`; it may
        still resume its own; another host is not affected; a finished upload frees
        its place."""
        self.abandon("p1.bin", 5 * MiB)
        self.abandon("p2.bin", 5 * MiB)
        proto, transport = self.connect()
        self.assertEqual(self.upload(proto, transport, "p3.bin", KiB), [
            [E, 1, "limit", "host 10.0.0.1 holds 2 partial uploads, the daemon's "
             "--max-partials: finish or resume one (partials untouched for 24 h are "
             "removed)"]])
        self.assertEqual(self.upload(proto, transport, "p1.bin", 5 * MiB, KiB),
                         [[R, 1, {"offset": KiB}]])
        other, other_transport = self.connect("10.0.0.2")
        self.assertEqual(self.upload(other, other_transport, "q.bin", KiB),
                         [[R, 1, {"offset": 0}]])
        # p1 finished: the first host may start another.
        proto.dataReceived(raw(b"x" * (5 * MiB - KiB)))
        transport.clear()
        md5 = hashlib.md5(b"x" * (5 * MiB)).hexdigest()
        proto.dataReceived(frame([codec.REQUEST, 2, "upload_end", [md5]]))
        [[kind, _, kept]] = frames_of(transport.value())
        self.assertEqual((kind, kept["name"]), (R, "p1.bin"))
        fresh, fresh_transport = self.connect()
        self.assertEqual(self.upload(fresh, fresh_transport, "p3.bin", KiB),
                         [[R, 1, {"offset": 0}]])

    def test_a_host_declares_at_most_max_partial_bytes(self) -> None:
        """The declared sizes of a host's partials are bounded by --max-partial-bytes."""
        self.abandon("p1.bin", 20 * MiB)
        proto, transport = self.connect()
        self.assertEqual(self.upload(proto, transport, "p2.bin", 11 * MiB), [
            [E, 1, "limit", f"host 10.0.0.1's partial uploads would declare {31 * MiB} "
             f"bytes, over the daemon's --max-partial-bytes of {30 * MiB}"]])
        self.assertEqual(self.upload(proto, transport, "p2.bin", 10 * MiB),
                         [[R, 1, {"offset": 0}]])


class PartialsPerTokenTests(UploadBoundsTestCase):
    per_token = True

    def test_under_roles_partials_are_counted_per_token(self) -> None:
        """With a roles file, the bound is the token's, whatever host it comes from:
        a token with only upload:report_* cannot take the places of another."""
        self.abandon("report_1", MiB, "10.0.0.1", "tok-reports")
        self.abandon("report_2", MiB, "10.0.0.2", "tok-reports")
        proto, transport = self.connect("10.0.0.3", "tok-reports")
        [[kind, _, code, message]] = self.upload(proto, transport, "report_3", MiB)
        self.assertEqual((kind, code), (E, "limit"))
        self.assertTrue(message.startswith("token reports holds 2 partial uploads"), message)
        ops, ops_transport = self.connect("10.0.0.3", "tok-ops")
        self.assertEqual(self.upload(ops, ops_transport, "report_3", MiB),
                         [[R, 1, {"offset": 0}]])


class StalePartialSweepTests(UploadBoundsTestCase):

    def test_abandoned_partials_go_within_a_day_while_running(self) -> None:
        """The hourly sweep removes partials untouched for 24 h (not only at start),
        in the I/O thread, and their owner's places are freed."""
        self.abandon("old.bin", MiB)
        self.abandon("new.bin", MiB)
        partials = os.path.join(self.directory, ".partial")
        past = time.time() - PARTIAL_MAX_AGE - 60
        os.utime(os.path.join(partials, "old.bin"), (past, past))
        self.successResultOf(self.service.sweep_stale())  # makeService: every hour
        self.clock.advance(0)
        self.assertEqual(os.listdir(partials), ["new.bin"])
        self.assertEqual(sorted(self.bounds.partials), ["new.bin"])
        proto, transport = self.connect()
        self.assertEqual(self.upload(proto, transport, "third.bin", KiB),
                         [[R, 1, {"offset": 0}]])


class UndeclaredSizeTests(SynchronousTestCase):
    """The legacy port's uploads declare no size: the reserve is checked as data comes."""

    def test_room_is_refused_under_the_reserve(self) -> None:
        free = [100 * MiB]
        bounds = UploadBounds(reserve=10 * MiB, free_space=lambda path: free[0])
        self.assertIsNone(bounds.room("/data", 90 * MiB))
        self.assertEqual(bounds.room("/data", 90 * MiB + 1),
                         f"writing {90 * MiB + 1} more bytes would leave {10 * MiB - 1} bytes "
                         f"free, under the daemon's --disk-reserve of {10 * MiB} bytes kept "
                         "for its journal")
        free[0] = 5 * MiB
        self.assertIsNotNone(bounds.room("/data", 0))
        self.assertIsNone(UploadBounds(reserve=0, free_space=lambda path: 0).room("/d", 1))
        self.assertEqual(bounds.refused, 2)
