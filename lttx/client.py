"""
LTtx clients.

:class:`AsyncClient` is the Twisted-native client: every method returns a
Deferred.  :class:`Client` is the blocking client for scripts, notebooks and
threads; it runs an :class:`AsyncClient` on a reactor of its own in a
background thread (:mod:`lttx.eventloop`) and holds no protocol logic.
"""

from __future__ import annotations

import itertools
import queue
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from . import __version__, codec
from .errors import (
    BadRequest,
    ConnectError,
    ConnectionLost,
    FrameTooLarge,
    LTtxError,
    error_from_wire,
)
from .eventloop import EventLoop
from .tls import tls_endpoint

DEFAULT_PORT = 2025
DEFAULT_TIMEOUT = 30.0
_PREFIX = struct.Struct("!I")


class Message(NamedTuple):
    """A message received on a subscribed channel."""

    channel: str
    key: Any
    data: Any
    seq: int


@dataclass(frozen=True)
class ConnectionSettings:
    """Where a client connects and how it authenticates; every connection it
    opens (commands, file transfers, reconnections) is made from these."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT
    #: Speak TLS, verifying the daemon's certificate and that it is for ``host``.
    tls: bool = False
    #: PEM file of the CA(s) to trust with ``tls``; None trusts the system's CAs.
    ca: Optional[str] = None

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """
        The client endpoint to reach the daemon.  With ``tls`` its connection
        is ready only after the certificate was verified.

        :raises TLSError: (now) if the ``ca`` file cannot be read.
        """
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, self.host, self.port, timeout=self.timeout)
        if self.tls:
            endpoint = tls_endpoint(reactor, endpoint, self.host, self.port, self.ca)
        return endpoint

    def hello_args(self, **options: Any) -> list[Any]:
        """The arguments of the ``hello`` request that opens every connection."""
        return [self.token, {"client": f"lttx-py/{__version__}",
                             "protocol": codec.PROTOCOL_VERSION, **options}]


def _unwrap(default: Any) -> Callable[[list[Any]], Any]:
    """``[value]`` -> value, ``[]`` -> default (see ``get`` in docs/protocol.md)."""
    return lambda present: present[0] if present else default


class ClientProtocol(Int32StringReceiver):
    """The client's side of one connection: ids, pending replies, pushes in."""

    log = Logger()

    def __init__(self, on_message: Callable[[Message], None],
                 on_notice: Callable[[str, str], None]) -> None:
        self.MAX_LENGTH = 2**31  # the daemon enforces its own limit
        self.max_frame = 64 * 1024 * 1024  # until hello tells the daemon's
        self._on_message = on_message
        self._on_notice = on_notice
        self._ids = itertools.count(1)
        self._pending: dict[int, Deferred[Any]] = {}
        self.connected_deferred: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.connected_deferred.callback(None)

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
            self.transport.write(b"".join(_PREFIX.pack(len(f)) + f for f in frames))

    def stringReceived(self, frame: bytes) -> None:
        try:
            message = codec.decode(frame)
            kind = message[0]
            if kind == codec.MESSAGE:
                self._on_message(Message(*message[1:5]))
            elif kind == codec.REPLY:
                d = self._pending.pop(message[1], None)
                if d is not None:
                    d.callback(message[2])
            elif kind == codec.ERROR:
                error = error_from_wire(message[2], message[3])
                d = self._pending.pop(message[1], None)
                if d is not None:
                    d.errback(error)
                else:
                    self._on_notice(error.code, error.message)
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


