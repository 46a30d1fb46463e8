"""
The daemon's factory: one :class:`LTtxServerProtocol` per connection, each
given the :class:`~lttx.server.state.ServerState` that connections share.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ServerFactory

from .protocol import LTtxServerProtocol
from .state import ServerState


class LTtxFactory(ServerFactory):
    """Builds one :class:`LTtxServerProtocol` per connection around one state."""

    noisy = False  # connections are logged once authenticated, not twice

    def __init__(self, state: ServerState) -> None:
        #: What the connections share; every protocol is given it.
        self.state = state

    def buildProtocol(self, addr: Optional[IAddress]) -> LTtxServerProtocol:
        return LTtxServerProtocol(self.state)
