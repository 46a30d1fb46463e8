"""
One subscriber connection's outgoing queue, a streaming producer.

The transport pauses the :class:`Outbox` when its own buffer fills (the
subscriber reads slower than messages come) and resumes it when drained.
While paused, frames wait here, counted in bytes.  Past ``limit`` bytes of
plain (non-conflated) frames, the subscriber is hopeless: ``on_overflow`` is
called once and the connection is cut off by its owner.  Frames of a
conflating subscription never count toward that limit: while they wait, a
newer frame with the same conflation key replaces the queued one, so such a
subscriber holds at most one frame per key and is never cut off.

Frames are written in batches: one ``transport.write`` per flush (per chunk
of received publishes) instead of one per message; after a pause, the
backlog is written in slices of :data:`CHUNK` bytes until the transport
pauses again, so the transport's buffer never holds more than about a chunk
on top of its own high-water mark.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Hashable, Optional

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

from ..state.channels import ISubscriber

#: The largest slice of a backlog written at once after a resume.
CHUNK = 256 * 1024


#: A conflating subscriber is cut off only when its queue, one message per
#: key, passes this many times --subscriber-buffer: a key set that keeps
#: growing (keys that never repeat), not a subscriber that is merely slow.
CONFLATED_BOUND = 4


@implementer(IPushProducer, ISubscriber)
class Outbox:
    """
    The queue of frames waiting to be written to one subscriber.

    :param transport: the connection; the outbox registers itself on it as a
        streaming producer.
    :param limit: most bytes of plain frames held while the transport is paused.
    :param on_overflow: called (once, at the next :meth:`flush`) with a reason
        when ``limit`` is passed.
    :param on_close: called with a reason by :meth:`close` (the registry
        dropping this subscriber); it writes the notice and disconnects.
    """

    def __init__(self, transport: ITransport, limit: int,
                 on_overflow: Callable[[str], None],
                 on_close: Callable[[str], None],
                 reading: Optional[Callable[[bool], None]] = None) -> None:
        self.transport = transport
        # Stops and resumes reading the subscriber's own requests.
        self._reading = reading or (lambda on: set_reading(transport, on))
        self.limit = limit
        self._on_overflow = on_overflow
        self._on_close = on_close
        # Plain frames in order.  While conflated frames wait too, everything
        # is kept in _keyed instead (insertion-ordered), under a unique int
        # for a plain frame and its conflation key for a conflated one.
        self._frames: list[bytes] = []
        self._keyed: Optional[dict[Any, bytes]] = None
        self._ids = itertools.count()
        self.queued_bytes = 0  # every frame held here
        self.plain_bytes = 0  # the part that counts toward the limit
        self.paused = False
        self.stopped = False
        self.overflowed = False
        self._overflow_reason = ""
        self.conflated_drops = 0
        self.peak_bytes = 0
        self.written = 0  # bytes handed to the transport, for the status page
        transport.registerProducer(self, True)

    # -- ISubscriber --------------------------------------------------------

    def deliver(self, frame: bytes, conflation_key: Optional[Hashable] = None) -> bool:
        if self.stopped or self.overflowed:
            return False
        was_empty = not self.queued_bytes
        size = len(frame)
        if conflation_key is None:
            if self._keyed is None:
                self._frames.append(frame)
            else:
                self._keyed[next(self._ids)] = frame
            self.plain_bytes += size
        else:
            keyed = self._keyed
            if keyed is None:
                keyed = self._keyed = {next(self._ids): f for f in self._frames}
                self._frames = []
            # Wrapped, so that it never collides with a plain frame's int.
            slot = (conflation_key,)
            old = keyed.pop(slot, None)
            if old is not None:
                # The newer value replaces the older; it moves to the end so
                # that sequence numbers still arrive in increasing order.
                self.queued_bytes -= len(old)
                self.conflated_drops += 1
            keyed[slot] = frame
        self.queued_bytes += size
        if self.paused:
            if self.queued_bytes > self.peak_bytes:
                self.peak_bytes = self.queued_bytes
            if self.plain_bytes > self.limit:
                self._overflow_reason = (f"more than {self.limit} bytes queued for it "
                                         "while it did not read")
            elif self.queued_bytes > CONFLATED_BOUND * self.limit:
                # Conflated frames are bounded by their distinct keys only:
                # keys that never repeat (order ids) would grow without end.
                self._overflow_reason = (
                    f"more than {CONFLATED_BOUND * self.limit} bytes of conflated messages "
                    "with distinct keys queued for it while it did not read")
            if self._overflow_reason:
                # Reported at flush, after the registry's fan-out loop, which
                # must not see its subscribers change under it.
                self.overflowed = True
                self._clear()
                return True
            return False
        return was_empty

    def flush(self) -> None:
        """Write what is queued, in one write or in chunks until the transport pauses."""
        if self.overflowed and not self.stopped:
            self.stopped = True
            self._on_overflow(self._overflow_reason)
            return
        if self.paused or self.stopped or not self.queued_bytes:
            return
        if self.queued_bytes <= CHUNK:
            frames = self._frames if self._keyed is None else list(self._keyed.values())
            self._clear()
            data = b"".join(frames)
            self.written += len(data)
            self.transport.write(data)
            return
        # A backlog: slices, stopping as soon as the transport pushes back.
        if self._keyed is None:
            entries: list[tuple[Any, bytes]] = [(0, f) for f in self._frames]
        else:
            entries = list(self._keyed.items())
        start = 0
        while start < len(entries) and not self.paused and not self.stopped:
            end, size, plain = start, 0, 0
            while end < len(entries) and size < CHUNK:
                slot, frame = entries[end]
                size += len(frame)
                if type(slot) is int:
                    plain += len(frame)
                end += 1
            chunk = [frame for _, frame in entries[start:end]]
            start = end
            self.queued_bytes -= size
            self.plain_bytes -= plain
            self.written += size
            self.transport.write(b"".join(chunk))
        if self.stopped:
            return
        rest = entries[start:]
        if self._keyed is None:
            self._frames = [frame for _, frame in rest]
        else:
            self._keyed = dict(rest)

    def close(self, reason: str) -> None:
        self._clear()
        self.stopped = True
        self._on_close(reason)

    # -- IPushProducer ------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        # Its own requests wait too: no reply piles up for a peer that lags.
        self._reading(False)

    def resumeProducing(self) -> None:
        self.paused = False
        self._reading(True)
        self.flush()

    def stopProducing(self) -> None:
        self.stopped = True
        self._clear()

    def _clear(self) -> None:
        self._frames = []
        self._keyed = None
        self.queued_bytes = self.plain_bytes = 0


def set_reading(transport: Any, reading: bool) -> None:
    """
    Stop or resume reading from a connection: under TLS, from the socket
    beneath the TLS layer (which is not a producer itself).
    """
    target = transport if hasattr(transport, "pauseProducing") else getattr(
        transport, "transport", None)
    if target is not None:
        if reading:
            target.resumeProducing()
        else:
            target.pauseProducing()


@implementer(IPushProducer)
class ReadThrottle:
    """
    The producer of a command connection without subscriptions: while the
    daemon cannot write its replies (the peer does not read them), it reads no
    more requests from it, so replies never pile up in the daemon's memory
    (Redis's client-output-buffer-limit, enforced by TCP's own flow control).
    """

    def __init__(self, reading: Callable[[bool], None]) -> None:
        self._reading = reading

    def pauseProducing(self) -> None:
        self._reading(False)

    def resumeProducing(self) -> None:
        self._reading(True)

    def stopProducing(self) -> None:
        """The connection is gone: nothing to stop."""
