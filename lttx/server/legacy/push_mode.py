"""
``push_mode``: the original client's ``start_txg`` connection, one per
channel (``who``, ``"a@b"`` for several) with its password ``pwd``.

The connection subscribes through the daemon's channel registry, so it gets
what native publishers and old ones push; each message reaches it as a frame
whose body is ``json.dumps("key|data")``, and a ``{"1": 1}`` heartbeat comes
every :data:`HEARTBEAT_INTERVAL` seconds, as from the original server.  The
first channel subscriber sets its password, on this port or the native one;
under a roles file a token with ``all`` or a right naming the channel is not
held to it, as on the native port.

It reads the channel logs at its own pace like a native subscriber
(:class:`~lttx.server.reader.ChannelReader`), so a slow old subscriber never
slows a publisher or another subscriber and is never cut off for being slow.

:class:`LegacyReader` is the one seam between this port and the channel
machinery: it reads the logs' native MESSAGE frames and writes them as old
frames.  The original client knows no gap notice: a gap (the log dropped
messages it had not read) is logged and counted in ``lttx status`` instead.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import AuthError, BadRequest, LTtxError
from ...state.auth import authorize, password_exemption
from ...wire import codec
from ...wire.frames import MESSAGE_HEAD, PREFIX
from ...wire.legacy import HEARTBEAT_FRAME, message_body, old_frame
from ...wire.limits import check_channel_count, name_list
from ...wire.names import split_channels
from ..reader import ChannelReader
from .handshake import LegacyProtocol, Mode

#: Seconds between two heartbeats to an old subscriber (the original's 5).
HEARTBEAT_INTERVAL = 5.0
#: Seconds between the handshake reply and the first message: the original
#: client reads its reply with one recv(1024), so nothing may come with it.
#: Messages published meanwhile are read from the log afterwards; none is lost.
SETTLE_DELAY = 0.25


def old_message_frame(frame: bytes) -> bytes:
    """A native MESSAGE frame (length prefix included) as the original server sent it."""
    _, _channel, key, data, _seq = codec.decode(frame[PREFIX.size:])
    return old_frame(message_body(key, data))


class LegacyReader(ChannelReader):
    """
    An old ``push_mode`` connection's reading of the channel logs: the
    native frames it reads are written as old ones; gap notices, which the
    original client would take for a message, are logged instead.
    """

    log = Logger()

    def __init__(self, *args: Any, peer: str = "?", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    def _write(self, frames: list[bytes]) -> None:
        old = []
        for frame in frames:
            if frame[PREFIX.size:PREFIX.size + 2] == MESSAGE_HEAD:
                old.append(old_message_frame(frame))
            else:
                self.log.warn("{peer}: an old subscriber missed messages its channel "
                              "log no longer holds (a gap; the original protocol cannot "
                              "say so)", peer=self.peer)
        if old:
            data = b"".join(old)
            self.written += len(data)
            self.registry.delivered += len(old)
            self.transport.write(data)


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
        names = split_channels(check_channel_count(who))
        for name in names:
            authorize(connection.grant, "subscribe", name)
        reader = LegacyReader(transport, state.channels, reading=lambda on: None,
                              peer=connection.peer)
        self.subscriber = reader
        try:
            # Under a roles file, the same exemption as the native subscribe.
            subscribed = state.channels.subscribe(
                self.subscriber, names, pwd or None,
                exempt=password_exemption(state.auth, connection.grant))
        except AuthError:
            transport.unregisterProducer()
            raise AuthError(f"wrong password for channel {'@'.join(names)[:80]!r}") from None
        self.names = names
        self._timer: Any = None
        self._gone = False
        if isinstance(subscribed, Deferred):
            # The Redis engine: answered once the daemon follows the streams, so
            # nothing published after the answer is missed.
            subscribed.addCallbacks(lambda _: self._answer(), self._subscribe_failed)
        else:
            self._answer()

    def _answer(self) -> None:
        """The handshake's reply; the logs are read once it was read alone."""
        if self._gone:
            return
        connection = self.connection
        self.log.info("{peer} subscribed to {channels} (legacy push_mode)",
                      peer=connection.peer, channels=name_list(self.names))
        connection.send_handshake_reply(
            {"code": 0, "msg": f"subscribed to {'@'.join(self.names)}"})
        if self.state.clock is not None:
            # Nothing is read from the logs until the reply has been read alone.
            self.subscriber.paused = True
            self._timer = self.state.clock.callLater(SETTLE_DELAY, self._settled)

    def _subscribe_failed(self, failure: Failure) -> None:
        """The Redis engine could not follow the channels: say so, and close."""
        failure.trap(LTtxError)
        reason = getattr(failure.value, "message", str(failure.value))
        self.log.info("{peer}: legacy subscribe to {channels} failed: {error}",
                      peer=self.connection.peer, channels=name_list(self.names), error=reason)
        if not self._gone:
            self.connection.send_handshake_reply({"code": -1, "msg": reason})
            self.connection.transport.loseConnection()  # type: ignore[union-attr]

    def _settled(self) -> None:
        self._timer = None
        self.subscriber.resumeProducing()
        self._next_heartbeat()

    def _next_heartbeat(self) -> None:
        assert self.state.clock is not None
        self._timer = self.state.clock.callLater(HEARTBEAT_INTERVAL, self._heartbeat)

    def _heartbeat(self) -> None:
        reader = self.subscriber
        # Only while the connection takes what is written: between whole frames.
        if not reader.paused and not reader.stopped:
            self.connection.transport.write(HEARTBEAT_FRAME)
        self._next_heartbeat()

    def connection_lost(self, reason: Failure) -> None:
        self._gone = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.state.channels.remove(self.subscriber)
