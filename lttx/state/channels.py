"""
The channel registry: every channel's retained log, and who reads which.

Plain Python (no ``twisted.internet``).  Each channel is a
:class:`~lttx.state.channellog.ChannelLog`; each message is encoded once, as
the complete wire frame (length prefix included), appended to its channel's
log, and the same bytes object is later written to every subscriber.  A
subscriber (anything providing :class:`ISubscriber`: the daemon's
:class:`lttx.server.reader.ChannelReader`, a fake in the tests) is a
:class:`~lttx.state.channellog.Position` in each log it reads, held in its
``positions``; the registry only tells it, at :meth:`ChannelRegistry.flush`,
that a log it reads has grown, and it reads on at its own pace.

A channel is made by its first subscriber (which sets its password) or its
first message; it is retained while nobody subscribes, and forgotten only
when it has no subscriber and its log is empty.  Bounds: ``history_bytes``
per channel and ``history_memory`` over all of them; past the latter the
oldest messages of the largest logs go first, a slice at a time (down to
:data:`EVICT_TO` of the bound), so the scan for the largest log is amortised
over many messages.
"""

from __future__ import annotations

import fnmatch
import heapq
import hmac
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import msgpack
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from ..errors import AuthError, BadRequest
from ..wire import codec
from ..wire.frames import MESSAGE_HEAD, PREFIX, pack_seq
from ..wire.names import check_channel, split_channels
from .changelog import ChangeLog, WatchPosition, missed_notice
from .channellog import DEFAULT_LAST_VALUES, ENTRY_OVERHEAD, ChannelLog, Position

#: Key types a message may carry: hashable, so conflation can index them.
_KEY_TYPES = (str, bytes, int, float, bool, type(None))

#: Bytes one channel's log retains (``--channel-history``).
DEFAULT_CHANNEL_HISTORY = 64 * 1024 * 1024
#: Bytes all logs retain together (``--history-memory``).
DEFAULT_HISTORY_MEMORY = 1024 * 1024 * 1024
#: Past ``history_memory``, logs are cut down to this fraction of it.
EVICT_TO = 15 / 16

#: The code of a gap notice (``docs/protocol.md``, "Gaps").
GAP = "gap"


class ISubscriber(Interface):
    """One connection's receiving end, as the registry sees it."""

    positions = Attribute("dict: channel name -> its Position, kept by the registry.")

    def wake() -> None:
        """A log this subscriber reads has grown (or it subscribed): write
        what it has not read yet, as far as its transport takes it."""


#: The most channels ``status`` lists (the busiest); the others are counted.
STATUS_CHANNELS = 100


