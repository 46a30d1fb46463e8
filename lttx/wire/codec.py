"""
The payload encoding of every LTtx frame: MessagePack, with str and bytes kept
apart, and the frame kinds.  See ``docs/protocol.md``.

A frame's payload is one MessagePack array whose first element is its kind:

========  ==========================================  ==============
kind      array                                       direction
========  ==========================================  ==============
0         ``[0, id, command, args]``                  client -> daemon
1         ``[1, id, result]``                         daemon -> client
2         ``[2, id, code, message]``                  daemon -> client
3         ``[3, channel, key, data, seq]``            daemon -> client
4         ``[4, code, message]``                      daemon -> client
5         ``[5, channel, key, data]``                 client -> daemon
========  ==========================================  ==============
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..errors import BadRequest, EncodeError

REQUEST = 0
REPLY = 1
ERROR = 2
MESSAGE = 3
NOTICE = 4
PUBLISH = 5


def _refuse_ext(code: int, data: bytes) -> Any:
    raise BadRequest(f"MessagePack extension type {code} is not part of the protocol")


def encode(value: Any) -> bytes:
    """
    Encode one payload.

    :raises EncodeError: for a type the protocol does not carry (a set, an
        object, a datetime) or an int outside [-2**63, 2**64).
    """
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"cannot encode value: {e}") from None


def packer() -> msgpack.Packer:
    """A reusable encoder writing what :func:`encode` writes (not thread-safe)."""
    return msgpack.Packer(use_bin_type=True, datetime=False, autoreset=True)


def decode(payload: bytes) -> Any:
    """
    Decode one payload.

    :raises BadRequest: if the bytes are not exactly one MessagePack value of
        the types the protocol carries.
    """
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            ext_hook=_refuse_ext,
            use_list=True,
        )
    except BadRequest:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        # ExtraData, FormatError, StackError and truncated input all land here.
        detail = str(e) or "not valid MessagePack"
        raise BadRequest(f"undecodable payload: {e.__class__.__name__}: {detail}") from None
