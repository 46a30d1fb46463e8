"""
One channel's retained log: :class:`ChannelLog`, and a subscriber's position
in it, :class:`Position`.

Plain Python.  Each message is kept as its complete MESSAGE frame (length
prefix included), encoded once: the same bytes object is written to every
subscriber, and a subscriber holds no copy, only the ``seq`` of the next
message it is to read.  The log is a list with a head offset (``frame_of``
is O(1), dropping the oldest is amortised O(1); a ``deque`` would index in
O(n)), with the arrival number of each message alongside (the order of
messages across channels); conflation reads a message's key back from its
frame, off the hot path.

Sequence numbers are consecutive within an ``epoch``, a random 63-bit int
drawn when the log is made: a log made again (after a daemon restart, or
after the channel was forgotten) has another one, so a subscriber resuming
from a ``seq`` of another epoch is told that it cannot.

Bounds: ``history_bytes`` per log (:meth:`ChannelLog.append` drops the
oldest past it), and the registry's bound over all logs
(:meth:`ChannelLog.drop_bytes`).  Each retained message counts its frame's
length plus :data:`ENTRY_OVERHEAD` (the list slots and the bytes object's
header), so the bounds track the daemon's memory, not only the payloads.
The last value of each key is kept apart from the log (a message may outlive
its place in the log there), at most ``last_values_limit`` keys; past it
(by a 16th, so that the cut is amortised) the least recently updated keys go
(counted in ``last_values_evicted``).  Both byte bounds cut by a 16th at a
time too.
"""

from __future__ import annotations

import secrets
from typing import Any, Optional

import msgpack

#: Bytes counted per retained message on top of its frame's length.
ENTRY_OVERHEAD = 64

#: Most keys whose last value a channel keeps (``subscribe(last_values=True)``).
DEFAULT_LAST_VALUES = 100_000

#: Entries dropped from the front before the list is compacted (amortises ``del``).
_COMPACT_AT = 4096


