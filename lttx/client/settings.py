"""
Where a client connects and how it authenticates: :class:`ConnectionSettings`,
from which every connection of a client (commands, file transfers,
reconnections) is made, TLS included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from .._version import DEFAULT_PORT, PROTOCOL_VERSION, __version__
from .tls import tls_endpoint

#: Seconds a client waits for a reply, and for a connection.
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ConnectionSettings:
    """Where a client connects and how it authenticates; every connection it
    opens (commands, file transfers, reconnections) is made from these."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT
    #: Speak TLS, verifying the daemon's certificate and that it is for ``host``.
    tls: bool = False
    #: PEM file of the CA(s) to trust with ``tls``; None trusts the system's CAs.
    ca: Optional[str] = None
    #: Every daemon of the data center, ``(host, port)``, in the order to try
    #: them (``host``/``port`` is the one in use); empty for one daemon.
    addresses: tuple[tuple[str, int], ...] = ()
    #: Makes the endpoint of every connection, ``connector(reactor, host,
    #: port)``, instead of TCP (and TLS) to ``host:port``: in-memory daemons
    #: in tests (:mod:`lttx.testing`), a tunnel.
    connector: Optional[Callable[[Any, str, int], IStreamClientEndpoint]] = None

    def next_address(self) -> "ConnectionSettings":
        """These settings at the address after the current one (cyclic)."""
        if len(self.addresses) < 2:
            return self
        current = (self.host, self.port)
        i = self.addresses.index(current) + 1 if current in self.addresses else 0
        host, port = self.addresses[i % len(self.addresses)]
        return replace(self, host=host, port=port)

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """
        The client endpoint to reach the daemon.  With ``tls`` its connection
        is ready only after the certificate was verified.

        :raises TLSError: (now) if the ``ca`` file cannot be read.
        """
        if self.connector is not None:
            return self.connector(reactor, self.host, self.port)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, self.host, self.port, timeout=self.timeout)
        if self.tls:
            endpoint = tls_endpoint(reactor, endpoint, self.host, self.port, self.ca)
        return endpoint

    def hello_args(self, **options: Any) -> list[Any]:
        """The arguments of the ``hello`` request that opens every connection."""
        return [self.token, {"client": f"lttx-py/{__version__}",
                             "protocol": PROTOCOL_VERSION, **options}]


def split_address(address: "str | tuple[str, int]", port: int) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` (the default port) or ``(host, port)``."""
    if not isinstance(address, str):
        return str(address[0]), int(address[1])
    host, sep, text = address.rpartition(":")
    if not sep or "]" in text:  # no port (an IPv6 address in brackets has colons)
        return address.strip("[]"), port
    return host.strip("[]"), int(text)


__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "ConnectionSettings", "split_address"]
