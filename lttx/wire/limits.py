"""
Bounds every value on the wire keeps, whatever a peer sends.

Nesting: MessagePack decodes values nested about a thousand deep, but
re-encoding one (a reply, a journal record, a snapshot) fails past the
encoder's own limit once the record's envelope is added: a value accepted
once could then never be read back, and made every compaction fail.  Values
a client asks the daemon to keep are refused past :data:`MAX_NESTING` levels.

Dict keys: a map whose key is ``True`` or ``False`` is refused in a kept
value.  Python (and so the daemon's dicts) cannot tell ``True`` from ``1``
as a key: ``{1: "a", True: "b"}`` would silently become one entry, and a
bool key could not be named by ``get_dict_value`` (which takes str, int or
bytes keys).  Refusing it at ``put`` keeps every stored key reachable.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest, LimitExceeded

#: The deepest nesting of lists and maps in a value the daemon keeps (a
#: scalar is level 0, ``[1]`` level 1, ``{"a": [1]}`` level 2).
MAX_NESTING = 100

_CONTAINERS = frozenset({list, dict})


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


__all__ = ["MAX_CHANNELS_PER_CONNECTION", "MAX_CHANNELS_PER_REQUEST", "MAX_NESTING",
           "check_channel_count", "check_nesting", "name_list"]
