"""
The blocking client's callback thread: :class:`CallbackThread`.

Message callbacks (``subscribe(callback=...)``), gap callbacks (``on_gap``)
and watch callbacks all run in one thread of their own, in the order the
reactor thread handed them over, so a slow callback delays only later
callbacks, never the reactor thread.  Like ``Client.Q`` it is bounded: a
callback that falls behind for good has new messages dropped (counted in
``Q.dropped``, logged once per episode) instead of growing.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

from .asyncclient import AsyncClient
from .messages import DEFAULT_QUEUE_LIMIT, Message, MessageQueue


class _Call(tuple):  # type: ignore[type-arg]
    """A gap or watch callback's arguments, passed through the callback thread
    (``.channel`` names it in the log line of a failing callback)."""

    def __new__(cls, channel: str, args: Any) -> "_Call":
        return super().__new__(cls, (channel, args))

    @property
    def channel(self) -> str:
        return self[0]  # type: ignore[no-any-return]


class CallbackThread:
    """
    One client's callback thread, started by the first callback given.

    :param messages: the client's ``Q``: its ``limit`` bounds the callbacks
        waiting, and its ``dropped`` counts those dropped.
    """

    log = AsyncClient.log  # where a client's other lines go

    def __init__(self, messages: "queue.Queue[Message]") -> None:
        self._messages = messages
        self._lock = threading.Lock()  # two threads subscribing at once start one thread
        self._calls: "Optional[queue.SimpleQueue[Any]]" = None
        self._thread: Optional[threading.Thread] = None
        self._dropping = False

    def for_messages(self, callback: Callable[[Message], None]) -> Callable[[Message], None]:
        """A reactor-thread callable handing each message to ``callback`` here."""
        with self._lock:
            if self._calls is None:
                self._calls = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._calls,),
                                                name="lttx-callbacks", daemon=True)
                self._thread.start()
        calls = self._calls
        limit = getattr(self._messages, "limit", DEFAULT_QUEUE_LIMIT)

        def hand_over(message: Message) -> None:
            waiting = calls.qsize()
            if waiting >= limit:
                self._dropped(limit)
                return
            if self._dropping and waiting < limit // 2:
                self._dropping = False
            calls.put((callback, message))

        return hand_over

    def for_gaps(self, on_gap: Callable[[str, Optional[int], Optional[int]], None],
                 ) -> Callable[[str, Optional[int], Optional[int]], None]:
        """A reactor-thread gap callback running ``on_gap`` here, in order with
        the messages."""
        run = self.for_messages(lambda call: on_gap(*call[1]))

        def hand_over(channel: str, first: Optional[int], last: Optional[int]) -> None:
            run(_Call(channel, (channel, first, last)))  # type: ignore[arg-type]

        return hand_over

    def for_values(self, f: Callable[[Any], None]) -> Callable[[Any], None]:
        """A reactor-thread callable running ``f(value)`` here (watches)."""
        run = self.for_messages(lambda call: f(call[1]))
        return lambda value: run(_Call("(watch)", value))  # type: ignore[arg-type]

    def _dropped(self, limit: int) -> None:
        if isinstance(self._messages, MessageQueue):
            self._messages.dropped += 1
        if not self._dropping:
            self._dropping = True
            self.log.warn("{limit} messages wait for callbacks that do not keep up: "
                          "dropping new ones (a gap in Message.seq shows them)", limit=limit)

    def _run(self, calls: "queue.SimpleQueue[Any]") -> None:
        while True:
            item = calls.get()
            if item is None:
                return
            callback, message = item
            try:
                callback(message)
            except Exception:
                # The user's callback failed; later messages still get theirs.
                self.log.failure("a message callback failed on {channel}",
                                 channel=message.channel)

    def stop(self, wait: float) -> None:
        """Let the callbacks handed over so far run (for ``wait`` seconds at
        most), then end the thread."""
        if self._calls is not None:
            self._calls.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)


__all__ = ["CallbackThread"]
