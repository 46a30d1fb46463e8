"""
Matching reply and error frames to the requests a client has in flight, the
same way on command and file connections.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred

from ..errors import LTtxError, error_from_wire
from ..wire import codec


def settle(pending: dict[int, "Deferred[Any]"], message: list[Any]) -> Optional[LTtxError]:
    """
    Fire the Deferred of the request a REPLY or ERROR frame answers.

    :return: the error of an ERROR frame that answers no request in flight (an
        error with a nil id: the daemon could not read a frame), for the
        caller to report; None otherwise.
    """
    if message[0] == codec.REPLY:
        d = pending.pop(message[1], None)
        if d is not None:
            d.callback(message[2])
        return None
    error = error_from_wire(message[2], message[3])
    d = pending.pop(message[1], None)
    if d is None:
        return error
    d.errback(error)
    return None
