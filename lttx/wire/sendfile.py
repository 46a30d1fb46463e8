"""
A file's bytes sent as raw frames with ``os.sendfile``: :class:`SendfileProducer`.

Twisted's :class:`~twisted.protocols.basic.FileSender` reads each chunk into
Python (a copy), the caller frames and hashes it on the reactor thread, and
the transport copies it again into the kernel.  On a plain TCP transport
the kernel can copy from the page cache to the socket itself: this producer
writes each raw frame's 4-byte length prefix with ``send`` and its bytes
with ``sendfile``, so no byte of the file enters the process and memory
stays flat whatever the size.  (TLS encrypts in the process: it keeps
FileSender.)

It is a pull producer of the transport: the transport calls
:meth:`resumeProducing` once its own buffer is empty (a reply written before
goes first), and this producer sends until the socket is full, then waits
for it to be writable again (``startWriting``; the transport's ``doWrite``
finds its buffer empty and resumes the producer).  A few MiB per turn at
most, so other connections are served meanwhile.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer
from twisted.internet.interfaces import IPullProducer

from .frames import PREFIX
from .writes import is_plain_tcp

#: Most bytes sent in one turn of the reactor before other connections get theirs.
PER_TURN = 4 * 1024 * 1024


class FileShrank(OSError):
    """The file ended before the count of bytes announced for it was sent."""


def can_sendfile(transport: Any) -> bool:
    """Whether :class:`SendfileProducer` can send on ``transport`` (plain TCP, Linux)."""
    return hasattr(os, "sendfile") and is_plain_tcp(transport)


@implementer(IPullProducer)
class SendfileProducer:
    """
    Send bytes ``offset`` to ``offset + count`` of the open file ``fd`` on
    ``transport`` as raw frames of at most ``chunk`` bytes each.

    :param on_sent: called with the count of the file's bytes each send
        took, and of the bytes on the wire (prefixes included), for progress
        and counters.
    """

    def __init__(self, transport: Any, fd: int, offset: int, count: int, chunk: int,
                 on_sent: Callable[[int, int], None] = lambda data, wire: None) -> None:
        self.transport = transport
        self._fd = fd
        self._position = offset
        self._left = count  # file bytes not yet sent
        self._chunk = chunk
        self._frame_left = 0  # bytes of the current frame still to send
        self._on_sent = on_sent
        self._done = False
        self.deferred: Deferred[None] = Deferred()

    def start(self) -> "Deferred[None]":
        """Begin; fires once every byte is with the kernel, fails if stopped or on an error."""
        if self._left <= 0:
            self._finish()
        else:
            self.transport.registerProducer(self, False)
        return self.deferred

    def resumeProducing(self) -> None:
        t = self.transport
        if self._done or t.disconnecting:
            return
        if t._tempDataLen or t.dataBuffer:
            return  # its own bytes first; its doWrite resumes this producer after them
        sock = t.socket
        budget = PER_TURN
        while self._left > 0 and budget > 0:
            if self._frame_left == 0:
                size = min(self._chunk, self._left)
                header = PREFIX.pack(size)
                self._frame_left = size
                try:
                    sent = sock.send(header)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as e:
                    self._fail(e)
                    return
                self._on_sent(0, len(header))
                if sent < len(header):
                    # The rest of the prefix through the transport: its
                    # doWrite sends it, then resumes this producer.
                    t.write(header[sent:])
                    return
            try:
                sent = os.sendfile(sock.fileno(), self._fd, self._position, self._frame_left)
            except (BlockingIOError, InterruptedError):
                t.startWriting()  # resumed once the socket takes more
                return
            except OSError as e:
                self._fail(e)
                return
            if sent == 0:  # the file ended early: it was cut while being sent
                self._fail(FileShrank("the file is shorter than when its transfer began"))
                return
            self._position += sent
            self._frame_left -= sent
            self._left -= sent
            budget -= sent
            self._on_sent(sent, sent)
        if self._left > 0:
            t.startWriting()  # the next turn goes on
        else:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        if self.transport.producer is self:
            self.transport.unregisterProducer()
        self.deferred.callback(None)

    def _fail(self, error: Exception) -> None:
        self._done = True
        if self.transport.producer is self:
            self.transport.unregisterProducer()
        self.transport.loseConnection()  # the stream cannot go on mid-frame
        self.deferred.errback(error)

    def stopProducing(self) -> None:
        """The connection is gone (or the transfer stopped): send nothing more."""
        if not self._done:
            self._done = True
            self.deferred.errback(ConnectionError("the file transfer was stopped"))

    def pauseProducing(self) -> None:
        """A pull producer is not paused; it sends only when resumed."""


__all__ = ["PER_TURN", "FileShrank", "SendfileProducer", "can_sendfile"]
