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
6         ``[6, channel, [key, data, seq, ...]]``     daemon -> client (:mod:`.batches`)
========  ==========================================  ==============

Values may hold the extension types of :mod:`lttx.wire.ext` (DataFrames,
series, arrays): :func:`decode` makes each an :class:`~lttx.wire.ext.Encoded`
and :func:`encode` writes it back byte for byte; any other extension type
code is refused.  The client passes its own ``default``/``ext_hook``
(:mod:`lttx.client.dataframes`) to make and read the library objects.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Optional

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


class _Unusual(Exception):
    """A value an Encoder's kept packer does not encode itself: the general way does."""


def _unusual(value: Any) -> Any:
    raise _Unusual()


class Encoder:
    """
    :func:`encode` and :func:`encode_pieces` (the protocol's ``default``)
    with a Packer kept for reuse, for an owner that encodes many payloads
    (the daemon's state, a journal).

    ``msgpack.packb`` builds (and frees) a Packer, its 1 MiB buffer
    included, for every payload: two thirds of the cost of a reply of 100
    bytes.  The common payload, plain values only (no extension type:
    ``default`` is never called), is encoded here by one Packer with the
    same options, so the same bytes.  Its lock is only tried: a payload that
    finds it taken (another thread, or an encode within an encode) goes the
    general way, as does any payload it does not finish (an extension value,
    an error: the general way meets the same and raises its EncodeError).
    A Packer keeps the largest buffer it ever grew to, so a payload of
    :data:`KEEP_AFTER` bytes or more gets it a new one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._packer = self._new_packer()

    @staticmethod
    def _new_packer() -> msgpack.Packer:
        return msgpack.Packer(use_bin_type=True, datetime=False, autoreset=True,
                              default=_unusual)

    def _plain(self, value: Any) -> Optional[bytes]:
        """``value`` encoded by the kept packer, or None (take the general way)."""
        if not self._lock.acquire(False):
            return None
        try:
            payload: bytes = self._packer.pack(value)
            if len(payload) >= KEEP_AFTER:
                self._packer = self._new_packer()
            return payload
        except (_Unusual, TypeError, ValueError, OverflowError):
            return None
        finally:
            self._lock.release()

    def encode(self, value: Any) -> bytes:
        """:func:`encode` of ``value``."""
        payload = self._plain(value)
        return payload if payload is not None else encode(value)

    def encode_pieces(self, value: Any) -> list[bytes]:
        """:func:`encode_pieces` of ``value``."""
        payload = self._plain(value)
        if payload is not None:
            return [payload]  # (no extension value at all, so none to splice)
        return encode_pieces(value)


#: A payload of this many bytes or more gets its :class:`Encoder` a new Packer.
KEEP_AFTER = 1024 * 1024


def encode(value: Any, default: Callable[[Any], Any] = encoded_default) -> bytes:
    """
    Encode one payload.

    :param default: turns a value MessagePack does not know into one it does
        (msgpack's ``default``); it raises ``TypeError`` for what it refuses.
    :raises EncodeError: for a type the protocol does not carry (a set, an
        object, a datetime) or an int outside [-2**63, 2**64).
    """
    return _encode(value, default)


def _encode(value: Any, default: Callable[[Any], Any]) -> bytes:
    """:func:`encode`, the general way."""
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=False, default=default)
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, EncodeError):
            raise
        raise EncodeError(f"cannot encode value: {e}") from None


#: Extension data from this size on is not copied into an encoded payload by
#: :func:`encode_pieces`: it is handed on as a piece of its own.
SPLICE_FROM = 64 * 1024
_TOKEN_SIZE = 16


def encode_pieces(value: Any, default: Callable[[Any], Any] = encoded_default) -> list[bytes]:
    """
    Encode one payload as pieces whose concatenation is ``encode(value, default)``,
    large extension data (a DataFrame, an array) being pieces of their own,
    not copied: a 100 MB frame is written with one copy (the transport's
    join), not packed into MessagePack's growing buffer, copied out of it and
    copied again behind its length prefix.

    :raises EncodeError: as :func:`encode`.
    """
    large: list[msgpack.ExtType] = []
    token = b""

    def splice(obj: Any) -> Any:
        nonlocal token
        ext = default(obj)
        if type(ext) is not msgpack.ExtType or len(ext.data) < SPLICE_FROM:
            return ext
        # A stand-in: a random token (in the payload only where put here, but
        # for a 2**-128 chance, checked below) and the index of its data.
        if not token:
            token = os.urandom(_TOKEN_SIZE)
        large.append(ext)
        return msgpack.ExtType(ext.code, token + (len(large) - 1).to_bytes(4, "big"))

    payload = _encode(value, splice)
    if not large:
        return [payload]
    if payload.count(token) != len(large):
        return [encode(value, default)]  # the token was in the value after all
    pieces: list[bytes] = []
    start = 0
    for i, ext in enumerate(large):
        # The stand-in is an ext 8 of 20 bytes: c7 14 code token index.
        at = payload.find(token, start) - 3
        if (at < start or payload[at:at + 3] != bytes([0xc7, 20, ext.code])
                or payload[at + 3 + _TOKEN_SIZE:at + 23] != i.to_bytes(4, "big")):
            return [encode(value, default)]  # not the layout msgpack writes: be safe
        pieces.append(payload[start:at] + _ext_head(ext.code, len(ext.data)))
        pieces.append(ext.data)
        start = at + 23
    pieces.append(payload[start:])
    return pieces


def _ext_head(code: int, size: int) -> bytes:
    """The head msgpack writes for extension data of ``size`` >= 256 bytes."""
    if size < 0x10000:
        return b"\xc8" + size.to_bytes(2, "big") + bytes([code])
    return b"\xc9" + size.to_bytes(4, "big") + bytes([code])


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


def decode_hooked(payload: bytes, list_hook: Callable[[list[Any]], Any],
                  object_hook: Callable[[dict[Any, Any]], Any]) -> Any:
    """
    :func:`decode` with msgpack's hooks called on each list and map as it is
    made (:func:`lttx.wire.limits.decode_request` counts them); a separate
    function so that :func:`decode`, on every frame's path, passes none.

    :raises BadRequest: as :func:`decode`.
    """
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=encoded_ext,
                               use_list=True, list_hook=list_hook, object_hook=object_hook)
    except BadRequest:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        detail = str(e) or "not valid MessagePack"
        raise BadRequest(f"undecodable payload: {e.__class__.__name__}: {detail}") from None
