"""
LTtx: a data center for distributed Python programs.

Cloud variables, channels and files served by one Twisted daemon::

    import lttx
    with lttx.connect("127.0.0.1", 2025, token="LTtx") as c:
        c.put("pos", {"600000.SH": 100})
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402  (the version is needed by submodules first)
    AuthError,
    BadFileName,
    BadRequest,
    ChecksumMismatch,
    ConnectError,
    ConnectionLost,
    EncodeError,
    FileBusy,
    FrameTooLarge,
    IndexOutOfRange,
    LTtxError,
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
from .client import Client, Message, connect  # noqa: E402


__all__ = [
    "AuthError", "BadFileName", "BadRequest", "ChecksumMismatch", "ConnectError", "ConnectionLost",
    "EncodeError", "FileBusy", "FrameTooLarge", "IndexOutOfRange", "LTtxError", "NotFound",
    "PermissionDenied", "ServerError", "SlowSubscriber", "StorageError", "TimeoutError",
    "TLSError", "Unavailable", "WrongTypeError", "Client", "Message", "connect",
    "__version__",
]
