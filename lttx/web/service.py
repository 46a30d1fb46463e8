"""
The HTTP side as a service: the rates sampler and one listener per
``--http`` endpoint, under one ``MultiService`` that ``makeService`` adds
to the daemon's.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from ..diskio import pool_runner
from ..server.state import ServerState
from .history import SAMPLE_INTERVAL, History
from .site import make_site


class _HttpEndpointService(StreamServerEndpointService):
    """Listens like its parent, and says where (so a port of 0 can be found)."""

    log = Logger(namespace="lttx.web")

    def __init__(self, description: str, *args: Any) -> None:
        super().__init__(*args)
        self.description = description

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        host = port.getHost()
        address = f"{host.host}:{host.port}" if hasattr(host, "port") else str(host)
        self.log.info("LTtx HTTP status page on {description} at {address}",
                      description=self.description, address=address)
        return port


def make_http_service(state: ServerState, endpoints: Sequence[str], reactor: Any) -> MultiService:
    """
    The sampler of the page's rate history and a listener per endpoint
    string (``tcp:8025``, ``ssl:8443:privateKey=...``).
    """
    services = MultiService()
    channels = state.channels
    history = History(lambda: (channels.published, channels.delivered, len(state.connections)),
                      reactor.seconds)
    sampler = TimerService(SAMPLE_INTERVAL, history.sample)
    sampler.clock = reactor
    sampler.setServiceParent(services)
    site = make_site(state, history, reactor, pool_runner(reactor))
    for description in endpoints:
        listener = _HttpEndpointService(description, serverFromString(reactor, description), site)
        listener.setServiceParent(services)
    return services


__all__ = ["make_http_service"]
