"""Large frames are reassembled once, whatever the reads they arrive in."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx import codec
from lttx.framing import LARGE_FRAME, FrameAssembler

from .common import frame, frames_of, server_protocol


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if b > a]


class FrameAssemblerTests(SynchronousTestCase):
    def test_small_frames_pass_through(self) -> None:
        assembler = FrameAssembler()
        self.assertEqual(assembler.feed(b"abc"), b"abc")
        self.assertEqual(assembler.hold(b"\x00\x00\x00\x10abc", 2**31), b"\x00\x00\x00\x10abc")

    def test_large_frame_is_joined_once(self) -> None:
        """The start of a large frame is held; reads are kept aside until it is complete."""
        assembler = FrameAssembler()
        body = b"x" * LARGE_FRAME
        stream = struct.pack("!I", len(body)) + body + b"tail"
        self.assertEqual(assembler.hold(stream[:1000], 2**31), b"")
        self.assertIsNone(assembler.feed(stream[1000:5000]))
        self.assertEqual(assembler.feed(stream[5000:]), stream)

    def test_frame_over_the_limit_is_left_to_the_receiver(self) -> None:
        assembler = FrameAssembler()
        start = struct.pack("!I", LARGE_FRAME * 4) + b"x"
        self.assertEqual(assembler.hold(start, LARGE_FRAME), start)


class ProtocolLargeFrameTests(SynchronousTestCase):
    @settings(max_examples=30)
    @given(st.lists(st.integers(min_value=0), max_size=40),
           st.sampled_from([10, LARGE_FRAME - 100, LARGE_FRAME + 7, 3 * LARGE_FRAME]))
    def test_any_split_gives_the_same_replies(self, cuts: list[int], size: int) -> None:
        """Requests with large values, cut anywhere, are answered exactly as if sent whole."""
        proto, transport = server_protocol()
        value = bytes(range(256)) * (size // 256) + b"!"
        stream = (frame([0, 1, "put", ["big", value]]) + frame([0, 2, "get", ["big"]])
                  + frame([0, 3, "ping", []]))
        for piece in split(stream, cuts):
            proto.dataReceived(piece)
        self.assertEqual(frames_of(transport.value()), [
            [codec.REPLY, 1, None], [codec.REPLY, 2, [value]], [codec.REPLY, 3, "pong"]])

    def test_a_large_frame_in_64k_reads_is_not_rejoined_per_read(self) -> None:
        """While a large frame arrives, the receiver's own buffer stays empty."""
        proto, transport = server_protocol()
        data = frame([0, 1, "put", ["big", b"y" * (4 * LARGE_FRAME)]])
        for start in range(0, len(data) - 65536, 65536):
            proto.dataReceived(data[start:start + 65536])
            self.assertLessEqual(len(proto._unprocessed), 65536)
        proto.dataReceived(data[start + 65536:])
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 1, None]])
