"""
Opening connections to the daemon, and keeping one up.

- :func:`open_connection`: connect, ``hello``, learn the daemon's
  ``max_frame``; every connection a client makes (commands, file transfers,
  reconnections) is opened by it, with one error text.
- :func:`open_first`: the first of several daemons that can be reached.
- :class:`Reconnector`: a command connection kept up by Twisted's
  :class:`~twisted.application.internet.ClientService`, with backoff, each
  attempt at the next daemon of the list.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import ConnectError, ConnectionLost, LTtxError
from .protocol import COMMAND, FILE, ClientProtocol
from .settings import ConnectionSettings

#: Seconds between reconnection attempts: 0.1, doubled each attempt, at most 5.
#: No jitter, so the schedule is the same every time (and in tests).
RECONNECT_BACKOFF = backoffPolicy(initialDelay=0.05, factor=2.0, maxDelay=5.0,
                                  jitter=lambda: 0.0)


def open_connection(reactor: IReactorTime, settings: ConnectionSettings,
                    mode: str = COMMAND) -> "Deferred[ClientProtocol]":
    """
    Connect to the daemon of ``settings`` and authenticate (``hello``, with
    ``{"mode": "file"}`` for a file connection); fires with the protocol, its
    :attr:`~ClientProtocol.max_frame` and
    :attr:`~ClientProtocol.server_info` set from the daemon's reply.

    :raises AuthError: (as a failure) on a wrong token; the other errors the
        daemon answers ``hello`` with pass unchanged too.
    :raises TLSError: when the daemon's certificate is not trusted or not for the host.
    :raises ConnectError: when the daemon cannot be reached.
    :raises ConnectionLost: when the connection ends before the reply.
    :raises TimeoutError: without a reply within the settings' timeout.
    """
    protocol = ClientProtocol(None if mode == FILE else _ignore, reactor=reactor, mode=mode)
    where = f"{settings.host}:{settings.port}"

    def authenticate(_: Any) -> "Deferred[Any]":
        # A command connection reads MESSAGES frames (lttx.wire.batches).
        options = {"mode": FILE} if mode == FILE else {"batches": True}
        return protocol.request("hello", *settings.hello_args(**options),
                                timeout=settings.timeout)

    def authenticated(info: dict[str, Any]) -> ClientProtocol:
        protocol.max_frame = int(info.get("max_frame", protocol.max_frame))
        protocol.server_info = info
        return protocol

    def failed(failure: Failure) -> Failure:
        if protocol.transport is not None:
            protocol.transport.loseConnection()  # half-open: never handed out
        if failure.check(LTtxError):
            return failure
        # Everything else, a cancelled attempt included, is not reaching it.
        return Failure(ConnectError(f"cannot connect to LTtx at {where}: "
                                    f"{failure.getErrorMessage()}"))

    try:
        endpoint = settings.endpoint(reactor)
    except LTtxError as e:  # e.g. an unreadable CA file
        return fail(e)
    d = connectProtocol(endpoint, protocol)
    d.addCallback(authenticate)
    d.addCallbacks(authenticated, failed)
    return d


def open_first(reactor: IReactorTime, settings: ConnectionSettings,
               ) -> "Deferred[tuple[ClientProtocol, ConnectionSettings]]":
    """
    :func:`open_connection` at each address of ``settings`` in turn, from
    the current one, until one can be reached; fires with that connection
    and the settings at its address.  A wrong token is wrong at every
    daemon: no other address is tried.
    """
    tried = [settings]
    while len(tried) < len(settings.addresses):
        tried.append(tried[-1].next_address())

    def attempt(i: int) -> "Deferred[tuple[ClientProtocol, ConnectionSettings]]":
        d = open_connection(reactor, tried[i]).addCallback(lambda p: (p, tried[i]))

        def next_one(failure: Failure) -> Any:
            failure.trap(ConnectError)
            return attempt(i + 1)
        if i + 1 < len(tried):
            d.addErrback(next_one)
        return d
    return attempt(0)


def _ignore(message: Any) -> None:
    """A command connection's messages before a client takes them: none are expected."""


