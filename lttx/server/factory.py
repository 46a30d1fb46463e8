"""
The daemon's factory: one :class:`LTtxServerProtocol` per connection, each
given the :class:`~lttx.server.state.ServerState` that connections share.
"""

from __future__ import annotations

from typing import Mapping, Optional

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory

from ..state.auth import TokenAuthenticator
from ..state.channels import ChannelRegistry
from ..state.status import StatusSource
from ..state.store import IVariableStore
from .files import FileService
from .protocol import LTtxServerProtocol
from .state import DEFAULT_MAX_FRAME, DEFAULT_SUBSCRIBER_BUFFER, ServerState


class LTtxFactory(ServerFactory):
    """
    Builds one :class:`LTtxServerProtocol` per connection around one state.

    The arguments are those of :class:`ServerState`, which the factory builds
    and keeps as :attr:`state`; it holds nothing else.
    """

    noisy = False  # connections are logged once authenticated, not twice

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
        #: What the connections share; every protocol is given it.
        self.state = ServerState(store, auth, max_frame=max_frame, channels=channels,
                                 subscriber_buffer=subscriber_buffer, clock=clock,
                                 files=files, status_sources=status_sources)

    def buildProtocol(self, addr: Optional[IAddress]) -> LTtxServerProtocol:
        return LTtxServerProtocol(self.state)
