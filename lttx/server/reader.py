"""
One subscriber connection's reading of the channel logs, a streaming producer:
:class:`ChannelReader`; and the reading throttle of any command connection.

The reader holds no message: per channel it holds a
:class:`~lttx.state.channellog.Position` (the seq of the next message to
send), and writes the logs' own frames from there at the pace the transport
takes them.  The registry wakes it (:meth:`ChannelReader.wake`) at the end
of each chunk of received publishes; it writes what it has not sent, in one
``transport.write`` of joined frames when that is little, else in slices of
about :data:`CHUNK` bytes, stopping as soon as the transport pauses it.
``resumeProducing`` reads on from the positions.  A slow or frozen
subscriber therefore costs its positions plus the transport's own buffer,
and is never cut off for being slow.  When its log dropped messages it had
not read, it is sent a gap notice (``[4, "gap", ...]``, ``docs/protocol.md``)
and reads on from the oldest retained message.  A conflating position reads
a backlog (it lagged, or more than a slice waits) as the newest message of
each key only.

A connection that watches variables (``watch``, ``docs/protocol.md``) has a
:class:`~lttx.state.changelog.WatchPosition` in the change log too, read
first at each wake and filtered by its patterns and rights.  A reply sent
while watched changes are still unwritten (the transport paused the reader)
is held until they are written: a client's change is in its watch stream
before the reply that says it was made.
"""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

from ..state.changelog import WatchPosition, missed_notice
from ..state.channellog import ChannelLog, Position
from ..state.channels import ChannelRegistry, ISubscriber, dropped_notice
from ..wire.batches import batch_frames, message_head
from ..wire.writes import send_now, write_now

#: About the most bytes written at once when a subscriber catches up.
CHUNK = 256 * 1024


