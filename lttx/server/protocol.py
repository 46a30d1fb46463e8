"""
The daemon's side of one client connection: its plumbing.

Frames are 4-byte big-endian length prefixed (:class:`Int32StringReceiver`,
read through :class:`~lttx.wire.framing.FrameDecoder`); each payload is
decoded by :mod:`lttx.wire.codec`.  The protocol owns what is about the
connection itself: ``hello`` and its timeout, the frame loop and the reading
throttle, errors after which the connection cannot go on, publish frames (the
hot path) and the connection's channel reader.  Requests go to a
:class:`~lttx.server.dispatch.Dispatcher` over the handlers of
:mod:`lttx.server.commands`, or, on a file connection, to its
:class:`~lttx.server.file_session.FileSession`.  The protocol keeps only its
connection's facts (authenticated or not, its peer, its grant); what
connections share is the :class:`~lttx.server.state.ServerState` it is
given.  The message set is documented in ``docs/protocol.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import msgpack
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .._version import PROTOCOL_VERSION, __version__
from ..diskio import read_size
from ..errors import (
    AuthError,
    BadRequest,
    FrameTooLarge,
    LimitExceeded,
    LTtxError,
    TimeoutError,
)
from ..state.auth import COMMAND_RIGHTS, NOTHING, Grant, authorize
from ..state.publishing import publish_frames
from ..wire import codec
from ..wire.codec import encoded_ext
from ..wire.excerpt import excerpt
from ..wire.frames import PREFIX, PUBLISH_HEAD
from ..wire.framing import FrameDecoder, FrameTooLong
from ..wire.limits import DENSE_FROM, decode_request
from ..wire.tls import tls_failure
from ..wire.writes import send_now, write_now
from .commands import CommandConnection, Commands
from .dispatch import Dispatcher
from .file_session import FileSession, IFileConnection
from .budget import LARGE, MUST_SEND, unsent_bytes
from .reader import ChannelReader, ReadThrottle, set_reading
from .state import ServerState

#: Largest frame before ``hello`` (a hello is under 1 KiB): a peer without a
#: token cannot make the daemon buffer a 64 MiB frame.
HELLO_MAX_FRAME = 64 * 1024

#: Seconds a connection has to authenticate before it is closed.
HELLO_TIMEOUT = 10.0
#: Seconds a connection may stop in the middle of a frame before it is closed.
FRAME_TIMEOUT = 30.0


@implementer(IFileConnection)
class LTtxServerProtocol(Int32StringReceiver):
    """
    One client connection to the daemon.

    :param state: what the daemon's connections share.
    """

    log = Logger()

    #: Builds the request handlers of a command connection from the state and
    #: the connection (:class:`~lttx.server.commands.CommandConnection`).
    command_handlers: Callable[[ServerState, CommandConnection], object] = Commands

    def __init__(self, state: ServerState) -> None:
        self.state = state
        # Raised to --max-frame by hello.
        self._decoder = FrameDecoder(min(HELLO_MAX_FRAME, state.max_frame))
        self.paused = False  # set_reading(False): requests wait in the decoder
        self._hello_timer: Any = None
        self._frame_timer: Any = None  # runs while a frame is incomplete
        self.authenticated = False
        #: What this connection's token may do (see ``authorize``).
        self.grant: Grant = NOTHING
        self.wants_batches = False  # set by hello (option "batches")
        self.peer = "?"
        self.reader: Optional[ChannelReader] = None  # made by the first subscribe
        self._refused_publishes = 0
        self.file_session: Optional[FileSession] = None  # on a file connection
        self._dispatcher: Optional[Dispatcher] = None  # on a command connection, after hello
        self._host = "?"  # the peer's host: the throttle and the refusal log key on it
        self._held_hello: Any = None  # a hello waiting for its turn (HelloThrottle)
        self._lost = False  # connectionLost ran: a held hello is not answered
        #: When the connection was accepted (the state's clock), for the status page.
        self.since: Optional[float] = None
        #: Bytes received, and sent by this protocol itself (the channel reader and the
        #: file sender count theirs): one integer add per chunk or frame.
        self.bytes_in = 0
        self._bytes_sent = 0
        self._frame_admitted = False  # the long frame arriving passed the budget
        self._must_send: set[int] = set()  # changes whose reply --max-buffered never refuses
        # Within dataReceived's frame loop: a reply is sent at once
        # (write_now) only if it answers the chunk's last frame, else
        # buffered and sent with the others by send_now; outside (made
        # later by a Deferred), always at once.
        self._in_chunk = False
        # Authenticated on a command connection: PUBLISH frames take the
        # short way in dataReceived.
        self._publishing = False
        #: A blocking client's request connection (hello's ``"mode":
        #: "requests"``): requests only, never a subscription or a watch.
        self.requests_only = False

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = _describe(address)
        self._host = str(getattr(address, "host", address))
        if not self.state.auth.allows_peer(address):
            self._log_refusal(
                "refused {peer}: no token is set, so only loopback clients are served "
                "(protected mode)")
            self._fatal(None, AuthError(
                "the daemon runs without a token and serves loopback clients only"))
            return
        full = self.state.admit(self._host)
        if full is not None:
            self._log_refusal("refused {peer}: {why}", why=full)
            self._fatal(None, LimitExceeded(f"connection refused: {full}"))
            return
        _tune_tcp(self.transport)
        if self.state.clock is not None:
            self.since = self.state.clock.seconds()
            self._hello_timer = self.state.clock.callLater(HELLO_TIMEOUT, self._hello_late)
        self.state.connection_made(self, self._host)

    def _log_refusal(self, text: str, **fields: Any) -> None:
        """A warning about a refused or failed connection attempt, logged for the
        first few of its host in each minute; the rest are counted, then summed."""
        hidden = self.state.refusals.note(self._host)
        if hidden is None:
            return
        if hidden:
            text += " ({hidden} more refusals from this host were not logged)"
        self.log.warn(text, peer=self.peer, hidden=hidden, **fields)

    def _hello_late(self) -> None:
        self._hello_timer = None
        self._log_refusal("{peer} did not authenticate within {seconds} s; closed",
                          seconds=HELLO_TIMEOUT)
        self._fatal(None, AuthError(f"no hello within {HELLO_TIMEOUT:g} seconds"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self._held_hello is not None:
            self._held_hello.cancel()
            self._held_hello = None
            self.state.hello_throttle.abandoned(self._host)
        if self.reader is not None:
            self.state.channels.remove(self.reader)
        if self.file_session is not None:
            self.file_session.connection_lost()
        problem = None if self.authenticated else tls_failure(reason)
        if problem is not None:
            self.log.info("{peer}: TLS handshake failed: {problem}",
                          peer=self.peer, problem=problem)
        self.state.connection_lost(self)

    # -- frames -------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        # The stream cannot be resynchronised cheaply: say why, then close.
        self.log.warn("{peer} sent a frame of {length} bytes, over the limit of {limit}",
                      peer=self.peer, length=length, limit=self._decoder.max_length)
        self._fatal(None, FrameTooLarge(
            f"frame of {length} bytes is over the limit of {self._decoder.max_length} bytes"))

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        if self._dispatcher is not None:
            frame = decoder.whole(data)
            if (frame is not None and not frame.startswith(PUBLISH_HEAD) and not self.paused
                    and not self.transport.disconnecting):
                self._one_request(len(data), frame)
                return
        self.bytes_in += len(data)
        decoder.feed(data)
        next_frame, publish, unpackb = (decoder.next_frame, self.state.channels.publish,
                                        msgpack.unpackb)
        take_run = decoder.take_run
        self._in_chunk = True
        self.state.chunk_begun()
        try:
            # Paused: the peer does not read its replies; what it sent waits
            # in the decoder until set_reading resumes.
            while not self.paused and not self.transport.disconnecting:
                if self._publishing and self.grant.unlimited:
                    # The hot path of a feed: the read's run of PUBLISH
                    # frames ([5, channel, key, data], under DENSE_FROM) is
                    # split in one loop and goes straight to the channel
                    # logs (lttx.state.publishing: what stringReceived and
                    # publish_received do, without their Python frames).  A publish has no reply:
                    # a pause takes effect at the frame after the run.
                    run = take_run(PUBLISH_HEAD, DENSE_FROM)
                    if run:
                        self._frame_admitted = False
                        publish_frames(self.state.channels, run, self.stringReceived,
                                       self._publish_refused)
                        continue
                try:
                    frame = next_frame()
                except FrameTooLong as e:
                    self.lengthLimitExceeded(e.length)
                    return
                if frame is None:
                    if (decoder.collecting and not self._frame_admitted
                            and self.file_session is None):  # (file data: one chunk each)
                        if not self._admit_frame(decoder.pending_length):
                            return
                    if self.file_session is None:
                        read_size(self.transport, decoder.collecting)
                    self._watch_partial(decoder.buffered > 0, bool(data))
                    return
                self._frame_admitted = False
                if frame[:2] == PUBLISH_HEAD and self._publishing and len(frame) < DENSE_FROM:
                    # A publish of a token with limited rights: checked per
                    # channel.  A frame of DENSE_FROM or more takes
                    # stringReceived, for its bound on lists and maps.
                    try:
                        message = unpackb(frame, raw=False, strict_map_key=False,
                                          ext_hook=encoded_ext, use_list=True)
                    except Exception:  # not one valid value, or a refused extension
                        self.stringReceived(frame)  # reports it
                        continue
                    if self.grant.unlimited:
                        try:
                            publish(message[1], message[2], message[3], frame[2:])
                        except LTtxError as e:
                            self._publish_refused(e)
                    else:
                        self.publish_received(message[1], message[2], message[3], frame)
                    continue
                self.stringReceived(frame)
        finally:
            self._chunk_served()

    def _one_request(self, size: int, frame: bytes) -> None:
        """
        :meth:`dataReceived` of a read that is one whole frame of a request
        (not a publish), nothing buffered before it, the connection served
        (authenticated, a command connection, not paused nor closing): what
        the frame loop does with it, without the loop.  The decoder is not
        fed: it would give this frame, then nothing more.
        """
        self.bytes_in += size
        self._in_chunk = True
        self.state.chunk_begun()
        try:
            self._frame_admitted = False
            self.stringReceived(frame)
            # The loop's next turn: no frame (none is incomplete either).
            if not self.paused and not self.transport.disconnecting:
                if self.file_session is None:
                    read_size(self.transport, False)
                if self._frame_timer is not None:
                    self._watch_partial(False, True)
        finally:
            self._chunk_served()

    def _chunk_served(self) -> None:
        """The end of a chunk's frames (also after a failed frame)."""
        self._in_chunk = False
        # The publishes of this chunk are in the channel logs: each
        # subscriber is woken once for the whole chunk (one write), even
        # if a later frame of the chunk failed.
        try:
            self.state.channels.flush()
        finally:
            # The journal write of the chunk's changes, then their replies
            # (always: a chunk left open would hold every later write).
            self.state.chunk_done()
        # The replies of this chunk leave now, not a reactor turn later.
        send_now(self.transport)

    @property
    def held_bytes(self) -> int:
        """Memory this connection holds: its incomplete frame (at its declared
        length) and the replies written to it and not yet sent."""
        decoder = self._decoder
        return max(decoder.buffered, decoder.pending_length) + unsent_bytes(self.transport)

    def _admit_frame(self, length: int) -> bool:
        """Whether a long frame just started fits in the daemon's --max-buffered;
        if not, a limit error and the connection is closed."""
        why = self.state.budget.refuse_frame(self, length)
        if why is None:
            self._frame_admitted = True
            return True
        self._log_refusal("{peer}: a frame of {length} bytes refused: {why}; closed",
                          length=length, why=why)
        self._fatal(None, LimitExceeded(why))
        return False

    def _watch_partial(self, partial: bool, progress: bool) -> None:
        """Close a connection that stops in the middle of a frame for
        :data:`FRAME_TIMEOUT` seconds (what it sent is held meanwhile)."""
        clock = self.state.clock
        if clock is None:
            return
        if not partial:
            if self._frame_timer is not None:
                self._frame_timer.cancel()
                self._frame_timer = None
        elif self._frame_timer is None:
            self._frame_timer = clock.callLater(FRAME_TIMEOUT, self._frame_stalled)
        elif progress:
            self._frame_timer.reset(FRAME_TIMEOUT)

    def _frame_stalled(self) -> None:
        self._frame_timer = None
        held = self._decoder.buffered
        self._log_refusal("{peer} sent {held} bytes of a frame, then nothing for {seconds} s; "
                          "closed", held=held, seconds=FRAME_TIMEOUT)
        self._fatal(None, TimeoutError(
            f"no progress within a frame for {FRAME_TIMEOUT:g} seconds (docs/limits.md)"))

    def set_reading(self, reading: bool) -> None:
        """
        Stop or resume serving this connection's requests: stopped while the
        daemon cannot write to it, so that a peer that does not read its
        replies cannot make them pile up here.  Requests already received
        wait in the buffer (``paused`` ends the frame loop) and are served on
        resumption.
        """
        self.paused = not reading
        if not reading and self._frame_timer is not None:
            # The daemon stopped reading: a frame cut short now is not the peer's delay.
            self._frame_timer.cancel()
            self._frame_timer = None
        set_reading(self.transport, reading)
        if reading and not self.transport.disconnecting:
            self.dataReceived(b"")

    def stringReceived(self, frame: bytes) -> None:
        if self.transport.disconnecting:
            return  # after a fatal error, nothing more is served
        if self.file_session is not None:  # a file connection
            self.file_session.frame_received(frame)
            return
        try:
            # (Small frames, almost all, skip a call: they cannot be dense enough to matter.)
            message = codec.decode(frame) if len(frame) < DENSE_FROM else decode_request(frame)
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
        if type(kind) is not int:  # False and 0.0 equal 0 but are not frame kinds
            self._protocol_violation(BadRequest(
                f"a frame kind must be an int, not {excerpt(kind, 20)}"))
        elif kind == codec.REQUEST and len(message) == 4:
            self._request(message[1], message[2], message[3])
        elif kind == codec.PUBLISH and len(message) == 4 and self.authenticated:
            self.publish_received(message[1], message[2], message[3], frame)
        else:
            self._protocol_violation(BadRequest(
                f"not a request or publish frame: kind {kind}, {len(message)} elements"))

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
        assert self._dispatcher is not None  # made by hello
        if name == MUST_SEND:
            self._must_send.add(request_id)
        self._dispatcher.dispatch(request_id, name, args)

    def _hello(self, request_id: int, name: Any, args: Any) -> None:
        if name != "hello":
            self._log_refusal("{peer} sent {command} before hello", command=excerpt(name, 40))
            self._fatal(request_id, AuthError("authenticate first: the first frame must be hello"))
            return
        if self._held_hello is not None:
            self._fatal(request_id, AuthError("one hello at a time"))
            return
        wait = self.state.hello_throttle.admit(self._host)
        if wait is None:
            self._log_refusal("{peer}: too many failed hellos from this host are waiting; "
                              "refused")
            self._fatal(request_id, AuthError(
                "too many failed authentications from this address: try again later"))
            return
        if wait > 0 and self.state.clock is not None:
            # This host sent wrong tokens: its token is checked only at its turn.
            # Reading stops meanwhile; other connections are served as usual.
            self.set_reading(False)
            self._held_hello = self.state.clock.callLater(
                wait, self._check_hello, request_id, args)
            return
        self._check_hello(request_id, args)

    def _check_hello(self, request_id: int, args: Any) -> None:
        held, self._held_hello = self._held_hello is not None or self.paused, None
        if self._lost:
            return
        token = args[0] if isinstance(args, list) and args else None
        grant = self.state.auth.authenticate(token)
        self.state.hello_throttle.checked(self._host, grant is not None)
        if grant is None:
            self._log_refusal("{peer} failed to authenticate: wrong token")
            self._fatal(request_id, AuthError("wrong token"))
            return
        options = args[1] if isinstance(args, list) and len(args) > 1 else None
        if isinstance(options, dict) and options.get("mode") == "file":
            if self.state.files is None:
                self._fatal(request_id, BadRequest("this daemon does not serve files"))
                return
            self.file_session = self.state.file_sessions(self.state.files, self)
        else:
            self._dispatcher = Dispatcher(self.command_handlers(self.state, self), self,
                                          COMMAND_RIGHTS, self.log)
            self.requests_only = isinstance(options, dict) and options.get("mode") == "requests"
        self.authenticated = True
        self.grant = grant
        # A client that reads MESSAGES frames (lttx.wire.batches) says so.
        self.wants_batches = isinstance(options, dict) and options.get("batches") is True
        self._publishing = self.file_session is None
        self._decoder.max_length = self.state.max_frame
        if self.file_session is None:
            self.transport.registerProducer(ReadThrottle(self.set_reading), True)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        kind = " (request connection)" if self.requests_only else ""
        if self.state.auth.named_tokens:
            self.log.info("{peer} connected as {role}{kind}", peer=self.peer, role=grant.name,
                          kind=kind)
        else:
            self.log.info("{peer} connected{kind}", peer=self.peer, kind=kind)
        self.send_reply(request_id, {
            "server": "lttx",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "max_frame": self._decoder.max_length,
        })
        if held:
            self.set_reading(True)  # the requests sent behind the held hello

    # -- rights -------------------------------------------------------------

    def authorize(self, action: str, resource: Any = None) -> None:
        """
        Check that this connection's token may do ``action`` (``read``,
        ``write``, ``publish``, ``subscribe``, ``upload``, ``download``) on the
        variable, channel or file named ``resource`` (None: on any name).

        :raises PermissionDenied: if it may not.
        """
        authorize(self.grant, action, resource)

    # -- replies ------------------------------------------------------------

    def sendString(self, string: bytes) -> None:
        self._bytes_sent += len(string) + 4  # the length prefix
        if not self._in_chunk or not self._decoder.buffered:
            write_now(self.transport, PREFIX.pack(len(string)) + string)
        else:
            super().sendString(string)

    @property
    def bytes_out(self) -> int:
        """Bytes written to this connection: replies, messages, file data."""
        sent = self._bytes_sent
        if self.reader is not None:
            sent += self.reader.written
        if self.file_session is not None:
            sent += self.file_session.bytes_sent
        return sent

    def send_frame(self, payload: Any) -> None:
        """Encode and send one frame."""
        self.sendString(self.state.encoder.encode(payload))

    def send_reply(self, request_id: int, result: Any) -> None:
        """Send ``[1, request_id, result]``, unless the connection is closing."""
        if self.transport.disconnecting:
            return
        try:
            # A large DataFrame or array the store holds is a piece of its own.
            pieces = self.state.encoder.encode_pieces([codec.REPLY, request_id, result])
        except LTtxError as e:  # only values the store holds are sent, but say so if not
            self.send_error(request_id, e)
            return
        must_send = False
        if self._must_send:
            must_send = request_id in self._must_send
            self._must_send.discard(request_id)
        if (len(pieces) > 1 or len(pieces[0]) >= LARGE) and not must_send:
            why = self.state.budget.refuse_reply(sum(map(len, pieces)))
            if why is not None:
                self._log_refusal("{peer}: reply to request {id} not sent: {why}",
                                  id=request_id, why=why)
                self.send_error(request_id, LimitExceeded(why))
                return
        if self.reader is not None and self.reader.watch is not None:
            # After the watched changes made before it (docs/protocol.md, "Watch").
            self.reader.reply(PREFIX.pack(sum(map(len, pieces))) + b"".join(pieces))
        elif len(pieces) == 1:
            self.sendString(pieces[0])
        else:
            self.transport.writeSequence(
                [PREFIX.pack(sum(map(len, pieces))) + pieces[0], *pieces[1:]])

    def send_error(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send ``[2, request_id, code, message]``."""
        if self._must_send:
            self._must_send.discard(request_id)  # type: ignore[arg-type]
        self.send_frame([codec.ERROR, request_id, error.code, error.message])

    def _fatal(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send an error, then close: the connection cannot go on."""
        if not self.transport.disconnecting:
            self.send_error(request_id, error)
            if self.authenticated and self.file_session is None:
                # A TLS transport closes only once its producer (the read
                # throttle or the channel reader) is gone.
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    # -- channels (the registry lives in the state) -------------------------

    def publish_received(self, channel: Any, key: Any, data: Any,
                         payload: Optional[bytes] = None) -> None:
        """A publish frame: no reply, like a NATS PUB; errors come as notices."""
        # The payload is [5, channel, key, data]: its tail after the array
        # head and kind is reused as is, so data is never encoded again.
        encoded = payload[2:] if payload is not None and payload[:2] == PUBLISH_HEAD else None
        try:
            if not self.grant.unlimited:
                authorize(self.grant, "publish", channel)
            self.state.channels.publish(channel, key, data, encoded)
        except LTtxError as e:
            self._publish_refused(e)

    def _publish_refused(self, e: LTtxError) -> None:
        # One log line per connection, not one per refused message.
        if not self._refused_publishes:
            self.log.info("{peer}: publish refused: {code}: {reason}",
                          peer=self.peer, code=e.code, reason=e.message)
        self._refused_publishes += 1
        self.send_frame([codec.NOTICE, e.code, e.message])

    def open_reader(self) -> ChannelReader:
        """This connection's channel reader, made by its first subscribe.

        :raises BadRequest: on a request connection.
        """
        if self.requests_only:
            raise BadRequest('a request connection (hello mode "requests") neither '
                             'subscribes nor watches')
        if self.reader is None:
            # The reader takes over from the read throttle as the producer.
            self.transport.unregisterProducer()
            self.reader = ChannelReader(self.transport, self.state.channels, self.set_reading)
            self.reader.batches = self.wants_batches
        return self.reader


def _tune_tcp(transport: Any) -> None:
    """
    Disable Nagle (a message must not wait 40 ms for a delayed ACK) and turn
    TCP keepalive on, so a peer whose machine vanished without a FIN is found
    out by the kernel instead of holding its connection (and an upload's
    name) forever.
    """
    for option in ("setTcpNoDelay", "setTcpKeepAlive"):
        setter = getattr(transport, option, None)
        if setter is not None:
            setter(True)


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
