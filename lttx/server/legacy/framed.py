"""
What the framed legacy modes share (``put_mode`` and ``plus_mode``): the
frame loop over the original 8-byte little-endian lengths, the publish of an
old ``"key|data"`` message, and the log of refused requests.

The frame loop refuses a length over ``--max-frame`` before buffering any of
it (one log line, the connection closed: the stream cannot be resynchronised),
stops reading while the connection is paused, and flushes the channel
registry once per chunk read, as the native port does.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import LTtxError
from ...state.auth import authorize
from ...wire.framing import FrameDecoder, FrameTooLong
from ..reader import set_reading
from .handshake import LegacyProtocol, Mode
from ...wire.legacy import OLD_PREFIX, split_key_data

#: Refusals logged one by one per connection; after that, one line per this many.
LOG_EVERY = 1000


class FramedMode(Mode):
    """A mode whose client sends frames: subclasses define :meth:`frame_received`."""

    log = Logger()

    def __init__(self, connection: LegacyProtocol) -> None:
        self.connection = connection
        self.state = connection.state
        self.transport = connection.transport
        self.decoder = FrameDecoder(self.state.max_frame, OLD_PREFIX)
        self.paused = False
        self.refusals = 0

    def data_received(self, data: bytes) -> None:
        decoder = self.decoder
        decoder.feed(data)
        try:
            while not self.paused and not self.transport.disconnecting:
                try:
                    frame = decoder.next_frame()
                except FrameTooLong as e:
                    self.log.warn("{peer} sent a legacy frame of {length} bytes, over the "
                                  "limit of {limit}; closed", peer=self.connection.peer,
                                  length=e.length, limit=e.limit)
                    self.transport.loseConnection()
                    return
                if frame is None:
                    return
                self.frame_received(frame)
        finally:
            self.state.channels.flush()

    def frame_received(self, frame: bytes) -> None:
        raise NotImplementedError

    def set_reading(self, reading: bool) -> None:
        """Stop or resume serving the connection's frames (what came waits in the decoder)."""
        self.paused = not reading
        set_reading(self.transport, reading)
        if reading and not self.transport.disconnecting:
            self.data_received(b"")

    def refused(self, what: str, error: LTtxError) -> None:
        """A request that cannot be served and gets no reply: logged, never silent."""
        self.refusals += 1
        if self.refusals <= 10 or self.refusals % LOG_EVERY == 0:
            self.log.info("{peer}: legacy {what} refused: {code}: {reason} "
                          "({count} refused on this connection)", peer=self.connection.peer,
                          what=what, code=error.code, reason=error.message,
                          count=self.refusals)

    def failed(self, what: str, failure: Failure) -> None:
        """A write whose Deferred failed (the journal, the engine)."""
        if failure.check(LTtxError):
            self.refused(what, failure.value)
        else:
            self.log.failure("{peer}: legacy {what} failed", failure,
                             peer=self.connection.peer, what=what)

    def publish(self, channel: Any, text: Any, heartbeat: tuple[str, str]) -> None:
        """
        An old push of ``"key|data"`` on ``channel``: split at the first ``|``
        and published through the registry; the client's own heartbeat is
        counted and published to no one.
        """
        if not isinstance(text, str):
            text = str(text)
        key, data = split_key_data(text)
        if channel == heartbeat[0] and key == heartbeat[1]:
            self.connection.legacy.heartbeats += 1
            return
        try:
            if not self.connection.grant.unlimited:
                authorize(self.connection.grant, "publish", channel)
            self.state.channels.publish(channel, key, data)
        except LTtxError as e:
            self.refused("push", e)
            return
        self.connection.legacy.messages_in += 1
