"""
:class:`~lttx.wire.sendfile.SendfileProducer` on a real TCP connection of the
test reactor, a plain socket at the other end: a file's bytes arrive as raw
frames, after what the transport held, whole and in order past the socket's
buffer; a file cut short fails the transfer; :func:`~lttx.diskio.hash_range`
hashes a range off the reactor and closes its descriptor.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lttx.diskio import hash_range
from lttx.wire.sendfile import FileShrank, SendfileProducer, can_sendfile


class _Keep(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]


def raw_frames(data: bytes) -> list[bytes]:
    """Split a stream of 4-byte length prefixed frames."""
    frames, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("!I", data, i)
        frames.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return frames


class SendfileProducerTests(TestCase):
    def setUp(self) -> Deferred[Any]:
        factory = protocol.Factory.forProtocol(_Keep)
        factory.made = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.peer.settimeout(10)
        self.addCleanup(self.peer.close)
        path = self.mktemp()
        self.content = os.urandom(256 * 1024) * 12 + b"tail"  # 3 MiB and a bit
        with open(path, "wb") as f:
            f.write(self.content)
        self.file = open(path, "rb")
        self.addCleanup(self.file.close)

        def made(proto: _Keep) -> None:
            self.transport = proto.transport
            self.addCleanup(self.transport.abortConnection)

        return factory.made.addCallback(made)  # type: ignore[attr-defined, no-any-return]

    def read(self, count: int) -> "Deferred[bytes]":
        def read_all() -> bytes:
            got = b""
            while len(got) < count:
                chunk = self.peer.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            return got
        return deferToThread(read_all)

    def test_a_range_arrives_as_raw_frames_after_what_was_buffered(self) -> Deferred[None]:
        """A reply the transport still holds goes first; then bytes 1000 to
        the end as frames of at most 256 KiB, past a small socket buffer."""
        self.assertTrue(can_sendfile(self.transport))
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        self.transport.write(b"REPLY")
        counts = [0, 0]

        def sent(data: int, wire: int) -> None:
            counts[0] += data
            counts[1] += wire

        count = len(self.content) - 1000
        producer = SendfileProducer(self.transport, self.file.fileno(), 1000, count,
                                    256 * 1024, sent)
        done = producer.start()
        frames = (count + 256 * 1024 - 1) // (256 * 1024)
        got = self.read(5 + count + 4 * frames)

        def check(data: bytes) -> None:
            self.assertEqual(data[:5], b"REPLY")
            chunks = raw_frames(data[5:])
            self.assertEqual(len(chunks), frames)
            self.assertTrue(all(len(c) <= 256 * 1024 for c in chunks))
            self.assertEqual(b"".join(chunks), self.content[1000:])
            self.assertEqual(counts, [count, count + 4 * frames])
            self.assertIsNone(self.transport.producer)  # unregistered at the end
            self.assertEqual(self.file.tell(), 0)  # the file's position is left alone

        return done.addCallback(lambda _: got).addCallback(check)

    def test_a_file_cut_short_fails_the_transfer(self) -> Deferred[None]:
        """Announced longer than the file is: the transfer fails and the
        connection is closed (the stream cannot go on mid-frame)."""
        producer = SendfileProducer(self.transport, self.file.fileno(), 0,
                                    len(self.content) + 10, 1 << 20)
        done = producer.start()
        got = self.read(len(self.content) + 100)  # until the connection closes
        failed = self.assertFailure(done, FileShrank)
        failed.addCallback(lambda _: self.assertTrue(self.transport.disconnecting))
        return failed.addCallback(lambda _: got).addCallback(  # type: ignore[no-any-return]
            lambda data: self.assertEqual(b"".join(raw_frames(data))[:len(self.content)],
                                          self.content))

    def test_stopped_sends_nothing_more(self) -> None:
        """stopProducing (the connection lost) ends it with a failure."""
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        producer = SendfileProducer(self.transport, self.file.fileno(), 0,
                                    len(self.content), 256 * 1024)
        done = producer.start()
        producer.stopProducing()
        self.failureResultOf(done, ConnectionError)
        producer.resumeProducing()  # a late resume does nothing


class HashRangeTests(SynchronousTestCase):
    def test_hashes_the_range_and_closes_the_descriptor(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * 10000)
        md5 = hashlib.md5(b"prefix")
        fd = os.open(path, os.O_RDONLY)
        digest = hash_range(fd, 100, 2_000_000, md5, block=65536)
        expected = hashlib.md5(b"prefix" + (bytes(range(256)) * 10000)[100:2_000_100])
        self.assertEqual(digest, expected.hexdigest())
        self.assertRaises(OSError, os.fstat, fd)

    def test_a_short_file_raises(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"abc")
        fd = os.open(path, os.O_RDONLY)
        self.assertRaises(OSError, hash_range, fd, 0, 10, hashlib.md5())
        self.assertRaises(OSError, os.fstat, fd)

    def test_not_on_other_transports(self) -> None:
        self.assertFalse(can_sendfile(StringTransport()))
