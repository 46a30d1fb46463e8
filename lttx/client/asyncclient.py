"""
The Twisted-native LTtx client: :class:`AsyncClient`, every method returning
a Deferred.  It owns what a client remembers across connections: its
subscriptions (resubscribed after a reconnection, before calls resume), the
pushes not yet written, and its callbacks.  The connection itself is kept up
by :class:`~lttx.client.connection.Reconnector`; the variable commands come
from :class:`~lttx.client.commands.VariableCommands`.
"""

from __future__ import annotations

import threading
from operator import itemgetter
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import AuthError, BadRequest, ConnectionLost, LTtxError, PermissionDenied
from ..wire import codec
from ..wire.names import split_channels
from . import files
from .commands import VariableCommands
from .dataframes import default
from .connection import Reconnector, open_first
from .messages import Message
from .protocol import ClientProtocol
from .settings import ConnectionSettings
from .watch import WatchSet
from .watching import Watching


@implementer(IPushProducer)
class AsyncClient(VariableCommands, Watching):
    """
    The Twisted-native LTtx client; each method returns a Deferred.

    Build one with :meth:`connect`.  After a lost connection it reconnects by
    itself (with backoff, to the next address when there are several),
    authenticates again and resubscribes before calls go on.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, settings: ConnectionSettings,
                 protocol: ClientProtocol, server_info: dict[str, Any],
                 messages: Callable[[Message], None],
                 many_messages: Optional[Callable[[list[Message]], None]] = None) -> None:
        self.reactor = reactor
        self.protocol: Optional[ClientProtocol] = None  # None while disconnected
        self.server_info = server_info
        self._deliver = messages
        self._deliver_many = many_messages
        self._subscriptions: dict[str, _Subscription] = {}
        #: The watches and mirrors (re-watched after a reconnection).
        self.watches = WatchSet()
        #: Gaps the daemon reported (messages this client will not get), in
        #: all and per channel.
        self.gaps = 0
        self.gaps_by_channel: dict[str, int] = {}
        self._push_frames: list[bytes] = []
        self._push_flush_scheduled = False
        self._paused = False  # the transport's buffer is full
        self._closing = False
        self._writable_waiters: list[Deferred[None]] = []
        #: Held by every write of this client's connections, in whichever
        #: thread (see lttx.client.sending): one lock across reconnections.
        self.send_lock = threading.RLock()
        # Attached before the reconnector takes the connection, as each new one is:
        # at a loss the client forgets it before the service hears of it, so
        # close() fires with the client disconnected.
        self._attach(protocol)
        self._connection = Reconnector(reactor, settings, protocol, self._resubscribe)

    @classmethod
    def connect(cls, reactor: IReactorTime, settings: ConnectionSettings,
                on_message: Optional[Callable[[Message], None]] = None,
                on_messages: Optional[Callable[[list[Message]], None]] = None,
                ) -> "Deferred[AsyncClient]":
        """
        Connect and authenticate, at the first of the settings' addresses
        that can be reached.

        :param on_message: called in the reactor thread with each
            :class:`Message` received on a channel subscribed without a callback.
        :param on_messages: instead, called with the list of such messages
            that arrived together (in order).
        :raises AuthError: (as a failure) on a wrong token.
        :raises ConnectError: when the daemon cannot be reached.
        """
        deliver = on_message or (lambda message: None)
        return open_first(reactor, settings).addCallback(
            lambda opened: cls(reactor, opened[1], opened[0], opened[0].server_info,
                               deliver, on_messages))

    # -- the connection -----------------------------------------------------

    @property
    def settings(self) -> ConnectionSettings:
        """Where the client is connected, or reconnecting to, and how."""
        return self._connection.settings

    @property
    def connected(self) -> bool:
        """Whether the client is connected now (False while it reconnects)."""
        return self.protocol is not None

    def _attach(self, protocol: ClientProtocol) -> None:
        if protocol.sender is not None:
            protocol.sender.lock = self.send_lock
        self.protocol = protocol
        protocol.set_receivers(self._messages_received, _log_notice, self._gap_received)
        protocol.lost.addCallback(lambda _: self._connection_lost(protocol))
        self._paused = False
        protocol.transport.registerProducer(self, True)
        # Pushes made while disconnected go first, in order, before the calls
        # that waited are sent (the reconnector hands the connection to them next).
        self._flush_pushes()

    def _connection_lost(self, protocol: ClientProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        self._paused = False
        # Requests queued behind pushes failed with the connection: never resent.
        self._push_frames = [f for f in self._push_frames if type(f) is not _RequestFrame]
        if self._closing:
            return
        self.log.warn("lost the connection to LTtx at {host}:{port}; reconnecting",
                      host=self.settings.host, port=self.settings.port)

    def _resubscribe(self, protocol: ClientProtocol) -> "Deferred[object]":
        """
        Make a new connection ready: subscribe it to this client's channels,
        each from the last message received (``resume``: its epoch and seq),
        so that nothing retained is missed or repeated; the daemon sends a
        gap notice for what it cannot give.
        """
        # Messages follow a subscribe reply at once, often in the same chunk:
        # route them before asking, or the first ones after the outage are lost.
        protocol.set_receivers(self._messages_received, _log_notice, self._gap_received)
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, sub in self._subscriptions.items():
            # Not yet answered: subscribed again as first asked.
            first = None if sub.epoch is not None else tuple(sorted(sub.options.items()))
            groups.setdefault((sub.password, sub.conflate, first), []).append(name)
        requests = []
        for (password, conflate, first), names in groups.items():
            options: dict[str, Any] = {"conflate": conflate}
            if first is None:
                options["resume"] = {name: [self._subscriptions[name].epoch,
                                            self._subscriptions[name].last] for name in names}
            else:
                options.update(first)
            d = protocol.request("subscribe", names, password, options)
            d.addCallbacks(lambda reply, names=names: self._resubscribed(names, reply),
                           lambda failure, names=names: self._resubscribe_refused(failure, names))
            requests.append(d)
        if self.watches.listeners:
            point = self.watches.resume_point
            d = protocol.request("watch", self.watches.patterns,
                                 {} if point is None else {"resume": point})
            d.addCallback(lambda reply: (self.watches.watched(reply), [])[1])
            requests.append(d)
        done: Deferred[Any] = gatherResults(requests, consumeErrors=True)
        done.addCallbacks(lambda accepted: self._reconnected(
                              protocol, [name for names in accepted for name in names]),
                          lambda failure: failure.value.subFailure
                          if failure.check(FirstError) else failure)
        return done

    def _resubscribed(self, names: list[str], reply: Any) -> list[str]:
        self._subscribed(names, reply)
        return names

    def _resubscribe_refused(self, failure: Failure, names: list[str]) -> list[str]:
        # The daemon refused these channels (recreated with another password,
        # the token's rights changed): the other channels and calls go on.
        failure.trap(AuthError, BadRequest, PermissionDenied)
        self.log.error("could not resubscribe to {channels}: {error}",
                       channels=", ".join(names), error=failure.getErrorMessage())
        for name in names:
            self._subscriptions.pop(name, None)
        return []

    def _reconnected(self, protocol: ClientProtocol, channels: list[str]) -> None:
        if self._closing:
            raise LTtxError("the client was closed while it reconnected")
        self.server_info = protocol.server_info
        self.log.info("reconnected to LTtx at {host}:{port}; resubscribed to {channels} "
                      "(from the last message received on each)",
                      host=self.settings.host, port=self.settings.port,
                      channels=", ".join(channels) or "no channels")
        self._attach(protocol)

    # -- requests -----------------------------------------------------------

    def call(self, command: str, *args: Any) -> "Deferred[Any]":
        """
        Send any command (see docs/protocol.md) and get its result.

        A request is sent after the pushes made before it: while pushes wait
        here (the connection's buffer is full), it waits behind them.  While
        the client reconnects, the call waits for the connection (at most
        the timeout, then fails with :class:`ConnectionLost`).
        """
        if self.protocol is not None:
            if self._push_frames:
                return self.protocol.request(command, *args, writer=self._queue_request)
            return self.protocol.request(command, *args)
        if self._closing:
            return fail(ConnectionLost("the client is closed"))
        return self._connection.when_connected(self.settings.timeout).addCallback(
            lambda protocol: self.call(command, *args))

    def _queue_request(self, payload: bytes) -> None:
        self._push_frames.append(_RequestFrame(payload))
        if not self._push_flush_scheduled:
            self._push_flush_scheduled = True
            self.reactor.callLater(0, self._flush_pushes)

    def _then(self, result: "Deferred[Any]", transform: Callable[[Any], Any]) -> "Deferred[Any]":
        return result.addCallback(transform)

    # -- channels -----------------------------------------------------------

    def subscribe(self, channels: "str | list[str]", password: Optional[str] = None,
                  conflate: bool = False,
                  callback: Optional[Callable[[Message], None]] = None,
                  history: Optional[int] = None, since: Optional[int] = None,
                  last_values: bool = False,
                  on_gap: Optional[Callable[[str, Optional[int], Optional[int]], None]] = None,
                  ) -> "Deferred[dict[str, int]]":
        """
        Subscribe to channels (``"a"``, ``"a@b"`` or a list).

        :param password: the channel password; the first subscriber of a
            channel sets it, later ones must give the same.
        :param conflate: while this client lags, the daemon sends only the
            newest message of each key it has not read.
        :param callback: called in the reactor thread with each
            :class:`Message` of these channels, instead of the client's default.
        :param history: first the channel's last ``history`` retained
            messages, then live ones.
        :param since: first the retained messages after seq ``since``, then live ones.
        :param last_values: first the newest message of each key the
            channel carried (before the history, if any), then the rest.
        :param on_gap: called (in the reactor thread) with ``(channel,
            first_missed, last_missed)`` when the daemon says messages will
            not reach this client (``last_missed`` None: unknown, e.g. the
            daemon restarted).  Every gap is also logged and counted in
            :attr:`gaps`.
        :return: (a Deferred of) each channel's next sequence number.
        :raises AuthError: (as a failure) on a wrong password.
        """
        try:
            names = split_channels(channels)
        except LTtxError as e:
            return fail(e)
        if history is not None and since is not None:
            return fail(BadRequest("subscribe takes history or since, not both"))
        options: dict[str, Any] = {}
        if history is not None:
            options["history"] = history
        if since is not None:
            options["since"] = since
        if last_values:
            options["last_values"] = True
        before = {name: self._subscriptions.get(name) for name in names}
        subscriptions = {}
        # Recorded before the reply: a reconnection meanwhile resubscribes it too.
        for name in names:
            sub = subscriptions[name] = _Subscription(password or None, bool(conflate),
                                                      callback, on_gap, options)
            previous = before[name]
            if previous is not None and not options:  # the daemon keeps its position
                sub.epoch, sub.last = previous.epoch, previous.last
            self._subscriptions[name] = sub

        def refused(failure: Failure) -> Failure:
            for name, previous in before.items():
                if self._subscriptions.get(name) is subscriptions[name]:
                    if previous is None:
                        del self._subscriptions[name]
                    else:
                        self._subscriptions[name] = previous
            return failure

        d = self.call("subscribe", names, password or None, dict(options, conflate=conflate))
        d.addCallback(lambda reply: self._subscribed(names, reply, subscriptions))
        return d.addErrback(refused)

    def _subscribed(self, names: list[str], reply: Any,
                    subscriptions: Optional[dict[str, "_Subscription"]] = None,
                    ) -> dict[str, int]:
        """Note each channel's epoch and starting point from a subscribe reply;
        each channel's next seq, as :meth:`subscribe` returns it."""
        result = {}
        for name in names:
            info = reply.get(name) if isinstance(reply, dict) else None
            if not isinstance(info, dict):  # a daemon of protocol 1: {channel: next seq}
                result[name] = info
                continue
            result[name] = info["next"]
            sub = self._subscriptions.get(name)
            if sub is None or (subscriptions is not None and sub is not subscriptions[name]):
                continue
            if sub.epoch != info["epoch"]:
                # The first subscribe, or the log was made again (a gap notice follows).
                sub.epoch, sub.last = info["epoch"], info["from"] - 1
            else:
                sub.last = max(sub.last, info["from"] - 1)
        return result

    def publish(self, key: Any, data: Any, channel: str) -> "Deferred[int]":
        """
        Publish ``data`` under ``key`` on ``channel`` and wait until the
        daemon has appended it to the channel's log.

        :return: (a Deferred of) the message's seq.
        :raises PermissionDenied: without the right to publish there.
        :raises BadRequest: for a bad channel name or key.
        :raises FrameTooLarge: over the daemon's frame limit.
        """
        return self.call("publish", channel, key, data)

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
        # The common batch: one channel subscribed without a callback.  Its
        # checks are C loops over the batch, not Python per message.
        subscription = subscriptions.get(messages[0].channel) if messages else None
        if (subscription is not None and subscription.callback is None
                and len(set(map(_channel_of, messages))) == 1):
            last = max(map(_seq_of, messages))
            if last > subscription.last:
                subscription.last = last
            self._deliver_plain(messages)
            return
        plain = []
        changes = []
        for message in messages:
            subscription = subscriptions.get(message.channel)
            if subscription is None:
                if message.channel is None:  # a watched change (docs/protocol.md, "Watch")
                    changes.append(message)
                continue  # unsubscribed while it was on its way
            if message.seq > subscription.last:
                subscription.last = message.seq
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
        if changes:
            self.watches.received(changes)

    def _gap_received(self, code: str, text: str, detail: dict[str, Any]) -> None:
        """A notice with a detail map: a gap notice of a channel (docs/protocol.md, "Gaps")."""
        if code == "missed":
            self.watches.missed(text, detail)
            return
        channel = detail.get("channel")
        subscription = self._subscriptions.get(channel) if isinstance(channel, str) else None
        if code != "gap" or subscription is None:
            _log_notice(code, text)
            return
        first, last = detail.get("first"), detail.get("last")
        self.gaps += 1
        self.gaps_by_channel[channel] = self.gaps_by_channel.get(channel, 0) + 1
        self.log.warn("gap on {channel}: messages {first} to {last} will not arrive ({text})",
                      channel=channel, first="?" if first is None else first,
                      last="?" if last is None else last, text=text)
        if "previous_epoch" in detail:  # the log was made again: its seqs start over
            subscription.epoch, subscription.last = detail.get("epoch"), 0
        elif isinstance(last, int) and last > subscription.last:
            subscription.last = last
        if subscription.on_gap is not None:
            try:
                subscription.on_gap(channel, first, last)
            except Exception:
                self.log.failure("an on_gap callback failed on {channel}", channel=channel)

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
        self.push_frames([codec.encode([codec.PUBLISH, channel, key, data], default)])

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

    def idle_on(self, protocol: ClientProtocol) -> bool:
        """
        Under :attr:`send_lock`, in any thread: whether ``protocol`` is this
        client's connection and nothing of the client waits to be written
        before what is sent on it now.
        """
        return self.protocol is protocol and not self._paused and not self._push_frames

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
            with self.send_lock:  # taken and written as one (lttx.client.sending)
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
        protocol = self.protocol
        if protocol is None or protocol.transport is None or protocol.transport.disconnecting:
            # Calls waiting for a reconnection fail with ConnectionLost now.
            self._connection.stop()
            return succeed(None)
        self._flush_pushes(force=True)
        # A TLS transport closes only once its producer is gone (TCP does not wait).
        protocol.transport.unregisterProducer()
        return self._connection.stop()  # fires once the connection is closed


class _Subscription:
    """How a channel was subscribed to, to resubscribe it the same way, and
    where this client is in its log (the epoch, the last seq received)."""

    __slots__ = ("password", "conflate", "callback", "on_gap", "options", "epoch", "last")

    def __init__(self, password: Optional[str], conflate: bool,
                 callback: Optional[Callable[[Message], None]],
                 on_gap: Optional[Callable[[str, Optional[int], Optional[int]], None]],
                 options: dict[str, Any]) -> None:
        self.password = password
        self.conflate = conflate
        self.callback = callback
        self.on_gap = on_gap
        self.options = options  # history/since/last_values of the first subscribe
        self.epoch: Optional[int] = None  # known once the daemon answered
        self.last = 0


class _RequestFrame(bytes):
    """A request's payload queued behind pushes (dropped, not resent, at a loss)."""

    __slots__ = ()


_channel_of = itemgetter(0)  # Message.channel
_seq_of = itemgetter(3)  # Message.seq


def _log_notice(code: str, message: str) -> None:
    AsyncClient.log.warn("the daemon says: {code}: {message}", code=code, message=message)


__all__ = ["AsyncClient"]