def key_of(frame: bytes) -> Any:
    """The key of a MESSAGE frame (length prefix, ``95 03``, channel, key, ...)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(memoryview(frame)[6:])
    unpacker.skip()
    return unpacker.unpack()


def new_epoch() -> int:
    """A random, non-zero 63-bit epoch."""
    return secrets.randbits(63) or 1


class ChannelLog:
    """
    The retained messages of one channel.

    :param name: the channel.
    :param password: set by the channel's first subscriber (None: none).
    :param history_bytes: most bytes retained (frames plus overhead).
    :param last_values_limit: most keys whose last value is kept.
    :param epoch: the log's epoch; a new random one if None.
    """

    __slots__ = ("name", "password", "epoch", "history_bytes", "last_values_limit",
                 "last_values_cap",
                 "_frames", "_order", "_base", "_head", "next_seq", "bytes",
                 "last_values", "last_values_evicted", "dropped", "readers", "dirty",
                 "rate", "_sampled_seq")

    def __init__(self, name: str, password: Optional[str], history_bytes: int,
                 last_values_limit: int = DEFAULT_LAST_VALUES,
                 epoch: Optional[int] = None) -> None:
        self.name = name
        self.password = password
        self.epoch = new_epoch() if epoch is None else epoch
        self.history_bytes = history_bytes
        self.last_values_limit = last_values_limit
        # Keys past which the least recently updated are cut (by a 16th at once).
        self.last_values_cap = last_values_limit + (last_values_limit >> 4)
        self._frames: list[bytes] = []
        # The registry's arrival number of each message: a subscriber of
        # several channels gets their messages in the order they arrived.
        self._order: list[int] = []
        self._base = 1  # the seq of _frames[0]
        self._head = 0  # _frames[_head] is the oldest retained message
        #: The seq the next message gets; the first message of a log gets 1.
        self.next_seq = 1
        #: Bytes retained: frames plus ENTRY_OVERHEAD each.
        self.bytes = 0
        #: key -> (seq, frame) of the newest message with that key.
        self.last_values: dict[Any, tuple[int, bytes]] = {}
        self.last_values_evicted = 0
        #: Messages dropped from the log (by either bound).
        self.dropped = 0
        #: The subscribers reading this log (anything with ``wake()``) -> their Position.
        self.readers: dict[Any, Position] = {}
        #: Set by the registry when a message was appended since its last flush.
        self.dirty = False
        self.rate = 0.0
        self._sampled_seq = 0

    # -- reading ------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """The seq of the oldest retained message (``next_seq`` if none is)."""
        return self._base + self._head

    def __len__(self) -> int:
        return len(self._frames) - self._head

    def frame_of(self, seq: int) -> Optional[bytes]:
        """The frame of message ``seq``, or None if it is not retained."""
        if self._base + self._head <= seq < self.next_seq:
            return self._frames[seq - self._base]
        return None

    def read(self, start: int, count: int) -> tuple[Optional[tuple[int, int]], list[bytes], int]:
        """
        At most ``count`` frames from seq ``start`` on.

        :return: ``(gap, frames, next)``: ``gap`` is ``(first_missed,
            last_missed)`` if messages from ``start`` on were dropped before
            being read (the frames then start at the oldest retained one),
            else None; ``next`` is the seq to read from next time.
        """
        gap = None
        first = self._base + self._head
        if start < first:
            gap = (start, first - 1)
            start = first
        end = min(self.next_seq, start + count)
        if start >= end:
            return gap, [], start
        i = start - self._base
        return gap, self._frames[i:i + end - start], end

    def read_conflated(self, start: int) -> tuple[Optional[tuple[int, int]], list[bytes], int, int]:
        """
        From seq ``start`` to the newest: only the newest message of each key,
        in seq order.

        :return: ``(gap, frames, next, skipped)``: as :meth:`read`, and how
            many messages were skipped for a newer one of their key.
        """
        gap = None
        first = self._base + self._head
        if start < first:
            gap = (start, first - 1)
            start = first
        if start >= self.next_seq:
            return gap, [], start, 0
        lo, hi = start - self._base, self.next_seq - self._base
        frames = self._frames
        seen: set[Any] = set()
        kept: list[int] = []
        for i in range(hi - 1, lo - 1, -1):
            key = key_of(frames[i])
            if key not in seen:
                seen.add(key)
                kept.append(i)
        kept.reverse()
        return gap, [frames[i] for i in kept], self.next_seq, (hi - lo) - len(kept)

    def last_values_before(self, seq: int) -> list[bytes]:
        """The newest frame of each key among messages before ``seq``, in seq order."""
        return [frame for s, frame in sorted(self.last_values.values(),
                                             key=lambda value: value[0]) if s < seq]

    # -- writing ------------------------------------------------------------

    def arrivals(self, start: int, count: int) -> list[int]:
        """The arrival numbers of the retained messages ``start`` to ``start + count - 1``."""
        i = start - self._base
        return self._order[i:i + count]

    def append(self, frame: bytes, key: Any, arrival: int = 0) -> int:
        """
        Keep one message (its complete MESSAGE frame, which carries
        :attr:`next_seq`).  Past ``history_bytes``, the oldest are dropped
        down to 15/16 of it (a slice at a time, not one per message).

        :return: the bytes retained by this append minus those it dropped.

        ``ChannelRegistry.publish`` does the same inline (keep them alike).
        """
        seq = self.next_seq
        self.next_seq = seq + 1
        self._frames.append(frame)
        self._order.append(arrival)
        size = len(frame) + ENTRY_OVERHEAD
        self.bytes += size
        values = self.last_values
        values[key] = (seq, frame)
        if len(values) > self.last_values_cap:
            self._evict_last_values()
        if self.bytes > self.history_bytes:
            return size - self.drop_bytes(self.bytes - self.history_bytes
                                          + (self.history_bytes >> 4))
        return size

    def append_frame(self, frame: bytes, arrival: int) -> int:
        """
        Keep one message numbered elsewhere (its frame carries
        :attr:`next_seq`), without a last value (the Redis engine keeps
        those in Redis).  Bounded as :meth:`append`.

        :return: the bytes retained by this append minus those it dropped.
        """
        self.next_seq += 1
        self._frames.append(frame)
        self._order.append(arrival)
        size = len(frame) + ENTRY_OVERHEAD
        self.bytes += size
        if self.bytes > self.history_bytes:
            return size - self.drop_bytes(self.bytes - self.history_bytes
                                          + (self.history_bytes >> 4))
        return size

    def skip_to(self, seq: int) -> int:
        """
        Make ``seq`` the next message's seq (``seq`` >= :attr:`next_seq`):
        what the log retains is dropped (counted in :attr:`dropped`), so a
        reader before ``seq`` is told of a gap up to ``seq - 1``.

        :return: the bytes freed.
        """
        if seq < self.next_seq:
            raise ValueError(f"a log moves forward only: {seq} < {self.next_seq}")
        freed = self.bytes
        self.dropped += len(self)
        self._frames, self._order = [], []
        self._base = self.next_seq = seq
        self._head = 0
        self.bytes = 0
        return freed

    def _evict_last_values(self) -> None:
        """Past the key bound (plus a 16th, so this runs once per many
        messages): forget the least recently updated keys down to the bound."""
        values = self.last_values
        excess = len(values) - self.last_values_limit
        oldest = sorted(values.items(), key=lambda item: item[1][0])[:excess]
        for key, _ in oldest:
            del values[key]
        self.last_values_evicted += excess

    def drop_bytes(self, amount: int) -> int:
        """Drop the oldest messages until at least ``amount`` bytes are freed
        (or the log is empty); the bytes freed."""
        frames, head, end = self._frames, self._head, len(self._frames)
        freed = 0
        while freed < amount and head < end:
            freed += len(frames[head]) + ENTRY_OVERHEAD
            frames[head] = b""  # released now, compacted later
            head += 1
        self.dropped += head - self._head
        self._head = head
        self.bytes -= freed
        if head >= _COMPACT_AT and head * 2 >= end:
            del frames[:head]
            del self._order[:head]
            self._base += head
            self._head = 0
        return freed

    # -- status -------------------------------------------------------------

    def sample(self, elapsed: float) -> None:
        seq = self.next_seq - 1
        self.rate = (seq - self._sampled_seq) / elapsed if elapsed > 0 else 0.0
        self._sampled_seq = seq

    def status(self) -> dict[str, Any]:
        """This log's figures (computed now), for ``status``."""
        positions = [p.next for p in self.readers.values()]
        newest = self.next_seq - 1
        return {
            "subscribers": len(self.readers),
            "conflating": sum(1 for p in self.readers.values() if p.conflate),
            "messages": len(self),
            "rate": round(self.rate, 1),
            "bytes": self.bytes,
            "oldest_seq": self.first_seq if len(self) else None,
            "newest_seq": newest,
            "slowest_behind": (self.next_seq - min(positions)) if positions else 0,
            "dropped": self.dropped,
            "last_values": len(self.last_values),
            "last_values_evicted": self.last_values_evicted,
            "password": self.password is not None,
            "epoch": self.epoch,
        }


class Position:
    """
    One subscriber's place in one :class:`ChannelLog`.

    :ivar next: the seq of the next message to send it.
    :ivar conflate: while it lags, send only the newest message of each key.
    :ivar prelude: frames to send before reading the log (last values, a
        notice), in order.
    """

    __slots__ = ("log", "next", "conflate", "prelude", "lagging")

    def __init__(self, log: ChannelLog, next_seq: int, conflate: bool,
                 prelude: Optional[list[bytes]] = None) -> None:
        self.log = log
        self.next = next_seq
        self.conflate = conflate
        self.prelude = prelude or []
        #: Set while the subscriber could not be written to: a conflating
        #: one reads its backlog conflated.
        self.lagging = False


__all__ = ["DEFAULT_LAST_VALUES", "ENTRY_OVERHEAD", "ChannelLog", "Position", "new_epoch"]
