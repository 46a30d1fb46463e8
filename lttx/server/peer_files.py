"""
A file connection from this daemon to another daemon on the same Redis:
:class:`PeerFileProtocol`, opened by :func:`connect_peer`.

When a client asks daemon B for a file that daemon A holds, B opens a file
connection to A (the address and the credential are in A's entry of the
daemon directory, :mod:`lttx.engines.redis.directory`) and speaks the usual
file exchange of ``docs/protocol.md`` ("File transfer") to it, as a client
would; the raw data frames that follow a ``download`` reply go to a *sink*
(B writes them on to its client).  The daemon never imports the client
package, so this is the few lines of that exchange a daemon needs: hello,
requests, replies and errors, raw frames counted from the announced size.

Every failure to reach A, or a connection to A lost before its reply, is a
:class:`~lttx.errors.Unavailable` that names A.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from ..diskio import read_big
from ..errors import LTtxError, Unavailable, error_from_wire
from ..wire import codec
from ..wire.frames import PREFIX
from ..wire.framing import FrameDecoder, FrameTooLong

#: Seconds to connect to the holding daemon and hear its hello reply.
CONNECT_TIMEOUT = 5.0
#: Seconds the holding daemon may take to answer a request (it may hash a
#: prefix for a resumed download, or sync a folder for a delete).
REPLY_TIMEOUT = 60.0
#: The largest frame taken from a peer (its data frames are 256 KiB).
PEER_MAX_FRAME = 64 * 1024 * 1024


class PeerFileProtocol(Protocol):
    """
    This daemon's file connection to another daemon.

    :param token: the other daemon's files token (from the daemon directory).
    :param describe: how log lines and errors name the other daemon.
    :param clock: times :data:`REPLY_TIMEOUT`.
    """

    #: A TCP transport (abortConnection, pauseProducing: an IProducer too).
    transport: Any

    def __init__(self, token: str, describe: str, clock: Any) -> None:
        self.token = token
        self.describe = describe
        self.clock = clock
        self._decoder = FrameDecoder(PEER_MAX_FRAME)
        self._pending: dict[int, tuple[Deferred[Any], bool, Any]] = {}
        self._next_id = 0
        #: Raw data bytes still to come after a download reply.
        self.raw_left = 0
        #: Gets each raw data chunk (set before the download request is sent).
        self.sink: Optional[Callable[[bytes], None]] = None
        #: Called once the last raw chunk went to the sink.
        self.on_data_end: Optional[Callable[[], None]] = None
        #: Fires (with None) when the connection is gone.
        self.lost: Deferred[None] = Deferred()
        self.error: Optional[LTtxError] = None
        self.hello: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        read_big(self.transport)
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(True)
        self.request("hello", self.token, {"mode": "file", "client": "lttx-daemon"},
                     timeout=CONNECT_TIMEOUT).chainDeferred(self.hello)

    def request(self, command: str, *args: Any, data_follows: bool = False,
                timeout: float = REPLY_TIMEOUT) -> "Deferred[Any]":
        """Send ``[0, id, command, args]``; fires with the reply or the typed error.
        With ``data_follows``, the reply's ``size - offset`` raw bytes go to the sink."""
        request_id = self._next_id
        self._next_id += 1
        d: Deferred[Any] = Deferred()
        if self.error is not None or self.lost.called:
            d.errback(self.error or Unavailable(f"{self.describe}: the connection is closed"))
            return d
        timer = self.clock.callLater(timeout, self._late, command, timeout)
        self._pending[request_id] = (d, data_follows, timer)
        payload = codec.encode([codec.REQUEST, request_id, command, list(args)])
        self.transport.write(PREFIX.pack(len(payload)) + payload)
        return d

    def _late(self, command: str, timeout: float) -> None:
        self._broken(Unavailable(f"{self.describe}: no answer to {command} within "
                                 f"{timeout:g} s"))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)
        while not self.lost.called:
            try:
                frame = self._decoder.next_frame()
            except FrameTooLong as e:
                self._broken(Unavailable(f"{self.describe}: sent a frame of {e.length} bytes"))
                self.transport.abortConnection()
                return
            if frame is None:
                return
            if self.raw_left:
                self._raw(frame)
            else:
                self._message(frame)

    def _raw(self, chunk: bytes) -> None:
        if len(chunk) > self.raw_left:
            self._broken(Unavailable(f"{self.describe}: sent more file data than announced"))
            self.transport.abortConnection()
            return
        self.raw_left -= len(chunk)
        assert self.sink is not None
        self.sink(chunk)
        if not self.raw_left and self.on_data_end is not None:
            self.on_data_end()

    def _message(self, frame: bytes) -> None:
        try:
            message = codec.decode(frame)
            kind, request_id = message[0], message[1]
        except (LTtxError, TypeError, IndexError, KeyError):
            self._broken(Unavailable(f"{self.describe}: sent an undecodable frame"))
            self.transport.abortConnection()
            return
        if request_id not in self._pending:
            if kind == codec.ERROR:  # an error about no request: the peer gives up
                self._broken(Unavailable(f"{self.describe}: {message[3]}"))
            return
        d, data_follows, timer = self._pending.pop(request_id)
        if timer.active():
            timer.cancel()
        if kind == codec.REPLY:
            result = message[2]
            if data_follows:
                # Before any more frame is read: the raw frames follow at once.
                self.raw_left = int(result["size"]) - int(result["offset"])
            d.callback(result)
            if data_follows and not self.raw_left and self.on_data_end is not None:
                self.on_data_end()
        elif kind == codec.ERROR:
            d.errback(error_from_wire(message[2], message[3]))
        else:
            d.errback(Unavailable(f"{self.describe}: sent frame kind {kind!r}"))

    def _broken(self, error: LTtxError) -> None:
        if self.error is None:
            self.error = error
        pending, self._pending = self._pending, {}
        for d, _, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(error)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._broken(Unavailable(f"{self.describe}: the connection was lost"))
        self.lost.callback(None)

    def close(self) -> "Deferred[None]":
        """Close the connection; fires once it is closed."""
        if not self.lost.called:
            self.transport.loseConnection()
        return self.lost


