"""
The client protocol (lttx.client.protocol) on its own, fed bytes by hand: frames
split anywhere, the raw frames of a download, time limits, fatal errors, on
command and file connections alike.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.client import ClientProtocol, Message
from lttx.client.protocol import FILE
from lttx.wire import codec

from ..common import frame, frames_of


def file_protocol() -> tuple[ClientProtocol, StringTransport, MemoryReactorClock]:
    clock = MemoryReactorClock()
    protocol = ClientProtocol(reactor=clock, mode=FILE)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def raw(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


class FramingTests(SynchronousTestCase):
    def test_frames_split_anywhere(self) -> None:
        """Messages, a reply and a notice fed in pieces of every size arrive whole and in
        order; messages before a reply are delivered before its Deferred fires."""
        stream = (frame([codec.MESSAGE, "hq", "600000.SH", {"px": 10.23}, 1])
                  + frame([codec.MESSAGE, "hq", b"\x95\x03", "x" * 300, 2])
                  + frame([codec.REPLY, 1, "pong"])
                  + frame([codec.NOTICE, "slow_subscriber", "bye"])
                  + frame([codec.MESSAGE, "hq", 7, None, 3]))
        for size in range(1, 12):
            events: list[Any] = []
            protocol = ClientProtocol(events.append, lambda *n: events.append(n))
            protocol.makeConnection(StringTransport())
            d = protocol.request("ping")
            d.addCallback(events.append)
            protocol.set_receivers(lambda batch: events.extend(batch),
                                   lambda *n: events.append(n))
            for i in range(0, len(stream), size):
                protocol.dataReceived(stream[i:i + size])
            self.assertEqual(events, [
                Message("hq", "600000.SH", {"px": 10.23}, 1),
                Message("hq", b"\x95\x03", "x" * 300, 2),
                "pong", ("slow_subscriber", "bye"), Message("hq", 7, None, 3)])

    def test_one_read_is_one_batch_per_run_of_messages(self) -> None:
        """All the frames of one read are taken at once: its messages reach the
        receiver in one batch per run between other frames, in order, and a reply
        in the middle fires after the messages before it and before those after."""
        stream = (b"".join(frame([codec.MESSAGE, "hq", i, "x" * i, i]) for i in range(50))
                  + frame([codec.REPLY, 1, "pong"])
                  + b"".join(frame([codec.MESSAGE, "hq", i, [i], i]) for i in range(50, 53)))
        events: list[Any] = []
        protocol = ClientProtocol(events.append, lambda *n: events.append(n))
        protocol.makeConnection(StringTransport())
        protocol.request("ping").addCallback(events.append)
        protocol.set_receivers(lambda batch: events.append(list(batch)),
                               lambda *n: events.append(n))
        protocol.dataReceived(stream[:-3])
        protocol.dataReceived(stream[-3:])
        self.assertEqual(events, [
            [Message("hq", i, "x" * i, i) for i in range(50)], "pong",
            [Message("hq", i, [i], i) for i in range(50, 52)],
            [Message("hq", 52, [52], 52)]])

    def test_frames_after_a_broken_one_in_the_same_read_are_dropped(self) -> None:
        """A frame that does not decode ends the connection: the messages before it in
        the read are delivered, none after it."""
        events: list[Any] = []
        protocol = ClientProtocol(lambda m: None, lambda *n: None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.set_receivers(events.extend, lambda *n: None)
        protocol.dataReceived(frame([codec.MESSAGE, "hq", 1, None, 1])
                              + b"\x00\x00\x00\x03\x95\x03\xc1"
                              + frame([codec.MESSAGE, "hq", 2, None, 2]))
        self.assertEqual(events, [Message("hq", 1, None, 1)])
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(frame([codec.MESSAGE, "hq", 3, None, 3]))
        self.assertEqual(events, [Message("hq", 1, None, 1)])
        self.flushLoggedErrors()

    def test_garbage_closes(self) -> None:
        """A frame that looks like a message but does not decode closes the connection."""
        protocol = ClientProtocol(lambda m: None, lambda *n: None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.set_receivers(lambda batch: None, lambda *n: None)
        protocol.dataReceived(b"\x00\x00\x00\x03\x95\x03\xc1")
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors()


class FileConnectionTests(SynchronousTestCase):
    def test_download_raw_frames_split_anywhere(self) -> None:
        """After the download reply, exactly size - offset bytes of raw frames go to
        the sink, whatever the chunks; the next frame is a reply again."""
        stream_data = [b"a" * 7, b"", b"\x95\x03" * 5, b"z"]
        for size in (1, 3, 1000):
            protocol, transport, _ = file_protocol()
            d = protocol.request("download", "f", 0, None, data_follows=True)
            end = protocol.request("download_end", "md5")
            ids = [f[1] for f in frames_of(transport.value())]
            total = sum(len(c) for c in stream_data)
            stream = (frame([codec.REPLY, ids[0], {"name": "f", "size": total, "offset": 0}])
                      + b"".join(raw(c) for c in stream_data)
                      + frame([codec.REPLY, ids[1], {"md5": "x"}]))
            got: list[bytes] = []
            d.addCallback(lambda header: protocol.set_sink(got.append))
            for i in range(0, len(stream), size):
                protocol.dataReceived(stream[i:i + size])
            self.assertEqual(b"".join(got), b"".join(stream_data))
            self.assertEqual(self.successResultOf(end), {"md5": "x"})

    def test_more_data_than_announced_ends_the_transfer(self) -> None:
        protocol, transport, _ = file_protocol()
        errors: list[Any] = []
        protocol.on_error = errors.append
        d = protocol.request("download", "f", 0, None, data_follows=True)
        [request] = frames_of(transport.value())
        protocol.dataReceived(frame([codec.REPLY, request[1], {"size": 2, "offset": 0}])
                              + raw(b"abc"))
        self.successResultOf(d)
        self.assertTrue(transport.disconnecting)
        self.assertIsInstance(errors[0], lttx.BadRequest)
        self.failureResultOf(protocol.request("list"), lttx.BadRequest)
        self.flushLoggedErrors()

    def test_an_error_answering_nothing_ends_a_file_transfer(self) -> None:
        """On a file connection an error frame with a nil id is fatal; on a command
        connection it is a notice and calls go on."""
        protocol, transport, _ = file_protocol()
        pending = protocol.request("list")
        protocol.dataReceived(frame([codec.ERROR, None, "bad_request", "unreadable"]))
        self.failureResultOf(protocol.request("list"), lttx.BadRequest)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(pending)  # fails at the loss, with the same error
        protocol.connectionLost(None)
        self.assertEqual(str(self.failureResultOf(pending, lttx.BadRequest).value), "unreadable")

        notices: list[Any] = []
        command = ClientProtocol(lambda m: None, lambda *n: notices.append(n))
        command.makeConnection(StringTransport())
        command.dataReceived(frame([codec.ERROR, None, "bad_request", "unreadable"]))
        self.assertEqual(notices, [("bad_request", "unreadable")])
        self.assertFalse(command.transport.disconnecting)

    def test_no_reply_in_time_aborts(self) -> None:
        """A request with a time limit and no reply fails with TimeoutError; the
        connection is aborted and later requests fail the same way."""
        protocol, transport, clock = file_protocol()
        d = protocol.request("partial", "f", timeout=5)
        clock.advance(5)
        self.failureResultOf(d, lttx.TimeoutError)
        self.assertTrue(transport.disconnecting)
        self.failureResultOf(protocol.request("list"), lttx.TimeoutError)

    def test_paused_reads_hold_frames_back(self) -> None:
        """While paused (a download's disk lags) frames already received wait; resuming
        delivers them in order."""
        protocol, transport, _ = file_protocol()
        first, second = protocol.request("list"), protocol.request("list")
        ids = [f[1] for f in frames_of(transport.value())]
        protocol.pauseProducing()
        protocol.dataReceived(frame([codec.REPLY, ids[0], [1]]) + frame([codec.REPLY, ids[1], [2]]))
        self.assertNoResult(first)
        protocol.resumeProducing()
        self.assertEqual([self.successResultOf(first), self.successResultOf(second)], [[1], [2]])

    def test_message_frame_on_a_file_connection_is_a_violation(self) -> None:
        protocol, transport, _ = file_protocol()
        protocol.dataReceived(frame([codec.MESSAGE, "hq", "k", 1, 1]))
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors()
