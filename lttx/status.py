"""
What the ``status`` request reports, gathered from the daemon's components.

Each component that has something to show (the channel registry, the
journal, the file store) offers ``status() -> dict``; the factory keeps them
by name and asks them only when a client asks it, so a status request costs
the hot path nothing.  Rates are computed here from counters the components
keep anyway: a :class:`RateMeter` samples the counters on a timer (once a
second, whatever the message rate) and divides differences by time.

Plain Python, no reactor import: the clock is passed in.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer


class IStatusSource(Interface):
    """A component whose figures ``lttx status`` shows."""

    def status() -> Any:
        """
        A dict of plain values (str, int, float, bool, None, lists and dicts
        of them), or a Deferred firing with one.  Computed when called, from
        counters the component keeps anyway.
        """


def gather_status(report: dict[str, Any]) -> "dict[str, Any] | Deferred[dict[str, Any]]":
    """
    ``report`` itself if no value is a Deferred; otherwise a Deferred that
    fires with ``report`` once every Deferred value has been replaced by its
    result.
    """
    waiting = [(name, value) for name, value in report.items() if isinstance(value, Deferred)]
    if not waiting:
        return report

    def fill(results: list[Any]) -> dict[str, Any]:
        for (name, _), result in zip(waiting, results):
            report[name] = result
        return report

    def first_failure(failure: Failure) -> Failure:
        # The source's own failure, not gatherResults' wrapper of it.
        failure.trap(FirstError)
        return failure.value.subFailure  # type: ignore[no-any-return]

    d: "Deferred[list[Any]]" = gatherResults([value for _, value in waiting], consumeErrors=True)
    return d.addCallbacks(fill, first_failure)


@implementer(IStatusSource)
class RateMeter:
    """
    Per-second rates of counters that only grow (messages published on each
    channel), averaged over the last ``window`` seconds.

    :meth:`sample` is called on a timer; :meth:`rates` (and :meth:`status`)
    only divide what the samples hold.  Between two samples nothing runs, so
    a million messages a second cost the meter what one message does.

    :param clock: tells the time of each sample.
    :param counters: returns the current value of every counter by name.
    :param window: seconds of samples kept; rates are averaged over them.
    """

    def __init__(self, clock: IReactorTime, counters: Callable[[], Mapping[str, int]],
                 window: float = 10.0) -> None:
        self.clock = clock
        self.counters = counters
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self) -> None:
        """Record the counters now, and forget samples older than the window."""
        now = self.clock.seconds()
        self._samples.append((now, dict(self.counters())))
        # Keep one sample at or beyond the window's start, so the rate spans it all.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rates(self) -> dict[str, float]:
        """
        Counts per second between the oldest and the newest sample, by name;
        empty until two samples exist.  A counter that went down (a channel
        closed and opened again) counts from zero.
        """
        if len(self._samples) < 2:
            return {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        elapsed = t1 - t0
        if elapsed <= 0:
            return {}
        rates = {}
        for name, value in last.items():
            before = first.get(name, 0)
            grown = value - before if value >= before else value
            rates[name] = grown / elapsed
        return rates

    def status(self) -> dict[str, float]:
        return self.rates()


__all__ = ["IStatusSource", "RateMeter", "gather_status"]
