"""
The channel registry: who subscribes to what, and the fan-out of each message.

Plain Python (no ``twisted.internet``): subscribers are anything providing
:class:`ISubscriber` (the daemon's :class:`lttx.server.outbox.Outbox`, a list in the
tests).  Each message is encoded once, as the complete wire frame (length
prefix included), and the same bytes object is handed to every subscriber.

A channel exists while it has subscribers: the first one creates it (and sets
its password), the last one to leave forgets it, so a closed connection leaves
no trace.  Messages published on a channel nobody subscribes to are counted
and dropped, as in Redis or NATS.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Callable, Hashable, Iterable, Optional

import msgpack
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from ..errors import AuthError, BadRequest
from ..wire import codec
from ..wire.frames import MESSAGE_HEAD, PREFIX, pack_seq
from ..wire.names import check_channel, split_channels

#: Key types a message may carry: hashable, so conflation can index them.
_KEY_TYPES = (str, bytes, int, float, bool, type(None))


class ISubscriber(Interface):
    """One connection's receiving end, as the registry sees it."""

    conflated_drops = Attribute("How many queued messages newer ones replaced (an int).")

    def deliver(frame: bytes, conflation_key: Optional[Hashable]) -> bool:
        """
        Queue one complete frame (length prefix included) for sending.

        :param conflation_key: ``None`` for a plain subscription; for a
            conflating one, a key under which a newer frame replaces a queued one.
        :return: True if the subscriber needs :meth:`flush` to send it (the
            registry collects those and flushes each once per batch).
        """

    def flush() -> None:
        """Send what :meth:`deliver` queued, as far as the transport takes it."""

    def close(reason: str) -> None:
        """The registry dropped this subscriber (too slow): tell it why and disconnect."""


class _Channel:
    """One channel's state: subscribers (each with its conflate flag), sequence, counts."""

    __slots__ = ("name", "password", "subscribers", "seq", "rate", "_sampled_seq")

    def __init__(self, name: str, password: Optional[str]) -> None:
        self.name = name
        self.password = password
        # subscriber -> conflate; insertion order is fan-out order.
        self.subscribers: dict[Any, bool] = {}
        self.seq = 0  # the last sequence number given; the first message gets 1
        self.rate = 0.0
        self._sampled_seq = 0

    def sample(self, elapsed: float) -> None:
        self.rate = (self.seq - self._sampled_seq) / elapsed if elapsed > 0 else 0.0
        self._sampled_seq = self.seq


