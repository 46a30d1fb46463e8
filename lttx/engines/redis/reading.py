"""
Where a new subscriber of a channel starts reading on the Redis engine, and
what is read for it from the channel's stream: :func:`plan_channel`.

The local log holds the stream's newest part only (from when this daemon
started following it); what a ``history=``, ``since=`` or ``resume`` asks
for before the local log's oldest message is read from the stream
(``XRANGE``, or ``XREVRANGE`` for ``history``) and becomes the subscriber's
prelude, followed by the local log from its oldest message on, so nothing
is missed or repeated between the two.  ``last_values`` reads the channel's
last-values hash and its recency set (the newest message of each key, with
its seq) and keeps those before the starting point, in seq order.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred

from ...state.channellog import ChannelLog
from ...state.channels import ISubscriber, _resume_point, dropped_notice, gap_notice
from .resp import RedisClient
from .streams import Keys, entry_frames, frame_of, stream_id


class ChannelPlan:
    """
    One channel's start for one subscriber.

    :ivar start: the seq to read from; None: keep the subscriber's position.
    :ivar upto: the local log's oldest seq when planned: what is read from
        the stream ends before it.
    :ivar notices: gap notices to send first.
    :ivar history: the frames read from the stream (``.result`` once
        :attr:`waits` fired), or None.
    :ivar values: the last values (``.result``), or None.
    """

    def __init__(self, start: Optional[int], upto: int, notices: list[bytes]) -> None:
        self.start, self.upto, self.notices = start, upto, notices
        self.history: Optional[_Result] = None
        self.values: Optional[_Result] = None
        #: The stream's oldest retained seq, if the read saw it.
        self.first: Optional[int] = None

    @property
    def waits(self) -> list["Deferred[Any]"]:
        return [r.deferred for r in (self.history, self.values) if r is not None]


class _Result:
    """A Deferred and, once it fired, its value."""

    def __init__(self, d: "Deferred[Any]") -> None:
        self.result: list[bytes] = []
        self.deferred = d.addCallback(self._set)

    def _set(self, value: list[bytes]) -> None:
        self.result = value


def plan_channel(commands: RedisClient, keys: Keys, log: ChannelLog, subscriber: ISubscriber,
                 history: Optional[int], since: Optional[int], epoch: Optional[int],
                 last_values: bool, resume_point: Any) -> ChannelPlan:
    """
    Where ``subscriber`` starts in ``log`` (following ``keys.stream``), with
    the reads from Redis this takes under way.

    :raises BadRequest: for a bad resume point.
    """
    if resume_point is not None:
        epoch, since = _resume_point(resume_point)
    notices: list[bytes] = []
    mode = None
    start: Optional[int]
    if since is not None:
        mode = "since"
        if epoch is not None and epoch != log.epoch:
            notices.append(gap_notice(
                log.name, since + 1, None, log.epoch,
                f"the channel's log was made again (its stream in Redis was lost): messages "
                f"after {since} of its previous epoch are lost", previous_epoch=epoch))
            start = 1  # everything of this epoch is new to it
        else:
            start = min(since + 1, log.next_seq)
    elif history is not None:
        mode = "history"
        start = max(1, log.next_seq - history)
    else:
        position = subscriber.positions.get(log.name)
        start = None if position is not None and position.log is log else log.next_seq
    plan = ChannelPlan(start, log.first_seq, notices)
    if mode is not None and start is not None and start < plan.upto:
        plan.history = _Result(_read_range(commands, keys, log, plan, mode))
    if last_values:
        cutoff = start if start is not None else log.next_seq
        plan.values = _Result(_read_last_values(commands, keys, cutoff))
    return plan


def _read_range(commands: RedisClient, keys: Keys, log: ChannelLog, plan: ChannelPlan,
                mode: str) -> "Deferred[list[bytes]]":
    start, upto = plan.start, plan.upto
    assert start is not None
    count = upto - start
    if mode == "history":
        d = commands.execute("XREVRANGE", keys.stream, stream_id(upto - 1), stream_id(start),
                             "COUNT", count)
        d.addCallback(lambda entries: list(reversed(entries or [])))
    else:
        d = commands.execute("XRANGE", keys.stream, stream_id(start), stream_id(upto - 1),
                             "COUNT", count)

    def frames(entries: Any) -> list[bytes]:
        got = entry_frames(entries or [])
        if got:
            plan.first = got[0][0]
        out = [frame for _, frame in got]
        if mode == "since":
            oldest = got[0][0] if got else upto
            if oldest > start:
                # Trimmed from the stream before this subscriber read them.
                out.insert(0, dropped_notice(log.name, start, oldest - 1, log.epoch))
        return out
    return d.addCallback(frames)


def _read_last_values(commands: RedisClient, keys: Keys, cutoff: int) -> "Deferred[list[bytes]]":
    protocol = commands.protocol
    if protocol is None or protocol.lost:
        return commands.execute("PING")  # fails with Unavailable, as any call now
    # One transaction: the recency set and the hash as of one moment.
    replies = protocol.execute_many([
        ("MULTI",), ("ZRANGE", keys.recency, 0, -1, "WITHSCORES"), ("HGETALL", keys.values),
        ("EXEC",)])
    for queued in replies[:3]:
        queued.addErrback(lambda f: None)  # EXEC's reply says it all
    return replies[3].addCallback(lambda both: _last_value_frames(both[0], both[1], cutoff))


def _last_value_frames(ranked: list[bytes], flat: list[bytes], cutoff: int) -> list[bytes]:
    """The frames of the keys whose newest message is before ``cutoff``, in seq order."""
    encoded = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    out = []
    for i in range(0, len(ranked), 2):
        seq = int(float(ranked[i + 1]))
        data = encoded.get(ranked[i])
        if data is not None and seq < cutoff:
            out.append(frame_of(seq, data))
    return out


__all__ = ["ChannelPlan", "plan_channel"]