def split_address(address: str, host: Optional[str]) -> tuple[str, int]:
    """
    ``(host, port)`` of a ``listening`` address of the daemon directory
    (``127.0.0.1:7001``, ``[::1]:7001``); a wildcard address (``0.0.0.0``,
    ``::``) is reached at the daemon's own host name ``host``.
    """
    where, _, port = address.rpartition(":")
    where = where.strip("[]")
    if where in ("0.0.0.0", "::", "") and host:
        where = host
    return where, int(port)


def connect_peer(reactor: Any, address: str, host: Optional[str], token: str,
                 describe: str) -> "Deferred[PeerFileProtocol]":
    """
    Open a file connection to the daemon listening at ``address`` and say
    hello; fires with the protocol once the other daemon accepted it.

    :raises Unavailable: (as the Deferred's failure) if it cannot be reached
        within :data:`CONNECT_TIMEOUT` seconds or refuses the hello.
    """
    try:
        where, port = split_address(address, host)
    except ValueError:
        return fail(Unavailable(f"{describe}: no address to reach it at ({address!r})"))
    protocol = PeerFileProtocol(token, describe, reactor)
    endpoint = HostnameEndpoint(reactor, where, port, timeout=CONNECT_TIMEOUT)
    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False  # no "Starting factory" line for each relayed download
    d = endpoint.connect(factory)

    def unreachable(failure: Failure) -> Failure:
        reason = failure.getErrorMessage() or getattr(failure.type, "__name__", "failed")
        return Failure(Unavailable(f"{describe}: cannot be reached ({reason})"))

    def hello_refused(failure: Failure) -> Failure:
        protocol.transport.abortConnection()
        error = failure.value
        if isinstance(error, Unavailable):
            return failure
        return Failure(Unavailable(f"{describe}: refused this daemon ({error})"))

    d.addCallbacks(lambda _: protocol.hello, unreachable)
    d.addErrback(lambda f: f if f.check(Unavailable) else hello_refused(f))
    return d.addCallback(lambda _: protocol)


__all__ = ["CONNECT_TIMEOUT", "PeerFileProtocol", "REPLY_TIMEOUT", "connect_peer",
           "split_address"]
