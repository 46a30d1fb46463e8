"""
Frames as bytes: the length prefix, and the payload heads that the hot paths
recognise without decoding.

Every frame is a 4-byte big-endian length, then that many bytes of payload
(``docs/protocol.md``).  The daemon builds each MESSAGE frame once, from the
bytes of the PUBLISH it came in, and hands the same bytes to every subscriber;
the client spots MESSAGE frames by their first two bytes.
"""

from __future__ import annotations

import struct

#: The 4-byte big-endian length in front of every frame.
PREFIX = struct.Struct("!I")

#: The start of every MESSAGE payload: a 5-element array, then kind 3.
MESSAGE_HEAD = b"\x95\x03"
#: The start of every PUBLISH payload a MessagePack encoder writes canonically:
#: a 4-element array, then kind 5.
PUBLISH_HEAD = b"\x94\x05"

#: Bytes of file data per raw frame on a file connection (and per disk read
#: of the sending side).
FILE_CHUNK_SIZE = 256 * 1024

_SMALL_INTS = tuple(bytes([n]) for n in range(128))


def frame(payload: bytes) -> bytes:
    """``payload`` with its length prefix: one complete frame."""
    return PREFIX.pack(len(payload)) + payload


def pack_seq(n: int) -> bytes:
    """The MessagePack encoding of a non-negative int, as ``msgpack.packb`` writes
    it, without building a Packer per message."""
    if n < 0x80:
        return _SMALL_INTS[n]
    if n < 0x100:
        return b"\xcc" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


__all__ = ["FILE_CHUNK_SIZE", "MESSAGE_HEAD", "PREFIX", "PUBLISH_HEAD", "frame", "pack_seq"]
