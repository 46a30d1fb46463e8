"""
A blocking client's request connection: :class:`RequestConnection`, a plain
blocking socket on which a calling thread sends its request and reads its
own reply, as redis-py does.

A call on the client's main connection is answered in the reactor thread
(its ``epoll_wait`` wakes, it reads and decodes the reply, then wakes the
caller): two thread wake-ups and the GIL handed over twice per call.  On the
request connection the caller's ``recv`` returns with the reply: one wake,
no hand-off, the reactor thread not involved at all.

It is used only where that cannot change what anyone observes
(:meth:`RequestConnection.call` returns :data:`NOT_TAKEN` otherwise, and the
call goes the main connection's way, exactly as before):

- the client has no subscription, watch or mirror: messages and changes
  arrive on the main connection, and a client that writes and watches must
  see its change before the reply (docs/protocol.md, "Watch");
- no push was made since the last reply received on the main connection
  (the *fence*: pushes are fire-and-forget on the main connection, and a
  request on another connection could overtake them; SPEC, call order, also
  across threads).  :attr:`RequestConnection.pushes` counts the pushes handed
  to the main connection (queued or sent), :attr:`RequestConnection.fenced`
  the most of them a main-connection reply is known to follow;
- a command of :data:`FAST_COMMANDS` only (none that changes what the
  connection itself is: subscribe, watch, ...), under :data:`MAX_REQUEST`
  bytes, on a plain TCP main connection (TLS keeps today's path), not in the
  reactor thread;
- its lock is free: while one thread uses it, others take the main
  connection, so calls from many threads still run side by side.

It is opened lazily, by a calling thread (connect, then ``hello`` with the
client's token and ``{"mode": "requests"}``: the daemon lists it as a
request connection and never lets it subscribe or watch), once the client
has made :data:`OPEN_AFTER` such calls (a one-shot script or the ``lttx``
command opens no second connection), at the daemon the main connection is
connected to, and again beside each new main connection.

Failures: a daemon that closed its side before it received the request ->
the connection is closed and the call goes the main way (which waits for the
reconnection); lost after the daemon received it ->
:class:`~lttx.errors.ConnectionLost`;
no reply in time -> :class:`~lttx.errors.TimeoutError` (its late reply is
skipped by its id by the next call); opening it fails (refused, connection
limits, a refused token) -> one warning, the main way, and a new attempt
after a back-off.

Whether the daemon received the request is read from the socket once the
call met the connection's end, not before each call (that was one
``getsockopt`` per call): Linux's ``TCP_INFO`` counts the bytes the peer
acknowledged (``tcpi_bytes_acked``).  A daemon's kernel acknowledges what it
receives before its process can read it, and a socket closed (its process
gone, or it closed the connection) answers later bytes with a reset that
acknowledges nothing; a process that read the request and then died has its
kernel's FIN acknowledge it.  So when the read met the daemon's orderly end
(its FIN came first: a closed daemon, or one that restarts) and fewer bytes
are acknowledged than sent, the daemon never read the request: it is not
applied, and the main way may send it.  A reset instead (no FIN) proves
nothing: a daemon that read the request may not have acknowledged it yet
(its ACK rides on the reply) and Linux ignores a reset's ACK; so a reset, or
all bytes acknowledged, is ``ConnectionLost``, as before: never sent twice.
Where the count is not there (another system, an old kernel) the TCP state
is checked before each send instead, as the main connection's
:class:`~lttx.client.sending.Sender` does.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import sys
import threading
import time
from typing import Any, Optional

import msgpack
from twisted.logger import Logger

from ..errors import (
    BadRequest,
    ConnectionLost,
    EncodeError,
    LTtxError,
    TimeoutError,
    error_from_wire,
)
from ..wire import codec
from ..wire.frames import PREFIX
from ..wire.framing import FrameDecoder, FrameTooLong
from .dataframes import default, ext_hook
from .sending import peer_open

#: The commands a request connection carries: each acts on the daemon's
#: state, never on the connection's own (subscribe, watch, hello do).
FAST_COMMANDS = frozenset({
    "ping", "put", "get", "delete", "exists", "keys", "dict_change", "get_dict_value",
    "list_append", "list_pop", "list_remove", "incr", "expire", "ttl", "get_list_value",
    "status", "publish",
})

#: Requests of this many bytes or more take the main connection (a large
#: value is written by the reactor, at the pace the daemon reads it).
MAX_REQUEST = 256 * 1024

#: The types of the arguments sent here (others, DataFrames and arrays, go the main way).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})

#: Calls a client makes the main way before it opens its request connection.
OPEN_AFTER = 2

#: Seconds before a new attempt after a failed opening: doubled each time, at most the last.
RETRY_FIRST, RETRY_MOST = 0.1, 30.0

#: Most seconds opening the connection (connect and hello) may take.
OPEN_TIMEOUT = 5.0

#: The mode of its ``hello`` (docs/protocol.md).
MODE = "requests"

#: What :meth:`RequestConnection.call` returns when the call must go the main way.
NOT_TAKEN: Any = object()

# SO_RCVTIMEO keeps a blocking recv one system call (settimeout() adds a
# poll before each); its struct timeval is two C longs on Linux.
_RCVTIMEO = sys.platform.startswith("linux")
_TIMEVAL = struct.Struct("@ll")

_HEAD = PREFIX.size
_UNPACK_HEAD = PREFIX.unpack_from
_unpackb = msgpack.unpackb
#: What codec.decode turns into BadRequest, and _decode into one of its own.
_UNDECODABLE = (LTtxError, IndexError, TypeError, KeyError, ValueError,
                msgpack.UnpackException)
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 at byte 120 (Linux 4.1 on).
_TCP_INFO: Optional[int] = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("@Q")
_BYTES_ACKED_AT = 120
_TCP_INFO_SIZE = 232
_log = Logger(namespace="lttx.client.requests")


class _Lost(Exception):
    """The connection ended under a call: before the daemon had its whole
    request (``sent`` False), or after; ``reset``: the read that met the end
    got a reset, not the daemon's orderly end (its FIN)."""

    def __init__(self, sent: bool, reset: bool = False) -> None:
        super().__init__(sent)
        self.sent = sent
        self.reset = reset


