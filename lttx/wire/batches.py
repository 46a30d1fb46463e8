"""
MESSAGES frames: several messages of one channel in one frame, for a client
that asked for them at ``hello`` (option ``"batches": true``,
``docs/protocol.md``, "Batches of messages").

A MESSAGES payload is ``[6, channel, [key1, data1, seq1, key2, data2, seq2,
...]]``: exactly the messages of the MESSAGE frames (``[3, channel, key,
data, seq]``) it stands for, in their order, each with its own seq.  It is a
denser spelling of those frames and nothing else: gap notices and every other
frame stay frames of their own, between the batches, where they were between
the messages.  The daemon builds one from the log's own frames by slicing off
their common head (the length prefix, ``95 03`` and the channel), so no
message is encoded again; the client decodes one with a single ``unpackb``.

:func:`batch_frames` keeps MESSAGE frames as they are where a batch would not
pay or would not be exact: a run of one, a message of :data:`ALONE_FROM`
bytes or more (it would make a batch large for one message), a frame whose
channel is not spelt canonically (a publisher's own MessagePack encoder may
write ``"hq"`` as a str8: the common head does not match it).  A batch holds
at most about :data:`BATCH_BYTES` bytes of messages.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Sequence

import msgpack

from .frames import MESSAGE_HEAD, PREFIX

#: The kind of a MESSAGES frame.
MESSAGES = 6

#: The start of every MESSAGES payload: a 3-element array, then kind 6.
BATCH_HEAD = b"\x93\x06"

#: About the most bytes of messages one MESSAGES frame holds.
BATCH_BYTES = 128 * 1024

#: A MESSAGE frame of this many bytes or more is written as it is, alone
#: (a batch stays under :data:`BATCH_BYTES` plus one message).
ALONE_FROM = 64 * 1024


def message_head(channel: str) -> bytes:
    """The head every canonical MESSAGE payload of ``channel`` starts with:
    ``95 03`` and the channel's MessagePack encoding."""
    return MESSAGE_HEAD + msgpack.packb(channel)


def _array_head(count: int) -> bytes:
    """The MessagePack head of an array of ``count`` elements."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _batch(head: bytes, tails: list[bytes], size: int) -> bytes:
    """One complete MESSAGES frame of ``tails`` (each ``key data seq``, encoded),
    ``size`` bytes together."""
    lead = BATCH_HEAD + head[2:] + _array_head(3 * len(tails))
    tails.insert(0, PREFIX.pack(len(lead) + size) + lead)
    return b"".join(tails)


def batch_frames(head: bytes, frames: Sequence[bytes]) -> list[bytes]:
    """
    The complete MESSAGE frames ``frames`` (length prefix included) of one
    channel, in order, as complete frames carrying the same messages in the
    same order: MESSAGES frames for runs of them, MESSAGE frames kept as they
    are where a batch would not pay or not be exact (see the module).

    :param head: :func:`message_head` of the frames' channel.
    """
    count = len(frames)
    if count < 2:
        return list(frames)
    cut = len(PREFIX.pack(0)) + len(head)
    lengths = list(map(len, frames))
    size = sum(lengths) - count * cut
    if (size <= BATCH_BYTES and max(lengths) < ALONE_FROM
            and all(map(bytes.startswith, frames, repeat(head), repeat(4)))):
        # The common case: one run of small canonical frames, checked by C loops.
        return [_batch(head, [frame[cut:] for frame in frames], size)]
    out: list[bytes] = []
    run: list[bytes] = []
    size = 0

    def end_run() -> None:
        nonlocal run, size
        if len(run) > 1:
            out.append(_batch(head, [frame[cut:] for frame in run], size))
        else:  # a run of one (or none) stays as it is
            out.extend(run)
        run, size = [], 0

    for frame in frames:
        if len(frame) >= ALONE_FROM or not frame.startswith(head, 4):
            end_run()
            out.append(frame)
            continue
        run.append(frame)
        size += len(frame) - cut
        if size >= BATCH_BYTES:
            end_run()
    end_run()
    return out


def batch_messages(payload: Any) -> tuple[str, list[Any]]:
    """
    The channel and the flat ``[key, data, seq, ...]`` list of a decoded
    MESSAGES payload, checked for shape.

    :raises ValueError: if it is not ``[6, channel, list of 3 x n items]``.
    """
    if (len(payload) != 3 or type(payload[1]) is not str or type(payload[2]) is not list
            or len(payload[2]) % 3):
        raise ValueError("a MESSAGES frame is [6, channel, [key, data, seq, ...]]")
    return payload[1], payload[2]


__all__ = ["ALONE_FROM", "BATCH_BYTES", "BATCH_HEAD", "MESSAGES", "batch_frames",
           "batch_messages", "message_head"]
