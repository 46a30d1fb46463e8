"""
One connection on a ``--legacy-listen`` port: the handshake that picks its mode.

The original client opens every connection with one raw JSON object (no
length prefix) naming its ``con_type`` and its token, ``tocken``.  The
:class:`LegacyProtocol` reads that object (at most :data:`HANDSHAKE_MAX`
bytes, within :data:`HANDSHAKE_TIMEOUT` seconds), authenticates the token
with the daemon's authenticator (protected mode too: without a token only
loopback peers are served), and hands the connection to its mode:
:mod:`.put_mode`, :mod:`.push_mode`, :mod:`.plus_mode` or :mod:`.file_mode`.
Each mode sends its own handshake reply, one raw JSON object the client
reads with a single ``recv(1024)``.

A refusal (wrong token, wrong channel password, unknown mode) is answered
:data:`REFUSAL_DELAY` seconds late: the original client retries such a
connection in a loop, some of its loops without a pause, and the delay
keeps one misconfigured script from flooding the daemon and its log.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import LTtxError
from ...state.auth import NOTHING, Grant
from ..state import ServerState

#: The largest handshake accepted, in bytes (the original read 1024).
HANDSHAKE_MAX = 64 * 1024
#: Seconds a connection has to send its handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a refused connection waits for its refusal.
REFUSAL_DELAY = 1.0


class LegacyStatus:
    """The legacy port's figures, a status source (``lttx status`` shows ``legacy``)."""

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}
        self.heartbeats = 0
        self.refused = 0
        self.messages_in = 0
        self.ids = itertools.count(1)

    def status(self) -> dict[str, Any]:
        return {"connections": dict(self.connections), "heartbeats": self.heartbeats,
                "refused": self.refused, "messages_in": self.messages_in}


class Mode:
    """What a connection's mode offers its :class:`LegacyProtocol`."""

    name = "?"

    def data_received(self, data: bytes) -> None:
        """Bytes after the handshake."""

    def connection_lost(self, reason: Failure) -> None:
        """The connection closed."""


class LegacyProtocol(Protocol):
    """
    One connection of an original LTtx client.

    :param state: what the daemon's connections share.
    :param legacy: the legacy port's figures and id counter.
    :param modes: ``con_type`` -> the mode class, built as
        ``mode(protocol, handshake)``.
    """

    log = Logger()

    def __init__(self, state: ServerState, legacy: LegacyStatus,
                 modes: dict[str, Callable[["LegacyProtocol", dict[str, Any]], Mode]]) -> None:
        self.state = state
        self.legacy = legacy
        self.modes = modes
        self.peer = "?"
        self.authenticated = False
        self.grant: Grant = NOTHING
        self.mode: Optional[Mode] = None
        self._buffer = b""
        self._timer: Any = None
        self._refusing = False
        self.lost = False

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        self.peer = str(address) if host is None else f"{host}:{port}"
        if not self.state.auth.allows_peer(address):
            self.log.warn("refused {peer} on the legacy port: no token is set, so only "
                          "loopback clients are served (protected mode)", peer=self.peer)
            self.legacy.refused += 1
            self.transport.write(json.dumps({
                "code": -1, "msg": "the daemon runs without a token and serves loopback "
                                   "clients only"}).encode("utf-8"))
            self.transport.loseConnection()
            return
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if self.state.clock is not None:
            self._timer = self.state.clock.callLater(HANDSHAKE_TIMEOUT, self._late)
        self.state.connection_made(self)

    def _late(self) -> None:
        self._timer = None
        self.log.warn("{peer} sent no legacy handshake within {seconds} s; closed",
                      peer=self.peer, seconds=HANDSHAKE_TIMEOUT)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        self._cancel_timer()
        if self.mode is not None:
            counts = self.legacy.connections
            counts[self.mode.name] = counts.get(self.mode.name, 1) - 1
            self.mode.connection_lost(reason)
        self.state.connection_lost(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- the handshake ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.mode is not None:
            self.mode.data_received(data)
            return
        if self._refusing or self.transport.disconnecting:
            return
        self._buffer += data
        handshake = self._parse()
        if handshake is None:
            return
        obj, rest = handshake
        self._buffer = b""
        self._start(obj)
        if rest and self.mode is not None and not self.transport.disconnecting:
            self.mode.data_received(rest)

    def _parse(self) -> Optional[tuple[Any, bytes]]:
        buffer = self._buffer
        start = len(buffer) - len(buffer.lstrip())
        if start < len(buffer) and buffer[start:start + 1] != b"{":
            self._bad_handshake("a legacy connection starts with a JSON object")
            return None
        if len(buffer) > HANDSHAKE_MAX:
            self._bad_handshake(f"handshake longer than {HANDSHAKE_MAX} bytes")
            return None
        try:
            text = buffer[start:].decode("utf-8")
        except UnicodeDecodeError as e:
            if e.end >= len(buffer) - start and len(buffer) - start - e.start < 4:
                return None  # a character cut in two: wait for its end
            self._bad_handshake("the handshake is not UTF-8")
            return None
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            return None  # incomplete (or never complete: the size and time limits end it)
        return obj, text[end:].encode("utf-8")

    def _bad_handshake(self, reason: str) -> None:
        self.log.warn("{peer}: bad legacy handshake: {reason}; closed",
                      peer=self.peer, reason=reason)
        self.legacy.refused += 1
        self._buffer = b""
        self.refuse({"code": -1, "msg": reason}, delay=0)

    def _start(self, handshake: Any) -> None:
        if not isinstance(handshake, dict):
            self._bad_handshake("the handshake must be a JSON object")
            return
        con_type = handshake.get("con_type")
        grant = self.state.auth.authenticate(handshake.get("tocken"))
        if grant is None:
            self.log.warn("{peer} failed to authenticate on the legacy port: wrong tocken",
                          peer=self.peer)
            self.legacy.refused += 1
            self.refuse({"code": "-1", "msg": "wrong tocken"})
            return
        mode = self.modes.get(con_type) if isinstance(con_type, str) else None
        if mode is None:
            self._bad_handshake(f"unknown con_type {str(con_type)[:40]!r}")
            return
        self._cancel_timer()
        self.authenticated = True
        self.grant = grant
        try:
            self.mode = mode(self, handshake)
        except LTtxError as e:
            self.log.info("{peer}: legacy {mode} refused: {code}: {reason}", peer=self.peer,
                          mode=con_type, code=e.code, reason=e.message)
            self.legacy.refused += 1
            self.refuse({"code": -1, "msg": f"{e.code}: {e.message}"})
            return
        counts = self.legacy.connections
        counts[self.mode.name] = counts.get(self.mode.name, 0) + 1

    # -- replies ------------------------------------------------------------

    def send_handshake_reply(self, reply: dict[str, Any]) -> None:
        """The raw JSON object the client reads with one ``recv(1024)``."""
        self.transport.write(json.dumps(reply).encode("utf-8"))

    def refuse(self, reply: Any, delay: Optional[float] = None) -> None:
        """Send ``reply`` (after :data:`REFUSAL_DELAY` unless told) and close."""
        self._refusing = True
        self.mode = None

        def send() -> None:
            if not self.lost:
                self.transport.write(json.dumps(reply).encode("utf-8"))
                self.transport.loseConnection()

        delay = REFUSAL_DELAY if delay is None else delay
        if delay and self.state.clock is not None:
            self._cancel_timer()
            self._timer = self.state.clock.callLater(delay, send)
        else:
            send()
