"""
The daemon's factory: it owns what connections share.

The variable store, the channel registry and the authenticator are passed in
(``makeService`` builds them), so tests build a factory around fakes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from .auth import TokenAuthenticator
from .channels import ChannelRegistry
from .protocol import LTtxServerProtocol
from .store import IVariableStore

if TYPE_CHECKING:
    from .filetransfer import FileService

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
    ) -> None:
        self.store = store
        self.auth = auth
        self.max_frame = max_frame
        self.channels = channels if channels is not None else ChannelRegistry()
        self.subscriber_buffer = subscriber_buffer
        # Times the abort of a cut-off subscriber that does not read; None: never.
        self.clock = clock
        self.files = files
        self.connections: set[LTtxServerProtocol] = set()

    def buildProtocol(self, addr: IAddress) -> LTtxServerProtocol:
        return LTtxServerProtocol(self)

    def connection_made(self, protocol: LTtxServerProtocol) -> None:
        self.connections.add(protocol)

    def connection_lost(self, protocol: LTtxServerProtocol) -> None:
        if protocol in self.connections:
            self.connections.remove(protocol)
            if protocol.authenticated:
                self.log.info("{peer} disconnected", peer=protocol.peer)

    def status(self) -> dict[str, Any]:
        """What ``lttx status`` shows of this daemon."""
        status = {"connections": len(self.connections), "variables": len(self.store),
                  "channels": self.channels.status()}
        if self.files is not None:
            status["files"] = self.files.status()
        # The engine (memory or redis) and what the store says of itself.
        status["engine"] = getattr(self.store, "engine", "memory")
        store_status = getattr(self.store, "status", None)
        if store_status is not None:
            status["store"] = store_status()
        return status
