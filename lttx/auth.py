"""
Who may connect: the shared token, and protected mode without one.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Optional

from twisted.internet.interfaces import IAddress
from twisted.internet.address import IPv4Address, IPv6Address


def is_loopback(address: IAddress) -> bool:
    """Whether a peer address is this machine's (loopback IP or a UNIX socket)."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host.split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback
    # UNIX sockets and in-memory test transports never leave the machine.
    return True


class TokenAuthenticator:
    """
    Checks the token of ``hello`` against the daemon's shared secret.

    Without a token the daemon is in protected mode, like Redis: it serves
    loopback peers only, and any token they present is accepted.
    """

    def __init__(self, token: Optional[str]) -> None:
        self._token = token.encode("utf-8") if token else None

    @property
    def protected_mode(self) -> bool:
        return self._token is None

    def allows_peer(self, address: IAddress) -> bool:
        """Whether a peer may even start to authenticate."""
        return not self.protected_mode or is_loopback(address)

    def check(self, token: object) -> bool:
        """Whether ``token`` opens the daemon; compared in constant time."""
        if self._token is None:
            return True
        if isinstance(token, str):
            token = token.encode("utf-8")
        if not isinstance(token, bytes):
            return False
        return hmac.compare_digest(token, self._token)