class ChannelRegistry:
    """
    Every channel of one daemon and their subscribers.

    :param clock: returns the current time in seconds; used only for rates.
    """

    log = Logger()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        # subscriber -> the channels it is subscribed to
        self._subscribers: dict[Any, set[str]] = {}
        # subscribers holding frames since the last flush()
        self._dirty: list[Any] = []
        self.published = 0
        self.delivered = 0
        self.dropped_unsubscribed = 0
        self.slow_cut_off = 0
        self._conflated_drops_of_gone = 0
        self._sampled_at = clock()

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, subscriber: ISubscriber, channels: Iterable[str],
                  password: Optional[str] = None, conflate: bool = False) -> dict[str, int]:
        """
        Subscribe to several channels at once (all or none).

        A channel's first subscriber sets its password (``None`` or ``""``:
        none); every later one must give the same.  Subscribing again to a
        channel changes the ``conflate`` flag.

        :return: each channel's next sequence number (the ``seq`` the next
            message will carry).
        :raises AuthError: if a password does not match (nothing is subscribed).
        :raises BadRequest: for a bad channel name or password type.
        """
        names = split_channels(list(channels))
        if password == "":
            password = None
        if password is not None and not isinstance(password, str):
            raise BadRequest("a channel password must be a str or nil")
        for name in names:
            channel = self._channels.get(name)
            if channel is not None and not _same_password(channel.password, password):
                raise AuthError(f"wrong password for channel {name!r}")
        mine = self._subscribers.setdefault(subscriber, set())
        result = {}
        for name in names:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel(name, password)
            channel.subscribers[subscriber] = bool(conflate)
            mine.add(name)
            result[name] = channel.seq + 1
        return result

    def unsubscribe(self, subscriber: ISubscriber, channels: Iterable[str]) -> list[str]:
        """
        Leave channels; a channel this subscriber was not in is ignored.

        :return: the channels actually left.
        """
        names = split_channels(list(channels))
        mine = self._subscribers.get(subscriber)
        if not mine:
            return []
        left = [name for name in names if name in mine]
        for name in left:
            mine.discard(name)
            self._leave(subscriber, name)
        if not mine:
            del self._subscribers[subscriber]
        return left

    def remove(self, subscriber: ISubscriber) -> None:
        """Forget a subscriber entirely (its connection closed)."""
        names = self._subscribers.pop(subscriber, None)
        if names is None:
            return
        for name in names:
            self._leave(subscriber, name)
        self._conflated_drops_of_gone += subscriber.conflated_drops
        if subscriber in self._dirty:
            self._dirty.remove(subscriber)

    def _leave(self, subscriber: Any, name: str) -> None:
        channel = self._channels[name]
        del channel.subscribers[subscriber]
        if not channel.subscribers:
            del self._channels[name]

    def channels_of(self, subscriber: ISubscriber) -> list[str]:
        """The channels ``subscriber`` is in, sorted."""
        return sorted(self._subscribers.get(subscriber, ()))

    def cut_off(self, subscriber: ISubscriber, reason: str, who: str = "?") -> None:
        """Drop a subscriber that cannot keep up, count it, log it, and close it."""
        names = self.channels_of(subscriber)
        self.remove(subscriber)
        self.slow_cut_off += 1
        self.log.warn("slow subscriber {peer} cut off ({reason}); it was subscribed to "
                      "{channels}", peer=who, reason=reason, channels=", ".join(names))
        subscriber.close(reason)

    # -- messages -----------------------------------------------------------

    def publish(self, channel: Any, key: Any, data: Any,
                encoded: Optional[bytes] = None) -> int:
        """
        Send a message to every subscriber of ``channel``.

        Subscribers get the frame queued; call :meth:`flush` once after a
        batch of publishes to send the frames.

        :param encoded: the MessagePack encoding of ``channel, key, data``
            one after the other, if the caller has it (the tail of a PUBLISH
            payload): it is reused instead of encoding ``data`` again.
        :return: the number of subscribers it was queued for.
        :raises BadRequest: for a bad channel name or key type.
        :raises EncodeError: if ``data`` cannot be encoded.
        """
        # A channel that is not a str (a map from a broken client) is not
        # hashable: check before the lookup, off the common path.
        ch = self._channels.get(channel) if type(channel) is str else None
        if ch is None:
            check_channel(channel)
            _check_key(key)
            self.dropped_unsubscribed += 1
            return 0
        if type(key) not in _KEY_TYPES:
            _check_key(key)
        if encoded is None:
            encoded = msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)
        ch.seq += 1
        payload = MESSAGE_HEAD + encoded + pack_seq(ch.seq)
        frame = PREFIX.pack(len(payload)) + payload
        dirty = self._dirty
        for subscriber, conflate in ch.subscribers.items():
            if subscriber.deliver(frame, (channel, key) if conflate else None):
                dirty.append(subscriber)
        self.published += 1
        count = len(ch.subscribers)
        self.delivered += count
        return count

    def flush(self) -> None:
        """Have every subscriber that queued frames since the last flush send them."""
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber.flush()

    # -- status -------------------------------------------------------------

    def sample(self) -> None:
        """Recompute the per-channel rates (messages/s since the last sample)."""
        now = self._clock()
        elapsed, self._sampled_at = now - self._sampled_at, now
        for channel in self._channels.values():
            channel.sample(elapsed)

    def status(self) -> dict[str, Any]:
        """What ``lttx status`` shows of the channels."""
        conflated = self._conflated_drops_of_gone + sum(
            s.conflated_drops for s in self._subscribers)
        return {
            "channels": {
                name: {"subscribers": len(ch.subscribers),
                       "conflating": sum(ch.subscribers.values()),
                       "messages": ch.seq,
                       "rate": round(ch.rate, 1),
                       "password": ch.password is not None}
                for name, ch in sorted(self._channels.items())},
            "subscribers": len(self._subscribers),
            "published": self.published,
            "delivered": self.delivered,
            "dropped_no_subscriber": self.dropped_unsubscribed,
            "slow_subscribers_cut_off": self.slow_cut_off,
            "conflated_drops": conflated,
        }


def _check_key(key: Any) -> None:
    if not isinstance(key, _KEY_TYPES):
        raise BadRequest(f"a message key must be a str, bytes, number, bool or nil, "
                         f"not {type(key).__name__}")


def _same_password(expected: Optional[str], given: Optional[str]) -> bool:
    if expected is None or given is None:
        return expected is given
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
