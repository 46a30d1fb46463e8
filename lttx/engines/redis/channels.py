"""
The Redis engine: several daemons on one Redis act as one data center.

- Variables: :class:`lttx.engines.redis.store.RedisStore`.
- Channels: :class:`SharedChannelRegistry`, a :class:`ChannelRegistry` whose
  publishes also go to Redis and whose subscribers also get what other
  daemons publish.  A daemon SUBSCRIBEs in Redis to ``<prefix>c:<channel>``
  only while one of its own clients subscribes to ``<channel>``.  What its
  clients publish is delivered to its own subscribers at once (as with one
  daemon) and sent to Redis in batches: at each flush of the registry (once
  per chunk of data read from a client, so about once per reactor turn), one
  PUBLISH per channel carrying every message of that channel since the last
  flush, all of them pipelined in one write.  A batch carries the publishing
  daemon's id, so a daemon ignores its own batches when they come back.

  Order: Redis keeps the order of one connection's PUBLISHes and of one
  subscriber connection's messages, so each publisher's messages reach every
  subscriber on every daemon in the order it pushed them.  The retained log,
  its ``epoch`` and ``seq`` are per daemon: each daemon appends the messages
  of a channel (local and remote ones alike) to its own log, numbered 1, 2,
  3... as a single daemon does, so history, ``since`` and resumption work
  per daemon; two daemons give the same message different numbers and
  their logs different epochs, so a client that fails over to another
  daemon is told of a gap (another epoch, range unknown) and reads on from
  that daemon's next message (not its history, which would mostly repeat
  what the client got from the first daemon).  Slow
  subscribers and conflation work as on one daemon, since remote messages
  take the local path.  A channel password is per daemon.  When a daemon
  loses its pub/sub connection to Redis, each subscriber of its channels
  gets a gap notice with an unknown range (``first`` and ``last`` nil):
  messages of other daemons may have been missed meanwhile.

  While Redis is down, local delivery goes on; what would have gone to Redis
  is dropped and counted (pub/sub is at most once, as in Redis itself).
- ``<prefix>daemons``, a hash: each daemon's id -> its listening addresses and
  the time it last said it was alive (every second), which ``status`` shows.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable, Optional

import msgpack

from ...errors import LTtxError
from ...state.channels import ChannelRegistry, ISubscriber, gap_notice
from ...wire import codec
from ...wire.frames import PREFIX
from .resp import RedisClient

_ID_SIZE = 16


class SharedChannelRegistry(ChannelRegistry):
    """
    The channels of one daemon, joined through Redis with those of the others.

    :param publisher: sends pipelined ``PUBLISH`` commands (the command client).
    :param subscriber: the pub/sub client; its ``on_message`` must be
        :meth:`message_received`.
    """

    #: A client failing over from another daemon resumes at the next message:
    #: this daemon's log holds mostly what it already got there.
    unknown_epoch_from_start = False

    def __init__(self, clock: Callable[[], float], prefix: str, daemon_id: bytes,
                 **bounds: int) -> None:
        super().__init__(clock=clock, **bounds)
        self.prefix = prefix.encode("utf-8") + b"c:"
        self.daemon_id = daemon_id
        self.publisher: Optional[RedisClient] = None
        self.subscriber: Optional[RedisClient] = None
        # Redis channel -> [encoded message with its length, ...] since the last flush
        self._outgoing: dict[str, list[bytes]] = {}
        self.sent_batches = 0
        self.received_batches = 0
        self.remote_messages = 0
        self.dropped_redis_down = 0

    def attach(self, publisher: RedisClient, subscriber: RedisClient) -> None:
        self.publisher, self.subscriber = publisher, subscriber

    # -- which channels to SUBSCRIBE to in Redis ---------------------------

    def _read(self) -> set[str]:
        """The channels some subscriber of this daemon reads."""
        return {name for name, log in self._channels.items() if log.readers}

    def _changed(self, before: set[str]) -> None:
        if self.subscriber is None:
            return
        now = self._read()
        new, gone = now - before, before - now
        if new:
            self.subscriber.subscribe([self.prefix + n.encode("utf-8") for n in sorted(new)])
        if gone:
            self.subscriber.unsubscribe([self.prefix + n.encode("utf-8") for n in sorted(gone)])

    def subscribe(self, subscriber: ISubscriber, channels: Iterable[str],
                  password: Optional[str] = None, conflate: bool = False,
                  **options: Any) -> dict[str, dict[str, int]]:
        before = self._read()
        result = super().subscribe(subscriber, channels, password, conflate, **options)
        self._changed(before)
        return result

    def unsubscribe(self, subscriber: ISubscriber, channels: Iterable[str]) -> list[str]:
        before = self._read()
        left = super().unsubscribe(subscriber, channels)
        self._changed(before)
        return left

    def remove(self, subscriber: ISubscriber) -> None:
        before = self._read()
        super().remove(subscriber)
        self._changed(before)

    # -- messages ----------------------------------------------------------

    def publish(self, channel: Any, key: Any, data: Any,
                encoded: Optional[bytes] = None) -> int:
        """Deliver to this daemon's subscribers, and queue for the others."""
        if encoded is None:
            encoded = msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)
        count = super().publish(channel, key, data, encoded)  # checks channel and key
        batch = self._outgoing.get(channel)
        if batch is None:
            batch = self._outgoing[channel] = []
        batch.append(PREFIX.pack(len(encoded)) + encoded)
        return count

    def flush(self) -> None:
        super().flush()
        if not self._outgoing:
            return
        outgoing, self._outgoing = self._outgoing, {}
        publisher = self.publisher
        if publisher is None or not publisher.connected:
            dropped = sum(len(batch) for batch in outgoing.values())
            if not self.dropped_redis_down:
                self.log.warn("Redis is unavailable: messages for other daemons are dropped "
                              "until it is back")
            self.dropped_redis_down += dropped
            return
        commands = [("PUBLISH", self.prefix + name.encode("utf-8"),
                     self.daemon_id + b"".join(batch)) for name, batch in outgoing.items()]
        self.sent_batches += len(commands)
        for d in publisher.protocol.execute_many(commands):  # type: ignore[union-attr]
            d.addErrback(self._publish_failed, len(commands))

    def _publish_failed(self, failure: Any, count: int) -> None:
        failure.trap(LTtxError)
        self.dropped_redis_down += 1

    def message_received(self, redis_channel: bytes, payload: bytes) -> None:
        """A batch from Redis: deliver each message of another daemon here."""
        if payload[:_ID_SIZE] == self.daemon_id:
            return  # ours, already delivered here
        self.received_batches += 1
        pos, end = _ID_SIZE, len(payload)
        deliver = super().publish
        try:
            while pos < end:
                (n,) = PREFIX.unpack_from(payload, pos)
                encoded = payload[pos + 4:pos + 4 + n]
                pos += 4 + n
                unpacker = msgpack.Unpacker(raw=False)
                unpacker.feed(encoded)
                channel, key = unpacker.unpack(), unpacker.unpack()
                deliver(channel, key, None, encoded)
                self.remote_messages += 1
        except (ValueError, struct.error, msgpack.UnpackException, LTtxError) as e:
            # Another program publishing on our prefix; not worth a traceback.
            self.log.warn("an undecodable batch on {channel!r}: {error}",
                          channel=redis_channel, error=e)
        super().flush()

    def redis_lost(self) -> None:
        """The pub/sub connection was lost: what other daemons publish until it
        is back is missed, so each subscriber is told of a gap of unknown range."""
        for log in self._channels.values():
            if not log.readers:
                continue
            notice = gap_notice(log.name, None, None, log.epoch,
                                "this daemon lost its connection to Redis: messages other "
                                "daemons published meanwhile may be missed")
            for reader, position in log.readers.items():
                position.prelude.append(notice)
                self._woken[reader] = None
        self.flush()

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["redis"] = {"batches_sent": self.sent_batches,
                           "batches_received": self.received_batches,
                           "remote_messages": self.remote_messages,
                           "dropped_redis_down": self.dropped_redis_down}
        return status


__all__ = ["SharedChannelRegistry"]
