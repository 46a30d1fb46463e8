"""
MESSAGES frames (lttx.wire.batches): the daemon's sliced bytes are exactly the
canonical encoding of ``[6, channel, [key, data, seq, ...]]``, and any list of
MESSAGE frames comes out as frames carrying the same messages in the same
order.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec
from lttx.wire.batches import (
    ALONE_FROM,
    BATCH_BYTES,
    BATCH_HEAD,
    MESSAGES,
    _array_head,
    batch_frames,
    batch_messages,
    message_head,
)

from ..common import frame, frames_of
from ..strategies import values

keys = st.none() | st.text(max_size=10) | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=6)


def message(channel: str, key: Any, data: Any, seq: int) -> bytes:
    return frame([codec.MESSAGE, channel, key, data, seq])


def str8(channel: str) -> bytes:
    """A MESSAGE frame's channel written as a str8, as another encoder may."""
    raw = channel.encode()
    return b"\xd9" + bytes([len(raw)]) + raw


def odd_message(channel: str, key: Any, data: Any, seq: int) -> bytes:
    """A MESSAGE frame whose channel is not spelt canonically (a str8)."""
    payload = (b"\x95\x03" + str8(channel) + msgpack.packb(key, use_bin_type=True)
               + codec.encode(data) + msgpack.packb(seq))
    return struct.pack("!I", len(payload)) + payload


def messages_of(frames: list[bytes]) -> list[tuple[Any, ...]]:
    """The messages the frames carry, MESSAGE and MESSAGES alike, in order."""
    out: list[tuple[Any, ...]] = []
    for payload in frames_of(b"".join(frames)):
        if payload[0] == codec.MESSAGE:
            out.append(tuple(payload[1:]))
        else:
            channel, flat = batch_messages(payload)
            out += [(channel, *flat[i:i + 3]) for i in range(0, len(flat), 3)]
    return out


class BatchFrameTests(SynchronousTestCase):
    def test_a_run_is_the_canonical_encoding_of_one_messages_frame(self) -> None:
        """Three small frames become one frame, byte for byte what the codec
        writes for [6, channel, [key, data, seq, ...]]."""
        frames = [message("hq", f"k{i}", "x" * i, 70000 + i) for i in range(3)]
        out = batch_frames(message_head("hq"), frames)
        self.assertEqual(out, [frame([MESSAGES, "hq", ["k0", "", 70000, "k1", "x", 70001,
                                                       "k2", "xx", 70002]])])
        self.assertEqual(out[0][4:6], BATCH_HEAD)

    def test_one_frame_stays_as_it_is(self) -> None:
        one = message("hq", "k", 1, 5)
        self.assertEqual(batch_frames(message_head("hq"), [one]), [one])
        self.assertIs(batch_frames(message_head("hq"), [one])[0], one)
        self.assertEqual(batch_frames(message_head("hq"), []), [])

    def test_a_large_message_is_alone_between_batches(self) -> None:
        """A message of ALONE_FROM bytes or more splits the run; the runs on
        either side are batches (or a lone frame), in order."""
        big = message("hq", "big", "x" * ALONE_FROM, 3)
        frames = [message("hq", "a", 1, 1), message("hq", "b", 2, 2), big,
                  message("hq", "c", 4, 4)]
        out = batch_frames(message_head("hq"), frames)
        self.assertEqual(out, [frame([MESSAGES, "hq", ["a", 1, 1, "b", 2, 2]]), big, frames[3]])
        self.assertIs(out[1], big)

    def test_a_channel_spelt_otherwise_is_kept_as_it_is(self) -> None:
        """A frame whose channel is a str8 is not cut at the canonical head:
        it goes as it is, and what it carries is unchanged."""
        odd = odd_message("hq", "k", 2, 2)
        frames = [message("hq", "k", 1, 1), odd, message("hq", "k", 3, 3),
                  message("hq", "k", 4, 4)]
        out = batch_frames(message_head("hq"), frames)
        self.assertEqual(out, [frames[0], odd, frame([MESSAGES, "hq", ["k", 3, 3, "k", 4, 4]])])

    def test_batches_are_bounded(self) -> None:
        """Many messages make several batches, each at most about BATCH_BYTES."""
        frames = [message("hq", i, "x" * 1000, i + 1) for i in range(400)]
        out = batch_frames(message_head("hq"), frames)
        self.assertGreater(len(out), 2)
        for one in out:
            self.assertLess(len(one), BATCH_BYTES + 1100)
        self.assertEqual(messages_of(out), [("hq", i, "x" * 1000, i + 1) for i in range(400)])

    def test_array_heads(self) -> None:
        """The flat list's head for every size MessagePack distinguishes."""
        for count in (0, 15, 16, 65535, 65536):
            self.assertEqual(_array_head(count), msgpack.packb([None] * count)[:-count or None])

    def test_more_than_65535_items(self) -> None:
        """22,000 tiny messages (66,000 items): the array32 head."""
        frames = [message("c", None, None, 1 + i % 100) for i in range(22_000)]
        out = batch_frames(message_head("c"), frames)
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0][4 + 2 + 2], 0xdd)
        self.assertEqual(messages_of(out), [("c", None, None, 1 + i % 100)
                                            for i in range(22_000)])

    def test_bad_shapes_are_refused(self) -> None:
        for payload in ([6, "hq"], [6, 1, []], [6, "hq", ["k", 1]], [6, "hq", "k"],
                        [6, "hq", [], 1]):
            self.assertRaises(ValueError, batch_messages, payload)
        self.assertEqual(batch_messages([6, "hq", []]), ("hq", []))


class BatchFramePropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.text(min_size=1, max_size=40),
           st.lists(st.tuples(keys, values, st.integers(0, 2**64 - 1),
                              st.sampled_from(["plain", "plain", "plain", "odd", "big"])),
                    max_size=40))
    def test_same_messages_same_order(self, channel: str, items: list[Any]) -> None:
        """Any MESSAGE frames of one channel (canonical, spelt otherwise, large)
        come out as frames whose messages are exactly theirs, in order; frames
        not cut are the same objects; runs of two or more are batches."""
        frames = []
        for key, data, seq, how in items:
            if how == "big":
                data = ["x" * ALONE_FROM, data]
            build = odd_message if how == "odd" else message
            frames.append(build(channel, key, data, seq))
        out = batch_frames(message_head(channel), frames)
        self.assertEqual(messages_of(out), messages_of(frames))
        kept = {id(f) for f in frames}
        for one in out:
            if one[4:6] == BATCH_HEAD:
                self.assertGreaterEqual(len(batch_messages(frames_of(one)[0])[1]), 6)
            else:
                self.assertIn(id(one), kept)
