"""
A decoded value shown in an error message or a log line: bounded in length
and depth whatever a peer sent.

``f"{value!r:.40}"`` builds the whole repr before cutting it: a 20-million
element list costs about a second, and a value nested a thousand deep raises
RecursionError (a traceback, and "MESSAGE LOST: unformattable object" in the
log).  :func:`excerpt` looks at no more than it shows.
"""

from __future__ import annotations

import reprlib
from typing import Any


class _Excerpt(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6

    def repr_bytes(self, value: bytes, level: int) -> str:
        shown = repr(value[:self.maxstring])
        return shown if len(value) <= self.maxstring else shown[:-1] + "...'"

    def repr_dict(self, value: dict[Any, Any], level: int) -> str:
        # reprlib sorts every key first: seconds for a million keys.
        if not value:
            return "{}"
        if level <= 0:
            return "{...}"
        items = []
        for i, (key, item) in enumerate(value.items()):
            if i == self.maxdict:
                items.append("...")
                break
            items.append(f"{self.repr1(key, level - 1)}: {self.repr1(item, level - 1)}")
        return "{" + ", ".join(items) + "}"

    def repr_bytearray(self, value: bytearray, level: int) -> str:
        return self.repr_bytes(bytes(value[:self.maxstring + 1]), level)


_EXCERPT = _Excerpt()


def excerpt(value: Any, limit: int = 60) -> str:
    """A repr of ``value`` of at most ``limit`` characters, built from its start."""
    shown = _EXCERPT.repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


__all__ = ["excerpt"]
