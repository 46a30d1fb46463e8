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
        self._short = False

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
        self.waits += 1
        d = self.client.execute("WAIT", self.replicas, max(1, round(self.timeout * 1000)))
        d.addCallbacks(self._answered, self._failed, callbackArgs=(waiting,),
                       errbackArgs=(waiting,))

    def _answered(self, count: int, waiting: list[Deferred[None]]) -> None:
        self.last_count = count
        if count >= self.replicas:
            if self._short:
                self._short = False
                self.log.info("{count} replicas acknowledge writes again (--redis-wait {n})",
                              count=count, n=self.replicas)
            self.confirmed += len(waiting)
            for d in waiting:
                d.callback(None)
            return
        if not self._short:
            self._short = True  # one log line per episode, not one per turn
            self.log.warn("only {count} of {n} replicas acknowledged writes within {t} s: "
                          "they are answered Unavailable (--redis-wait)",
                          count=count, n=self.replicas, t=self.timeout)
        self._refuse(waiting, Unavailable(
            f"the write was applied in Redis, but only {count} of {self.replicas} replicas "
            f"acknowledged it within {self.timeout:g} s (--redis-wait): it may be lost in a "
            f"failover"))

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
                "last_acknowledged_by": self.last_count}


__all__ = ["DEFAULT_WAIT_TIMEOUT", "Replication"]
