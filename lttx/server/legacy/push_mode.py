"""
``push_mode``: the original client's ``start_txg`` connection, one per
channel (``who``, ``"a@b"`` for several) with its password ``pwd``.

The connection subscribes through the daemon's channel registry, so it gets
what native publishers and old ones push; each message reaches it as a frame
whose body is ``json.dumps("key|data")``, and a ``{"1": 1}`` heartbeat comes
every :data:`HEARTBEAT_INTERVAL` seconds, as from the original server.  The
first channel subscriber sets its password, on this port or the native one.

Its frames wait in an :class:`~lttx.server.outbox.Outbox` while it reads
slowly, so a slow old subscriber never slows a publisher or another
subscriber; past ``--subscriber-buffer`` it is cut off (logged), as a native
one is.

:class:`LegacySubscriber` is the one seam between this port and the channel
machinery: the registry hands it native MESSAGE frames, it gives the outbox
old frames.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ...errors import AuthError, BadRequest
from ...state.auth import authorize
from ...state.channels import ISubscriber
from ...wire import codec
from ...wire.names import split_channels
from ..outbox import Outbox
from .handshake import LegacyProtocol, Mode
from ...wire.legacy import HEARTBEAT_FRAME, message_body, old_frame

#: Seconds between two heartbeats to an old subscriber (the original's 5).
HEARTBEAT_INTERVAL = 5.0
#: Seconds between the handshake reply and the first message: the original
#: client reads its reply with one recv(1024), so nothing may come with it.
#: Messages published meanwhile wait in the outbox; none is lost.
SETTLE_DELAY = 0.25
#: Seconds a cut-off subscriber that does not read is given before it is aborted.
CUT_OFF_GRACE = 5.0

# The last MESSAGE frame converted, and its old frame: the registry hands the
# same bytes object to every subscriber of a message, so it is decoded once.
_last: list[Any] = [None, b""]


def old_message_frame(frame: bytes) -> bytes:
    """A native MESSAGE frame (length prefix included) as the original server sent it."""
    if frame is _last[0]:
        return _last[1]  # type: ignore[no-any-return]
    _, _channel, key, data, _seq = codec.decode(frame[4:])
    converted = old_frame(message_body(key, data))
    _last[0], _last[1] = frame, converted
    return converted


@implementer(ISubscriber)
class LegacySubscriber:
    """
    An old ``push_mode`` connection as the channel registry sees it: native
    MESSAGE frames in, old frames into the connection's outbox.
    """

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    @property
    def conflated_drops(self) -> int:
        return self.outbox.conflated_drops

    def deliver(self, frame: bytes, conflation_key: Optional[Hashable]) -> bool:
        return self.outbox.deliver(old_message_frame(frame), None)

    def flush(self) -> None:
        self.outbox.flush()

    def close(self, reason: str) -> None:
        self.outbox.close(reason)


class PushMode(Mode):
    """One ``push_mode`` connection."""

    name = "push_mode"
    log = Logger()

    def __init__(self, connection: LegacyProtocol, handshake: dict[str, Any]) -> None:
        self.connection = connection
        self.state = state = connection.state
        transport = connection.transport
        who, pwd = handshake.get("who"), handshake.get("pwd")
        if pwd is not None and not isinstance(pwd, str):
            raise BadRequest("pwd must be a string")
        names = split_channels(who)
        for name in names:
            authorize(connection.grant, "subscribe", name)
        outbox = Outbox(transport, state.subscriber_buffer, self._slow, self._cut_off,
                        reading=lambda on: None)
        self.subscriber = LegacySubscriber(outbox)
        try:
            state.channels.subscribe(self.subscriber, names, pwd or None)
        except AuthError:
            transport.unregisterProducer()
            raise AuthError(f"wrong password for channel {'@'.join(names)[:80]!r}") from None
        self.names = names
        self.log.info("{peer} subscribed to {channels} (legacy push_mode)",
                      peer=connection.peer, channels=", ".join(names))
        connection.send_handshake_reply(
            {"code": 0, "msg": f"subscribed to {'@'.join(names)}"})
        self._timer: Any = None
        if state.clock is not None:
            # Frames wait in the paused outbox until the reply has been read alone.
            outbox.paused = True
            self._timer = state.clock.callLater(SETTLE_DELAY, self._settled)

    def _settled(self) -> None:
        self._timer = None
        self.subscriber.outbox.resumeProducing()
        self._next_heartbeat()

    def _next_heartbeat(self) -> None:
        assert self.state.clock is not None
        self._timer = self.state.clock.callLater(HEARTBEAT_INTERVAL, self._heartbeat)

    def _heartbeat(self) -> None:
        outbox = self.subscriber.outbox
        # Only to a subscriber with nothing waiting: anything else shows it is alive.
        if not outbox.queued_bytes and not outbox.paused and not outbox.stopped:
            self.connection.transport.write(HEARTBEAT_FRAME)
        self._next_heartbeat()

    def _slow(self, reason: str) -> None:
        self.state.channels.cut_off(self.subscriber, reason, who=self.connection.peer)

    def _cut_off(self, reason: str) -> None:
        transport = self.connection.transport
        if transport.disconnecting:
            return
        transport.unregisterProducer()
        transport.loseConnection()
        clock = self.state.clock
        if clock is not None:
            clock.callLater(CUT_OFF_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.connection.lost:
            self.connection.transport.abortConnection()

    def connection_lost(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.state.channels.remove(self.subscriber)
