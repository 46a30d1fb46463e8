"""
The original LTtx wire and value conventions, as bytes and plain values.

No I/O here: the daemon's legacy port (:mod:`lttx.server.legacy`) reads and
writes with these what the original ``tx.py`` client sends and expects, and
:mod:`lttx.compat` applies the same value conventions to the new client.

- Frames: an 8-byte little-endian length (``struct.pack('Q', n)`` on the
  x86 machines the original ran on), then UTF-8 JSON.
- Handshake replies are one raw JSON object, no length prefix.
- A read's reply is JSON encoded twice: the frame's body is
  ``json.dumps(json.dumps({"value": v}))``, as the original server sent it.
- Channel messages are ``"key|data"`` strings; a frame to an old subscriber
  carries ``json.dumps("key|data")``; the server's heartbeat is ``{"1": 1}``.
- Values: the original ``put`` of a str that parses as JSON stored it
  decoded; dict keys are JSON's, so str.
- DataFrames (``put_df``/``get_df``) travel as JSON records; how the daemon
  stores them is :func:`dataframe_to_stored` and :func:`dataframe_reply`,
  alone, so that they can switch to real DataFrame values.
"""

from __future__ import annotations

import json
import struct
from typing import Any

#: The original's length prefix.
OLD_PREFIX = struct.Struct("<Q")

#: What the original server sent every 5 s on a push_mode connection.
HEARTBEAT_BODY = json.dumps({1: 1}).encode("utf-8")

#: The channel and key of the heartbeat ``start_tx`` pushes every 2 s.
TX_HEARTBEAT = ("heartbeat0", "heartbeat")
#: The channel and key of the heartbeat ``start_plus`` pushes every 2 s.
PLUS_HEARTBEAT = ("test22", "heartbeat")


def old_frame(body: bytes) -> bytes:
    """One frame of the original protocol around ``body``."""
    return OLD_PREFIX.pack(len(body)) + body


#: The heartbeat frame of a push_mode connection.
HEARTBEAT_FRAME = old_frame(HEARTBEAT_BODY)


def reply_frame(result: dict[str, Any]) -> bytes:
    """A read's reply: the JSON of the JSON of ``result``, as the original sent it."""
    return old_frame(json.dumps(json.dumps(to_json(result))).encode("utf-8"))


def message_body(key: Any, data: Any) -> bytes:
    """The body of a message frame to an old subscriber: ``json.dumps("key|data")``."""
    return json.dumps("%s|%s" % (key, data)).encode("utf-8")


def split_key_data(text: str) -> tuple[str, str]:
    """``"key|data"`` -> ``("key", "data")``, split at the first ``|``; no ``|``: all key."""
    key, _, data = text.partition("|")
    return key, data


def decode_put_value(data: Any) -> Any:
    """
    The value an old ``put`` stores: a str that parses as JSON is stored
    decoded (``put('cfg', json.dumps(d))`` then ``get('cfg')['a']``), as the
    original server did; anything else as it came.
    """
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data


def dict_key(key: Any) -> str:
    """A dict key written by an old client, as JSON would keep it: a str."""
    return key if isinstance(key, str) else json.dumps(key)


def old_value(value: Any) -> Any:
    """``value`` as an original client got it back: through JSON (dict keys str,
    tuples lists, bytes text)."""
    return json.loads(json.dumps(to_json(value)))


def to_json(value: Any) -> Any:
    """
    ``value`` as JSON can carry it: bytes as text (UTF-8, replacing what is
    not), tuples as lists, dict keys as str; other types as their str().
    Values that are JSON already come back as they are, uncopied.
    """
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else
                (bytes(k).decode("utf-8", "replace") if isinstance(k, bytes) else dict_key(k)):
                _jsonable(v) for k, v in value.items()}
    return str(value)


# -- DataFrames: one place, to switch to real DataFrame values later ---------

def dataframe_to_stored(records_json: Any) -> Any:
    """
    What the daemon stores for an old ``put_df``: the JSON records it sent
    (``df.to_dict(orient='records')``), decoded: a list of dicts.

    :raises ValueError: if it is not JSON.
    """
    if not isinstance(records_json, str):
        raise ValueError("put_dataframe carries the DataFrame as a JSON string")
    return json.loads(records_json)


def dataframe_reply(stored: Any) -> str:
    """
    What an old ``get_df`` is sent for a stored value: JSON that
    ``pandas.DataFrame(json.loads(...))`` reads (records, or a dict of
    columns); ``"[]"`` (an empty DataFrame, as the original) for anything else.
    """
    if isinstance(stored, (list, dict)):
        return json.dumps(to_json(stored))
    return "[]"


__all__ = ["HEARTBEAT_FRAME", "OLD_PREFIX", "PLUS_HEARTBEAT", "TX_HEARTBEAT",
           "dataframe_reply", "dataframe_to_stored", "decode_put_value", "dict_key",
           "message_body", "old_frame", "old_value", "reply_frame", "split_key_data", "to_json"]
