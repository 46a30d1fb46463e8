"""
The channels of several daemons on one Redis: :class:`SharedChannelRegistry`,
a :class:`~lttx.state.channels.ChannelRegistry` whose channel logs live in
Redis Streams (:mod:`lttx.engines.redis.streams`), so a channel's ``epoch``
and ``seq`` are the same on every daemon, and history, ``since`` and a
client's resumption after a failover are served by any daemon.

Publishing: a published message is checked (channel name, key) and queued;
at each :meth:`~SharedChannelRegistry.flush` (once per chunk of data read
from a client, so about once per reactor turn) one :data:`APPEND
<lttx.engines.redis.streams.APPEND>` script per channel carries every
message of that channel since the last flush, all of them pipelined in one
write on the command connection.  Redis runs one connection's scripts in
order, so each publisher's messages keep their order.  The ``publish``
request is answered with the seq the script gave its message
(:meth:`~SharedChannelRegistry.publish_acknowledged`).  While Redis is
unavailable, pushed messages are dropped and counted (one log line per
outage) and ``publish`` requests fail with ``Unavailable``: nothing is taken
and then lost silently.

Delivering: a daemon delivers no message straight from its publisher, not
even to its own subscribers: every message comes back from its stream,
through the daemon's one XREAD loop
(:class:`~lttx.engines.redis.follower.StreamFollower`), into a local
:class:`~lttx.state.channellog.ChannelLog` per channel its clients follow,
numbered as in the stream; from there delivery is the one-daemon path
(positions, slow subscribers, conflation, gap notices).  The local log is a
cache of the stream's newest part, made by the channel's first local
subscriber and forgotten after its last.

Subscribing answers once the daemon follows the channel's stream: the reply's
``from`` is a position from which nothing is missed (the stream's last seq
when the daemon started following it, or the local log's).  ``history=``,
``since=`` and ``resume`` read what the local log does not hold from the
stream (``XRANGE``/``XREVRANGE``), ``last_values`` from the channel's
last-values hash; those frames are the subscriber's prelude, before the
local log.  A resume point of another epoch is told of a gap and starts at
the stream's oldest message, as on one daemon after a restart.

When the stream was lost (Redis restarted empty, the key deleted, a failover
to a replica that had not got the newest entries) the channel gets a new
epoch in Redis; each daemon finds out when its follower reconnects (or when
its own publish comes back with another epoch) and gives each of its
subscribers a gap notice with ``previous_epoch``, then the new epoch's
messages from its first.  A channel password is per daemon, as before.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Iterable, Mapping, Optional

import msgpack
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ...errors import LTtxError, Unavailable
from ...state.channellog import ChannelLog, Position, new_epoch
from ...state.channels import (
    STATUS_CHANNELS,
    ChannelRegistry,
    ISubscriber,
    _check_key,
    gap_notice,
)
from ...wire import codec
from ...wire.names import check_channel, split_channels
from .follower import StreamFollower
from .reading import ChannelPlan, plan_channel
from .resp import RedisClient, RedisError
from .streams import APPEND, OPEN, Keys, Opened, appended, entry_frames, key_bytes, max_length

#: Channel names checked once and remembered (the set is cleared past this).
_CHECKED_LIMIT = 10_000
#: Most messages one APPEND carries (a larger batch is several, in one write),
#: so that one script does not hold Redis for long.
MAX_BATCH = 1000


class SharedChannelRegistry(ChannelRegistry):
    """
    The channels of one daemon, kept in Redis Streams shared by every daemon.

    :param clock: as :class:`ChannelRegistry`.
    :param prefix: the Redis key prefix (``--redis-prefix``).
    :param daemon_id: this daemon's id (the directory's).
    """

    def __init__(self, clock: Callable[[], float], prefix: str, daemon_id: bytes,
                 **bounds: int) -> None:
        super().__init__(clock=clock, **bounds)
        self.prefix = prefix.encode("utf-8")
        self.daemon_id = daemon_id
        self.commands: Optional[RedisClient] = None
        self.follower: Optional[StreamFollower] = None
        #: Called with the command connection's protocol right after a batch
        #: of appends is written on it; the acknowledgements wait for its
        #: Deferred too (``--redis-wait``: ``WAIT``).  None: no barrier.
        self.barrier: Optional[Callable[[Any], "Deferred[Any]"]] = None
        # channel -> [key bytes, encoded, key bytes, encoded, ...] since the last flush
        self._outgoing: dict[str, list[bytes]] = {}
        # channel -> [(index in the batch, Deferred of its seq)]
        self._acks: dict[str, list[tuple[int, Deferred[int]]]] = {}
        self._checked: set[str] = set()
        # channel -> the Deferred of its OPEN under way
        self._opening: dict[str, _Shared] = {}
        # channel -> subscribes under way (its log is not forgotten meanwhile)
        self._joining: dict[str, int] = {}
        #: channel -> its stream's length, sampled (:meth:`sample_streams`)
        self.stream_lengths: dict[str, int] = {}
        # channel -> its stream's oldest seq when last seen (the subscribe reply's "first")
        self._first: dict[str, int] = {}
        self._published_to: set[str] = set()
        self.batches = 0
        self.appended = 0
        self.dropped_redis_down = 0
        self.read_from_redis = 0
        #: Messages read from the streams for subscribers' history/since/resume.
        self.history_read = 0
        self.epoch_changes = 0
        self._down = False

    def attach(self, commands: RedisClient, follower: StreamFollower) -> None:
        self.commands, self.follower = commands, follower

    def keys(self, channel: str) -> Keys:
        return Keys(self.prefix, channel)

    def stream_key(self, channel: str) -> bytes:
        return self.prefix + b"s:" + channel.encode("utf-8")

    # -- publishing ---------------------------------------------------------

    def publish(self, channel: Any, key: Any, data: Any,
                encoded: Optional[bytes] = None) -> int:
        """
        Queue a message for its stream (written at the next :meth:`flush`).

        :return: 0: its seq is known once Redis appended it
            (:meth:`publish_acknowledged`).
        :raises BadRequest: for a bad channel name or key type.
        :raises EncodeError: if ``data`` cannot be encoded.
        """
        if type(channel) is not str or channel not in self._checked:
            check_channel(channel)
            if len(self._checked) >= _CHECKED_LIMIT:
                self._checked.clear()
            self._checked.add(channel)
        _check_key(key)
        if encoded is None:
            encoded = msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)
        batch = self._outgoing.get(channel)
        if batch is None:
            batch = self._outgoing[channel] = []
        batch.append(key_bytes(key))
        batch.append(encoded)
        return 0

    def publish_acknowledged(self, channel: Any, key: Any, data: Any) -> "Deferred[int]":
        """Queue a message; the Deferred fires with its seq once Redis appended
        it, or fails with :class:`Unavailable` if it could not be."""
        self.publish(channel, key, data)
        d: Deferred[int] = Deferred()
        self._acks.setdefault(channel, []).append((len(self._outgoing[channel]) // 2 - 1, d))
        return d

    def flush(self) -> None:
        """Wake the subscribers of the logs that grew; write the queued
        messages, one APPEND per channel, in one pipelined write."""
        super().flush()
        if not self._outgoing:
            return
        outgoing, self._outgoing = self._outgoing, {}
        acks, self._acks = self._acks, {}
        commands = self.commands
        protocol = commands.protocol if commands is not None else None
        if protocol is None or protocol.lost:
            for name, batch in outgoing.items():
                self._append_failed(Failure(Unavailable("Redis is unavailable")), name,
                                    len(batch) // 2, acks.get(name))
            return
        parts = []  # (channel, messages, their acknowledgements, the call)
        for name, batch in outgoing.items():
            channel_acks = acks.get(name) or []
            for offset in range(0, len(batch), 2 * MAX_BATCH):
                part = batch[offset:offset + 2 * MAX_BATCH]
                low, count = offset // 2, len(part) // 2
                part_acks = [(i - low, d) for i, d in channel_acks if low <= i < low + count]
                sizes = sum(len(part[i]) for i in range(1, len(part), 2))
                parts.append((name, count, part_acks, (
                    "EVALSHA", APPEND.sha, 4, *self.keys(name).all(), new_epoch(),
                    max_length(self.history_bytes, sizes, count), self.last_values_limit,
                    *part)))
            self._published_to.add(name)
        self.batches += len(parts)
        assert commands is not None
        replies = [commands.checked(d)
                   for d in protocol.execute_many([call for *_, call in parts])]
        # --redis-wait: a barrier (WAIT) written after the batch on the same
        # connection; the acknowledgements wait for it too.
        barrier = _Shared(self.barrier(protocol)) if self.barrier is not None else None
        for (name, count, part_acks, call), d in zip(parts, replies):
            d.addErrback(self._noscript, call)
            if barrier is not None:
                d.addCallback(barrier.after)
            d.addCallbacks(self._appended, self._append_failed,
                           callbackArgs=(name, count, part_acks),
                           errbackArgs=(name, count, part_acks))

    def _noscript(self, failure: Failure, call: tuple[Any, ...]) -> Any:
        """After a SCRIPT FLUSH: the batch once more as EVAL (the next
        connection loads the script again)."""
        if isinstance(failure.value, RedisError) and failure.value.kind == "NOSCRIPT":
            assert self.commands is not None
            return self.commands.execute("EVAL", APPEND.source, *call[2:])
        return failure

    def _appended(self, reply: Any, name: str, count: int,
                  acks: Optional[list[tuple[int, Deferred[int]]]]) -> None:
        epoch, first = appended(reply)
        self.appended += count
        if self._down:
            self._down = False
            self.log.info("Redis takes messages again")
        for index, d in acks or ():
            d.callback(first + index)
        log = self._channels.get(name)
        if log is not None and log.epoch != epoch and name not in self._opening:
            # The stream was made again under us (deleted, or Redis lost it).
            self._reopen(name)

    def _append_failed(self, failure: Failure, name: str, count: int,
                       acks: Optional[list[tuple[int, Deferred[int]]]]) -> None:
        failure.trap(LTtxError)
        reason = getattr(failure.value, "message", str(failure.value))
        self.dropped_redis_down += count - len(acks or ())
        if not self._down:
            self._down = True
            self.log.warn("messages could not be written to Redis ({error}): pushed "
                          "messages are dropped and counted, publish requests fail, "
                          "until it takes them again", error=reason)
        for _, d in acks or ():
            d.errback(Failure(Unavailable(f"the message could not be written to Redis: {reason}")))

    # -- following the streams ----------------------------------------------

    def entries_read(self, name: str, entries: list[Any]) -> None:
        """The follower read ``entries`` of ``name``'s stream: append them
        to the local log (its subscribers are woken at the follower's flush)."""
        log = self._channels.get(name)
        if log is None:
            return
        try:
            frames = entry_frames(entries)
        except ValueError as e:
            self.log.warn("stream of {channel!r}: {error}; entries skipped",
                          channel=name, error=e)
            return
        grew = False
        for seq, frame in frames:
            if seq < log.next_seq:
                continue  # read again after a reconnection
            if seq > log.next_seq:
                # Trimmed before this daemon read them: its readers are told.
                self.retained -= log.skip_to(seq)
            self.published = arrival = self.published + 1
            self.retained += log.append_frame(frame, arrival)
            grew = True
        self.read_from_redis += len(frames)
        if grew and not log.dirty:
            log.dirty = True
            self._dirty.append(log)
        if self.retained > self.history_memory:
            self._evict()

    def resync(self, client: RedisClient) -> "Deferred[Any]":
        """The follower (re)connected: check every followed channel's stream
        (a new epoch if Redis lost its newest entries) before it reads on."""
        names = [name for name in self._channels if name not in self._opening]
        if not names:
            return defer.succeed(None)
        protocol = client.protocol
        if protocol is None:
            return defer.fail(Unavailable("the follower's connection is gone"))
        calls = []
        for name in names:
            log = self._channels[name]
            calls.append(("EVALSHA", OPEN.sha, 4, *self.keys(name).all(), new_epoch(),
                          log.epoch, log.next_seq - 1))
        replies = protocol.execute_many(calls)
        for name, d in zip(names, replies):
            d.addCallbacks(self._resynced, self._resync_failed, callbackArgs=(name,),
                           errbackArgs=(name,))
        # Never fails: a channel that could not be checked is read on from
        # where it was (a lost connection makes the follower resync again).
        return defer.gatherResults(replies)

    def _resync_failed(self, failure: Failure, name: str) -> None:
        failure.trap(LTtxError)
        if not isinstance(failure.value, Unavailable):  # a lost connection says so itself
            self.log.warn("channel {channel!r}: its stream could not be checked ({error}); "
                          "read on from where it was", channel=name,
                          error=getattr(failure.value, "message", failure.value))

    def _resynced(self, reply: Any, name: str) -> None:
        opened = Opened(reply)
        log = self._channels.get(name)
        if log is None:
            return
        if opened.epoch != log.epoch:
            self._new_epoch(log, opened)
        elif self.follower is not None:
            self.follower.follow(name, log.next_seq - 1)

    def _reopen(self, name: str) -> None:
        log = self._channels[name]
        assert self.commands is not None
        d = self.commands.evalsha(OPEN, self.keys(name).all(),
                                  [new_epoch(), log.epoch, log.next_seq - 1])
        d.addCallback(self._resynced, name)
        d.addErrback(lambda f: f.trap(LTtxError))  # the reconnection resyncs

    def _new_epoch(self, old: ChannelLog, opened: Opened) -> None:
        """The stream has another epoch: a new local log from its oldest
        entry; each reader is told of a gap and reads it from there."""
        self.epoch_changes += 1
        self.log.warn("channel {channel!r}: its stream in Redis was made again (epoch "
                      "{old} -> {new}): subscribers are told of a gap", channel=old.name,
                      old=old.epoch, new=opened.epoch)
        log = ChannelLog(old.name, old.password, self.history_bytes, self.last_values_limit,
                         epoch=opened.epoch)
        log.skip_to(opened.first)
        self.retained -= old.bytes
        self._channels[old.name] = log
        for reader, position in old.readers.items():
            position.prelude.append(gap_notice(
                old.name, position.next, None, log.epoch,
                f"the channel's stream in Redis was lost (Redis restarted or failed over, "
                f"or the key was deleted): messages after {position.next - 1} of its "
                f"previous epoch are lost", previous_epoch=old.epoch))
            position.log = log
            position.next = log.next_seq
            log.readers[reader] = position
            self._woken[reader] = None
        old.readers = {}
        if self.follower is not None:
            self.follower.follow(old.name, opened.first - 1)
        self.flush()

    def _forget_if_idle(self, log: ChannelLog) -> None:
        """A local log is a cache of its stream, kept while a local client reads it."""
        name = log.name
        if log.readers or self._channels.get(name) is not log or self._joining.get(name):
            return
        del self._channels[name]
        self._first.pop(name, None)
        self.retained -= log.bytes
        if self.follower is not None:
            self.follower.unfollow(name)

    # -- subscribing --------------------------------------------------------

    def subscribe(self, subscriber: ISubscriber, channels: Iterable[str],  # type: ignore[override]
                  password: Optional[str] = None, conflate: bool = False, *,
                  history: Optional[int] = None, since: Optional[int] = None,
                  epoch: Optional[int] = None, last_values: bool = False,
                  resume: Optional[Mapping[str, Any]] = None,
                  exempt: Optional[Callable[[str], bool]] = None,
                  ) -> "Deferred[dict[str, dict[str, int]]]":
        """
        As :meth:`ChannelRegistry.subscribe`, once this daemon follows each
        channel's stream and has read from Redis what the local logs do not
        hold; the reply comes before any message.

        :raises AuthError: at once, if a password does not match.
        :raises BadRequest: at once, for a bad channel name, password or option.
        """
        names = split_channels(list(channels))
        self.check_subscribe(names, password, history, since, epoch, resume, exempt)
        for name in names:
            self._joining[name] = self._joining.get(name, 0) + 1
        done: Deferred[dict[str, dict[str, int]]] = Deferred()
        opened: Deferred[Any] = defer.gatherResults([self._open(name) for name in names],
                                                    consumeErrors=True)
        opened.addCallback(lambda logs: self._plan(
            subscriber, names, logs, history, since, epoch, last_values, resume))
        opened.addCallback(lambda plan: self._join(
            subscriber, names, plan, password, conflate, last_values, history, since, epoch,
            resume, exempt))

        def finished(result: Any) -> None:
            for name in names:
                left = self._joining[name] - 1
                if left:
                    self._joining[name] = left
                else:
                    del self._joining[name]
                    log = self._channels.get(name)
                    if log is not None:
                        self._forget_if_idle(log)
            if isinstance(result, Failure):
                if isinstance(result.value, defer.FirstError):
                    result = result.value.subFailure
                done.errback(result)
            else:
                done.callback(result)  # the reply is written now ...
                self.flush()  # ... and the messages after it

        opened.addBoth(finished)
        return done

    def _open(self, name: str) -> "Deferred[ChannelLog]":
        """The channel's local log, following its stream (opened if need be)."""
        log = self._channels.get(name)
        if log is not None:
            return defer.succeed(log)
        opening = self._opening.get(name)
        if opening is None:
            if self.commands is None:
                return defer.fail(Unavailable("Redis is unavailable"))
            call = self.commands.evalsha(OPEN, self.keys(name).all(), [new_epoch(), "", ""])
            call.addCallback(self._opened, name)
            call.addBoth(self._open_done, name)
            opening = _Shared(call)
            if opening.pending:  # (a call failing at once is not kept)
                self._opening[name] = opening
        return opening.wait()

    def _open_done(self, result: Any, name: str) -> Any:
        self._opening.pop(name, None)
        return result

    def _opened(self, reply: Any, name: str) -> ChannelLog:
        opened = Opened(reply)
        log = ChannelLog(name, None, self.history_bytes, self.last_values_limit,
                         epoch=opened.epoch)
        log.skip_to(opened.last + 1)
        self._channels[name] = log
        self._first[name] = opened.first
        if self.follower is not None:
            self.follower.follow(name, opened.last)
        return log

    def _plan(self, subscriber: ISubscriber, names: list[str], logs: list[ChannelLog],
              history: Optional[int], since: Optional[int], epoch: Optional[int],
              last_values: bool, resume: Optional[Mapping[str, Any]]) -> "Deferred[Any]":
        """Each channel's :class:`~lttx.engines.redis.reading.ChannelPlan`,
        once what it reads from Redis is there."""
        assert self.commands is not None
        plans = {}
        for name, log in zip(names, logs):
            plans[name] = plan_channel(self.commands, self.keys(name), log, subscriber,
                                       history, since, epoch, last_values,
                                       None if resume is None else resume.get(name))
        waits = [d for plan in plans.values() for d in plan.waits]
        gathered = defer.gatherResults(waits, consumeErrors=True)
        return gathered.addCallback(lambda _: plans)

    def _join(self, subscriber: ISubscriber, names: list[str], plans: dict[str, ChannelPlan],
              password: Optional[str], conflate: bool, last_values: bool,
              history: Optional[int], since: Optional[int], epoch: Optional[int],
              resume: Optional[Mapping[str, Any]],
              exempt: Optional[Callable[[str], bool]]) -> dict[str, dict[str, int]]:
        # Passwords again: another subscribe may have made a channel meanwhile.
        password, fixed = self.check_subscribe(names, password, history, since, epoch,
                                               resume, exempt)
        self._subscribers.add(subscriber)
        result = {}
        for name in names:
            log = self._channels[name]
            if not log.readers and log.password is None:
                log.password = fixed.get(name) or password
            plan = plans[name]
            position = subscriber.positions.get(name)
            if plan.start is None and position is not None and position.log is log:
                position.conflate = bool(conflate)
                if plan.values is not None:
                    position.prelude.extend(plan.values.result)
            else:
                if position is not None:
                    position.log.readers.pop(subscriber, None)
                prelude = list(plan.notices)
                if plan.values is not None:
                    prelude.extend(plan.values.result)
                start = plan.start if plan.start is not None else log.next_seq
                if plan.history is not None:
                    prelude.extend(plan.history.result)
                    self.history_read += len(plan.history.result)
                    start = plan.upto  # the local log from where the stream's read ended
                position = Position(log, start, bool(conflate), prelude)
                subscriber.positions[name] = position
                log.readers[subscriber] = position
            self._woken[subscriber] = None
            first = plan.first if plan.first is not None else self._first.get(name)
            result[name] = {"epoch": log.epoch,
                            "first": log.first_seq if first is None else first,
                            "next": log.next_seq,
                            "from": plan.start if plan.start is not None else position.next}
        return result

    # -- status -------------------------------------------------------------

    def sample_streams(self) -> None:
        """Ask Redis for the length of the streams this daemon follows or
        published to since the last sample (at most :data:`STATUS_CHANNELS`
        of each), pipelined; ``status`` shows the longest."""
        commands = self.commands
        protocol = commands.protocol if commands is not None else None
        names = sorted(set(list(self._channels)[:STATUS_CHANNELS])
                       | set(list(self._published_to)[:STATUS_CHANNELS]))
        self._published_to = set()
        if protocol is None or protocol.lost or not names:
            return
        lengths: dict[str, int] = {}

        def got(length: Any, name: str) -> None:
            lengths[name] = int(length)

        replies = protocol.execute_many([("XLEN", self.stream_key(n)) for n in names])
        for name, d in zip(names, replies):
            d.addCallbacks(got, lambda f: f.trap(LTtxError), callbackArgs=(name,))
        defer.gatherResults(replies, consumeErrors=True).addBoth(
            lambda _: setattr(self, "stream_lengths", lengths))

    def status(self) -> dict[str, Any]:
        status = super().status()
        longest = heapq.nlargest(STATUS_CHANNELS, self.stream_lengths.items(),
                                 key=lambda item: item[1])
        redis: dict[str, Any] = {
            "batches_sent": self.batches, "appended": self.appended,
            "read": self.read_from_redis, "history_read": self.history_read,
            "dropped_redis_down": self.dropped_redis_down,
            "epoch_changes": self.epoch_changes,
            # [channel, length] pairs, longest first (a list: not one metric per channel)
            "stream_lengths": [[name, length] for name, length in longest],
        }
        if self.follower is not None:
            redis.update(self.follower.status())
        status["redis"] = redis
        for name, info in status["channels"].items():
            if name in self.stream_lengths:
                info["stream_length"] = self.stream_lengths[name]
        return status


class _Shared:
    """One Deferred waited for by several chains (each gets its outcome)."""

    def __init__(self, d: "Deferred[Any]") -> None:
        self._outcome: Any = _PENDING
        self._waiting: list[Deferred[Any]] = []
        d.addBoth(self._fired)

    @property
    def pending(self) -> bool:
        return self._outcome is _PENDING

    def _fired(self, outcome: Any) -> None:
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            self._fire(waiter)

    def _fire(self, waiter: "Deferred[Any]") -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(self._outcome)

    def wait(self) -> "Deferred[Any]":
        """A Deferred of the shared one's outcome."""
        waiter: Deferred[Any] = Deferred()
        if self._outcome is _PENDING:
            self._waiting.append(waiter)
        else:
            self._fire(waiter)
        return waiter

    def after(self, reply: Any) -> "Deferred[Any]":
        """``reply``, once the shared Deferred succeeded (its failure otherwise)."""
        return self.wait().addCallback(lambda _: reply)


_PENDING = object()


__all__ = ["SharedChannelRegistry"]
