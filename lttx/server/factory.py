"""
The daemon's factory: it owns what connections share.

The variable store, the channel registry and the authenticator are passed in
(``makeService`` builds them), so tests build a factory around fakes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from .._version import __version__
from ..state.auth import TokenAuthenticator
from ..state.channels import ChannelRegistry
from ..state.status import StatusSource, gather_status
from ..state.store import IVariableStore
from .protocol import LTtxServerProtocol

if TYPE_CHECKING:
    from .files import FileService

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
DEFAULT_SUBSCRIBER_BUFFER = 16 * 1024 * 1024


class LTtxFactory(ServerFactory):
    """Builds one :class:`LTtxServerProtocol` per connection."""

    log = Logger()
    noisy = False  # connections are logged once authenticated, not twice

    def __init__(
        self,
        store: IVariableStore,
        auth: TokenAuthenticator,
        max_frame: int = DEFAULT_MAX_FRAME,
        channels: Optional[ChannelRegistry] = None,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
        clock: Optional[IReactorTime] = None,
        files: "Optional[FileService]" = None,
        status_sources: Optional[Mapping[str, StatusSource]] = None,
    ) -> None:
        """
        :param clock: tells the uptime (the status report has none without).
        :param status_sources: the components whose ``status()`` the
            ``status`` request reports, each under its name (``"channels"``,
            ``"journal"``, ``"files"``); wiring one more is one entry here.
            The channel registry and the file service are ones without being named.
        """
        self.store = store
        self.auth = auth
        self.max_frame = max_frame
        self.channels = channels if channels is not None else ChannelRegistry()
        self.subscriber_buffer = subscriber_buffer
        # Times the abort of a cut-off subscriber that does not read; None: never.
        self.clock = clock
        self.files = files
        self.connections: set[LTtxServerProtocol] = set()
        self.started = None if clock is None else clock.seconds()
        self.status_sources: dict[str, StatusSource] = {"channels": self.channels}
        if files is not None:
            self.status_sources["files"] = files
        self.status_sources.update(status_sources or {})
        clash = set(self.status_sources) & _OWN_STATUS
        if clash:
            raise ValueError(f"status source names clash with the daemon's own: {sorted(clash)}")

    def buildProtocol(self, addr: IAddress) -> LTtxServerProtocol:
        return LTtxServerProtocol(self)

    def connection_made(self, protocol: LTtxServerProtocol) -> None:
        self.connections.add(protocol)

    def connection_lost(self, protocol: LTtxServerProtocol) -> None:
        if protocol in self.connections:
            self.connections.remove(protocol)
            if protocol.authenticated:
                self.log.info("{peer} disconnected", peer=protocol.peer)

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
        }
        for name, source in self.status_sources.items():
            report[name] = source.status()
        return gather_status(report)


#: The keys of :meth:`LTtxFactory.status` that no status source may take.
_OWN_STATUS = frozenset({"version", "uptime", "connections", "variables"})
