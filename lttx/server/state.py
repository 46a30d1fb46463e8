"""
What the daemon's connections share: :class:`ServerState`.

The variable store, the channel registry, the authenticator and the file
service are passed in (``makeService`` builds them; tests pass fakes), with
the limits every connection applies and the clock.  The state also keeps the
set of open connections and answers the ``status`` request.  A protocol is
given this object, not the factory, as transit-relay's protocol talks to
``factory.transit``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .._version import __version__
from ..state.auth import TokenAuthenticator
from ..state.channels import ChannelRegistry
from ..state.status import StatusSource, gather_status
from ..state.store import IVariableStore
from ..state.throttle import HelloThrottle, RefusalLog
from ..wire.codec import Encoder
from .budget import BufferBudget
from .file_session import FileSession, IFileConnection
from .files import FileService

#: The largest frame a connection accepts after hello (``--max-frame``).
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: ``--subscriber-buffer``: obsolete (a subscriber is a position in a channel's
#: log, with no queue of its own), accepted so that existing unit files start.
DEFAULT_SUBSCRIBER_BUFFER = 16 * 1024 * 1024

#: ``--max-connections`` and ``--max-connections-per-host`` (docs/limits.md).
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_CONNECTIONS_PER_HOST = 2_000

#: The keys of :meth:`ServerState.status` that no status source may take.
_OWN_STATUS = frozenset({"version", "uptime", "connections", "variables", "hellos"})


def _nothing() -> None:
    """A store with no journal: nothing to do around a chunk."""


class Connection(Protocol):
    """What the state keeps of an open connection."""

    #: The peer's address, for log lines.
    peer: str
    #: Whether it said a good hello.
    authenticated: bool


class ServerState:
    """
    What every connection of one daemon shares.

    :param max_frame: the largest frame accepted after hello, in bytes.
    :param channels: the channel registry; a new one if None.
    :param subscriber_buffer: obsolete, kept for ``--subscriber-buffer``; unused.
    :param clock: tells the uptime (the status report has none without) and
        times the hello timeout; None: it is not timed.
    :param files: the file service; None: file connections are refused.
    :param status_sources: the components whose ``status()`` the ``status``
        request reports, each under its name (``"journal"``, ``"engine"``);
        wiring one more is one entry here.  The channel registry and the
        file service are ones without being named.
    """

    log = Logger()

    def __init__(
        self,
        store: IVariableStore,
        auth: TokenAuthenticator,
        max_frame: int = DEFAULT_MAX_FRAME,
        channels: Optional[ChannelRegistry] = None,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        clock: Optional[IReactorTime] = None,
        files: Optional[FileService] = None,
        status_sources: Optional[Mapping[str, StatusSource]] = None,
    ) -> None:
        self.store = store
        schedule_scans = getattr(store, "schedule_scans_on", None)
        if clock is not None and schedule_scans is not None:
            schedule_scans(clock)  # large keys scans run in slices in this reactor
        self.auth = auth
        self.max_frame = max_frame
        self.channels = channels if channels is not None else ChannelRegistry()
        self.subscriber_buffer = subscriber_buffer
        self.clock = clock
        self.files = files
        self.connections: set[Connection] = set()
        self._per_host: dict[str, int] = {}  # open connections of each host
        self._host_of: dict[Connection, str] = {}
        self.started = None if clock is None else clock.seconds()
        now = clock.seconds if clock is not None else time.monotonic
        #: Slows down the hellos of hosts that keep sending wrong tokens.
        self.hello_throttle = HelloThrottle(now)
        #: Keeps a flood of refused connections from flooding the log.
        self.refusals = RefusalLog(now)
        if hasattr(store, "observer"):
            # Every applied change goes to the change log (watch and mirror);
            # the Redis store calls it never: its change feed fills the log.
            store.observer = self.channels.record_change
        #: Encodes the daemon's frames with a Packer kept for reuse.
        self.encoder = Encoder()
        #: ``--max-buffered``: what all connections may hold together.
        self.budget = BufferBudget()
        self.budget.connections = self.connections
        self.status_sources: dict[str, StatusSource] = {
            "channels": self.channels, "buffers": self.budget}
        if files is not None:
            self.status_sources["files"] = files
        if hasattr(store, "observer"):
            self.status_sources["watch"] = self.channels.changes
        self.status_sources.update(status_sources or {})
        #: Called by a connection before and after it serves a chunk of
        #: received requests: a journalled store writes the chunk's changes
        #: at its end (``DurableStore.chunk_done``).
        self.chunk_begun: Callable[[], None] = getattr(store, "chunk_begun", _nothing)
        self.chunk_done: Callable[[], None] = getattr(store, "chunk_done", _nothing)
        clash = set(self.status_sources) & _OWN_STATUS
        if clash:
            raise ValueError(f"status source names clash with the daemon's own: {sorted(clash)}")

    #: Makes the session of each file connection: one daemon's own folder, or
    #: the files of every daemon on a shared Redis (``SharedFiles.session``).
    file_sessions: Callable[[FileService, IFileConnection], FileSession] = FileSession

    #: ``--max-connections``: open connections at most (0: no bound).
    max_connections = DEFAULT_MAX_CONNECTIONS
    #: ``--max-connections-per-host``: open connections from one host at most.
    max_connections_per_host = DEFAULT_MAX_CONNECTIONS_PER_HOST

    def admit(self, host: str) -> Optional[str]:
        """Why a new connection from ``host`` is refused (None: it is not)."""
        if self.max_connections and len(self.connections) >= self.max_connections:
            return (f"the daemon has {len(self.connections)} connections, its limit "
                    f"(--max-connections)")
        if (self.max_connections_per_host
                and self._per_host.get(host, 0) >= self.max_connections_per_host):
            return (f"{self._per_host[host]} connections are open from this host, the limit "
                    f"(--max-connections-per-host)")
        return None

    def connection_made(self, connection: Connection, host: Optional[str] = None) -> None:
        """A connection was accepted (a refused peer is never added)."""
        self.connections.add(connection)
        if host is not None:
            self._per_host[host] = self._per_host.get(host, 0) + 1
            self._host_of[connection] = host

    def connection_lost(self, connection: Connection) -> None:
        """A connection closed."""
        host = self._host_of.pop(connection, None)
        if host is not None:
            left = self._per_host[host] - 1
            if left:
                self._per_host[host] = left
            else:
                del self._per_host[host]
        if connection in self.connections:
            self.connections.remove(connection)
            if connection.authenticated:
                self.log.info("{peer} disconnected", peer=connection.peer)

    def status(self) -> "dict[str, Any] | Deferred[dict[str, Any]]":
        """
        What ``lttx status`` shows of this daemon: its own figures, and each
        status source's ``status()`` under the source's name.

        Everything is read from counters kept anyway, at the moment of the
        request: nothing on the hot path works for it.  A Deferred only if a
        source answers with one (a remote engine).
        """
        report: dict[str, Any] = {
            "version": __version__,
            "uptime": (None if self.clock is None or self.started is None
                       else max(0.0, self.clock.seconds() - self.started)),
            "connections": len(self.connections),
            "variables": len(self.store),
            "hellos": self.hello_throttle.status(),
        }
        for name, source in self.status_sources.items():
            report[name] = source.status()
        return gather_status(report)