class ChannelRegistry:
    """
    Every channel of one daemon, their logs and their subscribers.

    :param clock: returns the current time in seconds; used only for rates.
    :param history_bytes: most bytes each channel's log retains.
    :param history_memory: most bytes all logs retain together.
    :param last_values_limit: most keys whose last value each channel keeps.
    """

    log = Logger()

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 history_bytes: int = DEFAULT_CHANNEL_HISTORY,
                 history_memory: int = DEFAULT_HISTORY_MEMORY,
                 last_values_limit: int = DEFAULT_LAST_VALUES) -> None:
        self._clock = clock
        self.history_bytes = history_bytes
        self.history_memory = history_memory
        self.last_values_limit = last_values_limit
        self._channels: dict[str, ChannelLog] = {}
        self._subscribers: set[Any] = set()
        # logs appended to since the last flush(), and subscribers to wake
        self._dirty: list[ChannelLog] = []
        self._woken: dict[Any, None] = {}
        #: While flush wakes the subscribers: per log, the joined bytes of the
        #: frames from one seq to its newest, ``(start, end, data)``, so that
        #: readers at the same place write one shared join (None otherwise).
        self.joined: Optional[dict[ChannelLog, tuple[int, int, bytes]]] = None
        #: The same for the readers that write MESSAGES frames (batches).
        self.batched: Optional[dict[ChannelLog, tuple[int, int, bytes]]] = None
        #: Bytes retained by all logs.
        self.retained = 0
        self.published = 0
        #: Messages written to subscribers (the readers count them as they write).
        self.delivered = 0
        self.evicted = 0  # messages dropped by history_memory
        self.gaps = 0  # gap notices sent (counted by the readers through note_gap)
        self.conflated_drops = 0
        self._sampled_at = clock()
        #: The variables' change log (watch and mirror), apart from the channels.
        self.changes = ChangeLog(history_bytes)

    #: ``(glob pattern, password)`` pairs a roles file fixes
    #: (:func:`lttx.state.auth.parse_channel_passwords`): a matching channel
    #: has that password, whoever subscribes first.
    fixed_passwords: Sequence[tuple[str, str]] = ()

    # -- channels -----------------------------------------------------------

    def fixed_password(self, name: str) -> Optional[str]:
        """The password the roles file fixes for channel ``name``, if any."""
        for pattern, password in self.fixed_passwords:
            if fnmatch.fnmatchcase(name, pattern):
                return password
        return None

    def _make(self, name: str, password: Optional[str]) -> ChannelLog:
        log = self._channels[name] = ChannelLog(name, password, self.history_bytes,
                                                self.last_values_limit)
        return log

    def channel(self, name: str) -> Optional[ChannelLog]:
        """The log of channel ``name``, if the daemon has one."""
        return self._channels.get(name)

    def _forget_if_idle(self, log: ChannelLog) -> None:
        if not log.readers and not len(log) and self._channels.get(log.name) is log:
            del self._channels[log.name]

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, subscriber: ISubscriber, channels: Iterable[str],
                  password: Optional[str] = None, conflate: bool = False, *,
                  history: Optional[int] = None, since: Optional[int] = None,
                  epoch: Optional[int] = None, last_values: bool = False,
                  resume: Optional[Mapping[str, Any]] = None,
                  exempt: Optional[Callable[[str], bool]] = None) -> dict[str, dict[str, int]]:
        """
        Subscribe to several channels at once (all or none).

        A channel's first subscriber sets its password (``None`` or ``""``:
        none) if no message made the channel first; every later one must
        give the same.  Subscribing again to a channel moves its position
        as the new options say (or keeps it without any) and sets ``conflate``.

        Where reading starts: ``history=N``, the last N retained messages;
        ``since=S``, after message ``S`` (of ``epoch``, if given: another
        epoch starts at the log's beginning, after a gap notice);
        ``resume``, ``{channel: [epoch, S]}``, the same per channel (a
        reconnecting client's); else the next message.  ``last_values``
        first sends the newest message of each key before that point.

        ``exempt(name)``: whether this subscriber needs no password for
        channel ``name`` (with a roles file, a token with ``all`` or a right
        naming the channel: a password another token set cannot lock it out).
        A channel whose password the roles file fixes (:attr:`fixed_passwords`)
        has that one, whatever its first subscriber gives.

        :return: per channel ``{"epoch", "first", "next", "from"}``: its
            epoch, oldest retained seq, the seq its next message gets, and
            where this subscriber reads from.
        :raises AuthError: if a password does not match (nothing is subscribed).
        :raises BadRequest: for a bad channel name, password or option.
        """
        names = split_channels(list(channels))
        password, fixed = self.check_subscribe(names, password, history, since, epoch, resume,
                                               exempt)
        self._subscribers.add(subscriber)
        result = {}
        for name in names:
            log = self._channels.get(name)
            own = fixed.get(name) or password
            if log is None:
                log = self._make(name, own)
            elif not log.readers and log.password is None:
                log.password = own  # made by a message: its first subscriber sets it
            chan_since, chan_epoch = since, epoch
            if resume is not None and name in resume:
                chan_epoch, chan_since = _resume_point(resume[name])
            prelude: list[bytes] = []
            if chan_since is not None:
                if chan_epoch is not None and chan_epoch != log.epoch:
                    prelude.append(gap_notice(name, chan_since + 1, None, log.epoch,
                                              f"the channel's log was made again (daemon "
                                              f"restarted or channel forgotten): messages "
                                              f"after {chan_since} of its previous epoch are "
                                              f"lost", previous_epoch=chan_epoch))
                    start = 1  # everything of the new epoch is new to it
                else:
                    start = min(chan_since + 1, log.next_seq)
            elif history is not None:
                start = max(log.first_seq, log.next_seq - history)
            else:
                start = log.next_seq
            position = subscriber.positions.get(name)
            if position is None or chan_since is not None or history is not None:
                if last_values:
                    prelude = log.last_values_before(start) + prelude
                position = Position(log, start, bool(conflate), prelude)
                subscriber.positions[name] = position
                log.readers[subscriber] = position
            else:
                position.conflate = bool(conflate)
                if last_values:
                    position.prelude.extend(log.last_values_before(position.next))
            self._woken[subscriber] = None
            result[name] = {"epoch": log.epoch, "first": log.first_seq,
                            "next": log.next_seq, "from": position.next}
        return result

    def check_subscribe(self, names: list[str], password: Optional[str],
                        history: Optional[int], since: Optional[int], epoch: Optional[int],
                        resume: Optional[Mapping[str, Any]],
                        exempt: Optional[Callable[[str], bool]],
                        ) -> tuple[Optional[str], dict[str, Optional[str]]]:
        """
        Check a subscribe's options and passwords against the channels as
        they are now (:meth:`subscribe`).

        :return: the password (``""`` made None) and the fixed password of
            each channel (empty without a roles file).
        :raises AuthError: if a password does not match.
        :raises BadRequest: for a bad password or option.
        """
        if password == "":
            password = None
        if password is not None and not isinstance(password, str):
            raise BadRequest("a channel password must be a str or nil")
        for value, what in ((history, "history"), (since, "since"), (epoch, "epoch")):
            if value is not None and (type(value) is not int or value < 0):
                raise BadRequest(f"subscribe option {what} must be a non-negative int")
        if resume is not None and not isinstance(resume, Mapping):
            raise BadRequest("subscribe option resume must be a map")
        fixed = {name: self.fixed_password(name) for name in names} if self.fixed_passwords \
            else {}
        for name in names:
            if exempt is not None and exempt(name):
                continue
            existing = self._channels.get(name)
            if fixed.get(name) is not None:
                if not _same_password(fixed[name], password):
                    raise AuthError(f"wrong password for channel {name!r}")
            elif (existing is not None and (existing.readers or existing.password is not None)
                    and not _same_password(existing.password, password)):
                raise AuthError(f"wrong password for channel {name!r}")
        return password, fixed

    def unsubscribe(self, subscriber: ISubscriber, channels: Iterable[str]) -> list[str]:
        """
        Leave channels; a channel this subscriber was not in is ignored.

        :return: the channels actually left.
        """
        names = split_channels(list(channels))
        positions = subscriber.positions
        left = [name for name in names if name in positions]
        for name in left:
            self._leave(subscriber, positions.pop(name))
        if not positions:
            self._subscribers.discard(subscriber)
        return left

    def remove(self, subscriber: ISubscriber) -> None:
        """Forget a subscriber entirely (its connection closed)."""
        self._subscribers.discard(subscriber)
        self._woken.pop(subscriber, None)
        positions = subscriber.positions
        for position in list(positions.values()):
            self._leave(subscriber, position)
        positions.clear()
        self.changes.readers.pop(subscriber, None)

    def _leave(self, subscriber: Any, position: Position) -> None:
        position.log.readers.pop(subscriber, None)
        self._forget_if_idle(position.log)

    def channels_of(self, subscriber: ISubscriber) -> list[str]:
        """The channels ``subscriber`` is in, sorted."""
        return sorted(subscriber.positions)

    # -- messages -----------------------------------------------------------

    def publish(self, channel: Any, key: Any, data: Any,
                encoded: Optional[bytes] = None) -> int:
        """
        Append a message to ``channel``'s log (made if need be).

        Its subscribers are woken at the next :meth:`flush` (call it once
        after a batch of publishes).

        :param encoded: the MessagePack encoding of ``channel, key, data``
            one after the other, if the caller has it (the tail of a PUBLISH
            payload): it is reused instead of encoding ``data`` again.
        :return: the message's seq.
        :raises BadRequest: for a bad channel name or key type.
        :raises EncodeError: if ``data`` cannot be encoded.
        """
        # A channel that is not a str (a map from a broken client) is not
        # hashable: check before the lookup, off the common path.
        log = self._channels.get(channel) if type(channel) is str else None
        if log is None or type(key) not in _KEY_TYPES:
            check_channel(channel)
            _check_key(key)
            if encoded is None:
                encoded = msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)
            if log is None:
                log = self._make(channel, None)
        elif encoded is None:
            encoded = msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)
        seq = log.next_seq
        if 0xFFFF < seq < 0x100000000:  # the common case, inlined: one join, no call
            frame = b"".join((PREFIX.pack(len(encoded) + 7), MESSAGE_HEAD, encoded,
                              b"\xce", seq.to_bytes(4, "big")))  # 0xce: a uint32
        else:
            payload = MESSAGE_HEAD + encoded + pack_seq(seq)
            frame = PREFIX.pack(len(payload)) + payload
        self.published = arrival = self.published + 1
        # ChannelLog.append, inlined: this is the hot path of every message.
        log.next_seq = seq + 1
        log._frames.append(frame)
        log._order.append(arrival)
        size = len(frame) + ENTRY_OVERHEAD
        log.bytes += size
        values = log.last_values
        values[key] = (seq, frame)
        if len(values) > log.last_values_cap:
            log._evict_last_values()
        if log.bytes > log.history_bytes:
            size -= log.drop_bytes(log.bytes - log.history_bytes + (log.history_bytes >> 4))
        self.retained += size
        if not log.dirty:
            log.dirty = True
            self._dirty.append(log)
        if self.retained > self.history_memory:
            self._evict()
        return seq

    def publish_acknowledged(self, channel: Any, key: Any, data: Any) -> Any:
        """
        :meth:`publish` for a client waiting for the message's seq (the
        ``publish`` request): here the seq at once; the Redis engine's
        registry returns a Deferred of it, fired once Redis appended it.
        """
        return self.publish(channel, key, data)

    def _evict(self) -> None:
        """Past ``history_memory``: cut the largest logs down, oldest first."""
        target = int(self.history_memory * EVICT_TO)
        while self.retained > target:
            largest = max([*self._channels.values(), self.changes], key=lambda log: log.bytes)
            if not largest.bytes:
                break
            dropped = largest.dropped
            self.retained -= largest.drop_bytes(self.retained - target)
            self.evicted += largest.dropped - dropped
            self._forget_if_idle(largest)

    def flush(self) -> None:
        """Wake every subscriber of a log that grew since the last flush."""
        dirty = self._dirty
        woken = self._woken
        if dirty:
            self._dirty = []
            for log in dirty:
                log.dirty = False
                for reader in log.readers:
                    woken[reader] = None
        if woken:
            self._woken = {}
            self.joined = {}
            self.batched = {}
            try:
                for reader in woken:
                    reader.wake()
            finally:
                self.joined = self.batched = None

    # -- the change log (watch and mirror) ------------------------------------

    def record_change(self, change: Any) -> None:
        """The store's observer: append an applied ``Change`` to the change log
        (once some watch made it active); its watchers are woken at :meth:`flush`."""
        log = self.changes
        if not log.active:
            return  # nobody ever watched: no resume can name this epoch
        # Not counted as published: the readers read the change log on its own,
        # so no arrival number is needed to merge it with the channels.
        self.retained += log.record(change.name, change.op, change.args, change.revision)
        if not log.dirty:
            log.dirty = True
            self._dirty.append(log)
        if self.retained > self.history_memory:
            self._evict()

    #: Where the change log is fed from besides this daemon's store: the
    #: Redis engine's change feed (:mod:`lttx.engines.redis.changes`), whose
    #: ``ready()`` is None once the log holds the shared stream, else a
    #: Deferred the first watch waits for.  None: the store's own changes.
    changes_source: Any = None

    def append_change(self, name: str, body: bytes) -> None:
        """One change read from the change source, ``body`` the encoded ``[op,
        args, revision]``, appended at the change log's next seq; its watchers
        are woken at :meth:`flush`."""
        log = self.changes
        self.retained += log.record_body(name, body)
        if not log.dirty:
            log.dirty = True
            self._dirty.append(log)
        if self.retained > self.history_memory:
            self._evict()

    def restart_changes(self, epoch: int, first: int, start: int, why: str) -> None:
        """
        The change log starts again at seq ``first`` of ``epoch`` (what it
        held is dropped).  In the same epoch (the source skipped changes), a
        watcher behind ``first`` is told at its next read which it missed;
        in another, every watcher is told now (``why``) and reads on from
        ``start``.
        """
        log = self.changes
        previous = log.epoch
        self.retained -= log.restart(epoch, first)
        for reader, position in log.readers.items():
            if epoch != previous:
                position.prelude.append(missed_notice(
                    position.next, None, epoch, why, previous_epoch=previous, start=start))
                position.next = start
            self._woken[reader] = None

    def watch(self, subscriber: Any, patterns: Iterable[str], allowed: Callable[[str], bool],
              resume: Any = None) -> dict[str, Any]:
        """
        Make ``subscriber`` (an :class:`ISubscriber` with a ``watch``
        attribute) watch the changes of the variables matching ``patterns``
        (its whole set: a later call replaces it) that ``allowed`` says it
        may read.  It reads from the next change, or with ``resume``,
        ``[epoch, seq]``, after change ``seq`` of ``epoch``; a resume it cannot
        be given in full starts with a "missed" notice.

        :return: ``{"epoch", "next", "from"}`` of the change log.
        :raises BadRequest: for a bad resume point.
        """
        log = self.changes
        log.active = True
        position = subscriber.watch
        prelude: list[bytes] = []
        start = log.next_seq
        if resume is not None:
            epoch, since = _resume_point(resume)
            if epoch != log.epoch:
                prelude.append(missed_notice(
                    since + 1, None, log.epoch, "the daemon's change log was made again "
                    "(the daemon restarted): changes made meanwhile are not known",
                    previous_epoch=epoch, start=start))
            else:
                start = min(since + 1, log.next_seq)
        if position is None or resume is not None:
            position = WatchPosition(log, start, allowed)
            position.prelude = prelude
            subscriber.watch = position
            log.readers[subscriber] = position
        position.set_patterns(patterns)
        self._woken[subscriber] = None
        return {"epoch": log.epoch, "next": log.next_seq, "from": position.next}

    def unwatch(self, subscriber: Any) -> None:
        """Stop ``subscriber`` watching anything."""
        self.changes.readers.pop(subscriber, None)
        subscriber.watch = None

    def note_gap(self, count: int = 1) -> None:
        """A reader sent ``count`` gap notices (counted for ``status``)."""
        self.gaps += count

    # -- status -------------------------------------------------------------

    def sample(self) -> None:
        """Recompute the per-channel rates (messages/s since the last sample)."""
        now = self._clock()
        elapsed, self._sampled_at = now - self._sampled_at, now
        for log in self._channels.values():
            log.sample(elapsed)
        self.changes.sample(elapsed)

    def status(self) -> dict[str, Any]:
        """What ``lttx status`` shows of the channels (computed now)."""
        if len(self._channels) <= STATUS_CHANNELS:
            shown = sorted(self._channels.items())
        else:
            # The busiest (by rate, then retained bytes); the rest only counted.
            shown = sorted(heapq.nlargest(STATUS_CHANNELS, self._channels.items(),
                                          key=lambda item: (item[1].rate, item[1].bytes)))
        return {
            "channels": {name: log.status() for name, log in shown},
            "channel_count": len(self._channels),
            "subscribers": len(self._subscribers),
            "published": self.published,
            "delivered": self.delivered,
            "history_bytes": self.retained,
            "history_memory": self.history_memory,
            "channel_history": self.history_bytes,
            "evicted_for_memory": self.evicted,
            "gaps": self.gaps,
            "conflated_drops": self.conflated_drops,
        }


