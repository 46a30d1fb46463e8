"""
Large frames without quadratic copying.

Twisted's ``IntNStringReceiver`` appends every read to what it holds
(``self._unprocessed + data``), so a frame of N bytes arriving in 64 KiB
reads costs about N²/128 KiB of copying: 7 s for 32 MiB.  A
:class:`FrameAssembler` takes over once the start of a large frame is known:
it keeps the frame's reads in a list and joins them once, when the whole frame
is there.  Frames under :data:`LARGE_FRAME` go the usual way.
"""

from __future__ import annotations

import struct
from typing import Optional

#: Frames from this size on are collected and joined once.
LARGE_FRAME = 256 * 1024

_PREFIX = struct.Struct("!I")


class FrameAssembler:
    """The reads of one large frame, waiting to be complete."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0

    def feed(self, data: bytes) -> Optional[bytes]:
        """
        The bytes to parse now, or None while a large frame is still arriving.

        Call first in ``dataReceived``; the bytes returned are the held frame
        (and what followed it) when it just completed, else ``data`` itself.
        """
        if not self._need:
            return data
        self._chunks.append(data)
        self._have += len(data)
        if self._have < self._need:
            return None
        joined = b"".join(self._chunks)
        self._chunks, self._have, self._need = [], 0, 0
        return joined

    def hold(self, unprocessed: bytes, max_length: int) -> bytes:
        """
        Call after parsing with what is left unparsed: if it starts a large
        frame that is not complete, it is taken over (and b"" returned);
        else it is returned as it is.
        """
        if len(unprocessed) < 4:
            return unprocessed
        (length,) = _PREFIX.unpack_from(unprocessed)
        if length < LARGE_FRAME or length > max_length:
            return unprocessed  # small, or refused by the receiver's own limit
        self._chunks = [unprocessed]
        self._have = len(unprocessed)
        self._need = 4 + length
        return b""
