"""
An LTtx daemon for your own tests, with real clients, as ``treq.testing``
offers an in-memory server for treq.

Two harnesses, both with the daemon's real protocol, dispatcher, store and
channel registry (variables kept in memory, files in a temporary folder):

- :class:`MemoryDaemon`, for Twisted code and ``trial``: connections are
  joined in memory (``twisted.test.iosim``), time is a
  :class:`~twisted.internet.testing.MemoryReactorClock`, and nothing moves
  until the test calls :meth:`MemoryDaemon.flush`; fully deterministic::

      daemon = MemoryDaemon()
      client = daemon.connect()              # an AsyncClient
      d = client.put("pos", 1)
      daemon.flush()
      self.assertIsNone(self.successResultOf(d))

- :class:`LocalDaemon`, for blocking code (``lttx.connect``): a daemon on
  127.0.0.1 at a free port, run by a reactor thread of its own::

      with LocalDaemon() as daemon:
          c = daemon.connect()               # a blocking lttx.Client
          c.put("pos", 1)

Neither touches the global reactor, so both work in ``trial``, pytest,
unittest and notebooks.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from zope.interface import implementer

from .client import AsyncClient, Client, ConnectionSettings, Message, connect
from .client.eventloop import EventLoop
from .diskio import pool_runner, run_inline
from .server.factory import LTtxFactory
from .server.files import FileService
from .server.state import ServerState
from .state.auth import TokenAuthenticator
from .state.channels import ChannelRegistry
from .state.store import MemoryStore

#: The token both harnesses expect unless given another.
TEST_TOKEN = "lttx-test-token"


def _state(token: Optional[str], files_dir: str, clock: Any, run: Any,
           **state_args: Any) -> ServerState:
    files = FileService(files_dir, run, clock=clock)
    files.startService()  # creates the folder; nothing is left running
    store = state_args.pop("store", None)
    if store is None:
        store = MemoryStore()
    state_args.setdefault("channels", ChannelRegistry(clock=clock.seconds))
    return ServerState(store, TokenAuthenticator(token), clock=clock, files=files, **state_args)


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    """Each connection made through it is a new server protocol of the daemon."""

    def __init__(self, daemon: "MemoryDaemon") -> None:
        self._daemon = daemon

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        return self._daemon._accept(factory)


class MemoryDaemon:
    """
    A daemon whose connections are joined in memory; time is :attr:`clock`.

    :param token: the token clients must give (None: no token, every client
        is loopback here, so all are served).
    :param state_args: passed to :class:`~lttx.server.state.ServerState`
        (``max_frame``, ``subscriber_buffer``, ``store``, ``channels``).
    """

    def __init__(self, token: Optional[str] = TEST_TOKEN,
                 clock: Optional[MemoryReactorClock] = None, **state_args: Any) -> None:
        self.clock = clock if clock is not None else MemoryReactorClock()
        self.token = token
        self._files_dir = tempfile.mkdtemp(prefix="lttx-test-files-")
        #: What the daemon's connections share (its store, channels, files).
        self.state = _state(token, self._files_dir, self.clock, run_inline, **state_args)
        self._factory = LTtxFactory(self.state)
        self._pumps: list[iosim.IOPump] = []
        #: While True, new connections are refused (the daemon is "down").
        self.down = False

    def settings(self, **settings: Any) -> ConnectionSettings:
        """Client settings whose every connection reaches this daemon."""
        settings.setdefault("token", self.token)
        endpoint = _MemoryEndpoint(self)
        return ConnectionSettings("memory", 1, connector=lambda reactor, host, port: endpoint,
                                  **settings)

    def connect(self, on_message: Optional[Callable[[Message], None]] = None,
                **settings: Any) -> AsyncClient:
        """
        A connected, authenticated :class:`AsyncClient` (the connection is
        pumped until it is up).

        :raises LTtxError: what connecting raised (a wrong token: AuthError).
        """
        d = AsyncClient.connect(self.clock, self.settings(**settings), on_message)
        self.flush()
        result: list[Any] = []
        d.addBoth(result.append)
        if not result:
            raise RuntimeError("the connection did not complete (is the daemon down?)")
        if hasattr(result[0], "raiseException"):
            result[0].raiseException()
        return result[0]

    def flush(self) -> None:
        """Move bytes both ways until nothing moves (and run the calls due now)."""
        self.clock.advance(0)
        while any([pump.pump() for pump in self._pumps]):
            self.clock.advance(0)

    @property
    def connections_made(self) -> int:
        """How many connections the daemon has accepted so far."""
        return len(self._pumps)

    def drop_connections(self) -> None:
        """The daemon closes every open connection (clients then reconnect)."""
        for pump in self._pumps:
            pump.serverIO.loseConnection()
        self.flush()

    def close(self) -> None:
        """Remove the daemon's files folder."""
        shutil.rmtree(self._files_dir, ignore_errors=True)

    def _accept(self, factory: IProtocolFactory) -> "Deferred[Any]":
        if self.down:
            return fail(ConnectionRefusedError("the daemon is down"))
        client = factory.buildProtocol(None)
        server = self._factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self._pumps.append(iosim.connect(server, iosim.makeFakeServer(server),
                                         client, iosim.makeFakeClient(client),
                                         greet=False, clock=self.clock))
        return succeed(client)


def cluster_settings(daemons: "Mapping[str, MemoryDaemon]", first: str,
                     **settings: Any) -> ConnectionSettings:
    """
    Client settings for several in-memory daemons of one data center, each
    reached by its name as host: the client starts at ``first`` and fails
    over to the others in order, as with ``lttx.connect([...])``.
    """
    settings.setdefault("token", next(iter(daemons.values())).token)
    return ConnectionSettings(
        first, 1, addresses=tuple((name, 1) for name in daemons),
        connector=lambda reactor, host, port: _MemoryEndpoint(daemons[host]), **settings)


class LocalDaemon:
    """
    A daemon on 127.0.0.1 at a free port, served by a reactor thread of its
    own, for blocking clients.  Use it as a context manager, or call
    :meth:`stop`.

    :param token: the token clients must give.
    :param state_args: passed to :class:`~lttx.server.state.ServerState`.
    """

    def __init__(self, token: Optional[str] = TEST_TOKEN, **state_args: Any) -> None:
        self.token = token
        self._loop = EventLoop(name="lttx-test-daemon")
        self._files_dir = tempfile.mkdtemp(prefix="lttx-test-files-")
        reactor = self._loop.reactor
        try:
            self.state: ServerState = self._loop.run(
                _state, token, self._files_dir, reactor, pool_runner(reactor), **state_args)
            self._port = self._loop.run(
                lambda: reactor.listenTCP(0, LTtxFactory(self.state), interface="127.0.0.1"))
        except BaseException:
            self._loop.stop()
            raise
        #: Where it listens.
        self.host: str = "127.0.0.1"
        self.port: int = self._port.getHost().port

    def connect(self, **options: Any) -> Client:
        """A blocking :class:`lttx.Client` connected to this daemon (``lttx.connect`` options)."""
        options.setdefault("token", self.token)
        return connect(self.host, self.port, **options)

    def stop(self) -> None:
        """Stop listening, close every connection, end the thread, remove the files."""
        try:
            self._loop.run(self._port.stopListening)
        finally:
            self._loop.stop()
            shutil.rmtree(self._files_dir, ignore_errors=True)

    def __enter__(self) -> "LocalDaemon":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


__all__ = ["TEST_TOKEN", "LocalDaemon", "MemoryDaemon", "cluster_settings"]
