"""
The daemon's change log: every applied change of the variable store, as a
retained log the watchers read (:class:`ChangeLog`), and a watcher's
filtered place in it (:class:`WatchPosition`).

Plain Python.  The change log is a :class:`~lttx.state.channellog.ChannelLog`
of its own, held by the :class:`~lttx.state.channels.ChannelRegistry` apart
from the channels (never in its name table): no client can publish into it
or subscribe to it under any channel name, and the publish hot path pays
nothing for it.  It counts in the registry's ``history_memory`` like any
log, and is bounded by ``history_bytes`` (``--channel-history``) itself.

Each change is encoded once, when the store applies it, as a MESSAGE frame
whose channel is nil (no channel has that name):
``[3, nil, name, [op, args, revision], seq]``; the same bytes go to every
watcher whose patterns and rights take the name.  The names are kept in a
list beside the frames, so a watcher filters without decoding a frame.

Nothing is recorded until the first watch of the daemon (:attr:`ChangeLog.active`):
a daemon nobody watches pays nothing for it; a resume can name only an
epoch some watch saw, so no resumption is fooled by the changes left out.

On the Redis engine the log is a copy of the change stream every daemon
shares (:mod:`lttx.engines.redis.changes`): its epoch and seqs are the
stream's, the same on every daemon, the bodies come encoded
(:meth:`ChangeLog.record_body`) and it can start again at any seq
(:meth:`ChangeLog.restart`).  An entry with an empty name (the marker a
stream starts with) takes its seq and is sent to nobody.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Iterable, Optional

import msgpack

from ..errors import EncodeError
from ..wire import codec
from ..wire.frames import MESSAGE_HEAD, PREFIX, pack_seq
from .channellog import ENTRY_OVERHEAD, ChannelLog, Position

#: The name the change log has in ``status`` and in its notices.
CHANGES = "$changes"
#: The code of the notice telling a watcher it missed changes.
MISSED = "missed"
#: Most names a watcher remembers the verdict of (then it forgets them all).
VERDICT_CACHE = 65_536

_NIL_CHANNEL = msgpack.packb(None)


class ChangeLog(ChannelLog):
    """
    The retained changes of one daemon's variables.

    :param history_bytes: most bytes retained (frames plus overhead).
    """

    __slots__ = ("names", "active", "recorded", "_pack")

    def __init__(self, history_bytes: int, epoch: Optional[int] = None) -> None:
        super().__init__(CHANGES, None, history_bytes, last_values_limit=0, epoch=epoch)
        #: The variable name of each frame, beside ``_frames``.
        self.names: list[str] = []
        #: Set by the first watch: changes are recorded from then on.
        self.active = False
        self.recorded = 0
        # One encoder for every change (a Packer per call is most of the cost).
        self._pack = codec.packer().pack

    def record(self, name: str, op: str, args: Iterable[Any], revision: int,
               arrival: int = 0) -> int:
        """
        Append one change.

        :return: the bytes retained by it minus those dropped to make room.
        :raises EncodeError: if an argument cannot be encoded (the store
            holds only values decoded from frames, so this means a bug).
        """
        seq = self.next_seq
        pack = self._pack
        try:
            body = pack(name) + pack([op, args, revision])
        except (TypeError, ValueError, OverflowError) as e:
            raise EncodeError(f"cannot encode a change of {name!r}: {e}") from None
        payload = MESSAGE_HEAD + _NIL_CHANNEL + body + pack_seq(seq)
        return self._append(name, PREFIX.pack(len(payload)) + payload, arrival)

    def _append(self, name: str, frame: bytes, arrival: int) -> int:
        """Keep ``frame`` as the next seq's; drop the oldest past the bound
        (a sixteenth more, so that a full log does not drop at every change)."""
        self.next_seq += 1
        self._frames.append(frame)
        self._order.append(arrival)
        self.names.append(name)
        self.recorded += 1
        size = len(frame) + ENTRY_OVERHEAD
        self.bytes += size
        if self.bytes > self.history_bytes:
            return size - self.drop_bytes(self.bytes - self.history_bytes
                                          + (self.history_bytes >> 4))
        return size

    def record_body(self, name: str, body: bytes) -> int:
        """
        Append one change whose ``body``, the MessagePack of ``[op, args,
        revision]``, is already encoded; an empty ``name`` keeps its seq with
        no frame (nobody watches it).

        :return: as :meth:`record`.
        """
        frame = b""
        if name:
            payload = (MESSAGE_HEAD + _NIL_CHANNEL + self._pack(name) + body
                       + pack_seq(self.next_seq))
            frame = PREFIX.pack(len(payload)) + payload
        return self._append(name, frame, 0)

    def restart(self, epoch: int, next_seq: int) -> int:
        """Drop everything and go on at ``next_seq`` of ``epoch``; the bytes freed."""
        freed = self.bytes
        self.dropped += len(self)
        self._frames, self._order, self.names = [], [], []
        self._base, self._head = next_seq, 0
        self.next_seq = next_seq
        self.epoch = epoch
        self.bytes = 0
        return freed

    def drop_bytes(self, amount: int) -> int:
        base = self._base
        freed = super().drop_bytes(amount)
        if self._base != base:  # the frames were compacted: so are the names
            del self.names[:self._base - base]
        return freed

    def name_of(self, seq: int) -> str:
        """The variable name of retained change ``seq``."""
        return self.names[seq - self._base]

    def status(self) -> dict[str, Any]:
        report = super().status()
        for key in ("conflating", "last_values", "last_values_evicted", "password"):
            report.pop(key, None)
        report["watchers"] = report.pop("subscribers")
        report["recording"] = self.active
        return report


class WatchPosition(Position):
    """
    One connection's place in the change log, and what it watches: the
    union of its glob patterns, compiled once into one regular expression,
    and the token's ``read`` right, asked once per name and remembered.

    :param allowed: whether the connection's token may read a name.
    """

    __slots__ = ("patterns", "_match", "_allowed", "_verdicts")

    def __init__(self, log: ChangeLog, next_seq: int,
                 allowed: Callable[[str], bool]) -> None:
        super().__init__(log, next_seq, conflate=False)
        self.patterns: list[str] = []
        self._allowed = allowed
        self._match: Callable[[str], Any] = lambda name: None
        self._verdicts: dict[str, bool] = {}

    def set_patterns(self, patterns: Iterable[str]) -> None:
        """Watch these patterns (and only these) from now on."""
        self.patterns = sorted(set(patterns))
        regex = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns)
        self._match = re.compile(regex).match if regex else (lambda name: None)
        self._verdicts = {}

    def wants(self, name: str) -> bool:
        """Whether a change of ``name`` is sent to this watcher."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = bool(name) and self._match(name) is not None and self._allowed(name)
            if len(self._verdicts) >= VERDICT_CACHE:
                self._verdicts = {}
            self._verdicts[name] = verdict
        return verdict

    def read(self, count: int) -> tuple[Optional[tuple[int, int]], list[bytes]]:
        """
        The frames of at most ``count`` changes from :attr:`next` on that
        this watcher wants; :attr:`next` moves past all of them.

        :return: ``(missed, frames)``: ``missed`` is ``(first, last)`` if
            changes from :attr:`next` on were dropped before being read.
        """
        log = self.log
        gap, frames, end = log.read(self.next, count)
        start = end - len(frames)
        self.next = end
        if not frames:
            return gap, frames
        names = log.names
        offset = start - log._base
        wants = self.wants
        return gap, [frame for i, frame in enumerate(frames) if wants(names[offset + i])]


def missed_notice(first: Optional[int], last: Optional[int], epoch: int, why: str,
                  previous_epoch: Optional[int] = None, start: Optional[int] = None) -> bytes:
    """
    The frame telling a watcher that changes ``first`` to ``last`` (None:
    unknown) will not reach it: ``[4, "missed", text, {"first", "last",
    "epoch"[, "previous_epoch", "from"]}]``; with another epoch, ``from`` is
    the seq of ``epoch`` the watcher reads on from.
    """
    detail: dict[str, Any] = {"first": first, "last": last, "epoch": epoch}
    if previous_epoch is not None:
        detail["previous_epoch"] = previous_epoch
    if start is not None:
        detail["from"] = start
    payload = codec.encode([codec.NOTICE, MISSED, why, detail])
    return PREFIX.pack(len(payload)) + payload


__all__ = ["CHANGES", "MISSED", "ChangeLog", "WatchPosition", "missed_notice"]