class AsyncClient:
    """
    The Twisted-native LTtx client; each method returns a Deferred.

    Build one with :meth:`connect`.
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: ConnectionSettings, protocol: ClientProtocol,
                 server_info: dict[str, Any], messages: Callable[[Message], None]) -> None:
        self.reactor = reactor
        self.settings = settings
        self.protocol = protocol
        self.server_info = server_info
        self._deliver = messages
        self._push_frames: list[bytes] = []
        self._push_flush_scheduled = False

    @classmethod
    def connect(cls, reactor: Any, settings: ConnectionSettings,
                on_message: Optional[Callable[[Message], None]] = None,
                ) -> "Deferred[AsyncClient]":
        """
        Connect and authenticate.

        :param on_message: called in the reactor thread with each
            :class:`Message` received on a subscribed channel.
        :raises AuthError: (as a failure) on a wrong token.
        :raises ConnectError: when the daemon cannot be reached.
        """
        deliver = on_message or (lambda message: None)
        protocol = ClientProtocol(deliver, _log_notice)
        endpoint = settings.endpoint(reactor)

        def connect_failed(failure: Failure) -> Failure:
            failure.trap(Exception)
            if failure.check(LTtxError):
                return failure
            raise ConnectError(f"cannot connect to LTtx at {settings.host}:{settings.port}: "
                               f"{failure.getErrorMessage()}")

        def authenticate(_: Any) -> "Deferred[AsyncClient]":
            d = protocol.request("hello", *settings.hello_args())
            return d.addCallback(authenticated)

        def authenticated(info: dict[str, Any]) -> AsyncClient:
            protocol.max_frame = int(info.get("max_frame", protocol.max_frame))
            return cls(reactor, settings, protocol, info, deliver)

        d = connectProtocol(endpoint, protocol)
        d.addCallback(authenticate)
        d.addErrback(connect_failed)
        return d

    # -- requests -----------------------------------------------------------

    def call(self, command: str, *args: Any) -> "Deferred[Any]":
        """Send any command (see docs/protocol.md) and get its result."""
        return self.protocol.request(command, *args)

    def ping(self) -> "Deferred[str]":
        return self.call("ping")

    def put(self, name: str, value: Any) -> "Deferred[None]":
        """Set the variable ``name`` to ``value``."""
        return self.call("put", name, value)

    def get(self, name: str, default: Any = None) -> "Deferred[Any]":
        """The value of ``name``, or ``default`` if there is no such variable."""
        return self.call("get", name).addCallback(_unwrap(default))

    def delete(self, name: str) -> "Deferred[bool]":
        """Delete ``name``; fires with whether it existed."""
        return self.call("delete", name)

    def exists(self, name: str) -> "Deferred[bool]":
        return self.call("exists", name)

    def keys(self, pattern: str = "*") -> "Deferred[list[str]]":
        """Sorted names matching a glob pattern (``*``, ``?``, ``[abc]``)."""
        return self.call("keys", pattern)

    def dict_change(self, name: str, key: Any, value: Any) -> "Deferred[None]":
        """``d[key] = value`` on the server; the dict is created if absent."""
        return self.call("dict_change", name, key, value)

    def get_dict_value(self, name: str, key: Any, default: Any = None) -> "Deferred[Any]":
        """One key of a dict variable, or ``default`` if the variable or key is absent."""
        return self.call("get_dict_value", name, key).addCallback(_unwrap(default))

    def list_append(self, name: str, item: Any) -> "Deferred[int]":
        """Append to a list variable (created if absent); fires with the new length."""
        return self.call("list_append", name, item)

    def list_pop(self, name: str, index: int = -1) -> "Deferred[Any]":
        """Pop and return an item, as ``list.pop``."""
        return self.call("list_pop", name, index)

    def list_remove(self, name: str, item: Any) -> "Deferred[bool]":
        """Remove the first item equal to ``item`` (same type and value); whether one was."""
        return self.call("list_remove", name, item)

    def get_list_value(self, name: str, index: int) -> "Deferred[Any]":
        """One item of a list variable."""
        return self.call("get_list_value", name, index)

    # -- pushes -------------------------------------------------------------

    def push(self, key: Any, data: Any, channel: str) -> None:
        """
        Publish ``data`` under ``key`` on ``channel``; does not wait.

        Pushes made in one reactor turn are written together.
        """
        self.push_frames([codec.encode([codec.PUBLISH, channel, key, data])])

    def push_frames(self, frames: list[bytes]) -> None:
        """Queue already-encoded publish frames for the next write."""
        self._push_frames.extend(frames)
        if not self._push_flush_scheduled:
            self._push_flush_scheduled = True
            self.reactor.callLater(0, self._flush_pushes)

    def _flush_pushes(self) -> None:
        self._push_flush_scheduled = False
        frames, self._push_frames = self._push_frames, []
        self.protocol.write_frames(frames)

    def close(self) -> "Deferred[None]":
        """Flush queued pushes and close the connection."""
        if self._push_frames:
            self._flush_pushes()
        if self.protocol.transport is not None and self.protocol.transport.connected:
            self.protocol.transport.loseConnection()
            return self.protocol.lost.addCallback(lambda _: None)
        return succeed(None)


def _log_notice(code: str, message: str) -> None:
    AsyncClient.log.warn("the daemon says: {code}: {message}", code=code, message=message)


class Client:
    """
    The blocking LTtx client; safe to use from several threads at once.

    Made by :func:`connect`.  Each call waits for the daemon's reply (at most
    ``timeout`` seconds); :meth:`push` does not wait.  Messages of subscribed
    channels arrive in :attr:`Q` as :class:`Message` tuples.
    """

    def __init__(self, loop: EventLoop, client: AsyncClient, timeout: float,
                 messages: "queue.Queue[Message]") -> None:
        self._loop = loop
        self._client = client
        self.timeout = timeout
        self.Q = messages
        self._push_lock = threading.Lock()
        self._push_frames: list[bytes] = []

    def _call(self, method: Callable[..., "Deferred[Any]"], *args: Any) -> Any:
        return self._loop.run(method, *args, timeout=self.timeout)

    @property
    def server_info(self) -> dict[str, Any]:
        """What the daemon said of itself at ``hello`` (version, limits)."""
        return self._client.server_info

    def ping(self) -> str:
        return self._call(self._client.ping)

    def put(self, name: str, value: Any) -> None:
        """Set the variable ``name`` to ``value`` (None, bool, int, float, str, bytes,
        list, dict, nested); returns once the daemon has applied it."""
        return self._call(self._client.put, name, value)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``, or ``default`` if there is no such variable."""
        return self._call(self._client.get, name, default)

    def delete(self, name: str) -> bool:
        """Delete ``name``; whether it existed."""
        return self._call(self._client.delete, name)

    def exists(self, name: str) -> bool:
        return self._call(self._client.exists, name)

    def keys(self, pattern: str = "*") -> list[str]:
        """Sorted variable names matching a glob pattern."""
        return self._call(self._client.keys, pattern)

    def dict_change(self, name: str, key: Any, value: Any) -> None:
        """``d[key] = value`` on the server; the dict is created if absent.

        :raises WrongTypeError: if ``name`` holds something other than a dict."""
        return self._call(self._client.dict_change, name, key, value)

    def get_dict_value(self, name: str, key: Any, default: Any = None) -> Any:
        """One key of a big dict without fetching the dict."""
        return self._call(self._client.get_dict_value, name, key, default)

    def list_append(self, name: str, item: Any) -> int:
        """Append to a list variable (created if absent); the new length."""
        return self._call(self._client.list_append, name, item)

    def list_pop(self, name: str, index: int = -1) -> Any:
        """Pop an item, as ``list.pop``.

        :raises IndexOutOfRange: on an empty list or an index outside it.
        :raises NotFound: if there is no such variable."""
        return self._call(self._client.list_pop, name, index)

    def list_remove(self, name: str, item: Any) -> bool:
        """Remove the first equal item; True if one was removed, False if none."""
        return self._call(self._client.list_remove, name, item)

    def get_list_value(self, name: str, index: int) -> Any:
        """One item of a big list without fetching the list."""
        return self._call(self._client.get_list_value, name, index)

    def push(self, key: Any, data: Any, channel: str) -> None:
        """
        Publish ``data`` under ``key`` on ``channel``; returns at once.

        The frame is encoded here (an unencodable value raises
        :class:`EncodeError` now) and handed to the reactor thread with the
        other pushes made meanwhile, in one batch.
        """
        frame = codec.encode([codec.PUBLISH, channel, key, data])
        with self._push_lock:
            self._push_frames.append(frame)
            first = len(self._push_frames) == 1
        if first:
            self._loop.call_soon(self._hand_over_pushes)

    def _hand_over_pushes(self) -> None:
        with self._push_lock:
            frames, self._push_frames = self._push_frames, []
        self._client.push_frames(frames)

    def close(self) -> None:
        """Flush pending pushes, close the connection and stop the client's thread."""
        if self._loop.in_loop_thread:
            raise RuntimeError("close() the blocking client from outside its callbacks")
        try:
            self._loop.run(self._close_in_loop, timeout=self.timeout)
        except LTtxError:
            pass  # the connection is gone either way; stopping the loop is what is left
        finally:
            self._loop.stop()

    def _close_in_loop(self) -> "Deferred[None]":
        self._hand_over_pushes()
        return self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: Optional[str] = None,
            timeout: float = DEFAULT_TIMEOUT, tls: bool = False,
            ca: Optional[str] = None) -> Client:
    """
    Connect a blocking client to an LTtx daemon.

    :param token: the daemon's shared secret (None for a daemon without one).
    :param timeout: seconds to wait for each reply, and for the connection.
    :param tls: speak TLS (the daemon listens on an ``ssl:`` endpoint); the
        daemon's certificate must be signed by a trusted CA and be for ``host``.
    :param ca: a PEM file of the CA(s) to trust; None trusts the system's CAs.
    :raises AuthError: on a wrong token.
    :raises TLSError: when the certificate is not trusted or not for ``host``.
    :raises ConnectError: when the daemon cannot be reached.
    """
    loop = EventLoop()
    messages: "queue.Queue[Message]" = queue.Queue()
    try:
        settings = ConnectionSettings(host, port, token, timeout, tls=tls, ca=ca)
        client = loop.run(AsyncClient.connect, loop.reactor, settings, messages.put,
                          timeout=timeout + 1)
    except BaseException:
        loop.stop()
        raise
    return Client(loop, client, timeout, messages)


__all__ = ["AsyncClient", "Client", "ClientProtocol", "ConnectionSettings", "Message", "connect"]
