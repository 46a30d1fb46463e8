"""
The client's side of one command connection: request ids, pending replies,
and the subscriber's hot path that decodes MESSAGE frames in batches.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from ..errors import BadRequest, ConnectionLost, FrameTooLarge, LTtxError
from ..wire import codec
from ..wire.frames import PREFIX
from ..wire.framing import FrameDecoder
from .messages import Message
from .replies import settle


class ClientProtocol(Int32StringReceiver):
    """The client's side of one connection: ids, pending replies, pushes in."""

    log = Logger()

    def __init__(self, on_message: Callable[[Message], None],
                 on_notice: Callable[[str, str], None]) -> None:
        self.max_frame = 64 * 1024 * 1024  # until hello tells the daemon's
        self._on_message = on_message
        self._on_notice = on_notice
        self._on_messages: Optional[Callable[[list[Message]], None]] = None
        self._batch: Optional[list[Message]] = None
        # No limit of its own (a 4-byte prefix is under 2**32): the daemon's
        # max_frame bounds what it sends.
        self._decoder = FrameDecoder(2**32)
        self._ids = itertools.count(1)
        self._pending: dict[int, Deferred[Any]] = {}
        self.connected_deferred: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # Disable Nagle: a push must not wait 40 ms for a delayed ACK.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.connected_deferred.callback(None)

    def set_receivers(self, on_messages: Callable[[list[Message]], None],
                      on_notice: Callable[[str, str], None]) -> None:
        """
        Where messages and notices go from now on: the messages of each chunk
        of received bytes are passed together, in order, to ``on_messages``.
        """
        self._on_messages = on_messages
        self._on_message = lambda message: on_messages([message])
        self._on_notice = on_notice

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.feed(data)
        if self._on_messages is None:
            while not self.transport.disconnecting:
                frame = decoder.next_frame()
                if frame is None:
                    return
                self.stringReceived(frame)
            return
        # The hot path of a subscriber: MESSAGE frames (payload head 95 03)
        # are decoded straight into a batch; other frames go through
        # stringReceived, after the messages before them.
        batch: list[Message] = []
        self._batch = batch
        try:
            while not self.transport.disconnecting:
                frame = decoder.next_frame()
                if frame is None:
                    break
                if len(frame) > 2 and frame[0] == 0x95 and frame[1] == 0x03:
                    try:
                        _, channel, key, data_, seq = codec.decode(frame)
                    except (LTtxError, ValueError):
                        self.stringReceived(frame)  # reports and closes
                        break
                    batch.append(Message(channel, key, data_, seq))
                else:
                    if batch:  # what came before a reply is delivered before it
                        self._on_messages(batch)
                        batch = self._batch = []
                    self.stringReceived(frame)
        finally:
            self._batch = None
            if batch:
                self._on_messages(batch)

    def request(self, command: str, *args: Any) -> "Deferred[Any]":
        """Send one request; the Deferred fires with its result or fails with its error."""
        if self.transport is None or self.transport.disconnecting:
            return fail(ConnectionLost("not connected"))
        request_id = next(self._ids)
        try:
            frame = codec.encode([codec.REQUEST, request_id, command, list(args)])
        except LTtxError as e:
            return fail(e)
        if len(frame) > self.max_frame:
            return fail(FrameTooLarge(
                f"{command} needs a frame of {len(frame)} bytes, over the daemon's "
                f"limit of {self.max_frame}"))
        d: Deferred[Any] = Deferred(lambda _: self._pending.pop(request_id, None))
        self._pending[request_id] = d
        self.sendString(frame)
        return d

    def write_frames(self, frames: list[bytes]) -> None:
        """Write already-encoded frames in one write (for batched pushes)."""
        if self.transport is not None and not self.transport.disconnecting:
            self.transport.write(b"".join(PREFIX.pack(len(f)) + f for f in frames))

    def stringReceived(self, frame: bytes) -> None:
        try:
            message = codec.decode(frame)
            kind = message[0]
            if kind == codec.MESSAGE:
                if self._batch is not None:
                    self._batch.append(Message._make(message[1:5]))
                else:
                    self._on_message(Message._make(message[1:5]))
            elif kind == codec.REPLY or kind == codec.ERROR:
                unanswered = settle(self._pending, message)
                if unanswered is not None:
                    self._on_notice(unanswered.code, unanswered.message)
            elif kind == codec.NOTICE:
                self._on_notice(message[1], message[2])
            else:
                raise BadRequest(f"unknown frame kind {kind!r}")
        except (LTtxError, IndexError, TypeError) as e:
            # A daemon speaking another protocol: nothing more can be trusted.
            self.log.error("undecodable frame from the daemon ({error}); closing", error=e)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionLost("the connection to the daemon was lost"))
        self.lost.callback(None)


__all__ = ["ClientProtocol"]
