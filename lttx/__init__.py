"""
LTtx: a data center for distributed Python programs.

Cloud variables, channels and files served by one Twisted daemon::

    import lttx
    with lttx.connect("127.0.0.1", 2025, token="LTtx") as c:
        c.put("pos", {"600000.SH": 100})

The client (``connect``, ``Client``, ``Message``) is loaded on first use, so
the daemon, which imports ``lttx.server``, never loads it.
"""

from typing import Any

from ._version import __version__
from .errors import (
    AuthError,
    BadFileName,
    BadRequest,
    ChecksumMismatch,
    ConnectError,
    Conflict,
    ConnectionLost,
    DecodeError,
    EncodeError,
    FileBusy,
    FrameTooLarge,
    IndexOutOfRange,
    LimitExceeded,
    LTtxError,
    MissedChanges,
    MissingDependency,
    NotFound,
    PermissionDenied,
    ServerError,
    SlowSubscriber,
    StorageError,
    TimeoutError,
    TLSError,
    Unavailable,
    WrongTypeError,
)
from .wire.ext import Encoded

#: The client's public names, imported from lttx.client when first asked for.
_CLIENT_NAMES = frozenset({"AsyncClient", "Change", "Client", "Message", "Mirror", "Watch",
                           "connect"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'lttx' has no attribute {name!r}")


__all__ = [
    "AuthError", "BadFileName", "BadRequest", "ChecksumMismatch", "Conflict", "ConnectError",
    "ConnectionLost", "DecodeError", "Encoded", "EncodeError", "FileBusy", "FrameTooLarge",
    "IndexOutOfRange", "LimitExceeded", "LTtxError", "MissedChanges", "MissingDependency",
    "NotFound",
    "PermissionDenied", "ServerError", "SlowSubscriber", "StorageError", "TimeoutError",
    "TLSError", "Unavailable", "WrongTypeError", "AsyncClient", "Change", "Client", "Message",
    "Mirror", "Watch", "connect",
    "__version__",
]
