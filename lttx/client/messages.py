"""
What a subscriber receives: :class:`Message`, and the blocking client's
bounded :class:`MessageQueue` (``Client.Q``).
"""

from __future__ import annotations

import queue
from collections import deque
from time import monotonic
from typing import Any, NamedTuple, Optional

from twisted.logger import Logger

#: Most messages ``Client.Q`` holds before new ones are dropped (see MessageQueue).
DEFAULT_QUEUE_LIMIT = 500_000


class Message(NamedTuple):
    """A message received on a subscribed channel."""

    channel: str
    key: Any
    data: Any
    seq: int


class MessageQueue(queue.Queue):  # type: ignore[type-arg]
    """
    The blocking client's :attr:`Client.Q`: a :class:`queue.Queue` of
    :class:`Message`, filled a batch at a time, holding at most ``limit``.

    A program that stops reading it must not grow until it is killed: like a
    NATS client's pending limit (a "slow consumer"), messages that arrive
    while it is full are dropped, counted in :attr:`dropped`, and logged once
    per episode; the gap in ``Message.seq`` shows the reader what it missed.
    The reactor thread never waits on it, so calls and other channels go on.

    ``put_many`` takes the lock once per batch (one wake of a waiting
    ``get`` per received read).  ``get`` takes no lock while messages already
    moved out of the put side wait: under the mutex, a ``get`` that finds
    none moves everything put so far into a second deque at once, and later
    ``get`` calls pop from it (``deque.popleft`` is atomic), so the lock is
    taken once per batch on the reading side too.  Messages are only moved
    while that deque is empty and under the mutex, so they leave in the
    order they came, whatever the number of reading threads.
    """

    log = Logger()

    def __init__(self, limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0
        self._dropping = False
        # Messages moved out of ``queue`` by a get, taken without the lock.
        self._ready: "deque[Message]" = deque()

    def put(self, item: Message, block: bool = True, timeout: Optional[float] = None) -> None:
        self.put_many([item])

    def put_many(self, items: list[Message]) -> None:
        """Put several items at once, in order; past the limit they are dropped."""
        with self.mutex:
            room = self.limit - len(self.queue) - len(self._ready)
            if room < len(items):
                lost = len(items) - max(room, 0)
                items = items[:max(room, 0)]
                self.dropped += lost
                if not self._dropping:
                    self._dropping = True
                    self.log.warn("Q holds {limit} messages nobody reads: dropping new ones "
                                  "until it is read (a gap in Message.seq shows them)",
                                  limit=self.limit)
            elif self._dropping and len(self.queue) + len(self._ready) < self.limit // 2:
                self._dropping = False
            self.queue.extend(items)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Message:
        """
        The oldest message, as :meth:`queue.Queue.get`: waiting for one
        (at most ``timeout`` seconds, then :class:`queue.Empty`) unless
        ``block`` is false.
        """
        ready = self._ready
        try:
            return ready.popleft()
        except IndexError:
            pass
        deadline = None
        with self.not_empty:
            while True:
                try:
                    return ready.popleft()
                except IndexError:
                    pass
                if self.queue:
                    ready.extend(self.queue)
                    self.queue.clear()
                    continue
                if not block:
                    raise queue.Empty
                if timeout is None:
                    self.not_empty.wait()
                    continue
                if deadline is None:
                    if timeout < 0:
                        raise ValueError("'timeout' must be a non-negative number")
                    deadline = monotonic() + timeout
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise queue.Empty
                self.not_empty.wait(remaining)

    def _qsize(self) -> int:  # qsize(), empty() and full() count both deques
        return len(self.queue) + len(self._ready)


__all__ = ["DEFAULT_QUEUE_LIMIT", "Message", "MessageQueue"]
