"""
The daemon's reading of the channel streams: :class:`StreamFollower`, one
blocking ``XREAD`` loop on a connection of its own over the streams of the
channels this daemon's clients follow.

The follower knows, per channel, the seq of the last entry read (the stream
id ``0-<seq>``, :mod:`lttx.engines.redis.streams`); each ``XREAD COUNT
<COUNT> BLOCK <BLOCK_MS> STREAMS <keys...> <ids...>`` returns what was
appended after those, for every channel at once, and the loop asks again at
once.  What it read is handed to ``deliver(channel, entries)`` per channel,
then ``flush()`` once for the whole reply, so the daemon's subscribers are
woken once per reply whatever the number of channels.

A channel followed while a read is blocked (a new subscription) must not
wait for the block to time out: the follower sends ``CLIENT UNBLOCK <its
connection's id>`` on the command connection, and the loop reads again with
the new set.  An UNBLOCK that arrives before the XREAD does (two connections,
no order between them) unblocks nothing (it answers 0): it is sent again a
few milliseconds later while the read still misses a channel.  The block
timeout bounds the wait in any case.

On each (re)connection the follower first has the registry check every
followed channel (``resync``: the epoch and the stream's last seq, which
tell whether Redis lost the stream meanwhile), then reads from where it was:
while Redis holds the entries, nothing is missed across a lost connection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import LTtxError
from .resp import RedisClient
from .streams import seq_of, stream_id

#: Most entries one XREAD returns per stream.
COUNT = 1000
#: How long one XREAD blocks (ms) when nothing comes.
BLOCK_MS = 2000
#: Seconds before an UNBLOCK that found nothing blocked is sent again.
UNBLOCK_RETRY = 0.005


class StreamFollower:
    """
    One XREAD loop over the followed channels' streams.

    :param client: the follower's own connection (its ``on_ready`` must be
        :meth:`ready`).
    :param commands: the command connection, for ``CLIENT UNBLOCK``.
    :param keys: channel -> its stream key.
    :param deliver: called with ``(channel, entries)`` (the XREAD reply's
        entries of that channel, in order).
    :param flush: called once after each reply's entries were delivered.
    :param resync: called with the follower's connection after each
        (re)connection, before reading; returns a Deferred.
    :param call_later: ``reactor.callLater``.
    """

    log = Logger()

    def __init__(self, client: RedisClient, commands: RedisClient,
                 keys: Callable[[str], bytes],
                 deliver: Callable[[str, list[Any]], None], flush: Callable[[], None],
                 resync: Callable[[RedisClient], "Deferred[Any]"],
                 call_later: Callable[..., Any]) -> None:
        self.client, self.commands = client, commands
        self._keys, self._deliver, self._flush, self._resync = keys, deliver, flush, resync
        self._call_later = call_later
        #: channel -> the seq of the last entry read (0: none yet)
        self.after: dict[str, int] = {}
        self._by_key: dict[bytes, str] = {}
        self._reading: Optional[Deferred[Any]] = None
        self._read_from: dict[str, int] = {}
        self._client_id: Optional[int] = None
        self._ready = False
        self._unblocking = False
        self.reads = 0
        self.entries = 0
        self.unblocks = 0

    # -- what to follow -----------------------------------------------------

    def follow(self, channel: str, after: int) -> None:
        """Read ``channel``'s stream from the entry after seq ``after`` on."""
        if channel not in self.after:
            self._by_key[self._keys(channel)] = channel
        self.after[channel] = after
        if self._reading is None:
            self._read()
        elif self._read_from.get(channel) != after:
            self._interrupt()

    def unfollow(self, channel: str) -> None:
        """Stop reading ``channel`` (what the current read returns of it is ignored)."""
        if self.after.pop(channel, None) is not None:
            self._by_key.pop(self._keys(channel), None)

    # -- the connection ---------------------------------------------------

    def ready(self) -> None:
        """The connection is (again) up: learn its id, resync, then read."""
        self._ready = False
        self._reading = None
        client_id = self.client.execute("CLIENT", "ID")
        resynced = self._resync(self.client)

        def go(result: Any) -> None:
            self._ready = True
            self._read()

        def learned(value: Any) -> None:
            self._client_id = value if isinstance(value, int) else None
        client_id.addCallbacks(learned, self._lost_call)
        resynced.addCallbacks(go, self._lost_call)

    def _lost_call(self, failure: Failure) -> None:
        failure.trap(LTtxError)  # the connection went: ready() runs again on the next

    # -- the loop -----------------------------------------------------------

    def _read(self) -> None:
        if self._reading is not None or not self._ready or not self.after:
            return
        if not self.client.connected:
            return
        self._read_from = dict(self.after)
        channels = list(self._read_from)
        args: list[Any] = ["XREAD", "COUNT", COUNT, "BLOCK", BLOCK_MS, "STREAMS"]
        args.extend(self._keys(c) for c in channels)
        args.extend(stream_id(self._read_from[c]) for c in channels)
        self.reads += 1
        d = self._reading = self.client.execute(*args)
        d.addCallbacks(self._got, self._failed, callbackArgs=(d,), errbackArgs=(d,))

    def _got(self, reply: Any, d: "Deferred[Any]") -> None:
        if self._reading is not d:
            return  # a read of a connection since lost
        self._reading = None
        if reply:
            for key, entries in reply:
                channel = self._by_key.get(key)
                # Followed since the read was sent, from where it was sent?
                if (channel is None or not entries
                        or self.after.get(channel) != self._read_from.get(channel)):
                    continue
                self.entries += len(entries)
                try:
                    self._deliver(channel, entries)
                finally:
                    if channel in self.after and self.after[channel] == self._read_from[channel]:
                        self.after[channel] = _last_seq(entries, self.after[channel])
            self._flush()
        self._read()

    def _failed(self, failure: Failure, d: "Deferred[Any]") -> None:
        if self._reading is d:
            self._reading = None
        failure.trap(LTtxError)  # lost: ready() resyncs and reads again once reconnected
        self.log.info("stream follower: read failed ({error}); reading again once reconnected",
                      error=failure.value)

    def _stale(self) -> bool:
        """Whether the blocked read misses a followed channel or its position."""
        return self._reading is not None and any(
            self._read_from.get(c) != after for c, after in self.after.items())

    def _interrupt(self) -> None:
        if self._unblocking or self._client_id is None or not self._stale():
            return
        self._unblocking = True
        self.unblocks += 1
        self.commands.execute("CLIENT", "UNBLOCK", self._client_id).addCallbacks(
            self._unblocked, self._unblock_failed)

    def _unblocked(self, count: Any) -> None:
        self._unblocking = False
        if count == 0 and self._stale():
            # The XREAD had not reached Redis yet: once more, shortly.
            self._call_later(UNBLOCK_RETRY, self._interrupt)

    def _unblock_failed(self, failure: Failure) -> None:
        self._unblocking = False
        failure.trap(LTtxError)  # the command connection is down: the block timeout serves

    def status(self) -> dict[str, Any]:
        return {"followed": len(self.after), "reads": self.reads, "entries_read": self.entries,
                "unblocks": self.unblocks}


def _last_seq(entries: list[Any], default: int) -> int:
    try:
        return seq_of(entries[-1][0])
    except (ValueError, TypeError, IndexError):
        return default


__all__ = ["BLOCK_MS", "COUNT", "StreamFollower"]
