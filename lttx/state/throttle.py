"""
What failed or hostile connection attempts cost, per client address.

- :class:`HelloThrottle`: after a few wrong tokens from one host, that
  host's next ``hello`` is checked only after a growing delay, whatever the
  number of connections it opens: guessing tokens goes from thousands of tries
  a second to a few a minute.  A good token from the host clears its record.
- :class:`RefusalLog`: the log line for a refused connection is written for
  the first few refusals of a host in each interval; the rest are counted and
  summed up in one line, so a flood of garbage connections cannot flood the log.

Both keep at most ``capacity`` hosts (the least recently seen go first), so
the state an attacker can make the daemon hold is bounded.  Plain Python:
time is a callable passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

#: Wrong tokens a host may send before its hellos are slowed down.
FREE_FAILURES = 3
#: The delay after the first failure past the free ones, doubled each time, at most...
FIRST_DELAY = 0.5
#: ... this many seconds (under the hello timeout, so a held hello is still answered).
MAX_DELAY = 8.0
#: A host with no failure for this long is forgotten.
FORGET_AFTER = 600.0
#: Hellos of one host waiting for their turn; past it they are refused at once.
MAX_WAITING = 32
#: The most hosts either table keeps.
CAPACITY = 10_000


@dataclass
class _Host:
    failures: int = 0
    last_failure: float = 0.0
    next_check: float = 0.0  # when the next hello of this host may be checked
    waiting: int = 0


class HelloThrottle:
    """Slows down the hellos of hosts that keep sending wrong tokens."""

    def __init__(self, clock: Callable[[], float], capacity: int = CAPACITY) -> None:
        self._clock = clock
        self._capacity = capacity
        self._hosts: OrderedDict[str, _Host] = OrderedDict()
        #: Wrong tokens seen, in all.
        self.failures = 0
        #: Hellos refused at once because too many of their host's were waiting.
        self.refused = 0

    def __len__(self) -> int:
        """How many hosts the throttle keeps a record of."""
        return len(self._hosts)

    def admit(self, host: str) -> Optional[float]:
        """
        Seconds a hello from ``host`` must wait before its token is checked
        (0: now), reserving its turn; None if too many of its hellos already
        wait (refuse it).  Every admitted hello ends with :meth:`checked`.
        """
        entry = self._hosts.get(host)
        if entry is None:
            return 0.0
        now = self._clock()
        if now - entry.last_failure > FORGET_AFTER and not entry.waiting:
            del self._hosts[host]
            return 0.0
        if entry.failures < FREE_FAILURES:
            entry.waiting += 1
            return 0.0
        if entry.waiting >= MAX_WAITING:
            self.refused += 1
            return None
        start = max(now, entry.next_check)
        entry.next_check = start + _delay(entry.failures)
        entry.waiting += 1
        return start - now

    def checked(self, host: str, good: bool) -> None:
        """The hello admitted for ``host`` was checked: ``good`` token or not."""
        entry = self._hosts.get(host)
        if good:
            if entry is not None:
                del self._hosts[host]
            return
        self.failures += 1
        now = self._clock()
        if entry is None:
            entry = self._hosts[host] = _Host()
            if len(self._hosts) > self._capacity:
                self._hosts.popitem(last=False)
        else:
            entry.waiting = max(0, entry.waiting - 1)
            self._hosts.move_to_end(host)
        entry.failures += 1
        entry.last_failure = now
        if entry.failures >= FREE_FAILURES:
            entry.next_check = max(entry.next_check, now + _delay(entry.failures))

    def abandoned(self, host: str) -> None:
        """An admitted hello's connection closed before its check."""
        entry = self._hosts.get(host)
        if entry is not None:
            entry.waiting = max(0, entry.waiting - 1)

    def status(self) -> dict[str, Any]:
        """What ``lttx status`` shows: failures, refusals, hosts slowed down now."""
        now = self._clock()
        return {"failed_hellos": self.failures,
                "hellos_refused_waiting": self.refused,
                "hosts_slowed_down": sum(1 for e in self._hosts.values()
                                         if e.failures >= FREE_FAILURES
                                         and now - e.last_failure <= FORGET_AFTER)}


def _delay(failures: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, failures - FREE_FAILURES))


class RefusalLog:
    """
    Whether to log a refusal of ``host`` now: the first ``burst`` in each
    ``interval`` seconds are logged; later ones are counted, and the next
    logged line says how many were not.
    """

    def __init__(self, clock: Callable[[], float], burst: int = 3, interval: float = 60.0,
                 capacity: int = CAPACITY) -> None:
        self._clock = clock
        self._burst = burst
        self._interval = interval
        self._capacity = capacity
        self._hosts: OrderedDict[str, list[float]] = OrderedDict()  # host -> [since, n, hidden]

    def note(self, host: str) -> Optional[int]:
        """None: do not log this one; else log it, mentioning the returned count of
        refusals of this host left out of the log since the last line."""
        now = self._clock()
        entry = self._hosts.get(host)
        if entry is None or now - entry[0] >= self._interval:
            hidden = int(entry[2]) if entry is not None else 0
            self._hosts[host] = [now, 1, 0]
            self._hosts.move_to_end(host)
            if len(self._hosts) > self._capacity:
                self._hosts.popitem(last=False)
            return hidden
        entry[1] += 1
        if entry[1] <= self._burst:
            return 0
        entry[2] += 1
        return None


__all__ = ["HelloThrottle", "RefusalLog"]
