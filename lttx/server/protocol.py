"""
The daemon's side of one client connection.

Frames are 4-byte big-endian length prefixed (:class:`Int32StringReceiver`);
each payload is decoded by :mod:`lttx.codec` and dispatched to one small
``cmd_<name>`` handler.  The protocol keeps only its connection's facts
(authenticated or not, its peer); the store and everything shared belong to
the factory.  The message set is documented in ``docs/protocol.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from .._version import PROTOCOL_VERSION, __version__
from ..errors import (
    AuthError,
    BadRequest,
    FrameTooLarge,
    LTtxError,
    PermissionDenied,
    ServerError,
    SlowSubscriber,
)
from ..state.auth import NOTHING, Grant
from ..state.store import MISSING
from ..wire import codec
from ..wire.frames import PUBLISH_HEAD
from ..wire.framing import FrameDecoder, FrameTooLong
from ..wire.names import split_channels
from ..wire.tls import tls_failure
from .outbox import Outbox, ReadThrottle, set_reading

if TYPE_CHECKING:
    from .factory import LTtxFactory

_F = TypeVar("_F", bound=Callable[..., Any])

#: Seconds a cut-off subscriber has to read its notice before it is aborted.
CUT_OFF_GRACE = 5.0

#: Largest frame before ``hello`` (a hello is under 1 KiB): a peer without a
#: token cannot make the daemon buffer a 64 MiB frame.
HELLO_MAX_FRAME = 64 * 1024

#: Seconds a connection has to authenticate before it is closed.
HELLO_TIMEOUT = 10.0


def command(min_args: int, max_args: Optional[int] = None) -> Callable[[_F], _F]:
    """Mark a ``cmd_*`` method as a command taking that many arguments."""

    def mark(handler: _F) -> _F:
        arity = (min_args, min_args if max_args is None else max_args)
        handler.arity = arity  # type: ignore[attr-defined]
        return handler

    return mark


#: The right each command needs of the connection's token, checked before
#: its handler runs: ``(action, i)`` means the action on the name in argument
#: ``i``; ``(action, None)`` means the action on some name (the handler keeps
#: to the allowed names, as ``keys`` does); ``None`` means nothing is checked
#: here (``ping``, or a handler that calls ``authorize`` itself).  A command
#: missing from this table is served only to tokens with every right.
COMMAND_RIGHTS: dict[str, Optional[tuple[str, Optional[int]]]] = {
    "ping": None,
    "get": ("read", 0),
    "exists": ("read", 0),
    "keys": ("read", None),
    "get_dict_value": ("read", 0),
    "get_list_value": ("read", 0),
    "put": ("write", 0),
    "delete": ("write", 0),
    "dict_change": ("write", 0),
    "list_append": ("write", 0),
    "list_pop": ("write", 0),
    "list_remove": ("write", 0),
    # The handlers check each channel of the list themselves.
    "subscribe": None,
    "unsubscribe": None,
}


def _present(value: Any) -> list[Any]:
    """``[value]`` for a value, ``[]`` for none: tells a stored None from no variable."""
    return [] if value is MISSING else [value]


class LTtxServerProtocol(Int32StringReceiver):
    """One client connection to the daemon."""

    log = Logger()

    def __init__(self, factory: "LTtxFactory") -> None:
        self.factory = factory
        # Raised to --max-frame by hello.
        self._decoder = FrameDecoder(min(HELLO_MAX_FRAME, factory.max_frame))
        self.paused = False  # set_reading(False): requests wait in the decoder
        self._hello_timer: Any = None
        self.authenticated = False
        #: What this connection's token may do (see ``authorize``).
        self.grant: Grant = NOTHING
        self.peer = "?"
        self.outbox: Optional[Outbox] = None  # made by the first subscribe
        self._refused_publishes = 0
        self._lost = False
        self.file_session: Optional[Any] = None  # a FileSession on a file connection

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = _describe(address)
        if not self.factory.auth.allows_peer(address):
            self.log.warn(
                "refused {peer}: no token is set, so only loopback clients are served "
                "(protected mode)", peer=self.peer)
            self._fatal(None, AuthError(
                "the daemon runs without a token and serves loopback clients only"))
            return
        _no_delay(self.transport)
        if self.factory.clock is not None:
            self._hello_timer = self.factory.clock.callLater(HELLO_TIMEOUT, self._hello_late)
        self.factory.connection_made(self)

    def _hello_late(self) -> None:
        self._hello_timer = None
        self.log.warn("{peer} did not authenticate within {seconds} s; closed",
                      peer=self.peer, seconds=HELLO_TIMEOUT)
        self._fatal(None, AuthError(f"no hello within {HELLO_TIMEOUT:g} seconds"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self.outbox is not None:
            self.factory.channels.remove(self.outbox)
        if self.file_session is not None:
            self.file_session.connection_lost()
        problem = None if self.authenticated else tls_failure(reason)
        if problem is not None:
            self.log.info("{peer}: TLS handshake failed: {problem}",
                          peer=self.peer, problem=problem)
        self.factory.connection_lost(self)

    # -- frames -------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        # The stream cannot be resynchronised cheaply: say why, then close.
        self.log.warn("{peer} sent a frame of {length} bytes, over the limit of {limit}",
                      peer=self.peer, length=length, limit=self._decoder.max_length)
        self._fatal(None, FrameTooLarge(
            f"frame of {length} bytes is over the limit of {self._decoder.max_length} bytes"))

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.feed(data)
        try:
            # Paused: the peer does not read its replies; what it sent waits
            # in the decoder until set_reading resumes.
            while not self.paused and not self.transport.disconnecting:
                try:
                    frame = decoder.next_frame()
                except FrameTooLong as e:
                    self.lengthLimitExceeded(e.length)
                    return
                if frame is None:
                    return
                self.stringReceived(frame)
        finally:
            # The publishes of this chunk are queued in the subscribers'
            # outboxes: one write per subscriber for the whole chunk, sent
            # even if a later frame of the chunk failed.
            self.factory.channels.flush()

    def set_reading(self, reading: bool) -> None:
        """
        Stop or resume serving this connection's requests: stopped while the
        daemon cannot write to it, so that a peer that does not read its
        replies cannot make them pile up here.  Requests already received
        wait in the buffer (``paused`` ends the frame loop) and are served on
        resumption.
        """
        self.paused = not reading
        set_reading(self.transport, reading)
        if reading and not self.transport.disconnecting:
            self.dataReceived(b"")

    def stringReceived(self, frame: bytes) -> None:
        if self.transport.disconnecting:
            return  # after a fatal error, nothing more is served
        if self.file_session is not None:  # a file connection (lttx.filetransfer)
            self.file_session.frame_received(frame)
            return
        try:
            message = codec.decode(frame)
        except BadRequest as e:
            if not self.authenticated:
                self._fatal(None, e)
            else:
                # The framing is intact, so the next frame can still be read.
                self.log.info("{peer}: {error}", peer=self.peer, error=e.message)
                self.send_error(None, e)
            return
        if not isinstance(message, list) or not message:
            self._protocol_violation(BadRequest("a frame must hold a non-empty array"))
            return
        kind = message[0]
        if kind == codec.REQUEST and len(message) == 4:
            self._request(message[1], message[2], message[3])
        elif kind == codec.PUBLISH and len(message) == 4 and self.authenticated:
            self.publish_received(message[1], message[2], message[3], frame)
        else:
            self._protocol_violation(BadRequest(
                f"not a request or publish frame: kind {kind!r:.20}, {len(message)} elements"))

    def _protocol_violation(self, error: LTtxError) -> None:
        if self.authenticated:
            self.log.info("{peer}: {error}", peer=self.peer, error=error.message)
            self.send_error(None, error)
        else:
            self._fatal(None, error)

    def _request(self, request_id: Any, name: Any, args: Any) -> None:
        if type(request_id) is not int or request_id < 0:
            self._protocol_violation(BadRequest("a request id must be a non-negative int"))
            return
        if not self.authenticated:
            self._hello(request_id, name, args)
            return
        handler = getattr(self, f"cmd_{name}", None) if isinstance(name, str) else None
        if handler is None or name == "hello":
            self._reply_error(request_id, name, BadRequest(f"unknown command {name!r:.40}"))
            return
        if not isinstance(args, list):
            self._reply_error(request_id, name, BadRequest("arguments must be an array"))
            return
        low, high = handler.arity
        if not low <= len(args) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            self._reply_error(request_id, name, BadRequest(
                f"{name} takes {expected} arguments, not {len(args)}"))
            return
        try:
            self._authorize_command(name, args)
            result = handler(*args)
        except LTtxError as e:
            self._reply_error(request_id, name, e)
            return
        except Exception:
            self.log.failure("{peer}: {command} failed", peer=self.peer, command=name)
            self._reply_error(request_id, name, ServerError(f"{name} failed in the daemon"))
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda value: self.send_reply(request_id, value),
                lambda failure: self._deferred_error(request_id, name, failure))
        else:
            self.send_reply(request_id, result)

    def _deferred_error(self, request_id: int, name: str, failure: Failure) -> None:
        if failure.check(LTtxError):
            self._reply_error(request_id, name, failure.value)
        else:
            self.log.failure("{peer}: {command} failed", failure, peer=self.peer, command=name)
            self._reply_error(request_id, name, ServerError(f"{name} failed in the daemon"))

    def _hello(self, request_id: int, name: Any, args: Any) -> None:
        if name != "hello":
            self.log.warn("{peer} sent {command!r:.40} before hello", peer=self.peer, command=name)
            self._fatal(request_id, AuthError("authenticate first: the first frame must be hello"))
            return
        token = args[0] if isinstance(args, list) and args else None
        grant = self.factory.auth.authenticate(token)
        if grant is None:
            self.log.warn("{peer} failed to authenticate: wrong token", peer=self.peer)
            self._fatal(request_id, AuthError("wrong token"))
            return
        options = args[1] if isinstance(args, list) and len(args) > 1 else None
        if isinstance(options, dict) and options.get("mode") == "file":
            if self.factory.files is None:
                self._fatal(request_id, BadRequest("this daemon does not serve files"))
                return
            self.file_session = self.factory.files.session(self)
        self.authenticated = True
        self.grant = grant
        self._decoder.max_length = self.factory.max_frame
        if self.file_session is None:
            self.transport.registerProducer(ReadThrottle(self.set_reading), True)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self.factory.auth.named_tokens:
            self.log.info("{peer} connected as {role}", peer=self.peer, role=grant.name)
        else:
            self.log.info("{peer} connected", peer=self.peer)
        self.send_reply(request_id, {
            "server": "lttx",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "max_frame": self._decoder.max_length,
        })

    # -- rights -------------------------------------------------------------

    def authorize(self, action: str, resource: Any = None) -> None:
        """
        Check that this connection's token may do ``action`` (``read``,
        ``write``, ``publish``, ``subscribe``, ``upload``, ``download``) on the
        variable, channel or file named ``resource`` (None: on any name).

        :raises PermissionDenied: if it may not.
        """
        if not self.grant.allows(action, resource):
            what = "anything" if resource is None else repr(resource)[:80]
            raise PermissionDenied(f"the token {self.grant.name!r} may not {action} {what}")

    def _authorize_command(self, name: str, args: list[Any]) -> None:
        if self.grant.unlimited:
            return
        if name not in COMMAND_RIGHTS:
            raise PermissionDenied(
                f"the token {self.grant.name!r} may not use {name}: it needs every right")
        needs = COMMAND_RIGHTS[name]
        if needs is not None:
            action, argument = needs
            self.authorize(action, None if argument is None else args[argument])

    # -- replies ------------------------------------------------------------

    def send_frame(self, payload: Any) -> None:
        """Encode and send one frame."""
        self.sendString(codec.encode(payload))

    def send_reply(self, request_id: int, result: Any) -> None:
        if self.transport.disconnecting:
            return
        try:
            frame = codec.encode([codec.REPLY, request_id, result])
        except LTtxError as e:  # only values the store holds are sent, but say so if not
            self.send_error(request_id, e)
            return
        self.sendString(frame)

    def send_error(self, request_id: Optional[int], error: LTtxError) -> None:
        self.send_frame([codec.ERROR, request_id, error.code, error.message])

    def _reply_error(self, request_id: int, name: Any, error: LTtxError) -> None:
        # Not a field named "message": a legacy log observer (trial's) replaces
        # it with () in the event every observer shares.
        self.log.info("{peer}: {command!r:.40} refused: {code}: {reason}",
                      peer=self.peer, command=name, code=error.code, reason=error.message)
        self.send_error(request_id, error)

    def _fatal(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send an error, then close: the connection cannot go on."""
        if not self.transport.disconnecting:
            self.send_error(request_id, error)
            if self.authenticated and self.file_session is None:
                # A TLS transport closes only once its producer (the read
                # throttle or the outbox) is gone.
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    # -- channels (the registry lives in the factory) -----------------------

    def publish_received(self, channel: Any, key: Any, data: Any,
                         payload: Optional[bytes] = None) -> None:
        """A publish frame: no reply, like a NATS PUB; errors come as notices."""
        # The payload is [5, channel, key, data]: its tail after the array
        # head and kind is reused as is, so data is never encoded again.
        encoded = payload[2:] if payload is not None and payload[:2] == PUBLISH_HEAD else None
        try:
            if not self.grant.unlimited:
                self.authorize("publish", channel)
            self.factory.channels.publish(channel, key, data, encoded)
        except LTtxError as e:
            # One log line per connection, not one per refused message.
            if not self._refused_publishes:
                self.log.info("{peer}: publish refused: {code}: {reason}",
                              peer=self.peer, code=e.code, reason=e.message)
            self._refused_publishes += 1
            self.send_frame([codec.NOTICE, e.code, e.message])

    def _slow_subscriber(self, reason: str) -> None:
        assert self.outbox is not None
        self.factory.channels.cut_off(self.outbox, reason, who=self.peer)

    def _cut_off(self, reason: str) -> None:
        """The registry dropped this subscriber: say why, then close."""
        if self.transport.disconnecting:
            return
        self.transport.unregisterProducer()
        self.send_frame([codec.NOTICE, SlowSubscriber.code, f"slow subscriber: {reason}"])
        self.transport.loseConnection()
        # A subscriber that does not read would hold the connection open
        # forever waiting for the notice to drain: abort it after a grace.
        clock = self.factory.clock
        if clock is not None:
            clock.callLater(CUT_OFF_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._lost:
            self.log.info("{peer} did not read its cut-off notice within {grace} s; aborted",
                          peer=self.peer, grace=CUT_OFF_GRACE)
            self.transport.abortConnection()

    @command(1, 3)
    def cmd_subscribe(self, channels: Any, password: Any = None, options: Any = None) -> Any:
        names = split_channels(channels)
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise BadRequest("subscribe options must be a map")
        conflate = bool(options.get("conflate", False))
        for name in names:
            self.authorize("subscribe", name)
        if self.outbox is None:
            # The outbox takes over from the read throttle as the producer.
            self.transport.unregisterProducer()
            self.outbox = Outbox(self.transport, self.factory.subscriber_buffer,
                                 self._slow_subscriber, self._cut_off, self.set_reading)
        result = self.factory.channels.subscribe(self.outbox, names, password, conflate)
        self.log.info("{peer} subscribed to {channels}{conflating}", peer=self.peer,
                      channels=", ".join(names), conflating=" (conflating)" if conflate else "")
        return result

    @command(1)
    def cmd_unsubscribe(self, channels: Any) -> Any:
        names = split_channels(channels)
        if self.outbox is None:
            return []
        left = self.factory.channels.unsubscribe(self.outbox, names)
        if left:
            self.log.info("{peer} unsubscribed from {channels}", peer=self.peer,
                          channels=", ".join(left))
        return left

    # -- commands -----------------------------------------------------------

    @command(0)
    def cmd_ping(self) -> str:
        return "pong"

    @command(2)
    def cmd_put(self, name: Any, value: Any) -> Any:
        return self.factory.store.put(name, value)

    @command(1)
    def cmd_get(self, name: Any) -> Any:
        return _map(self.factory.store.get(name), _present)

    @command(1)
    def cmd_delete(self, name: Any) -> Any:
        return self.factory.store.delete(name)

    @command(1)
    def cmd_exists(self, name: Any) -> Any:
        return self.factory.store.exists(name)

    @command(0, 1)
    def cmd_keys(self, pattern: Any = "*") -> Any:
        names = self.factory.store.keys(pattern)
        if self.grant.unlimited:
            return names
        # A token sees only the names it may read.
        return _map(names, lambda found: [n for n in found if self.grant.allows("read", n)])

    @command(3)
    def cmd_dict_change(self, name: Any, key: Any, value: Any) -> Any:
        return self.factory.store.dict_change(name, key, value)

    @command(2)
    def cmd_get_dict_value(self, name: Any, key: Any) -> Any:
        return _map(self.factory.store.get_dict_value(name, key), _present)

    @command(2)
    def cmd_list_append(self, name: Any, item: Any) -> Any:
        return self.factory.store.list_append(name, item)

    @command(1, 2)
    def cmd_list_pop(self, name: Any, index: Any = -1) -> Any:
        return self.factory.store.list_pop(name, index)

    @command(2)
    def cmd_list_remove(self, name: Any, item: Any) -> Any:
        return self.factory.store.list_remove(name, item)

    @command(2)
    def cmd_get_list_value(self, name: Any, index: Any) -> Any:
        return self.factory.store.get_list_value(name, index)

    @command(0)
    def cmd_status(self) -> Any:
        return self.factory.status()


def _map(result: Any, f: Callable[[Any], Any]) -> Any:
    """Apply ``f`` to a result that may still be a Deferred."""
    if isinstance(result, Deferred):
        return result.addCallback(f)
    return f(result)


def _no_delay(transport: Any) -> None:
    """Disable Nagle: a message must not wait 40 ms for a delayed ACK."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
