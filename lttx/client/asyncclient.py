"""
The Twisted-native LTtx client: :class:`AsyncClient`, every method returning
a Deferred.  It keeps one connection to the daemon (reconnecting, with
backoff, to the next address when it is lost), resubscribes, and batches pushes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import AuthError, BadRequest, ConnectError, LTtxError, PermissionDenied
from ..errors import ConnectionLost
from ..wire import codec
from ..wire.names import split_channels
from . import files
from .messages import Message
from .protocol import ClientProtocol
from .settings import ConnectionSettings

#: Reconnection backoff: the first delay, doubled each attempt up to the last.
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0


def _unwrap(default: Any) -> Callable[[list[Any]], Any]:
    """``[value]`` -> value, ``[]`` -> default (see ``get`` in docs/protocol.md)."""
    return lambda present: present[0] if present else default


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

    # -- files (each call on a connection of its own; see lttx.client.files) -

    def send_file(self, path: str, name: Optional[str] = None, progress: bool = False,
                  resume: bool = True) -> "Deferred[dict[str, Any]]":
        """Upload a file; fires with ``{"name", "size", "md5"}``.
        See :func:`lttx.files.send_file`."""
        return files.send_file(self.reactor, self.settings, path, name, progress, resume)

    def recv_file(self, name: str, dest: str = ".", progress: bool = False,
                  resume: bool = True) -> "Deferred[dict[str, Any]]":
        """Download a file; fires with ``{"name", "size", "md5", "path"}``.
        See :func:`lttx.files.recv_file`."""
        return files.recv_file(self.reactor, self.settings, name, dest, progress, resume)

    def list_files(self) -> "Deferred[list[dict[str, Any]]]":
        """The daemon's files: ``[{"name", "size", "mtime"}, ...]`` by name."""
        return files.list_files(self.reactor, self.settings)

    def delete_file(self, name: str) -> "Deferred[bool]":
        """Delete a stored file; fires with whether it existed."""
        return files.delete_file(self.reactor, self.settings, name)

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


__all__ = ["AsyncClient"]
