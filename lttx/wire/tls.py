"""What OpenSSL said when a connection failed: read the same way by the
daemon (for its log) and the client (for the :class:`~lttx.errors.TLSError`
it raises)."""

from __future__ import annotations

from typing import Any, Optional

from OpenSSL import SSL
from twisted.python.failure import Failure


def openssl_reason(error: Any) -> str:
    """The reasons an ``OpenSSL.SSL.Error`` carries, joined into one line."""
    # OpenSSL.SSL.Error carries [(library, function, reason), ...].
    try:
        return "; ".join(str(entry[-1]) for entry in error.args[0]) or str(error)
    except (AttributeError, IndexError, TypeError):
        return str(error)


def tls_failure(reason: Optional[Failure]) -> Optional[str]:
    """What OpenSSL said, if a connection was lost to a TLS error (a client that
    does not trust the daemon's certificate, or that speaks plain TCP to a TLS
    port); None otherwise."""
    if reason is None or not reason.check(SSL.Error):
        return None
    return openssl_reason(reason.value)


__all__ = ["openssl_reason", "tls_failure"]
