"""
Glob patterns of ``keys``, bounded, and the name scan they drive, in slices.

A pattern is at most :data:`MAX_PATTERN` characters (a longer one is a
:class:`~lttx.errors.BadRequest`); it is compiled once with
:func:`fnmatch.translate` into a regular expression kept in a small LRU
(:data:`PATTERN_CACHE` entries), not in :mod:`fnmatch`'s own cache, which
keeps up to 32,768 patterns of any length.

:func:`scan_names` matches a store's names in slices of :data:`SLICE`
names, each slice sorted, then merges the sorted slices, all as a
:class:`~twisted.internet.task.Cooperator` task that gives the reactor back
every :data:`TURN` seconds: a scan over a million names lets every other
client be served between slices.  At most :data:`MAX_KEYS` names come back;
past that the scan stops early and is refused with
:class:`~lttx.errors.LimitExceeded` (``limit``), asking for a narrower
pattern, so a reply stays well under ``--max-frame``.
"""

from __future__ import annotations

import fnmatch
import heapq
import re
import time
from functools import lru_cache
from itertools import islice
from typing import Any, Callable, Iterator, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator

from ..errors import BadRequest, LimitExceeded

#: The longest glob pattern ``keys`` takes, in characters.
MAX_PATTERN = 1024
#: The most names one ``keys`` reply carries.
MAX_KEYS = 100_000
#: Compiled patterns kept (least recently used dropped first).
PATTERN_CACHE = 256
#: Names matched (or merged) per step of a scan.
SLICE = 2000
#: Longest run of a scan's steps in one reactor turn, in seconds.
TURN = 0.001


def check_pattern(pattern: Any) -> str:
    """
    Return ``pattern`` if it is a str of at most :data:`MAX_PATTERN` characters.

    :raises BadRequest: otherwise.
    """
    if not isinstance(pattern, str):
        raise BadRequest("a key pattern must be a string")
    if len(pattern) > MAX_PATTERN:
        raise BadRequest(f"a key pattern may have at most {MAX_PATTERN} characters, "
                         f"not {len(pattern)}")
    return pattern


@lru_cache(maxsize=PATTERN_CACHE)
def _compiled(pattern: str) -> Callable[[str], Optional[re.Match[str]]]:
    return re.compile(fnmatch.translate(pattern)).match


def matcher(pattern: Any) -> Optional[Callable[[str], Any]]:
    """The test of one name against a checked ``pattern`` (None for ``*``: every name)."""
    pattern = check_pattern(pattern)
    return None if pattern == "*" else _compiled(pattern)


def too_many() -> LimitExceeded:
    return LimitExceeded(f"keys matched more than {MAX_KEYS} names: give a narrower "
                         f"pattern (docs/limits.md)")


def select(names: list[str], pattern: Any) -> list[str]:
    """The sorted names matching ``pattern``, at once (for small name sets).

    :raises BadRequest: for a bad pattern.
    :raises LimitExceeded: past :data:`MAX_KEYS` names.
    """
    match = matcher(pattern)
    found = names if match is None else list(filter(match, names))
    if len(found) > MAX_KEYS:
        raise too_many()
    return sorted(found)


def _turn() -> Callable[[], bool]:
    deadline = time.monotonic() + TURN
    return lambda: time.monotonic() >= deadline


_cooperator = Cooperator(terminationPredicateFactory=_turn)


def cooperator_on(clock: Any) -> Cooperator:
    """A scan cooperator whose steps run in ``clock``'s reactor (one not the global
    reactor: the in-process daemons of :mod:`lttx.testing`)."""
    return Cooperator(terminationPredicateFactory=_turn,
                      scheduler=lambda step: clock.callLater(0, step))


def scan_names(names: list[str], pattern: Any,
               cooperator: Optional[Cooperator] = None) -> Deferred[list[str]]:
    """
    The sorted names of ``names`` matching ``pattern``, computed in slices.

    ``names`` is the caller's own list (a snapshot: the store may change
    while the scan runs; names added after it are not seen).

    :raises BadRequest: at once, for a bad pattern.
    :return: a Deferred firing with the names, or failing with
        :class:`~lttx.errors.LimitExceeded` past :data:`MAX_KEYS`.
    """
    match = matcher(pattern)
    result: list[str] = []

    def steps() -> Iterator[None]:
        runs: list[list[str]] = []
        count = 0
        for start in range(0, len(names), SLICE):
            chunk = names[start:start + SLICE]
            found = sorted(chunk if match is None else filter(match, chunk))
            count += len(found)
            if count > MAX_KEYS:
                raise too_many()
            if found:
                runs.append(found)
            yield None
        merged = heapq.merge(*runs)
        while True:
            step = list(islice(merged, SLICE))
            if not step:
                return
            result.extend(step)
            yield None

    done = (cooperator or _cooperator).cooperate(steps()).whenDone()
    return done.addCallback(lambda _: result)


__all__ = ["MAX_KEYS", "MAX_PATTERN", "check_pattern", "cooperator_on", "matcher", "scan_names",
           "select"]
