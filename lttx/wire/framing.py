"""
Splitting a byte stream into frames, with no I/O: the decoder owns its buffer.

Both ends feed what a read gave them to :meth:`FrameDecoder.feed` and take
complete payloads with :meth:`FrameDecoder.next_frame`, as long as they want
them (the daemon stops taking while it cannot write its replies; what is not
taken stays buffered here).

Large frames cost one copy, not a quadratic number: Twisted's
``IntNStringReceiver`` joins every read onto what it holds, so a frame of N
bytes arriving in 64 KiB reads costs about N²/128 KiB of copying (7 s for
32 MiB).  Here a frame that is still incomplete keeps its reads in a list and
joins them once, when the last byte is there, into its payload alone (a
100 MB DataFrame costs one copy of 100 MB here, not two).
"""

from __future__ import annotations

import struct
from typing import Optional

from .frames import PREFIX


class FrameTooLong(Exception):
    """A length prefix over the decoder's limit: the stream cannot be resynchronised."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class FrameDecoder:
    """
    The frames of one connection's incoming bytes, in order.

    :param max_length: the largest payload accepted; a longer one raises
        :class:`FrameTooLong` from :meth:`next_frame` (the limit may be
        changed at any time, e.g. raised once the peer authenticated).
    """

    def __init__(self, max_length: int, prefix: struct.Struct = PREFIX) -> None:
        self.max_length = max_length
        # The length prefix: 4 bytes big-endian; the original LTtx's 8 bytes
        # little-endian on its legacy port.
        self._prefix = prefix
        self._buffer = b""  # complete frames and the start of the next one
        self._position = 0  # where the next unread frame starts in _buffer
        # The reads of an incomplete frame too long to re-join on every read.
        self._pieces: list[bytes] = []
        self._have = 0  # bytes in _pieces
        self._need = 0  # bytes the incomplete frame needs in all (prefix included)
        self._ready: Optional[bytes] = None  # a long frame just joined, before _buffer

    def feed(self, data: bytes) -> None:
        """Add the bytes of one read."""
        if not data:
            return
        if self._need:
            self._pieces.append(data)
            self._have += len(data)
            if self._have >= self._need:
                # Join the payload alone (without its prefix and without the
                # bytes after it): the frame is then handed on as it is,
                # never sliced out of a bigger buffer (a second copy).
                pieces, extra = self._pieces, self._have - self._need
                if extra:
                    pieces[-1], rest = data[:len(data) - extra], data[len(data) - extra:]
                else:
                    rest = b""
                pieces[0] = pieces[0][self._prefix.size:]
                self._ready = b"".join(pieces)
                self._buffer, self._position = rest, 0
                self._pieces, self._have, self._need = [], 0, 0
            return
        if self._position < len(self._buffer):
            rest = self._buffer[self._position:] if self._position else self._buffer
            self._buffer = rest + data
        else:
            self._buffer = data
        self._position = 0

    def next_frame(self) -> Optional[bytes]:
        """
        The next complete payload, or None until more bytes are fed.

        :raises FrameTooLong: if the next frame's length is over the limit.
        """
        if self._need:
            return None
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        buffer, position = self._buffer, self._position
        available = len(buffer) - position
        header = self._prefix.size
        if available < header:
            return None
        (length,) = self._prefix.unpack_from(buffer, position)
        if length > self.max_length:
            raise FrameTooLong(length, self.max_length)
        end = position + header + length
        if end > len(buffer):
            # Incomplete: a long one collects its reads until it is whole.
            if length >= _COLLECT_FROM:
                self._pieces = [buffer[position:]]
                self._have = available
                self._need = header + length
                self._buffer, self._position = b"", 0
            return None
        self._position = end
        return buffer[position + header:end]

    def whole(self, data: bytes) -> Optional[bytes]:
        """
        The payload of ``data`` when nothing is buffered and ``data`` is
        exactly one whole frame within the limit: what :meth:`feed` then
        :meth:`next_frame` would give (after which nothing is buffered
        either), without feeding it.  None otherwise: feed ``data``.
        """
        if self._need or self._ready is not None or self._position < len(self._buffer):
            return None
        header = self._prefix.size
        if len(data) <= header:
            return None
        (length,) = self._prefix.unpack_from(data)
        if length + header != len(data) or length > self.max_length:
            return None
        return data[header:]

    def take_all(self) -> list[bytes]:
        """
        Every complete payload buffered, in order (what :meth:`next_frame`
        would give until it gives None), split in one loop: a subscriber
        takes a whole read's frames at once.

        :raises FrameTooLong: if the first frame's length is over the limit;
            one after complete frames is raised by the next call, once they
            are taken.
        """
        if self._need:
            return []
        frames: list[bytes] = []
        if self._ready is not None:
            frames.append(self._ready)
            self._ready = None
        buffer, position = self._buffer, self._position
        size = len(buffer)
        header = self._prefix.size
        unpack_from, limit, append = self._prefix.unpack_from, self.max_length, frames.append
        while size - position >= header:
            (length,) = unpack_from(buffer, position)
            if length > limit:
                if frames:
                    break
                self._position = position
                raise FrameTooLong(length, limit)
            start = position + header
            end = start + length
            if end > size:
                if length >= _COLLECT_FROM:
                    self._pieces = [buffer[position:]]
                    self._have = size - position
                    self._need = header + length
                    self._buffer, self._position = b"", 0
                    return frames
                break
            append(buffer[start:end])
            position = end
        self._position = position
        return frames

    def take_run(self, head: bytes, below: int) -> list[bytes]:
        """
        The complete payloads from here on that start with ``head`` and are
        shorter than ``below`` bytes, in order, up to the first frame that is
        not one (left for :meth:`next_frame`, as is anything incomplete): the
        daemon takes a read's run of PUBLISH frames in one loop.
        """
        if self._need or self._ready is not None:
            return []
        buffer, position = self._buffer, self._position
        size = len(buffer)
        header = self._prefix.size
        unpack_from, starts = self._prefix.unpack_from, buffer.startswith
        below = min(below, self.max_length + 1)
        frames: list[bytes] = []
        append = frames.append
        while size - position >= header:
            (length,) = unpack_from(buffer, position)
            start = position + header
            end = start + length
            if length >= below or end > size or not starts(head, start, end):
                break
            append(buffer[start:end])
            position = end
        self._position = position
        return frames

    @property
    def collecting(self) -> bool:
        """Whether a long frame is arriving (its reader may read in bigger chunks)."""
        return self._need > 0

    @property
    def pending_length(self) -> int:
        """The declared payload length of the long frame being collected (0: none)."""
        return self._need - self._prefix.size if self._need else 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken as frames."""
        ready = len(self._ready) if self._ready is not None else 0
        return len(self._buffer) - self._position + self._have + ready


#: Incomplete frames from this size on are collected and joined once.
_COLLECT_FROM = 256 * 1024

__all__ = ["FrameDecoder", "FrameTooLong"]