def gap_notice(channel: str, first: Optional[int], last: Optional[int], epoch: int, why: str,
               previous_epoch: Optional[int] = None) -> bytes:
    """
    The frame telling a subscriber that messages ``first`` to ``last``
    (None: unknown) of ``channel`` will not reach it:
    ``[4, "gap", text, {"channel", "first", "last", "epoch"[, "previous_epoch"]}]``.
    """
    detail: dict[str, Any] = {"channel": channel, "first": first, "last": last, "epoch": epoch}
    if previous_epoch is not None:
        detail["previous_epoch"] = previous_epoch
    payload = codec.encode([codec.NOTICE, GAP, f"{channel}: {why}", detail])
    return PREFIX.pack(len(payload)) + payload


def dropped_notice(channel: str, first: int, last: int, epoch: int) -> bytes:
    """The gap notice for messages the log dropped before a subscriber read them."""
    return gap_notice(channel, first, last, epoch,
                      f"messages {first} to {last} were dropped from the channel's "
                      f"history before this subscriber read them")


def _resume_point(point: Any) -> tuple[Optional[int], int]:
    if (not isinstance(point, list) or len(point) != 2
            or not (point[0] is None or type(point[0]) is int)
            or type(point[1]) is not int or point[1] < 0):
        raise BadRequest("a resume point must be [epoch, seq]")
    return point[0], point[1]


def _check_key(key: Any) -> None:
    if not isinstance(key, _KEY_TYPES):
        raise BadRequest(f"a message key must be a str, bytes, number, bool or nil, "
                         f"not {type(key).__name__}")


def _same_password(expected: Optional[str], given: Optional[str]) -> bool:
    if expected is None or given is None:
        return expected is given
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
