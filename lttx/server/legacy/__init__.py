"""
The original LTtx protocol, served on ``--legacy-listen`` ports, so that
unmodified ``tx.py`` clients share the daemon's variables, channels and files
with native ones (SPEC.md section 7; ``docs/migrating.md``).

- :mod:`lttx.wire.legacy`: the old frames and value conventions, as bytes and values;
- :mod:`.handshake`: one connection, its JSON handshake and token;
- :mod:`.framed`: the frame loop of the modes whose clients send frames;
- :mod:`.put_mode`, :mod:`.push_mode`, :mod:`.plus_mode`, :mod:`.file_mode`:
  one module per connection type; :mod:`.modes` maps ``con_type`` to them.

Everything is the daemon's :class:`~lttx.server.state.ServerState`: the
store, the channel registry, the files, the authenticator and its rights.
The old protocol has no TLS: a legacy port is for trusted networks.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.protocol import ServerFactory

from ..state import ServerState
from .handshake import LegacyProtocol, LegacyStatus
from .modes import MODES


class LegacyFactory(ServerFactory):
    """Builds one :class:`LegacyProtocol` per connection of a ``--legacy-listen`` port."""

    noisy = False

    def __init__(self, state: ServerState, legacy: Optional[LegacyStatus] = None) -> None:
        self.state = state
        #: The port's figures (a status source) and its id counter.
        self.legacy = legacy if legacy is not None else LegacyStatus()

    def buildProtocol(self, addr: Any) -> LegacyProtocol:
        return LegacyProtocol(self.state, self.legacy, MODES)


__all__ = ["LegacyFactory", "LegacyProtocol", "LegacyStatus"]
