"""
LTtx clients.

:class:`AsyncClient` is the Twisted-native client: every method returns a
Deferred.  :class:`Client` is the blocking client for scripts, notebooks and
threads; it runs an :class:`AsyncClient` on a reactor of its own in a
background thread (:mod:`lttx.eventloop`) and holds no protocol logic.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import queue
import struct
import threading
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple, Optional, Sequence

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from . import __version__, codec, filetransfer
from .errors import (
    AuthError,
    BadRequest,
    ConnectError,
    ConnectionLost,
    EncodeError,
    FrameTooLarge,
    LTtxError,
    PermissionDenied,
    TimeoutError,
)
from .channels import split_channels
from .eventloop import EventLoop
from .framing import FrameAssembler
from .replies import settle
from .tls import tls_endpoint

DEFAULT_PORT = 2025
DEFAULT_TIMEOUT = 30.0
#: Bytes of pushes the blocking client holds while the connection cannot take
#: them (its send buffer is full, or it reconnects) before ``push`` blocks.
DEFAULT_PUSH_BUFFER = 8 * 1024 * 1024

#: Most messages ``Client.Q`` holds before new ones are dropped (see MessageQueue).
DEFAULT_QUEUE_LIMIT = 500_000
#: Reconnection backoff: the first delay, doubled each attempt up to the last.
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0
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
    #: Every daemon of the data center, ``(host, port)``, in the order to try
    #: them (``host``/``port`` is the one in use); empty for one daemon.
    addresses: tuple[tuple[str, int], ...] = ()

    def next_address(self) -> "ConnectionSettings":
        """These settings at the address after the current one (cyclic)."""
        if len(self.addresses) < 2:
            return self
        current = (self.host, self.port)
        i = self.addresses.index(current) + 1 if current in self.addresses else 0
        host, port = self.addresses[i % len(self.addresses)]
        return replace(self, host=host, port=port)

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
        self._on_messages: Optional[Callable[[list[Message]], None]] = None
        self._batch: Optional[list[Message]] = None
        self._large_frame = FrameAssembler()
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
        complete = self._large_frame.feed(data)
        if complete is None:
            return  # the rest of a large frame is still on its way
        try:
            self._frames_received(complete)
        finally:
            self._unprocessed = self._large_frame.hold(self._unprocessed, self.MAX_LENGTH)

    def _frames_received(self, data: bytes) -> None:
        if self._on_messages is None:
            super().dataReceived(data)
            return
        # The hot path of a subscriber: split the frames here and decode
        # MESSAGE frames (payload head 95 03) straight into a batch; other
        # frames go through stringReceived, after the messages before them.
        buffer = self._unprocessed + data if self._unprocessed else data
        end_of_data = len(buffer)
        position = 0
        batch: list[Message] = []
        self._batch = batch
        try:
            while end_of_data - position >= 4:
                (length,) = _PREFIX.unpack_from(buffer, position)
                start = position + 4
                end = start + length
                if end > end_of_data:
                    break
                position = end
                if length > 2 and buffer[start] == 0x95 and buffer[start + 1] == 0x03:
                    try:
                        _, channel, key, data_, seq = codec.decode(buffer[start:end])
                    except (LTtxError, ValueError):
                        self.stringReceived(buffer[start:end])  # reports and closes
                        break
                    batch.append(Message(channel, key, data_, seq))
                else:
                    if batch:  # what came before a reply is delivered before it
                        self._on_messages(batch)
                        batch = self._batch = []
                    self.stringReceived(buffer[start:end])
                if self.transport.disconnecting:
                    break
        finally:
            self._unprocessed = buffer[position:]
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
            self.transport.write(b"".join(_PREFIX.pack(len(f)) + f for f in frames))

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


@implementer(IPushProducer)
class AsyncClient:
    """
    The Twisted-native LTtx client; each method returns a Deferred.

    Build one with :meth:`connect`.
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: ConnectionSettings, protocol: ClientProtocol,
                 server_info: dict[str, Any], messages: Callable[[Message], None],
                 many_messages: Optional[Callable[[list[Message]], None]] = None) -> None:
        self.reactor = reactor
        self.settings = settings
        self.protocol: Optional[ClientProtocol] = None  # None while disconnected
        self.server_info = server_info
        self._deliver = messages
        self._deliver_many = many_messages
        self._subscriptions: dict[str, _Subscription] = {}
        self._push_frames: list[bytes] = []
        self._push_flush_scheduled = False
        self._paused = False  # the transport's buffer is full
        self._closing = False
        self._waiting: list[Deferred[ClientProtocol]] = []  # calls waiting for a connection
        self._writable_waiters: list[Deferred[None]] = []
        self._reconnect_attempt = 0
        self._reconnect_call: Any = None
        self._attach(protocol)

    @classmethod
    def connect(cls, reactor: Any, settings: ConnectionSettings,
                on_message: Optional[Callable[[Message], None]] = None,
                on_messages: Optional[Callable[[list[Message]], None]] = None,
                ) -> "Deferred[AsyncClient]":
        """
        Connect and authenticate.

        :param on_message: called in the reactor thread with each
            :class:`Message` received on a channel subscribed without a callback.
        :param on_messages: instead, called with the list of such messages
            that arrived together (in order).
        :raises AuthError: (as a failure) on a wrong token.
        :raises ConnectError: when the daemon cannot be reached.
        """
        deliver = on_message or (lambda message: None)
        return _open_first(reactor, settings).addCallback(
            lambda opened: cls(reactor, opened[2], opened[0], opened[1], deliver, on_messages))

    # -- the connection -----------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the client is connected now (False while it reconnects)."""
        return self.protocol is not None

    def _attach(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        protocol.set_receivers(self._messages_received, _log_notice)
        protocol.lost.addCallback(lambda _: self._connection_lost(protocol))
        self._paused = False
        protocol.transport.registerProducer(self, True)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(protocol)
        self._flush_pushes()

    def _connection_lost(self, protocol: ClientProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        self._paused = False
        if self._closing:
            return
        self.log.warn("lost the connection to LTtx at {host}:{port}; reconnecting",
                      host=self.settings.host, port=self.settings.port)
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        delay = min(RECONNECT_MAX_DELAY, RECONNECT_FIRST_DELAY * 2 ** self._reconnect_attempt)
        self._reconnect_attempt += 1
        self._reconnect_call = self.reactor.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._reconnect_call = None
        # With several daemons, each attempt tries the next one.
        self.settings = self.settings.next_address()
        d = _open(self.reactor, self.settings)
        d.addCallback(self._resubscribe)
        d.addCallbacks(self._reconnected, self._reconnect_failed)

    def _resubscribe(self, opened: tuple[ClientProtocol, dict[str, Any]]
                     ) -> "Deferred[tuple[ClientProtocol, dict[str, Any], list[str]]]":
        protocol, info = opened
        # Messages follow a subscribe reply at once, often in the same chunk:
        # route them before asking, or the first ones after the outage are lost.
        protocol.set_receivers(self._messages_received, _log_notice)
        groups: dict[tuple[Optional[str], bool], list[str]] = {}
        for name, sub in self._subscriptions.items():
            groups.setdefault((sub.password, sub.conflate), []).append(name)
        requests = []
        for (password, conflate), names in groups.items():
            d = protocol.request("subscribe", names, password, {"conflate": conflate})
            d.addCallbacks(lambda _, names=names: names,
                           lambda failure, names=names: self._resubscribe_refused(failure, names))
            requests.append(d)
        d = gatherResults(requests, consumeErrors=True)
        d.addCallback(lambda done: (protocol, info, [n for names in done for n in names]))
        d.addErrback(self._unwrap_first_error, protocol)
        return d

    def _resubscribe_refused(self, failure: Failure, names: list[str]) -> list[str]:
        # The daemon refused these channels (recreated with another password,
        # the token's rights changed): the other channels and calls go on.
        failure.trap(AuthError, BadRequest, PermissionDenied)
        self.log.error("could not resubscribe to {channels}: {error}",
                       channels=", ".join(names), error=failure.getErrorMessage())
        for name in names:
            self._subscriptions.pop(name, None)
        return []

    @staticmethod
    def _unwrap_first_error(failure: Failure, protocol: ClientProtocol) -> Failure:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        return failure.value.subFailure if failure.check(FirstError) else failure

    def _reconnected(self, result: tuple[ClientProtocol, dict[str, Any], list[str]]) -> None:
        protocol, info, channels = result
        if self._closing:
            protocol.transport.loseConnection()
            return
        self._reconnect_attempt = 0
        self.server_info = info
        self.log.info("reconnected to LTtx at {host}:{port}; resubscribed to {channels} "
                      "(a gap in Message.seq shows what was missed)",
                      host=self.settings.host, port=self.settings.port,
                      channels=", ".join(channels) or "no channels")
        self._attach(protocol)

    def _reconnect_failed(self, failure: Failure) -> None:
        if self._closing:
            return
        if self._reconnect_attempt == 1:  # one line per outage, not one per attempt
            self.log.warn("cannot reconnect yet ({error}); retrying",
                          error=failure.getErrorMessage())
        self._schedule_reconnect()

    def _when_connected(self) -> "Deferred[ClientProtocol]":
        """The protocol now, or once reconnected (within the timeout: else ConnectionLost)."""
        if self.protocol is not None:
            return succeed(self.protocol)
        if self._closing:
            return fail(ConnectionLost("the client is closed"))

        def cancel(d: Deferred[ClientProtocol]) -> None:
            if d in self._waiting:
                self._waiting.remove(d)

        d: Deferred[ClientProtocol] = Deferred(cancel)
        self._waiting.append(d)
        timeout = self.settings.timeout

        def give_up() -> None:
            cancel(d)
            d.errback(ConnectionLost(f"not reconnected to the daemon within {timeout} s"))

        timer = self.reactor.callLater(timeout, give_up)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(stop_timer)

    # -- requests -----------------------------------------------------------

    def call(self, command: str, *args: Any) -> "Deferred[Any]":
        """
        Send any command (see docs/protocol.md) and get its result.

        While the client reconnects, the call waits for the connection (at
        most the timeout, then fails with :class:`ConnectionLost`).
        """
        if self.protocol is not None:
            return self.protocol.request(command, *args)
        return self._when_connected().addCallback(lambda p: p.request(command, *args))

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

    def status(self) -> "Deferred[dict[str, Any]]":
        """The daemon's figures: version, uptime, connections, variables, and
        one dict per component (channels, journal, files); see ``lttx status``."""
        return self.call("status")

    # -- channels -----------------------------------------------------------

    def subscribe(self, channels: "str | list[str]", password: Optional[str] = None,
                  conflate: bool = False,
                  callback: Optional[Callable[[Message], None]] = None,
                  ) -> "Deferred[dict[str, int]]":
        """
        Subscribe to channels (``"a"``, ``"a@b"`` or a list).

        :param password: the channel password; the first subscriber of a
            channel sets it, later ones must give the same.
        :param conflate: while this client lags, the daemon keeps only the
            newest message per key for it instead of cutting it off.
        :param callback: called in the reactor thread with each
            :class:`Message` of these channels, instead of the client's default.
        :return: (a Deferred of) each channel's next sequence number.
        :raises AuthError: (as a failure) on a wrong password.
        """
        try:
            names = split_channels(channels)
        except LTtxError as e:
            return fail(e)
        subscription = _Subscription(password or None, bool(conflate), callback)
        before = {name: self._subscriptions.get(name) for name in names}
        # Recorded before the reply: a reconnection meanwhile resubscribes it too.
        for name in names:
            self._subscriptions[name] = subscription

        def refused(failure: Failure) -> Failure:
            for name, previous in before.items():
                if self._subscriptions.get(name) is subscription:
                    if previous is None:
                        del self._subscriptions[name]
                    else:
                        self._subscriptions[name] = previous
            return failure

        d = self.call("subscribe", names, subscription.password, {"conflate": conflate})
        return d.addErrback(refused)

    def unsubscribe(self, channels: "str | list[str]") -> "Deferred[list[str]]":
        """Leave channels; no message of theirs is delivered once this is called."""
        try:
            names = split_channels(channels)
        except LTtxError as e:
            return fail(e)
        for name in names:
            self._subscriptions.pop(name, None)
        return self.call("unsubscribe", names)

    @property
    def subscriptions(self) -> list[str]:
        """The channels this client is subscribed to (and resubscribes after a reconnection)."""
        return sorted(self._subscriptions)

    def _messages_received(self, messages: list[Message]) -> None:
        subscriptions = self._subscriptions
        plain = []
        for message in messages:
            subscription = subscriptions.get(message.channel)
            if subscription is None:
                continue  # unsubscribed while it was on its way
            if subscription.callback is None:
                plain.append(message)
                continue
            if plain:
                self._deliver_plain(plain)
                plain = []
            try:
                subscription.callback(message)
            except Exception:
                # The user's code failed; the connection and later messages go on.
                self.log.failure("a message callback failed on {channel}",
                                 channel=message.channel)
        if plain:
            self._deliver_plain(plain)

    def _deliver_plain(self, messages: list[Message]) -> None:
        if self._deliver_many is not None:
            self._deliver_many(messages)
            return
        for message in messages:
            try:
                self._deliver(message)
            except Exception:
                self.log.failure("the message callback failed on {channel}",
                                 channel=message.channel)

    # -- files (each call on a connection of its own; see lttx.filetransfer) -

    def send_file(self, path: str, name: Optional[str] = None, progress: bool = False,
                  resume: bool = True) -> "Deferred[dict[str, Any]]":
        """Upload a file; fires with ``{"name", "size", "md5"}``.
        See :func:`lttx.filetransfer.send_file`."""
        return filetransfer.send_file(self.reactor, self.settings, path, name, progress, resume)

    def recv_file(self, name: str, dest: str = ".", progress: bool = False,
                  resume: bool = True) -> "Deferred[dict[str, Any]]":
        """Download a file; fires with ``{"name", "size", "md5", "path"}``.
        See :func:`lttx.filetransfer.recv_file`."""
        return filetransfer.recv_file(self.reactor, self.settings, name, dest, progress, resume)

    def list_files(self) -> "Deferred[list[dict[str, Any]]]":
        """The daemon's files: ``[{"name", "size", "mtime"}, ...]`` by name."""
        return filetransfer.list_files(self.reactor, self.settings)

    def delete_file(self, name: str) -> "Deferred[bool]":
        """Delete a stored file; fires with whether it existed."""
        return filetransfer.delete_file(self.reactor, self.settings, name)

    # -- pushes -------------------------------------------------------------

    def push(self, key: Any, data: Any, channel: str) -> None:
        """
        Publish ``data`` under ``key`` on ``channel``; does not wait.

        Pushes made in one reactor turn are written together.  While the
        connection's send buffer is full, or the client reconnects, pushes
        are kept here (see :attr:`pending_push_bytes`) and written later, in order.
        """
        self.push_frames([codec.encode([codec.PUBLISH, channel, key, data])])

    def push_frames(self, frames: list[bytes]) -> None:
        """Queue already-encoded publish frames for the next write."""
        self._push_frames.extend(frames)
        if not self._push_flush_scheduled:
            self._push_flush_scheduled = True
            self.reactor.callLater(0, self._flush_pushes)

    def write_pushes(self, frames: list[bytes]) -> None:
        """Write already-batched publish frames now if the transport takes them, else queue."""
        self._push_frames.extend(frames)
        self._flush_pushes()

    @property
    def writable(self) -> bool:
        """Connected, and the transport's send buffer is not full."""
        return self.protocol is not None and not self._paused

    @property
    def pending_push_bytes(self) -> int:
        """Bytes of pushes queued here, not yet handed to the transport."""
        return sum(len(f) for f in self._push_frames)

    def when_writable(self) -> "Deferred[None]":
        """Fires once :attr:`writable` (at once if it is)."""
        if self.writable:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            if d in self._writable_waiters:
                self._writable_waiters.remove(d)

        d: Deferred[None] = Deferred(cancel)
        self._writable_waiters.append(d)
        return d

    def flush(self) -> "Deferred[None]":
        """Fires once every queued push has been handed to the transport."""
        return self.when_writable().addCallback(lambda _: self._flush_pushes())

    def _flush_pushes(self, force: bool = False) -> None:
        self._push_flush_scheduled = False
        if not (force and self.protocol is not None) and not self.writable:
            return  # resumeProducing or the reconnection calls again
        assert self.protocol is not None
        if self._push_frames:
            frames, self._push_frames = self._push_frames, []
            self.protocol.write_frames(frames)
        if self.writable:
            waiters, self._writable_waiters = self._writable_waiters, []
            for d in waiters:
                d.callback(None)

    # -- IPushProducer: the transport says when its buffer is full ----------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush_pushes()

    def stopProducing(self) -> None:
        """Nothing to stop here: connectionLost follows and handles the loss."""

    def close(self) -> "Deferred[None]":
        """Write queued pushes and close the connection; no reconnection follows."""
        self._closing = True
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(ConnectionLost("the client was closed"))
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None and protocol.transport.connected:
            self._flush_pushes(force=True)
            # A TLS transport closes only once its producer is gone (TCP does not wait).
            protocol.transport.unregisterProducer()
            protocol.transport.loseConnection()
            return protocol.lost.addCallback(lambda _: None)
        return succeed(None)


@dataclass(frozen=True)
class _Subscription:
    """How a channel was subscribed to, to resubscribe it the same way."""

    password: Optional[str]
    conflate: bool
    callback: Optional[Callable[[Message], None]]


def _open(reactor: Any, settings: ConnectionSettings,
          ) -> "Deferred[tuple[ClientProtocol, dict[str, Any]]]":
    """Connect and authenticate one connection; fires with it and the daemon's hello."""
    protocol = ClientProtocol(lambda message: None, _log_notice)
    endpoint = settings.endpoint(reactor)

    def connect_failed(failure: Failure) -> Failure:
        failure.trap(Exception)
        if failure.check(LTtxError):
            return failure
        raise ConnectError(f"cannot connect to LTtx at {settings.host}:{settings.port}: "
                           f"{failure.getErrorMessage()}")

    def authenticate(_: Any) -> "Deferred[tuple[ClientProtocol, dict[str, Any]]]":
        d = protocol.request("hello", *settings.hello_args())
        return d.addCallback(authenticated)

    def authenticated(info: dict[str, Any]) -> tuple[ClientProtocol, dict[str, Any]]:
        protocol.max_frame = int(info.get("max_frame", protocol.max_frame))
        return protocol, info

    d = connectProtocol(endpoint, protocol)
    d.addCallback(authenticate)
    d.addErrback(connect_failed)
    return d


def _open_first(reactor: Any, settings: ConnectionSettings,
                ) -> "Deferred[tuple[ClientProtocol, dict[str, Any], ConnectionSettings]]":
    """:func:`_open` at the first of the addresses that can be reached (in order)."""
    tried = [settings]
    while len(tried) < len(settings.addresses):
        tried.append(tried[-1].next_address())

    def attempt(i: int) -> "Deferred[tuple[ClientProtocol, dict[str, Any], ConnectionSettings]]":
        d = _open(reactor, tried[i]).addCallback(lambda opened: (*opened, tried[i]))

        def next_one(failure: Failure) -> Any:
            failure.trap(ConnectError)  # a wrong token is wrong everywhere: no next
            return attempt(i + 1)
        if i + 1 < len(tried):
            d.addErrback(next_one)
        return d
    return attempt(0)


def _log_notice(code: str, message: str) -> None:
    AsyncClient.log.warn("the daemon says: {code}: {message}", code=code, message=message)


class MessageQueue(queue.Queue):  # type: ignore[type-arg]
    """
    The blocking client's :attr:`Client.Q`: a :class:`queue.Queue` of
    :class:`Message`, filled a batch at a time, holding at most ``limit``.

    A program that stops reading it must not grow until it is killed: like a
    NATS client's pending limit (a "slow consumer"), messages that arrive
    while it is full are dropped, counted in :attr:`dropped`, and logged once
    per episode; the gap in ``Message.seq`` shows the reader what it missed.
    The reactor thread never waits on it, so calls and other channels go on.

    ``put_many`` takes the lock once per batch and ``get`` takes only the
    plain mutex when a message is waiting: at tens of thousands of messages a
    second, the Condition machinery of ``Queue`` would be most of the cost.
    """

    log = Logger()

    def __init__(self, limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0
        self._dropping = False

    def put(self, item: Message, block: bool = True, timeout: Optional[float] = None) -> None:
        self.put_many([item])

    def put_many(self, items: list[Message]) -> None:
        """Put several items at once, in order; past the limit they are dropped."""
        with self.mutex:
            room = self.limit - len(self.queue)
            if room < len(items):
                lost = len(items) - max(room, 0)
                items = items[:max(room, 0)]
                self.dropped += lost
                if not self._dropping:
                    self._dropping = True
                    self.log.warn("Q holds {limit} messages nobody reads: dropping new ones "
                                  "until it is read (a gap in Message.seq shows them)",
                                  limit=self.limit)
            elif self._dropping and len(self.queue) < self.limit // 2:
                self._dropping = False
            self.queue.extend(items)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Message:
        with self.mutex:
            if self.queue:
                return self.queue.popleft()  # no putter ever waits on not_full
        return super().get(block, timeout)


class Client:
    """
    The blocking LTtx client; safe to use from several threads at once.

    Made by :func:`connect`.  Each call waits for the daemon's reply (at most
    ``timeout`` seconds); :meth:`push` does not wait.  Messages of subscribed
    channels arrive in :attr:`Q` as :class:`Message` tuples.
    """

    def __init__(self, loop: EventLoop, client: AsyncClient, timeout: float,
                 messages: "queue.Queue[Message]",
                 push_buffer: int = DEFAULT_PUSH_BUFFER) -> None:
        self._loop = loop
        self._client = client
        self.timeout = timeout
        self.Q = messages
        self.push_buffer = push_buffer
        # Pushes not yet handed to the reactor thread, and their size; the
        # condition wakes a pusher blocked on a full buffer.
        self._push_lock = threading.Lock()
        self._push_room = threading.Condition(self._push_lock)
        # One packer, used under the push lock: msgpack.packb would build a
        # new Packer for every push.
        self._packer = codec.packer()
        self._push_frames: list[bytes] = []
        self._push_bytes = 0
        self._hand_over_pending = False
        self._awaiting_writable = False  # reactor thread only
        self._closed = False
        self._callbacks: "Optional[queue.SimpleQueue[Any]]" = None
        self._dropping_callbacks = False
        self._callback_thread: Optional[threading.Thread] = None
        # A script that ends without close() still delivers what it pushed.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    def _call(self, method: Callable[..., "Deferred[Any]"], *args: Any) -> Any:
        try:
            return self._loop.run(method, *args, timeout=self.timeout)
        except TimeoutError:
            if not self._client.connected:
                raise ConnectionLost(f"not connected to the daemon (reconnecting) "
                                     f"within {self.timeout} s") from None
            raise

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

    def status(self) -> dict[str, Any]:
        """The daemon's figures: version, uptime, connections, variables, and
        one dict per component (channels, journal, files); see ``lttx status``."""
        return self._call(self._client.status)

    # -- channels -----------------------------------------------------------

    def subscribe(self, channels: "str | list[str]", password: Optional[str] = None,
                  conflate: bool = False,
                  callback: Optional[Callable[[Message], None]] = None) -> dict[str, int]:
        """
        Subscribe to channels: ``"a"``, ``"a@b"`` or ``["a", "b"]``.

        Messages arrive in :attr:`Q` as :class:`Message` tuples, or, with
        ``callback``, are passed to it in one dispatch thread (in order; a slow
        callback delays only later callbacks).

        :param password: the first subscriber of a channel sets it; later
            ones must give the same.
        :param conflate: while this client lags, keep only the newest message
            per key for it (market data) instead of being cut off.
        :return: each channel's next sequence number.
        :raises AuthError: on a wrong password (nothing is subscribed).
        """
        deliver = None if callback is None else self._dispatcher(callback)
        return self._call(self._client.subscribe, channels, password, conflate, deliver)

    def unsubscribe(self, channels: "str | list[str]") -> list[str]:
        """Leave channels; the channels actually left."""
        return self._call(self._client.unsubscribe, channels)

    @property
    def subscriptions(self) -> list[str]:
        """The channels this client is subscribed to."""
        return self._client.subscriptions

    def _dispatcher(self, callback: Callable[[Message], None]) -> Callable[[Message], None]:
        """A reactor-thread callback handing each message to the dispatch thread."""
        with self._push_lock:  # two threads subscribing at once start one thread
            if self._callbacks is None:
                self._callbacks = queue.SimpleQueue()
                self._callback_thread = threading.Thread(
                    target=self._run_callbacks, args=(self._callbacks,),
                    name="lttx-callbacks", daemon=True)
                self._callback_thread.start()
        callbacks = self._callbacks
        limit = getattr(self.Q, "limit", DEFAULT_QUEUE_LIMIT)

        def hand_over(message: Message) -> None:
            # Bounded like Q: a callback that falls behind for good drops
            # messages (counted in Q.dropped, logged once) instead of growing.
            waiting = callbacks.qsize()
            if waiting >= limit:
                self._callback_dropped(limit)
                return
            if self._dropping_callbacks and waiting < limit // 2:
                self._dropping_callbacks = False
            callbacks.put((callback, message))

        return hand_over

    def _callback_dropped(self, limit: int) -> None:
        if isinstance(self.Q, MessageQueue):
            self.Q.dropped += 1
        if not self._dropping_callbacks:
            self._dropping_callbacks = True
            AsyncClient.log.warn("{limit} messages wait for callbacks that do not keep up: "
                                 "dropping new ones (a gap in Message.seq shows them)",
                                 limit=limit)

    def _run_callbacks(self, callbacks: "queue.SimpleQueue[Any]") -> None:
        while True:
            item = callbacks.get()
            if item is None:
                return
            callback, message = item
            try:
                callback(message)
            except Exception:
                # The user's callback failed; later messages still get theirs.
                AsyncClient.log.failure("a message callback failed on {channel}",
                                        channel=message.channel)

    # -- pushes -------------------------------------------------------------

    def send_file(self, path: str, name: Optional[str] = None, progress: bool = False,
                  resume: bool = True) -> dict[str, Any]:
        """
        Upload ``path`` (as ``name``, its base name by default); returns
        ``{"name", "size", "md5"}`` once the daemon has checked the MD5 and
        put the file in place.  An interrupted upload of the same file resumes
        from the byte the daemon holds.  ``progress=True`` shows a tqdm bar.
        The transfer has no overall time limit; it fails after ``timeout``
        seconds without progress.

        :raises BadFileName: for a name the daemon refuses.
        :raises ChecksumMismatch: if the bytes did not arrive intact (no file kept).
        :raises StorageError: over ``--max-file-size`` or with the daemon's disk full.
        """
        return self._loop.run(self._client.send_file, path, name, progress, resume)

    def recv_file(self, name: str, dest: str = ".", progress: bool = False,
                  resume: bool = True) -> dict[str, Any]:
        """
        Download ``name`` into the folder ``dest`` (or to the file path
        ``dest``); returns ``{"name", "size", "md5", "path"}``.  The file
        appears only once its MD5 matches; an interrupted download resumes.

        :raises NotFound: if the daemon has no such file (nothing is written).
        :raises ChecksumMismatch: if the bytes did not arrive intact (nothing kept).
        """
        return self._loop.run(self._client.recv_file, name, dest, progress, resume)

    def list_files(self) -> list[dict[str, Any]]:
        """The daemon's files: ``[{"name", "size", "mtime"}, ...]`` by name."""
        return self._call(self._client.list_files)

    def delete_file(self, name: str) -> bool:
        """Delete a stored file; whether it existed."""
        return self._call(self._client.delete_file, name)

    def push(self, key: Any, data: Any, channel: str) -> None:
        """
        Publish ``data`` under ``key`` on ``channel``; returns at once.

        The frame is encoded here (an unencodable value raises
        :class:`EncodeError` now) and handed to the reactor thread with the
        other pushes made meanwhile, in one batch: a loop of pushes costs one
        thread hop per batch, not per push.

        Memory is bounded: while the connection cannot take more (the
        daemon reads slower than this thread pushes, or the client
        reconnects), pushes wait here; past :attr:`push_buffer` bytes, ``push``
        blocks until there is room again, for at most the client's timeout.

        :raises ConnectionLost: if the client stays disconnected that long
            (this message is not queued).
        :raises TimeoutError: if the connection stays full that long (this
            message is not queued).
        """
        with self._push_lock:
            try:
                frame = self._packer.pack([codec.PUBLISH, channel, key, data])
            except (TypeError, ValueError, OverflowError) as e:
                raise EncodeError(f"cannot encode value: {e}") from None
            if self._push_bytes > self.push_buffer:
                self._wait_for_room()
            self._push_frames.append(frame)
            self._push_bytes += len(frame)
            schedule = not self._hand_over_pending
            self._hand_over_pending = True
        if schedule:
            self._loop.call_soon(self._hand_over_pushes)

    def _wait_for_room(self) -> None:
        """Wait (holding the condition) until pushes drop under the bound."""
        deadline = time.monotonic() + self.timeout
        while self._push_bytes > self.push_buffer and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                if not self._client.connected:
                    raise ConnectionLost(
                        f"push: not reconnected within {self.timeout} s and "
                        f"{self._push_bytes} bytes of pushes are waiting")
                raise TimeoutError(f"push: the daemon took no pushes for {self.timeout} s")
            self._push_room.wait(left)
        if self._closed:
            raise LTtxError("the client is closed")

    def _hand_over_pushes(self) -> None:
        """In the reactor thread: write the waiting pushes once the transport takes them."""
        if not self._client.writable:
            if not self._awaiting_writable:
                self._awaiting_writable = True
                self._client.when_writable().addCallback(self._writable_again)
            return
        self._take_pushes()

    def _writable_again(self, _: Any) -> None:
        self._awaiting_writable = False
        self._hand_over_pushes()

    def _take_pushes(self) -> None:
        with self._push_room:
            frames, self._push_frames = self._push_frames, []
            self._push_bytes = 0
            self._hand_over_pending = False
            self._push_room.notify_all()
        if frames:
            self._client.write_pushes(frames)

    def flush(self) -> None:
        """
        Wait until every push made so far is handed to the connection.

        :raises ConnectionLost: if the client is disconnected for the whole timeout.
        """
        self._call(self._flush_in_loop)

    def _flush_in_loop(self) -> "Deferred[None]":
        def written(_: Any) -> "Deferred[None]":
            self._take_pushes()
            return self._client.flush()

        return self._client.when_writable().addCallback(written)

    def close(self, timeout: Optional[float] = None) -> None:
        """
        Flush pending pushes, close the connection and stop the client's thread.

        Called by itself at interpreter exit if the program did not.

        :param timeout: seconds to wait for the pushes to be written (the
            client's timeout by default).
        """
        if self._loop.in_loop_thread:
            raise RuntimeError("close() the blocking client from outside its callbacks")
        if self._closed:
            return
        atexit.unregister(self._exit_hook)
        try:
            self._loop.run(self._close_in_loop, timeout=self.timeout if timeout is None
                           else timeout)
        except LTtxError as e:
            # The connection is gone either way; stopping the loop is what is left.
            self._client.log.warn("closing: pushes not yet written may be lost ({error})",
                                  error=e)
        finally:
            with self._push_room:
                self._closed = True
                self._push_room.notify_all()
            if self._callbacks is not None:
                self._callbacks.put(None)
            self._loop.stop()

    def _close_in_loop(self) -> "Deferred[None]":
        with self._push_room:
            frames, self._push_frames = self._push_frames, []
            self._push_bytes = 0
        self._client.push_frames(frames)
        return self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


#: Seconds a client left open at interpreter exit has to write its pushes.
EXIT_FLUSH_TIMEOUT = 10.0


def _close_at_exit(ref: "weakref.ref[Client]") -> None:
    client = ref()
    if client is not None:
        client.close(timeout=min(client.timeout, EXIT_FLUSH_TIMEOUT))


def connect(host: "str | Sequence[str]" = "127.0.0.1", port: int = DEFAULT_PORT,
            token: Optional[str] = None,
            timeout: float = DEFAULT_TIMEOUT, push_buffer: int = DEFAULT_PUSH_BUFFER,
            tls: bool = False, ca: Optional[str] = None,
            queue_limit: int = DEFAULT_QUEUE_LIMIT) -> Client:
    """
    Connect a blocking client to an LTtx daemon.

    After a lost connection the client reconnects by itself (with backoff),
    re-authenticates and resubscribes; calls made meanwhile wait for it.

    :param token: the daemon's shared secret (None for a daemon without one).
    :param timeout: seconds to wait for each reply, and for the connection.
    :param push_buffer: bytes of pushes held while the connection cannot
        take them before :meth:`Client.push` blocks.
    :param tls: speak TLS (the daemon listens on an ``ssl:`` endpoint); the
        daemon's certificate must be signed by a trusted CA and be for ``host``.
    :param ca: a PEM file of the CA(s) to trust; None trusts the system's CAs.
    :param queue_limit: most messages :attr:`Client.Q` holds; while it is full,
        new messages are dropped and counted in ``Client.Q.dropped``.
    :raises AuthError: on a wrong token.
    :raises TLSError: when the certificate is not trusted or not for ``host``.
    :raises ConnectError: when the daemon cannot be reached.

    ``host`` may be a list of daemons, ``["host1:2025", "host2:2025"]`` (of one
    data center, on one Redis): the client connects to the first it can reach,
    and when that connection is lost it tries the next ones, in turn, and
    resubscribes there.
    """
    addresses: tuple[tuple[str, int], ...] = ()
    if not isinstance(host, str):
        addresses = tuple(_split_address(a, port) for a in host)
        if not addresses:
            raise ValueError("connect needs at least one address")
        host, port = addresses[0]
    loop = EventLoop()
    messages = MessageQueue(queue_limit)
    try:
        settings = ConnectionSettings(host, port, token, timeout, tls=tls, ca=ca,
                                      addresses=addresses)
        client = loop.run(AsyncClient.connect, loop.reactor, settings, messages.put,
                          messages.put_many, timeout=timeout + 1)
    except BaseException:
        loop.stop()
        raise
    return Client(loop, client, timeout, messages, push_buffer)


def _split_address(address: "str | tuple[str, int]", port: int) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` (the default port) or ``(host, port)``."""
    if not isinstance(address, str):
        return str(address[0]), int(address[1])
    host, sep, text = address.rpartition(":")
    if not sep or "]" in text:  # no port (an IPv6 address in brackets has colons)
        return address.strip("[]"), port
    return host.strip("[]"), int(text)


__all__ = ["AsyncClient", "Client", "ClientProtocol", "ConnectionSettings", "Message",
           "MessageQueue", "connect"]
