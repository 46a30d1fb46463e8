"""
``plus_mode``: the original client's ``start_plus`` connection, for ``push_plus``.

Its frames are raw UTF-8 text (not JSON), ``key|data:who:channel``, split at
the last ``:who:`` into the message and its channel, and the message at its
first ``|``, as the original server did.  Nothing is sent back after the
handshake.  The client's heartbeat (``heartbeat|t`` on ``test22`` every 2 s)
is counted and published to no one.
"""

from __future__ import annotations

from typing import Any

from ...errors import BadRequest
from .framed import FramedMode
from .handshake import LegacyProtocol
from ...wire.legacy import PLUS_HEARTBEAT


class PlusMode(FramedMode):
    """One ``plus_mode`` connection."""

    name = "plus_mode"

    def __init__(self, connection: LegacyProtocol, handshake: dict[str, Any]) -> None:
        super().__init__(connection)
        self.log.info("{peer} connected (legacy plus_mode)", peer=connection.peer)
        connection.send_handshake_reply({"code": 0, "msg": "plus_mode connected",
                                         "id_code": next(connection.legacy.ids)})

    def frame_received(self, frame: bytes) -> None:
        text, sep, channel = frame.decode("utf-8", errors="replace").rpartition(":who:")
        if not sep:
            self.refused("push_plus", BadRequest("a push_plus frame is key|data:who:channel"))
            return
        self.publish(channel, text, PLUS_HEARTBEAT)
