"""
The last minutes of the daemon's rates, for the status page's charts.

:class:`History` is a bounded ring of samples taken by a timer (once a
second by default, a ``TimerService`` in ``makeService``), each from counters
the channel registry and the server state keep anyway: messages published
and delivered (turned into rates by difference), open connections.  Nothing
is done per message; memory is fixed by ``size``.  Plain Python: the time is
passed in.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

#: Samples kept: 15 minutes at one a second.
HISTORY_SIZE = 900
#: Seconds between two samples.
SAMPLE_INTERVAL = 1.0


class History:
    """
    A ring of ``[time, published/s, delivered/s, connections]`` samples.

    :param read: returns ``(published, delivered, connections)`` now: the
        two counters (ever-increasing) and the gauge.
    :param clock: the time of a sample, in seconds (the reactor's, so wall time).
    :param size: how many samples are kept.
    """

    def __init__(self, read: Callable[[], tuple[int, int, int]],
                 clock: Callable[[], float], size: int = HISTORY_SIZE) -> None:
        self._read = read
        self._clock = clock
        self.samples: deque[list[float]] = deque(maxlen=size)
        self._last: Optional[tuple[float, int, int]] = None

    def sample(self) -> None:
        """Take one sample (the timer calls this)."""
        now = self._clock()
        published, delivered, connections = self._read()
        last, self._last = self._last, (now, published, delivered)
        if last is None:
            return  # the first reading only sets the baseline of the rates
        elapsed = now - last[0]
        if elapsed <= 0:
            return
        self.samples.append([round(now, 3),
                             round((published - last[1]) / elapsed, 1),
                             round((delivered - last[2]) / elapsed, 1),
                             connections])

    def since(self, after: float = 0.0) -> dict[str, Any]:
        """The samples taken after the time ``after`` (all of them for 0)."""
        return {"columns": ["time", "published_per_s", "delivered_per_s", "connections"],
                "samples": [s for s in self.samples if s[0] > after]}


__all__ = ["HISTORY_SIZE", "History", "SAMPLE_INTERVAL"]
