"""
The one request dispatcher of the daemon, for command and file connections.

A connection decodes a request frame ``[0, id, command, args]`` and hands the
id, the command's name and its arguments to its :class:`Dispatcher`, which:

- finds the handler, a ``cmd_<name>`` method marked with :func:`command`
  (its argument count), of the connection's handler object;
- checks the argument count, then the right the command needs of the
  connection's token (:func:`lttx.state.auth.authorize_command`, one table
  per connection kind);
- calls the handler and sends its result as the reply, once a Deferred
  result fires if it is one, unless the handler sent its reply itself
  (:data:`REPLIED`: a download sends its header, then streams raw frames);
- turns an :class:`~lttx.errors.LTtxError` into an error frame and one log
  line, and an unexpected exception into ``log.failure`` and an ``internal``
  error for that request only: the connection goes on being served.

Publish frames never come here: they have no reply, and their path
(:meth:`LTtxServerProtocol.publish_received`) stays as short as it is.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import BadRequest, LTtxError, ServerError
from ..state.auth import Grant, Right, authorize_command
from ..wire.excerpt import excerpt

_F = TypeVar("_F", bound=Callable[..., Any])

#: Result types that are never a Deferred: one set lookup instead of an
#: ``isinstance`` through Deferred's abstract base class (~80 ns per request).
PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})

#: What a handler marked ``replies_itself`` returns once it has sent its
#: reply (or has nothing left to send): the dispatcher sends nothing more.
REPLIED = object()


def command(min_args: int, max_args: Optional[int] = None, *,
            replies_itself: bool = False) -> Callable[[_F], _F]:
    """
    Mark a ``cmd_*`` method as a command taking ``min_args`` to ``max_args``
    arguments (``max_args`` None: exactly ``min_args``).

    :param replies_itself: the handler gets the request id before its
        arguments and sends its reply itself, returning :data:`REPLIED`.
    """

    def mark(handler: _F) -> _F:
        # One attribute, read once per request by the dispatcher.
        handler.command = (  # type: ignore[attr-defined]
            min_args, min_args if max_args is None else max_args, replies_itself)
        return handler

    return mark


def _loggable(name: Any) -> str:
    """A command name for a log event: itself when it is a short str, else a
    bounded excerpt (a deep or huge value must not reach the log formatter)."""
    if type(name) is str and len(name) <= 40:
        return name
    return excerpt(name, 40)


class Requester(Protocol):
    """What the dispatcher needs of the connection it serves."""

    #: The peer's address, for log lines.
    peer: str

    @property
    def grant(self) -> Grant:
        """What the connection's token may do."""

    def send_reply(self, request_id: int, result: Any) -> None:
        """Send ``[1, request_id, result]``."""

    def send_error(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send ``[2, request_id, code, message]``."""


class Dispatcher:
    """
    Serves the requests of one connection with the handlers of one object.

    :param handlers: the object whose ``cmd_<name>`` methods, marked with
        :func:`command`, are the commands of this connection.
    :param connection: where replies and errors go.
    :param rights: the right each command needs (``COMMAND_RIGHTS`` or
        ``FILE_COMMAND_RIGHTS`` of :mod:`lttx.state.auth`).
    :param log: the logger of the connection, so its lines keep its namespace.
    """

    def __init__(self, handlers: object, connection: Requester,
                 rights: Mapping[str, Optional[Right]], log: Logger) -> None:
        self.handlers = handlers
        self.connection = connection
        self.rights = rights
        self.log = log
        # Each command's handler and its marks, once looked up.
        self._found: dict[str, tuple[Any, Any]] = {}

    def dispatch(self, request_id: int, name: Any, args: Any) -> None:
        """Serve one request; the reply or error is sent now or when it is known."""
        found = self._found.get(name) if type(name) is str else None
        if found is None:
            handler: Any = None
            if isinstance(name, str):
                handler = getattr(self.handlers, f"cmd_{name}", None)
            marked = getattr(handler, "command", None)
            if marked is None:  # no such handler, or a method not marked as a command
                self.refuse(request_id, name, BadRequest(f"unknown command {excerpt(name, 40)}"))
                return
            if type(name) is str:
                self._found[name] = (handler, marked)  # (commands only: a bounded table)
        else:
            handler, marked = found
        if not isinstance(args, list):
            self.refuse(request_id, name, BadRequest("arguments must be an array"))
            return
        low, high, replies_itself = marked
        if not low <= len(args) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            self.refuse(request_id, name, BadRequest(
                f"{name} takes {expected} arguments, not {len(args)}"))
            return
        try:
            grant = self.connection.grant
            if not grant.unlimited:
                authorize_command(grant, name, args, self.rights)
            if replies_itself:
                result = handler(request_id, *args)
            else:
                result = handler(*args)
        except LTtxError as e:
            self.refuse(request_id, name, e)
            return
        except Exception:
            # A bug or an unforeseen OS error: say so, keep serving.
            self._internal(request_id, name, Failure())
            return
        if type(result) in PLAIN_RESULTS or not isinstance(result, Deferred):
            self._replied(result, request_id)
        else:
            result.addCallbacks(self._replied, self._failed, (request_id,), None,
                                (request_id, name))

    def refuse(self, request_id: Optional[int], name: Any, error: LTtxError) -> None:
        """Send an error frame for a request (or a frame) and log it in one line."""
        # Not a field named "message": a legacy log observer (trial's) replaces
        # it with () in the event every observer shares.
        self.log.info("{peer}: {command!r} refused: {code}: {reason}",
                      peer=self.connection.peer, command=_loggable(name), code=error.code,
                      reason=error.message)
        self.connection.send_error(request_id, error)

    def _replied(self, value: Any, request_id: int) -> None:
        if value is not REPLIED:
            self.connection.send_reply(request_id, value)

    def _failed(self, failure: Failure, request_id: int, name: str) -> None:
        if isinstance(failure.value, LTtxError):
            self.refuse(request_id, name, failure.value)
        else:
            self._internal(request_id, name, failure)

    def _internal(self, request_id: int, name: str, failure: Failure) -> None:
        self.log.failure("{peer}: {command} failed", failure,
                         peer=self.connection.peer, command=name)
        self.refuse(request_id, name, ServerError(f"{name} failed in the daemon"))