class Reconnector:
    """
    One command connection kept up by :class:`ClientService`: when it is
    lost, the service waits (:data:`RECONNECT_BACKOFF`) and opens a new one
    with :func:`open_connection`, at the next address of the settings,
    then lets ``prepare`` make it ready (resubscribe) before any waiting call
    gets it.

    :param first: the connection already open (and ready) at ``settings``.
    :param prepare: called with each new connection once authenticated; the
        attempt succeeds when its Deferred fires, fails (and is retried) when
        it fails.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, settings: ConnectionSettings,
                 first: ClientProtocol,
                 prepare: Callable[[ClientProtocol], "Deferred[object]"]) -> None:
        self.reactor = reactor
        #: Where the connection in use, or the attempt under way, goes.
        self.settings = settings
        self._first: Optional[ClientProtocol] = first
        self._prepare = prepare
        self._failures = 0  # failed attempts since the last connection
        self._stopped = False
        self.service = ClientService(_NextDaemon(self), Factory.forProtocol(_Established),
                                     retryPolicy=RECONNECT_BACKOFF, clock=reactor)
        self.service.startService()

    def when_connected(self, timeout: float) -> "Deferred[ClientProtocol]":
        """
        The connection, once there is one (at once if there is): fails with
        :class:`ConnectionLost` after ``timeout`` seconds, or when stopped.
        """
        d = self.service.whenConnected()

        def not_yet(failure: Failure) -> Failure:
            if failure.check(DeferredTimeout):
                raise ConnectionLost(f"not reconnected to the daemon within {timeout} s")
            if failure.check(CancelledError):
                raise ConnectionLost("the client was closed")
            return failure

        d.addTimeout(timeout, self.reactor)
        return d.addCallbacks(lambda handle: handle.connection, not_yet)

    def stop(self) -> "Deferred[None]":
        """Close the connection (or give up the attempt); no reconnection follows."""
        self._stopped = True
        return self.service.stopService()  # type: ignore[return-value]

    def _connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        """One attempt: what the service's endpoint does."""
        d: Deferred[ClientProtocol]
        if self._first is not None:  # the connection the client started with
            d, self._first = succeed(self._first), None
        else:
            # With several daemons, each attempt tries the next one.
            self.settings = self.settings.next_address()
            d = open_connection(self.reactor, self.settings)
            d.addCallback(self._prepared)
        d.addCallback(self._connected, factory)
        d.addErrback(self._failed)
        return d

    def _connected(self, connection: ClientProtocol, factory: IProtocolFactory) -> Any:
        handle = _hand_over(connection, factory)
        self._failures = 0
        return handle

    def _prepared(self, connection: ClientProtocol) -> "Deferred[ClientProtocol]":
        def unusable(failure: Failure) -> Failure:
            connection.transport.loseConnection()
            return failure
        d = self._prepare(connection)
        return d.addCallbacks(lambda _: connection, unusable)

    def _failed(self, failure: Failure) -> Failure:
        self._failures += 1
        if self._failures == 1 and not self._stopped:
            # One line per outage, not one per attempt.
            self.log.warn("cannot reconnect yet ({error}); retrying",
                          error=failure.getErrorMessage())
        return failure


@implementer(IStreamClientEndpoint)
class _NextDaemon:
    """The endpoint of a :class:`Reconnector`'s service: each ``connect``
    opens and prepares a connection to the next daemon."""

    def __init__(self, reconnector: Reconnector) -> None:
        self._reconnector = reconnector

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        return self._reconnector._connect(factory)

    def __repr__(self) -> str:
        settings = self._reconnector.settings
        return f"<LTtx at {settings.host}:{settings.port}>"


class _Established(Protocol):
    """
    What the service holds for a connection that :func:`open_connection`
    made and ``prepare`` made ready.

    Why not let the service build our protocol and authenticate in
    ``prepareConnection``: the service has no transition for the loss of a
    connection it is still preparing or has rejected (Twisted 26 raises
    ``automat.NoTransition`` from ``connectionLost``), and a daemon closes
    after refusing a ``hello``.  So an attempt is whole before the service
    sees it, and this stand-in tells it of the loss.
    """

    connection: ClientProtocol

    def adopt(self, connection: ClientProtocol) -> None:
        self.connection = connection


def _hand_over(connection: ClientProtocol, factory: IProtocolFactory) -> Any:
    if connection.lost.called:  # the service must see only live connections
        raise ConnectionLost(f"the {connection.label} to the daemon was lost")
    handle: Any = factory.buildProtocol(connection.transport.getPeer())
    handle.adopt(connection)  # the service's proxy passes it on to _Established
    handle.makeConnection(connection.transport)  # how the service closes it at stop
    connection.lost.addCallback(lambda _: handle.connectionLost(Failure(ConnectionDone())))
    return handle


__all__ = ["RECONNECT_BACKOFF", "Reconnector", "open_connection", "open_first"]
