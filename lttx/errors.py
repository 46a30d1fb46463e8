"""
The one hierarchy of LTtx errors.

Every class has a stable wire ``code``.  The server turns an exception into an
error frame ``[2, id, code, message]`` in one place (the protocol), and the
client turns the frame back into the same class with :func:`error_from_wire`,
so ``except lttx.WrongTypeError`` works the same in-process and over the wire.
"""

from __future__ import annotations

import builtins


class LTtxError(Exception):
    """Base class of every error LTtx raises."""

    code = "error"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class AuthError(LTtxError):
    """The token (or a channel password) was wrong, or a request came first."""

    code = "auth"


class PermissionDenied(LTtxError):
    """The token is valid but does not allow this action."""

    code = "forbidden"


class BadRequest(LTtxError, ValueError):
    """The request is malformed: wrong arguments, unknown command, bad name."""

    code = "bad_request"


class BadFileName(BadRequest):
    """A file name that is not a plain name: a path separator, ``..``, a NUL,
    a leading dot, empty, or longer than 255 bytes."""

    code = "bad_file_name"


class FileBusy(LTtxError):
    """Another connection is uploading a file of that name right now (or, in
    the client, another download to the same target is running)."""

    code = "busy"


class WrongTypeError(LTtxError, TypeError):
    """The variable holds a value of another type (``dict_change`` on a list)."""

    code = "wrong_type"


class IndexOutOfRange(LTtxError, IndexError):
    """A list index outside the list, or a pop from an empty list."""

    code = "index"


class NotFound(LTtxError, KeyError):
    """The variable, channel or file does not exist."""

    code = "not_found"

    def __str__(self) -> str:
        # KeyError quotes its argument; a message reads better unquoted.
        return self.message


class Conflict(LTtxError):
    """A compare-and-set found the variable at another revision than the one
    given (``if_revision=``): it changed meanwhile, or exists when it should
    not.  Nothing was changed."""

    code = "conflict"


class MissedChanges(LTtxError):
    """A watch missed changes: it lagged past what the daemon retains, or the
    daemon restarted.  Raised by ``Watch.get`` in order with the changes (the
    ones before it were all seen); a mirror reloads itself instead.

    :ivar first: the first change seq missed (None: unknown).
    :ivar last: the last one (None: unknown, e.g. after a restart).
    """

    code = "missed"

    def __init__(self, message: str = "", first: object = None, last: object = None) -> None:
        super().__init__(message)
        self.first = first
        self.last = last


class FrameTooLarge(LTtxError):
    """A frame is larger than the daemon's ``--max-frame``."""

    code = "too_large"


class LimitExceeded(BadRequest):
    """A request past one of the daemon's documented bounds (docs/limits.md):
    too many channels in one subscribe or on one connection, too many
    connections; nothing was done."""

    code = "limit"


class EncodeError(LTtxError, ValueError):
    """A value cannot be encoded (an unsupported type, an int beyond 64 bits)."""

    code = "encode"


class MissingDependency(LTtxError, ImportError):
    """A DataFrame, series or array came, but this client lacks the library it
    needs (pandas, polars, numpy, pyarrow); the message names the extra to
    install, e.g. ``pip install 'lttx[pandas]'``."""

    code = "missing_dependency"


class DecodeError(LTtxError, ValueError):
    """A DataFrame, series or array came whose bytes this client cannot read
    (a sender wrote them wrongly); the value is kept as :class:`lttx.Encoded`."""

    code = "decode"


class SlowSubscriber(LTtxError):
    """A daemon of protocol 1 cut this subscriber off (its queue passed the
    bound).  Kept for its stable code: daemons of protocol 2 never cut off a
    subscriber for being slow (it is a position in the channel's log)."""

    code = "slow_subscriber"


class ChecksumMismatch(LTtxError):
    """A transferred file's MD5 did not match; no file was kept."""

    code = "checksum"


class StorageError(LTtxError):
    """The daemon could not write (a full disk, a file too large)."""

    code = "storage"


class RecoveryError(StorageError):
    """The data directory cannot be loaded as it is (a corrupt snapshot, a newer
    format); the daemon refuses to start rather than lose variables."""

    code = "recovery"


class Unavailable(LTtxError):
    """A back end the daemon needs (the journal, an engine) is unavailable."""

    code = "unavailable"


class ServerError(LTtxError):
    """The daemon failed unexpectedly while serving the request (it logged why)."""

    code = "internal"


class ConnectError(LTtxError, ConnectionError):
    """The client could not connect to any daemon."""

    code = "connect"


class TLSError(ConnectError):
    """The TLS handshake failed: the daemon's certificate is not signed by a
    trusted CA, or not for the host name connected to (the message says which)."""

    code = "tls"


class ConnectionLost(LTtxError, ConnectionError):
    """The connection was lost before the reply came (or could not be restored)."""

    code = "connection_lost"


class TimeoutError(LTtxError, builtins.TimeoutError):
    """No reply within the client's timeout."""

    code = "timeout"


def _all_subclasses(cls: type[LTtxError]) -> list[type[LTtxError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


# Read-only after import: the wire code of each class, and back.
ERROR_CLASSES: dict[str, type[LTtxError]] = {
    cls.code: cls for cls in [LTtxError, *_all_subclasses(LTtxError)]
}


def error_from_wire(code: object, message: object) -> LTtxError:
    """
    Build the exception an error frame stands for.

    An unknown code (a newer daemon) becomes a plain :class:`LTtxError` that
    still carries the code, so nothing is lost.
    """
    cls = ERROR_CLASSES.get(code) if isinstance(code, str) else None
    if cls is None:
        return LTtxError(f"{message} ({code})")
    return cls(str(message))