class _TimedOut(Exception):
    """No reply (or no room to send) within the call's time."""


class RequestConnection:
    """
    The request connection of one blocking client.

    :param owner: the :class:`~lttx.client.blocking.Client` (its AsyncClient,
        loop, timeout and closed state are read at each call).
    """

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._beside: Any = None  # the main connection's protocol it was opened beside
        self._decoder = FrameDecoder(2**32)
        self._packer = codec.packer(default)
        self._ids = itertools.count(1)
        self._timeout: Optional[float] = None  # what SO_RCVTIMEO/SO_SNDTIMEO are set to
        self._calls = 0  # calls that could have taken it, until it first opened
        self._retry_at = 0.0  # time.monotonic() before which no opening is tried
        self._retry_delay = RETRY_FIRST
        self._closed = False
        # Bytes sent on the socket, and what tcpi_bytes_acked counts beyond
        # them once all are acknowledged (its SYN); None: no such count here.
        self._sent = 0
        self._acked_base: Optional[int] = None
        # Whether the decoder may hold bytes (only the general read fills it).
        self._leftover = False
        self._loop_ident = owner._loop._thread.ident  # the reactor thread's (fixed)
        #: Pushes handed to the main connection (queued or sent), counted by
        #: the client under its push lock once each push is.
        self.pushes = 0
        #: The most of :attr:`pushes` that a reply received on the main
        #: connection is known to follow (the daemon applied them).
        self.fenced = 0
        #: Calls answered here (for tests and benchmarks).
        self.answered = 0

    # -- the fence ---------------------------------------------------------------

    def replied(self, mark: int) -> None:
        """A call on the main connection made when :attr:`pushes` was ``mark``
        was answered: the pushes up to it are applied.  (A race between two
        such threads can only lower :attr:`fenced`: a later call then takes
        the main way once more, never the wrong way.)"""
        if mark > self.fenced:
            self.fenced = mark

    # -- a call ----------------------------------------------------------------

    def call(self, command: str, args: tuple[Any, ...]) -> Any:
        """
        Make the call here if nothing can tell (see the module's docstring).

        :return: the result, or :data:`NOT_TAKEN` (nothing was sent).
        :raises LTtxError: the daemon's error for this request, or
            ConnectionLost, TimeoutError as on the main connection.
        """
        owner = self._owner
        client = owner._client
        protocol = client.protocol
        if (self.pushes != self.fenced or command not in FAST_COMMANDS or protocol is None
                or client._subscriptions or client.watches.listeners or owner._closed
                or self._closed or protocol.sender is None or not protocol.sender.direct
                or threading.get_ident() == self._loop_ident):
            return NOT_TAKEN
        if not self._lock.acquire(False):
            return NOT_TAKEN  # another thread's call is here: this one goes the main way
        try:
            if self._closed:
                return NOT_TAKEN  # (closed meanwhile: never opened again)
            if self._sock is None or self._beside is not protocol:
                if not self._open(protocol):
                    return NOT_TAKEN
                if self._closed:  # close() ran while this thread was opening it
                    self._drop()
                    return NOT_TAKEN
            return self._exchange(command, args, owner.timeout, protocol)
        finally:
            self._lock.release()

    def _exchange(self, command: str, args: tuple[Any, ...], timeout: float,
                  protocol: Any) -> Any:
        """Holding the lock, the connection open: send one request, read its reply."""
        sock = self._sock
        assert sock is not None
        plain = _PLAIN
        for arg in args:
            if type(arg) not in plain:
                return NOT_TAKEN  # a DataFrame or an array: large, converted once, the main way
        request_id = next(self._ids)
        try:
            # The connection's own packer (used under its lock): packb would
            # build a Packer per call.  What codec.encode writes, byte for byte.
            payload = self._packer.pack([codec.REQUEST, request_id, command, list(args)])
        except (TypeError, ValueError, OverflowError) as e:
            if isinstance(e, EncodeError):
                raise
            raise EncodeError(f"cannot encode value: {e}") from None
        size = len(payload)
        if size >= MAX_REQUEST or size > protocol.max_frame:
            return NOT_TAKEN  # the main way writes it (in pieces), or says it is too large
        if self._acked_base is None and not peer_open(sock):
            # The daemon closed its side (it died, or restarts): the main way
            # waits for the reconnection, as any call during an outage.
            self._drop()
            return NOT_TAKEN
        if timeout != self._timeout:
            self._set_timeout(sock, timeout)
        try:
            message = self._round_trip(sock, PREFIX.pack(size) + payload, request_id, timeout)
        except _Lost as e:
            # (Read before the socket is closed.)  The daemon gone before it
            # had the request: the main way waits for the reconnection, as
            # any call during an outage.  Known only after its orderly end: a
            # daemon that read the request may not have acknowledged it yet
            # (the ACK rides on the reply), and Linux ignores a reset's ACK.
            unread = not e.sent or (not e.reset and self._unread(sock))
            self._drop()
            if self._closed:
                raise LTtxError("the client was closed while this call waited") from None
            if unread:
                return NOT_TAKEN
            raise ConnectionLost("the connection to the daemon was lost") from None
        except _TimedOut:
            if not self._owner._client.connected:
                raise ConnectionLost(f"not connected to the daemon (reconnecting) "
                                     f"within {timeout} s") from None
            raise TimeoutError(f"no reply within {timeout} seconds") from None
        self.answered += 1
        if message[0] == codec.REPLY:
            return message[2]
        raise error_from_wire(message[2], message[3])

    def _round_trip(self, sock: socket.socket, data: bytes, request_id: int,
                    timeout: float, opening: bool = False) -> list[Any]:
        """Send ``data``, then read frames until the reply to ``request_id``
        (``opening``: or an error of no request, the daemon's refusal)."""
        start = time.monotonic()  # (a reply in pieces: the time-out is the call's, not a read's)
        try:
            sent = sock.send(data)
            if sent < len(data):
                sock.sendall(data[sent:])
        except (socket.timeout, BlockingIOError):
            # Part of a frame may be written: the stream cannot go on.
            self._drop()
            raise _TimedOut() from None
        except OSError:
            raise _Lost(sent=False) from None  # (a reset: the daemon read nothing after it)
        self._sent += len(data)
        decoder = self._decoder
        if not self._leftover:
            # The common case: the reply alone, whole, in the first read.
            chunk = self._recv(sock)
            if len(chunk) > _HEAD and _UNPACK_HEAD(chunk)[0] + _HEAD == len(chunk):
                frame = chunk[_HEAD:]
                try:
                    message = _unpackb(frame, raw=False, strict_map_key=False,
                                       ext_hook=ext_hook, use_list=True)
                except _UNDECODABLE:
                    message = None  # (_decode says why, below)
                # A reply to this request, checked as _decode checks it.
                if (type(message) is list and len(message) >= 3 and message[1] == request_id
                        and message[0] == codec.REPLY):
                    return message  # type: ignore[no-any-return]
                message = self._decode(frame)
                if message[1] == request_id and (message[0] == codec.REPLY
                                                 or message[0] == codec.ERROR):
                    return message
            decoder.feed(chunk)  # (anything else: read as frames below)
        self._leftover = True  # (until the loop below has taken every frame)
        deadline = start + timeout
        while True:
            try:
                frame = decoder.next_frame()
            except FrameTooLong as e:
                self._drop()
                raise BadRequest(f"undecodable frame from the daemon: {e}") from None
            if frame is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _TimedOut()
                self._set_timeout(sock, left)  # (restored by the next call)
                decoder.feed(self._recv(sock))
                continue
            message = self._decode(frame)
            kind = message[0]
            if kind == codec.REPLY or kind == codec.ERROR:
                if message[1] == request_id:
                    self._leftover = decoder.buffered > 0
                    return message  # type: ignore[no-any-return]
                if message[1] is None and kind == codec.ERROR:
                    if opening:
                        self._leftover = decoder.buffered > 0
                        return message  # type: ignore[no-any-return]
                    _log.warn("the daemon says: {code}: {message}",
                              code=message[2], message=message[3])
                # else: the late reply of a call that timed out: skipped
            elif kind == codec.NOTICE:
                _log.warn("the daemon says: {code}: {message}",
                          code=message[1], message=message[2])
            else:
                self._drop()
                raise BadRequest(f"undecodable frame from the daemon: "
                                 f"unexpected frame kind {kind!r}")

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        """One read of the daemon's bytes (some, never none)."""
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, BlockingIOError):  # SO_RCVTIMEO, or settimeout
            raise _TimedOut() from None
        except OSError:
            raise _Lost(sent=True, reset=True) from None
        if not chunk:
            raise _Lost(sent=True)
        return chunk

    def _decode(self, frame: bytes) -> list[Any]:
        try:
            message = codec.decode(frame, ext_hook)
            if not isinstance(message, list) or len(message) < 3:
                raise BadRequest(f"not a frame: {type(message).__name__}")
            if message[0] == codec.ERROR and len(message) < 4:
                raise BadRequest("an error frame of 3 elements")
            return message
        except (LTtxError, IndexError, TypeError, KeyError, ValueError) as e:
            self._drop()
            raise BadRequest(f"undecodable frame from the daemon: {e}") from None

    # -- the socket ------------------------------------------------------------

    def _set_timeout(self, sock: socket.socket, seconds: float) -> None:
        if _RCVTIMEO:
            whole = int(seconds)
            micro = int((seconds - whole) * 1e6)
            # (A zero time-out would be no time-out at all.)
            value = _TIMEVAL.pack(whole, micro if whole or micro else 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        else:
            sock.settimeout(seconds)
        self._timeout = seconds

    def _open(self, protocol: Any) -> bool:
        """Holding the lock: open the connection beside ``protocol``; False
        (the main way) if it is not yet time to, or it failed."""
        self._drop()
        if self._beside is None:  # never opened yet
            self._calls += 1
            if self._calls < OPEN_AFTER:
                return False
        if time.monotonic() < self._retry_at:
            return False
        peer = protocol.transport.getPeer()
        owner = self._owner
        settings = owner._client.settings
        timeout = min(owner.timeout, OPEN_TIMEOUT)
        try:
            sock = socket.create_connection((peer.host, peer.port), timeout=timeout)
        except OSError as e:
            self._failed(f"cannot connect to {peer.host}:{peer.port}: {e}")
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.settimeout(None)
            self._sock, self._decoder = sock, FrameDecoder(2**32)
            self._sent, self._acked_base, self._leftover = 0, None, False
            self._set_timeout(sock, timeout)
            request_id = next(self._ids)
            payload = codec.encode([codec.REQUEST, request_id, "hello",
                                    settings.hello_args(mode=MODE)])
            message = self._round_trip(sock, PREFIX.pack(len(payload)) + payload,
                                       request_id, timeout, opening=True)
        except _Lost:
            self._drop()
            self._failed(f"the daemon at {peer.host}:{peer.port} closed it at hello")
            return False
        except _TimedOut:
            self._drop()
            self._failed(f"no hello reply within {timeout:g} s")
            return False
        except OSError as e:
            self._drop()
            self._failed(str(e) or type(e).__name__)
            return False
        except LTtxError as e:
            self._drop()
            self._failed(str(e))
            return False
        if message[0] != codec.REPLY:
            self._drop()
            self._failed(f"{error_from_wire(message[2], message[3])}")
            return False
        self._beside = protocol
        self._retry_delay = RETRY_FIRST
        self._acked_base = self._base(sock)
        return True

    def _acked(self, sock: socket.socket) -> Optional[int]:
        """tcpi_bytes_acked of ``sock``, or None where there is no such count."""
        if _TCP_INFO is None:
            return None
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
        except OSError:
            return None
        if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
            return None
        return _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]  # type: ignore[no-any-return]

    def _base(self, sock: socket.socket) -> Optional[int]:
        """Once ``hello`` is answered (its reply acknowledges the hello): what
        the count holds beyond the bytes sent, or None to check the TCP
        state before each send instead."""
        acked = self._acked(sock)
        if acked is None or acked < self._sent:
            return None
        return acked - self._sent

    def _unread(self, sock: socket.socket) -> bool:
        """After the connection ended under a call whose request was sent:
        whether the daemon's side acknowledged less than was sent (it never
        had the request: see the module's docstring)."""
        if self._acked_base is None:
            return False  # (checked before the send: the daemon was there)
        acked = self._acked(sock)
        return acked is not None and acked - self._acked_base < self._sent

    def _failed(self, why: str) -> None:
        """Opening failed: said once per attempt, and not tried again for a while."""
        _log.warn("no request connection ({why}); calls take the main connection, "
                  "next attempt in {delay:g} s", why=why, delay=self._retry_delay)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MOST)
        if self._beside is None:
            self._beside = False  # (opened or tried: no more OPEN_AFTER counting)

    def _drop(self) -> None:
        """Holding the lock: close the socket (reopened lazily)."""
        sock, self._sock = self._sock, None
        self._timeout = None
        if sock is not None:
            sock.close()

    @property
    def is_open(self) -> bool:
        """Whether the connection is open now."""
        return self._sock is not None

    def close(self) -> None:
        """No more calls here; a call waiting on it ends (Client.close)."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            # Wakes a thread waiting in recv (a socket the daemon already
            # reset has nobody to wake, and says ENOTCONN).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._lock.acquire(timeout=5.0):
            try:
                self._drop()
            finally:
                self._lock.release()


__all__ = ["FAST_COMMANDS", "MAX_REQUEST", "MODE", "NOT_TAKEN", "OPEN_AFTER",
           "RequestConnection"]
