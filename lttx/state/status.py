"""
What the ``status`` request reports, gathered from the daemon's components.

Each component that has something to show (the channel registry, the
journal, the file store) offers ``status() -> dict``; the daemon's ServerState keeps them
by name and asks them only when a client asks it, so a status request costs
the hot path nothing.  Rates come from the components too, computed from
counters they keep anyway (the channel registry samples its sequence
numbers on a timer, not per message).

Plain Python, no reactor import.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.python.failure import Failure


class StatusSource(Protocol):
    """
    A component whose figures ``lttx status`` shows: anything with a
    ``status()`` method (a structural type, so a component needs no
    declaration to be wired in).
    """

    def status(self) -> Any:
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
        first: FirstError = failure.value  # type: ignore[assignment]
        return first.subFailure

    d: "Deferred[list[Any]]" = gatherResults([value for _, value in waiting], consumeErrors=True)
    return d.addCallbacks(fill, first_failure)


__all__ = ["StatusSource", "gather_status"]
