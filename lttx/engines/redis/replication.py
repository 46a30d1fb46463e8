"""
Acknowledged writes on the Redis engine (``--redis-wait N``,
``--redis-wait-timeout SECONDS``): :class:`Replication` holds the reply of
every variable write and every acknowledged ``publish`` until Redis's
``WAIT N timeout`` says that at least N replicas have it, so a write a
client was told succeeded survives the failover that promotes one of them.

- ``WAIT`` covers the writes made on the connection it is sent on, so it is
  sent on the connection that made them, after them: a write asks for its
  confirmation (:meth:`Replication.confirm`) as its reply arrives (or, for a
  publish, before the publish leaves in the same reactor turn), and one
  ``WAIT`` per reactor turn (``callLater(0)``) answers every write of the
  turn.  The reactor never blocks; a ``WAIT`` holds only that Redis
  connection (the commands queued behind it on it wait for it: one replica
  round trip while the replicas keep up, up to the timeout when they do not).
- So that a missing replica does not hold that connection for the timeout
  at every turn: once a ``WAIT`` comes back short, writes are refused at once
  (no ``WAIT``) while ``INFO replication`` is read every :data:`POLL`
  seconds, until N replicas are online again (``state=online``, ``lag``
  at most 1 s); then ``WAIT`` confirms writes again.
- A write that cannot be confirmed, because fewer than N replicas
  acknowledged it within the timeout, or because the connection it was made
  on was lost before the ``WAIT`` answered, is an error the client sees:
  :class:`lttx.errors.Unavailable`, never a silent success.  The write *was*
  applied on the master (Redis has no rollback): it may survive or be lost,
  and a client that retries should make its write idempotent (a ``put``, or
  ``if_revision``).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import LTtxError, Unavailable
from .resp import RedisClient, RedisProtocol

#: ``--redis-wait-timeout``: seconds a write waits for its replicas.
DEFAULT_WAIT_TIMEOUT = 1.0
#: Seconds between two reads of the replicas while they are short.
POLL = 0.5


def online_replicas(info: bytes) -> int:
    """Replicas an ``INFO replication`` reply lists as online and acknowledging
    (``lag`` at most 1 s: a replica acknowledges every second)."""
    count = 0
    for line in info.decode("ascii", "replace").splitlines():
        if line.startswith("slave") and ":" in line:
            fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(",")
                          if "=" in part)
            if fields.get("state") == "online" and fields.get("lag", "9").isdigit() \
                    and int(fields["lag"]) <= 1:
                count += 1
    return count


class Replication:
    """
    Confirms writes with ``WAIT``, once per reactor turn.

    :param client: the connection the writes are made on.
    :param replicas: how many replicas must acknowledge a write (N >= 1).
    :param timeout: seconds ``WAIT`` waits for them (> 0).
    """

    log = Logger()

    def __init__(self, client: RedisClient, replicas: int, timeout: float,
                 clock: IReactorTime) -> None:
        if replicas < 1 or timeout <= 0:
            raise ValueError("replicas must be at least 1 and the timeout above 0")
        self.client = client
        self.replicas = replicas
        self.timeout = timeout
        self.clock = clock
        self._batch: list[tuple[Optional[RedisProtocol], Deferred[None]]] = []
        self._call: Optional[IDelayedCall] = None
        self.waits = 0
        self.confirmed = 0
        self.refused = 0
        #: The replica count of the last WAIT reply (None before the first).
        self.last_count: Optional[int] = None
        #: Set while fewer than N replicas acknowledge: writes are refused at once.
        self.short = False
        self._poll: Optional[IDelayedCall] = None

    def confirm(self) -> Deferred[None]:
        """
        A Deferred that fires once the writes made so far on the client's
        current connection are on enough replicas, or fails with
        :class:`Unavailable` if they cannot be confirmed.
        """
        d: Deferred[None] = Deferred()
        self._batch.append((self.client.protocol, d))
        if self._call is None:
            self._call = self.clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._call = None
        batch, self._batch = self._batch, []
        current = self.client.protocol
        waiting = [d for protocol, d in batch if protocol is current and current is not None]
        lost = [d for protocol, d in batch if protocol is not current or current is None]
        if lost:
            self._refuse(lost, Unavailable(
                "the write was applied in Redis, but the connection it was made on was lost "
                "before its replicas could be asked (--redis-wait): it may be lost in a "
                "failover"))
        if not waiting:
            return
        if self.short:
            self._refuse(waiting, Unavailable(
                f"the write was applied in Redis, but fewer than {self.replicas} replicas "
                f"are online to acknowledge it (--redis-wait): it may be lost in a failover"))
            return
        self.waits += 1
        d = self.client.execute("WAIT", self.replicas, max(1, round(self.timeout * 1000)))
        d.addCallbacks(self._answered, self._failed, callbackArgs=(waiting,),
                       errbackArgs=(waiting,))

    def _answered(self, count: int, waiting: list[Deferred[None]]) -> None:
        self.last_count = count
        if count >= self.replicas:
            self.confirmed += len(waiting)
            for d in waiting:
                d.callback(None)
            return
        if not self.short:
            self.short = True  # one log line per episode, not one per turn
            self.log.warn("only {count} of {n} replicas acknowledged writes within {t} s: "
                          "writes are answered Unavailable until {n} are online "
                          "(--redis-wait)", count=count, n=self.replicas, t=self.timeout)
            self._schedule_poll()
        self._refuse(waiting, Unavailable(
            f"the write was applied in Redis, but only {count} of {self.replicas} replicas "
            f"acknowledged it within {self.timeout:g} s (--redis-wait): it may be lost in a "
            f"failover"))

    def _schedule_poll(self) -> None:
        if self._poll is None:
            self._poll = self.clock.callLater(POLL, self._read_replicas)

    def _read_replicas(self) -> None:
        self._poll = None
        d = self.client.execute("INFO", "replication")
        d.addCallbacks(self._replicas_read, lambda f: self._schedule_poll())

    def _replicas_read(self, info: bytes) -> None:
        online = online_replicas(info)
        if online < self.replicas:
            self._schedule_poll()
            return
        self.short = False
        self.log.info("{count} replicas are online: writes are confirmed again "
                      "(--redis-wait {n})", count=online, n=self.replicas)

    def _failed(self, failure: Failure, waiting: list[Deferred[None]]) -> None:
        failure.trap(LTtxError)
        self._refuse(waiting, Unavailable(
            f"the write was applied in Redis, but it could not be confirmed by its replicas "
            f"(--redis-wait): {failure.value}"))

    def _refuse(self, waiting: list[Deferred[None]], error: Unavailable) -> None:
        self.refused += len(waiting)
        for d in waiting:
            d.errback(Failure(error))

    def status(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "timeout": self.timeout, "waits": self.waits,
                "confirmed": self.confirmed, "refused": self.refused,
                "last_acknowledged_by": self.last_count, "short": self.short}


__all__ = ["DEFAULT_WAIT_TIMEOUT", "POLL", "Replication", "online_replicas"]
