"""
Which of a blocking client's pushes leave from the pushing thread and which
are batched by the reactor thread: :class:`PushPacing`.

A push written from its own thread leaves at once; one handed to the reactor
thread waits for that thread's wake and for the pushing thread's GIL, but a
loop of them costs one hand-off and one write for many.  So a burst of ticks
(a few pushes close together, then a pause) goes out push by push, and a
stream (a loop of pushes) goes in batches.
"""

from __future__ import annotations

import time

#: Pushes closer together than this many seconds make one burst.
DIRECT_PUSH_GAP = 50e-6

#: The first pushes of a burst, up to this many, are sent from their thread;
#: the rest of a longer burst is batched by the reactor thread.
DIRECT_PUSH_RUN = 16

#: Once pushes were queued for the reactor thread (a stream of pushes), the
#: next ones are queued too until this many seconds passed since the reactor
#: thread last took some.  A pushing thread that waited for the GIL while the
#: reactor thread wrote its batch seems to have paused; sending from the
#: thread then would hand the GIL back and forth at every send (a loop of
#: pushes took twice the time).  Well under the spacing of bursts of ticks.
STREAM_REST = 200e-6


class PushPacing:
    """
    The decision for one client's pushes, made under its push lock.

    A push made while others wait for the reactor thread always queues
    behind them (their order), with no clock read.  For any other push,
    :meth:`direct` says whether it goes out from its thread; :meth:`taken`
    is told when the reactor thread takes the queued ones.
    """

    __slots__ = ("last_push", "burst", "last_queued")

    def __init__(self) -> None:
        self.last_push = float("-inf")  # perf_counter() of the last push looked at
        self.burst = 0  # pushes made in the current burst
        self.last_queued = float("-inf")  # when queued pushes were last taken, or queued

    def taken(self) -> None:
        """The reactor thread took the queued pushes: a stream is measured to here."""
        self.last_queued = time.perf_counter()

    def direct(self) -> bool:
        """Whether this push (nothing else waiting) goes out from its thread."""
        now = time.perf_counter()
        if now - self.last_push >= DIRECT_PUSH_GAP:
            self.burst = 0
        self.last_push = now
        self.burst += 1
        if self.burst > DIRECT_PUSH_RUN or now - self.last_queued < STREAM_REST:
            self.last_queued = now
            return False
        return True


__all__ = ["DIRECT_PUSH_GAP", "DIRECT_PUSH_RUN", "STREAM_REST", "PushPacing"]
