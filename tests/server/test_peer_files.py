"""
A daemon's file connection to another daemon (lttx.server.peer_files), on a
StringTransport: the exact frames it sends, raw data to the sink split at
awkward points, typed errors, a peer that goes silent or away.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import NotFound, Unavailable
from lttx.server.peer_files import (
    CONNECT_TIMEOUT,
    REPLY_TIMEOUT,
    PeerFileProtocol,
    split_address,
)
from lttx.wire.frames import PREFIX

from ..common import frame, frames_of


def connected() -> tuple[PeerFileProtocol, StringTransport, Clock]:
    clock = Clock()
    protocol = PeerFileProtocol("tok", "daemon A", clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


class PeerFileProtocolTests(SynchronousTestCase):
    def test_hello_then_a_download_to_the_sink(self) -> None:
        """hello with the files token and mode file; the download reply's size minus
        offset raw bytes go to the sink, fed one byte at a time, then the data end."""
        protocol, transport, _ = connected()
        self.assertEqual(frames_of(transport.value()), [
            [0, 0, "hello", ["tok", {"mode": "file", "client": "lttx-daemon"}]]])
        transport.clear()
        received: list[bytes] = []
        ended: list[bool] = []
        protocol.sink = received.append
        protocol.on_data_end = lambda: ended.append(True)
        protocol.dataReceived(frame([1, 0, {"server": "lttx"}]))
        self.assertEqual(self.successResultOf(protocol.hello), {"server": "lttx"})
        header = protocol.request("download", "f.bin", 2, "abc", data_follows=True)
        self.assertEqual(frames_of(transport.value()), [[0, 1, "download", ["f.bin", 2, "abc"]]])
        wire = (frame([1, 1, {"name": "f.bin", "size": 7, "offset": 2}])
                + PREFIX.pack(3) + b"cde" + PREFIX.pack(2) + b"fg"
                + frame([1, 2, {"md5": "x"}]))
        end = protocol.request("download_end", "x")
        for i in range(len(wire)):
            protocol.dataReceived(wire[i:i + 1])
        self.assertEqual(self.successResultOf(header)["size"], 7)
        self.assertEqual(b"".join(received), b"cdefg")
        self.assertEqual(ended, [True])
        self.assertEqual(self.successResultOf(end), {"md5": "x"})

    def test_error_reply_is_the_typed_error(self) -> None:
        protocol, _, _ = connected()
        d = protocol.request("download", "gone", 0, None, data_follows=True)
        protocol.dataReceived(frame([1, 0, {}]) + frame([2, 1, "not_found", "no file named gone"]))
        self.assertIsInstance(self.failureResultOf(d).value, NotFound)

    def test_lost_connection_fails_what_waits_naming_the_daemon(self) -> None:
        protocol, _, _ = connected()
        d = protocol.request("delete", "f")
        protocol.connectionLost()
        self.failureResultOf(protocol.hello, Unavailable)  # it never answered hello either
        error = self.failureResultOf(d, Unavailable).value
        self.assertIn("daemon A", str(error))
        self.assertTrue(protocol.lost.called)
        self.assertIsInstance(self.failureResultOf(protocol.request("list")).value, Unavailable)

    def test_silent_daemon_times_out(self) -> None:
        """No hello reply within the connect timeout, no reply within the reply timeout:
        Unavailable, and the connection is aborted."""
        protocol, transport, clock = connected()
        clock.advance(CONNECT_TIMEOUT)
        self.assertIn("no answer to hello", str(self.failureResultOf(protocol.hello).value))
        self.assertTrue(transport.disconnecting)
        protocol, transport, clock = connected()
        protocol.dataReceived(frame([1, 0, {}]))
        d = protocol.request("delete", "f")
        clock.advance(REPLY_TIMEOUT - 1)
        self.assertNoResult(d)
        clock.advance(1)
        self.failureResultOf(d, Unavailable)

    def test_more_data_than_announced_breaks_the_connection(self) -> None:
        protocol, transport, _ = connected()
        protocol.sink = lambda data: None
        protocol.dataReceived(frame([1, 0, {}]))
        d = protocol.request("download", "f", 0, None, data_follows=True)
        after = protocol.request("download_end", "m")
        protocol.dataReceived(frame([1, 1, {"size": 2, "offset": 0}]) + PREFIX.pack(3) + b"abc")
        self.successResultOf(d)
        self.assertIn("more file data", str(self.failureResultOf(after).value))


class SplitAddressTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        """IPv4, bracketed IPv6, and a wildcard reached at the daemon's host name."""
        self.assertEqual(split_address("127.0.0.1:7001", "h"), ("127.0.0.1", 7001))
        self.assertEqual(split_address("[::1]:7001", "h"), ("::1", 7001))
        self.assertEqual(split_address("0.0.0.0:7001", "box1"), ("box1", 7001))
        self.assertEqual(split_address(":::7001", "box1"), ("box1", 7001))
        with self.assertRaises(ValueError):
            split_address("nowhere", "h")