@implementer(IPushProducer, ISubscriber)
class ChannelReader:
    """
    What one connection reads of the channels.

    :param transport: the connection; the reader registers itself on it as
        a streaming producer.
    :param registry: the channel registry (gaps and conflation are counted there).
    :param reading: stops and resumes reading the connection's own requests
        (no reply piles up for a peer that does not read).
    """

    #: Whether readers at the same seq may write one shared join of the log's
    #: frames (:meth:`_write_shared`); false for a subclass whose ``_write``
    #: rewrites the frames (the legacy port's reader), set by itself.
    shares_joins = True

    #: Whether the connection asked for MESSAGES frames at ``hello``
    #: (:mod:`lttx.wire.batches`): the messages of one channel it reads in
    #: one slice go as batches; merged reads of several channels, gap
    #: notices and everything else keep their own frames.
    batches = False

    #: The fewest messages of one slice written as a MESSAGES frame to a
    #: channel's only subscriber; shorter runs keep their MESSAGE frames.
    #: Below about this, building the batch costs the daemon (on the path of
    #: every tick) about what decoding it saves the subscriber, and bursts of
    #: a few ticks reached it later (benchmarks/latency_parts.py, the closing
    #: note of issue 14).  A batch shared by several subscribers at the same
    #: seq is built once for all and pays from two messages.
    batch_from = 8

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_write" in cls.__dict__:
            cls.shares_joins = False

    def __init__(self, transport: ITransport, registry: ChannelRegistry,
                 reading: Optional[Callable[[bool], None]] = None) -> None:
        self.transport = transport
        self.registry = registry
        self._reading = reading or (lambda on: set_reading(transport, on))
        #: channel -> Position, kept by the registry.
        self.positions: dict[str, Position] = {}
        self.paused = False
        self.stopped = False
        self.gaps = 0
        self.conflated_drops = 0
        #: Bytes written to the connection (the status page's bytes out).
        self.written = 0
        #: The connection's place in the change log, once it watches.
        self.watch: Optional[WatchPosition] = None
        # Replies waiting for the watched changes before them to be written.
        self._held: list[bytes] = []
        transport.registerProducer(self, True)

    # -- ISubscriber --------------------------------------------------------

    def wake(self) -> None:
        """Write what the positions have not reached, until the transport pauses."""
        if self.paused or self.stopped:
            return
        self._out: list[bytes] = []
        self._size = 0
        if self.watch is not None and not self._read_watch():
            self._write(self._out)
            self._out = []
            return
        if self._held:
            held, self._held = self._held, []
            self._add(held)
        pending = []
        for position in self.positions.values():
            if position.prelude:
                prelude, position.prelude = position.prelude, []
                self._add(prelude)
            log = position.log
            if position.next < log.next_seq or position.next < log.first_seq:
                pending.append(position)
        if len(pending) == 1:
            self._read_one(pending[0])
        elif pending:
            self._read_merged(pending)
        if self._out and not self.stopped:
            self._write(self._out)
        self._out = []
        send_now(self.transport)  # to the subscriber now, not a reactor turn later

    def _read_watch(self) -> bool:
        """The watched changes not written yet; False if the transport paused."""
        position = self.watch
        assert position is not None
        if position.prelude:
            prelude, position.prelude = position.prelude, []
            self._add(prelude)
        log = position.log
        while position.next < log.next_seq:
            missed, frames = position.read(_slice(log))
            if missed is not None:
                self._out.append(missed_notice(
                    missed[0], missed[1], log.epoch,
                    f"changes {missed[0]} to {missed[1]} were dropped from the daemon's "
                    f"change log before this watcher read them"))
                self.gaps += 1
                self.registry.note_gap()
            if frames and not self._add(frames):
                return False
        return not (self.paused or self.stopped)

    def reply(self, frame: bytes) -> None:
        """
        Write a reply after the watched changes made before it (now, or
        held until the transport takes them).
        """
        if not self._held:
            self.wake()
            if not self.paused and (self.watch is None
                                    or self.watch.next >= self.watch.log.next_seq):
                self.written += len(frame)
                self.transport.write(frame)
                return
        self._held.append(frame)

    def _add(self, frames: list[bytes]) -> bool:
        """Queue frames for this wake's write; write past CHUNK.  False once paused."""
        self._out.extend(frames)
        self._size += sum(map(len, frames))
        if self._size >= CHUNK:
            out, self._out, self._size = self._out, [], 0
            self._write(out)
            return not (self.paused or self.stopped)
        return True

    def _add_messages(self, log: ChannelLog, frames: list[bytes]) -> bool:
        """:meth:`_add` of MESSAGE frames of ``log``, as MESSAGES frames if the
        connection asked for them (each message still counted as delivered)."""
        if self.batches and len(frames) >= self.batch_from:
            out = batch_frames(message_head(log.name), frames)
            self.registry.delivered += len(frames) - len(out)
            frames = out
        return self._add(frames)

    def _write(self, frames: list[bytes]) -> None:
        """Write complete frames (the logs' MESSAGE frames, gap notices) in one write."""
        data = b"".join(frames)
        self.written += len(data)
        self.registry.delivered += len(frames)  # (a gap notice counts too: rare)
        # Sent at once when the transport holds nothing (one send, no
        # epoll_ctl pair); else behind what it holds, as a write.
        write_now(self.transport, data)

    def _write_shared(self, position: Position,
                      joined: dict[ChannelLog, tuple[int, int, bytes]]) -> None:
        """
        What one slice of one channel would write (all it has not sent, no
        gap, nothing else before it), joined once for every reader at the
        same seq in this flush: ten subscribers of a feed cost one join.
        """
        log = position.log
        start, end = position.next, log.next_seq
        shared = joined.get(log)
        if shared is not None and shared[0] == start and shared[1] == end:
            data = shared[2]
        else:
            frames = log.read(start, end - start)[1]
            # Built once for every reader at this seq: with several, it pays
            # from two messages (each of them decodes it cheaper).
            if self.batches and end - start >= (2 if len(log.readers) > 1 else self.batch_from):
                frames = batch_frames(message_head(log.name), frames)
            data = b"".join(frames)
            joined[log] = (start, end, data)
        position.next = end
        position.lagging = False
        self.written += len(data)
        self.registry.delivered += end - start
        write_now(self.transport, data)

    def _skip_dropped(self, position: Position) -> None:
        log = position.log
        if position.next < log.first_seq:
            self._out.append(dropped_notice(log.name, position.next, log.first_seq - 1,
                                            log.epoch))
            position.next = log.first_seq
            self.gaps += 1
            self.registry.note_gap()

    def _conflated(self, position: Position, count: int) -> bool:
        """Whether to read this position's backlog conflated (and do so)."""
        log = position.log
        if not (position.conflate and (position.lagging or log.next_seq - position.next > count)):
            return False
        _, frames, position.next, skipped = log.read_conflated(position.next)
        self.conflated_drops += skipped
        self.registry.conflated_drops += skipped
        position.lagging = False
        self._add_messages(log, frames)
        return True

    def _read_one(self, position: Position) -> None:
        """One channel with something to send: its frames in slices."""
        log = position.log
        joined = self.registry.batched if self.batches else self.registry.joined
        if (joined is not None and self.shares_joins and not self._out
                and position.next >= log.first_seq
                and not (position.conflate and position.lagging)
                and log.next_seq - position.next <= _slice(log)):
            self._write_shared(position, joined)
            return
        while True:
            self._skip_dropped(position)
            if position.next >= log.next_seq:
                break
            count = _slice(log)
            if self._conflated(position, count):
                break
            _, frames, position.next = log.read(position.next, count)
            if not self._add_messages(log, frames):
                return
        position.lagging = False

    def _read_merged(self, pending: list[Position]) -> None:
        """Several channels with something to send: their frames merged in
        the order the daemon received them, a slice of each at a time."""
        while pending:
            slices = []
            for position in pending:
                self._skip_dropped(position)
                log = position.log
                count = _slice(log)
                if position.next >= log.next_seq or self._conflated(position, count):
                    continue
                _, frames, _ = log.read(position.next, count)
                slices.append((position, frames, log.arrivals(position.next, len(frames))))
            if not slices:
                break
            # Every message received up to the earliest slice end is in a slice.
            bound = min(arrivals[-1] for _, _, arrivals in slices)
            merged: list[tuple[int, bytes]] = []
            for position, frames, arrivals in slices:
                k = bisect_right(arrivals, bound)
                merged.extend(zip(arrivals[:k], frames[:k]))
                position.next += k
            merged.sort(key=itemgetter(0))
            if not self._add([frame for _, frame in merged]):
                return
            pending = [p for p in pending if p.next < p.log.next_seq]
        for position in self.positions.values():
            position.lagging = False

    # -- IPushProducer ------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        for position in self.positions.values():
            position.lagging = True
        # Its own requests wait too: no reply piles up for a peer that lags.
        self._reading(False)

    def resumeProducing(self) -> None:
        self.paused = False
        self._reading(True)
        self.wake()

    def stopProducing(self) -> None:
        self.stopped = True


def _slice(log: ChannelLog) -> int:
    """About how many of ``log``'s messages make :data:`CHUNK` bytes."""
    return max(1, CHUNK * len(log) // log.bytes) if log.bytes else 1


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
