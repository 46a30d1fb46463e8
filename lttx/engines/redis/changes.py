"""
The change feed of the Redis engine: :class:`ChangeFeed` reads the change
stream every daemon's scripts write (``<prefix>changes``, :mod:`.scripts`)
into this daemon's change log, so a watcher or mirror on any daemon sees
every change made through any daemon, in the order of the stream (the
order Redis applied them in, so each variable's revisions are consecutive).

- Nothing is read while nobody watches: the first watch of the daemon starts
  the feed (:meth:`ChangeFeed.ready`), which loads what the stream retains
  into the local log, then follows it, and the watch is answered once the
  local log has reached the end of the stream as it was when it asked.
  From then on the feed runs as long as the daemon (as
  :attr:`lttx.state.changelog.ChangeLog.active` on one daemon).
- One reader loop on a Redis connection of its own: ``XREAD COUNT page
  BLOCK ms`` from the last seq read, each batch appended to the log and the
  watchers woken once per batch.
- Seqs and epoch are the stream's, the same on every daemon: a watcher whose
  daemon dies resumes through another from its last seq, nothing missed
  while the stream (about ``--channel-history`` / 256 changes, approximate
  MAXLEN) and the local log (``--channel-history`` bytes) still hold it.
  Seqs are consecutive: a hole (the stream was trimmed past what this
  daemon had read, while it was cut off) restarts the log at the next seq
  held and each watcher behind is told which changes it missed.
- The epoch is the stream's epoch key mixed with the master's replication id
  (``INFO replication``): a stream made again (Redis restarted empty,
  FLUSHALL) or a master promoted by a failover (whose stream may lack the
  last changes of the old one, so its seqs would be given again) is another
  epoch; every watcher is told it missed changes of unknown range (a mirror
  reloads) and reads on: from the start of a stream made again (all of it is
  new to every watcher), from the end of a promoted replica's stream (it
  holds what the watchers had, maybe less).  The feed checks the
  epoch after every reconnection and every idle ``BLOCK`` timeout.
- Read your writes: a write's reply waits until the feed has read its change
  (:meth:`ChangeFeed.reached`), so a watcher of the writing client has it
  first, as on one daemon.  While the feed is cut off from Redis those
  replies are not held back, nor for more than :data:`STALL` seconds if its
  connection hangs without failing.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import LTtxError, Unavailable
from ...state.channels import ChannelRegistry
from .resp import RedisClient
from .scripts import FEED_START

#: Entries one XREAD returns at most.
PAGE = 1000
#: How long one XREAD waits for a change (ms) before the feed checks the epoch.
BLOCK_MS = 2000
#: Seconds before the feed reads again after a failure.
RETRY = 0.2
#: Seconds without any XREAD reply (one comes every BLOCK_MS at the latest)
#: after which the write replies waiting for the feed are let go.
STALL = 5.0


def stream_epoch(raw: bytes, replid: str) -> int:
    """The epoch of a change stream: its epoch key's value and the master's
    replication id, as a non-zero 63-bit int (the same on every daemon)."""
    digest = hashlib.sha1(raw + b":" + replid.encode("ascii")).digest()
    return (int.from_bytes(digest[:8], "big") >> 1) or 1


def master_replid(info: bytes) -> str:
    """The ``master_replid`` of an ``INFO replication`` reply ('' if absent)."""
    for line in info.decode("ascii", "replace").splitlines():
        if line.startswith("master_replid:"):
            return line.split(":", 1)[1].strip()
    return ""


class ChangeFeed(Service):
    """
    Reads the shared change stream into ``registry``'s change log.

    :param client: a Redis connection of the feed's own (an XREAD BLOCK holds
        it); its ``scripts`` must include :data:`~.scripts.FEED_START`.  The
        feed starts and stops it with the daemon.
    :param keys: the stream's key and its epoch key.
    """

    log = Logger()

    def __init__(self, client: RedisClient, registry: ChannelRegistry,
                 keys: tuple[str, str], page: int = PAGE, block_ms: int = BLOCK_MS) -> None:
        self.client = client
        self.registry = registry
        self.keys = keys
        self.page, self.block_ms = page, block_ms
        #: idle (nobody watched yet), starting (loading the stream), running,
        #: cut off (the connection is down; it goes on once it is back)
        self.state = "idle"
        self.epoch: Optional[int] = None
        self._raw: Optional[bytes] = None  # the epoch key's value
        #: The seq of the last change read into the log.
        self.last = 0
        self._target = 0
        self._ready: list[Deferred[None]] = []
        self._waiting: list[tuple[int, int, Deferred[None]]] = []  # (seq, n, d) heap
        self._count = itertools.count()
        self._reading = False
        self._stopped = False
        self.reads = 0
        self.restarts = 0
        self.holes = 0
        self.stalls = 0
        self._guard: Any = None
        self._guarded_reads = 0

    # -- the service --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.client.start()

    def stopService(self) -> Any:
        super().stopService()
        self._stopped = True
        if self._guard is not None and self._guard.active():
            self._guard.cancel()
        self._guard = None
        self._release()
        return self.client.stop()

    # -- what the daemon asks -------------------------------------------------

    def ready(self) -> Optional[Deferred[None]]:
        """None if the change log holds the stream; else a Deferred that fires
        once it does (the first call starts the feed), or fails with
        :class:`Unavailable` if Redis cannot be read."""
        if self.state in ("running", "cut off"):
            return None
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        if self.state == "idle":
            self.state = "starting"
            self._sync()
        return d

    def reached(self, seq: int) -> Optional[Deferred[None]]:
        """None if change ``seq`` was read into the log or the feed is not
        reading; else a Deferred that fires once it is."""
        if self.state not in ("starting", "running") or seq <= self.last:
            return None
        d: Deferred[None] = Deferred()
        heapq.heappush(self._waiting, (seq, next(self._count), d))
        if self._guard is None:
            self._guarded_reads = self.reads
            self._guard = self.client.reactor.callLater(STALL, self._check_stall)
        return d

    def _check_stall(self) -> None:
        """No XREAD reply for STALL seconds while replies wait: let them go."""
        self._guard = None
        if not self._waiting:
            return
        if self.reads == self._guarded_reads:
            self.stalls += 1
            self.log.warn("the change feed had no reply from Redis for {s} s: write replies "
                          "no longer wait for it", s=STALL)
            self._release()
            return
        self._guarded_reads = self.reads
        self._guard = self.client.reactor.callLater(STALL, self._check_stall)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "epoch": self.epoch, "last_seq": self.last,
                "stream": self.keys[0], "reads": self.reads, "restarts": self.restarts,
                "holes": self.holes, "stalls": self.stalls}

    # -- the loop -------------------------------------------------------------

    def _sync(self) -> None:
        """Ask for the stream's epoch and ends (making it if need be), then read."""
        if self._stopped:
            return
        d = defer.gatherResults(
            [self.client.evalsha(FEED_START, list(self.keys), []),
             self.client.execute("INFO", "replication")], consumeErrors=True)
        d.addCallbacks(self._synced, self._failed)

    def _synced(self, replies: list[Any]) -> None:
        (raw, first, last), info = replies
        epoch = stream_epoch(raw, master_replid(info))
        first, last = int(first), int(last)
        if epoch != self.epoch:
            if self.epoch is not None:
                self.restarts += 1
                self.log.warn("the change stream has another epoch (Redis restarted empty, "
                              "or a failover promoted a replica): watchers are told they "
                              "missed changes")
            self.registry.changes.active = True
            # The whole retained stream is loaded.  The watchers that were here
            # read on from the start of a stream made again, but from the end
            # of another master's copy of the same stream (they had its start).
            made_again = raw != self._raw
            self._raw = raw
            self.registry.restart_changes(
                epoch, max(first, 1), max(first, 1) if made_again else last + 1,
                "the shared change log was made again (Redis lost it, or a failover "
                "promoted a replica that may lack its last changes): changes made "
                "meanwhile are not known")
            self.epoch, self.last = epoch, max(first, 1) - 1
            self._release()
        self._target = last
        if self.state == "cut off":
            self.state = "running"
        self._check_ready()
        self._read()

    def _read(self) -> None:
        if self._reading or self._stopped:
            return
        self._reading = True
        d = self.client.execute("XREAD", "COUNT", self.page, "BLOCK", self.block_ms,
                                "STREAMS", self.keys[0], b"0-%d" % self.last)
        d.addCallbacks(self._got, self._failed)

    def _got(self, reply: Any) -> None:
        self._reading = False
        self.reads += 1
        if reply is None:  # nothing for block_ms: check the epoch, read on
            self._sync()
            return
        registry, epoch = self.registry, self.epoch
        assert epoch is not None
        last = self.last
        for entry_id, fields in reply[0][1]:
            seq = int(entry_id[2:])
            if seq <= last:
                continue
            if seq > last + 1:
                self.holes += 1
                self.log.warn("changes {first} to {last} left the change stream before "
                              "this daemon read them; its watchers are told",
                              first=last + 1, last=seq - 1)
                registry.restart_changes(epoch, seq, seq, "")
            values = dict(zip(fields[::2], fields[1::2]))
            registry.append_change(values.get(b"n", b"").decode("utf-8"), values.get(b"c", b""))
            last = seq
        self.last = last
        registry.flush()
        self._release(last)
        self._check_ready()
        self._read()

    def _check_ready(self) -> None:
        if self.state == "starting" and self.last >= self._target:
            self.state = "running"
            self.log.info("watching the change stream {key} from seq {seq}",
                          key=self.keys[0], seq=self.last + 1)
            ready, self._ready = self._ready, []
            for d in ready:
                d.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if isinstance(failure.value, defer.FirstError):  # from _sync's gatherResults
            failure = failure.value.subFailure
        failure.trap(LTtxError)
        self._release()
        if self._stopped:
            return
        if self.state == "starting" and self.epoch is None:
            self.state = "idle"  # the next watch tries again
            ready, self._ready = self._ready, []
            for d in ready:
                d.errback(Unavailable(f"cannot read the change stream: {failure.value}"))
            return
        if self.state != "cut off":
            self.log.warn("the change feed lost Redis ({error}); it reads on once it is back",
                          error=failure.value)
        self.state = "cut off" if self.state == "running" else self.state
        # Not at once: an error reply (a key of another type) would spin.
        self.client.reactor.callLater(RETRY, self._retry)

    def _retry(self) -> None:
        if not self._stopped:
            self.client.service.whenConnected().addCallbacks(
                lambda _: self._sync(), lambda f: None)

    def _release(self, upto: Optional[int] = None) -> None:
        """Let go the replies waiting for changes up to ``upto`` (None: all)."""
        waiting = self._waiting
        while waiting and (upto is None or waiting[0][0] <= upto):
            heapq.heappop(waiting)[2].callback(None)


__all__ = ["BLOCK_MS", "ChangeFeed", "PAGE", "STALL", "master_replid", "stream_epoch"]
