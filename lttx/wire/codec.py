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

Values may hold the extension types of :mod:`lttx.wire.ext` (DataFrames,
series, arrays): :func:`decode` makes each an :class:`~lttx.wire.ext.Encoded`
and :func:`encode` writes it back byte for byte; any other extension type
code is refused.  The client passes its own ``default``/``ext_hook``
(:mod:`lttx.client.dataframes`) to make and read the library objects.
"""

from __future__ import annotations

from typing import Any, Callable

import msgpack

from ..errors import BadRequest, EncodeError
from .ext import KINDS, Encoded, from_ext, to_ext

REQUEST = 0
REPLY = 1
ERROR = 2
MESSAGE = 3
NOTICE = 4
PUBLISH = 5


def encoded_ext(code: int, data: bytes) -> Encoded:
    """The daemon's extension hook: a known code becomes an opaque :class:`Encoded`."""
    if code not in KINDS:
        raise BadRequest(f"MessagePack extension type {code} is not part of the protocol")
    return from_ext(code, data)


def encoded_default(value: Any) -> Any:
    """The daemon's ``default``: an :class:`Encoded` goes out as its extension type."""
    if type(value) is Encoded:
        return to_ext(value)
    raise TypeError(f"can not serialize {type(value).__name__!r} object")


def encode(value: Any, default: Callable[[Any], Any] = encoded_default) -> bytes:
    """
    Encode one payload.

    :param default: turns a value MessagePack does not know into one it does
        (msgpack's ``default``); it raises ``TypeError`` for what it refuses.
    :raises EncodeError: for a type the protocol does not carry (a set, an
        object, a datetime) or an int outside [-2**63, 2**64).
    """
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=False, default=default)
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, EncodeError):
            raise
        raise EncodeError(f"cannot encode value: {e}") from None


def packer(default: Callable[[Any], Any] = encoded_default) -> msgpack.Packer:
    """A reusable encoder writing what :func:`encode` writes (not thread-safe)."""
    return msgpack.Packer(use_bin_type=True, datetime=False, autoreset=True, default=default)


def decode(payload: bytes, ext_hook: Callable[[int, bytes], Any] = encoded_ext) -> Any:
    """
    Decode one payload.

    :param ext_hook: makes the value of one extension type (msgpack's
        ``ext_hook``); it raises :class:`BadRequest` for a code it refuses.
    :raises BadRequest: if the bytes are not exactly one MessagePack value of
        the types the protocol carries.
    """
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            ext_hook=ext_hook,
            use_list=True,
        )
    except BadRequest:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        # ExtraData, FormatError, StackError and truncated input all land here.
        detail = str(e) or "not valid MessagePack"
        raise BadRequest(f"undecodable payload: {e.__class__.__name__}: {detail}") from None
