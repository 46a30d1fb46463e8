"""
Bounds every value on the wire keeps, whatever a peer sends.

Nesting: MessagePack decodes values nested about a thousand deep, but
re-encoding one (a reply, a journal record, a snapshot) fails past the
encoder's own limit once the record's envelope is added: a value accepted
once could then never be read back, and made every compaction fail.  Values
a client asks the daemon to keep are refused past :data:`MAX_NESTING` levels.

Density: an empty list is one byte on the wire and about 70 in memory, so a
frame of nothing but empty lists decodes to 70 times its size (a 7.6 MiB
frame took 550 MiB and stalled the daemon 4.4 s).  A request frame of
:data:`DENSE_FROM` bytes or more may hold at most one list or map per
:data:`BYTES_PER_CONTAINER` bytes, and :data:`MAX_CONTAINERS` in all
(:func:`decode_request`), which keeps its decoding proportional to its size
as for any other value; smaller frames cannot hold enough to matter.

Dict keys: a map whose key is ``True`` or ``False`` is refused in a kept
value.  Python (and so the daemon's dicts) cannot tell ``True`` from ``1``
as a key: ``{1: "a", True: "b"}`` would silently become one entry, and a
bool key could not be named by ``get_dict_value`` (which takes str, int or
bytes keys).  Refusing it at ``put`` keeps every stored key reachable.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest, LimitExceeded
from . import codec

#: The deepest nesting of lists and maps in a value the daemon keeps (a
#: scalar is level 0, ``[1]`` level 1, ``{"a": [1]}`` level 2).
MAX_NESTING = 100

_CONTAINERS = frozenset({list, dict})

#: Request frames from this size on have their lists and maps counted...
DENSE_FROM = 64 * 1024
#: ... at most one per this many bytes of the frame ...
BYTES_PER_CONTAINER = 4
#: ... and at most this many in one frame.
MAX_CONTAINERS = 1_000_000


class _TooDense(Exception):
    pass


def decode_request(payload: bytes) -> Any:
    """
    :func:`~lttx.wire.codec.decode` a frame a peer sent, bounding the lists
    and maps it may hold (see the module docstring).  Small frames decode
    as usual; larger ones count their containers as they are made (a frame
    of a DataFrame, an array, bytes or text has none to count) and stop at
    the bound, before the rest is decoded.

    :raises BadRequest: if the frame holds more lists and maps than that.
    """
    if len(payload) < DENSE_FROM:
        return codec.decode(payload)
    limit = min(len(payload) // BYTES_PER_CONTAINER, MAX_CONTAINERS)
    made = [0]

    def count(container: Any) -> Any:
        made[0] += 1
        if made[0] > limit:
            raise _TooDense()
        return container

    try:
        return codec.decode_hooked(payload, count, count)
    except _TooDense:
        raise BadRequest(
            f"a frame of {len(payload)} bytes may hold at most {limit} lists and maps "
            f"(one per {BYTES_PER_CONTAINER} bytes, at most {MAX_CONTAINERS}); send "
            "large tables as DataFrames or arrays (docs/limits.md)") from None


def check_nesting(value: Any, limit: int = MAX_NESTING) -> Any:
    """
    Return ``value`` if its lists and maps nest at most ``limit`` deep.

    Costs one pass over the containers' items at C speed (``map(type, ...)``)
    and descends only into the items that are containers themselves.

    :raises BadRequest: if they nest deeper, or a map has a bool key.
    """
    if type(value) not in _CONTAINERS:
        return value
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            raise BadRequest(f"a value may nest lists and maps at most {limit} levels deep")
        deeper = []
        for container in level:
            if type(container) is dict:
                items = container.values()
                if bool in set(map(type, container)):
                    raise BadRequest("a dict key may not be true or false (it would be the "
                                     "same key as 1 or 0); use an int or a str")
            else:
                items = container
            if _CONTAINERS.isdisjoint(set(map(type, items))):
                continue
            deeper.extend(item for item in items if type(item) in _CONTAINERS)
        level = deeper
        depth += 1
    return value


#: The most channels one subscribe or unsubscribe may name.
MAX_CHANNELS_PER_REQUEST = 1000
#: The most channels one connection may be subscribed to at once.
MAX_CHANNELS_PER_CONNECTION = 10_000
#: The most names a log line lists (then "and N more").
LOGGED_NAMES = 10


def check_channel_count(channels: Any, limit: int = MAX_CHANNELS_PER_REQUEST) -> Any:
    """
    Return ``channels`` (a name, ``"a@b"``, or a list of those) if it names
    at most ``limit`` channels, counted before any name is checked (at C
    speed: ``str.count``), so a request naming millions costs little.

    :raises LimitExceeded: past ``limit``.
    """
    items = [channels] if isinstance(channels, str) else channels
    if isinstance(items, (list, tuple)):
        if len(items) > limit:
            count = len(items)
        else:
            count = sum(item.count("@") + 1 if isinstance(item, str) else 1 for item in items)
        if count > limit:
            raise LimitExceeded(f"one request may name at most {limit} channels, not {count} "
                                f"(docs/limits.md)")
    return channels


def name_list(names: list[str], shown: int = LOGGED_NAMES) -> str:
    """``"a, b, c"``, or the first ``shown`` names and ``"and N more"``."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


__all__ = ["BYTES_PER_CONTAINER", "DENSE_FROM", "MAX_CHANNELS_PER_CONNECTION", "MAX_CONTAINERS",
           "MAX_CHANNELS_PER_REQUEST", "MAX_NESTING", "decode_request",
           "check_channel_count", "check_nesting", "name_list"]
