"""
What a subscriber receives: :class:`Message`, and the blocking client's
bounded :class:`MessageQueue` (``Client.Q``).
"""

from __future__ import annotations

import queue
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

    ``put_many`` takes the lock once per batch and ``get`` takes only the
    plain mutex when a message is waiting: at tens of thousands of messages a
    second, the Condition machinery of ``Queue`` would be most of the cost.
    """

    log = Logger()

    def __init__(self, limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0
        self._dropping = False

    def put(self, item: Message, block: bool = True, timeout: Optional[float] = None) -> None:
        self.put_many([item])

    def put_many(self, items: list[Message]) -> None:
        """Put several items at once, in order; past the limit they are dropped."""
        with self.mutex:
            room = self.limit - len(self.queue)
            if room < len(items):
                lost = len(items) - max(room, 0)
                items = items[:max(room, 0)]
                self.dropped += lost
                if not self._dropping:
                    self._dropping = True
                    self.log.warn("Q holds {limit} messages nobody reads: dropping new ones "
                                  "until it is read (a gap in Message.seq shows them)",
                                  limit=self.limit)
            elif self._dropping and len(self.queue) < self.limit // 2:
                self._dropping = False
            self.queue.extend(items)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Message:
        with self.mutex:
            if self.queue:
                return self.queue.popleft()  # no putter ever waits on not_full
        return super().get(block, timeout)


__all__ = ["DEFAULT_QUEUE_LIMIT", "Message", "MessageQueue"]
