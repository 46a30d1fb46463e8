"""The frame decoder: any split of a stream gives its frames; large ones are joined once."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec
from lttx.wire.framing import FrameDecoder, FrameTooLong

from ..common import frame, frames_of, server_protocol

#: Frames from this size on are collected while incomplete (lttx.wire.framing).
LARGE_FRAME = 256 * 1024


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if b > a]


class FrameDecoderTests(SynchronousTestCase):
    """The decoder splits any stream into its frames, whatever the reads."""

    @settings(max_examples=200)
    @given(st.lists(st.binary(max_size=300), max_size=12), st.lists(st.integers(min_value=0),
                                                                    max_size=30))
    def test_any_split_gives_the_same_frames(self, payloads: list[bytes], cuts: list[int]) -> None:
        """Frames fed in pieces cut anywhere come out whole and in order."""
        stream = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
        decoder = FrameDecoder(2**31)
        out = []
        for piece in split(stream, cuts):
            decoder.feed(piece)
            while (f := decoder.next_frame()) is not None:
                out.append(f)
        self.assertEqual(out, payloads)
        self.assertEqual(decoder.buffered, 0)

    def test_large_frame_is_joined_once(self) -> None:
        """An incomplete large frame keeps its reads aside until its last byte arrives."""
        decoder = FrameDecoder(2**31)
        body = b"x" * LARGE_FRAME
        stream = struct.pack("!I", len(body)) + body + struct.pack("!I", 4) + b"tail"
        decoder.feed(stream[:1000])
        self.assertIsNone(decoder.next_frame())
        decoder.feed(stream[1000:5000])
        self.assertIsNone(decoder.next_frame())
        self.assertEqual(decoder.buffered, 5000)
        decoder.feed(stream[5000:])
        self.assertEqual(decoder.next_frame(), body)
        self.assertEqual(decoder.next_frame(), b"tail")
        self.assertIsNone(decoder.next_frame())

    @settings(max_examples=50)
    @given(st.lists(st.sampled_from([0, 5, LARGE_FRAME, LARGE_FRAME + 3, 2 * LARGE_FRAME + 1]),
                    min_size=1, max_size=5),
           st.lists(st.integers(min_value=0), max_size=12), st.booleans())
    def test_large_frames_cut_anywhere(self, sizes: list[int], cuts: list[int],
                                       take_late: bool) -> None:
        """Large frames joined from reads cut anywhere (the next frame's start in
        the same read, or not) come out whole, in order, counted in buffered."""
        payloads = [bytes([i]) * n for i, n in enumerate(sizes)]
        stream = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
        decoder = FrameDecoder(2**31)
        out = []
        for piece in split(stream, cuts):
            decoder.feed(piece)
            while not take_late and (f := decoder.next_frame()) is not None:
                out.append(f)
        self.assertEqual(decoder.buffered, len(stream) - sum(4 + len(f) for f in out))
        while (f := decoder.next_frame()) is not None:
            out.append(f)
        self.assertEqual(out, payloads)
        self.assertEqual(decoder.buffered, 0)

    @settings(max_examples=100)
    @given(st.lists(st.sampled_from([0, 1, 5, 121, LARGE_FRAME, LARGE_FRAME + 3]),
                    max_size=8),
           st.lists(st.integers(min_value=0), max_size=12),
           st.lists(st.booleans(), max_size=20))
    def test_take_all_gives_what_next_frame_gives(self, sizes: list[int], cuts: list[int],
                                                  singles: list[bool]) -> None:
        """take_all, mixed with next_frame after any read, takes the same frames in
        the same order, small and large, and leaves the incomplete rest buffered."""
        payloads = [bytes([i]) * n for i, n in enumerate(sizes)]
        stream = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
        decoder = FrameDecoder(2**31)
        out: list[bytes] = []
        for i, piece in enumerate(split(stream, cuts)):
            decoder.feed(piece)
            if i < len(singles) and singles[i]:
                if (f := decoder.next_frame()) is not None:
                    out.append(f)
            out.extend(decoder.take_all())
            self.assertEqual(decoder.buffered, sum(map(len, split(stream, cuts)[:i + 1]))
                             - sum(4 + len(f) for f in out))
        self.assertEqual(out, payloads)
        self.assertEqual(decoder.take_all(), [])

    def test_take_all_refuses_a_frame_over_the_limit_after_the_good_ones(self) -> None:
        """The frames before one over the limit are taken; the next call raises."""
        decoder = FrameDecoder(100)
        decoder.feed(struct.pack("!I", 1) + b"a" + struct.pack("!I", 101) + b"x")
        self.assertEqual(decoder.take_all(), [b"a"])
        with self.assertRaises(FrameTooLong):
            decoder.take_all()

    def test_frame_over_the_limit_is_refused(self) -> None:
        """A length prefix over the limit raises FrameTooLong, with the length."""
        decoder = FrameDecoder(100)
        decoder.feed(struct.pack("!I", 101) + b"x")
        with self.assertRaises(FrameTooLong) as caught:
            decoder.next_frame()
        self.assertEqual((caught.exception.length, caught.exception.limit), (101, 100))

    def test_frames_not_taken_stay_buffered(self) -> None:
        """A reader that stops taking frames finds them later, in order."""
        decoder = FrameDecoder(100)
        decoder.feed(struct.pack("!I", 1) + b"a" + struct.pack("!I", 1) + b"b")
        self.assertEqual(decoder.next_frame(), b"a")
        decoder.feed(struct.pack("!I", 1) + b"c")
        self.assertEqual([decoder.next_frame(), decoder.next_frame()], [b"b", b"c"])


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

    def test_a_large_frame_in_64k_reads_is_answered_once_whole(self) -> None:
        """A 1 MiB put in 64 KiB reads: no reply until the last read, then exactly one."""
        proto, transport = server_protocol()
        data = frame([0, 1, "put", ["big", b"y" * (4 * LARGE_FRAME)]])
        for start in range(0, len(data) - 65536, 65536):
            proto.dataReceived(data[start:start + 65536])
            self.assertEqual(transport.value(), b"")
        proto.dataReceived(data[start + 65536:])
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 1, None]])

    def test_a_large_frame_is_read_in_big_chunks(self) -> None:
        """While a long frame arrives the daemon reads 1 MiB per recv, then 64 KiB again."""
        from lttx.diskio import READ_SIZE, SMALL_READ_SIZE

        proto, transport = server_protocol()
        transport.bufferSize = SMALL_READ_SIZE  # type: ignore[attr-defined]
        data = frame([0, 1, "put", ["big", b"y" * (4 * LARGE_FRAME)]])
        proto.dataReceived(data[:100_000])
        self.assertEqual(transport.bufferSize, READ_SIZE)  # type: ignore[attr-defined]
        proto.dataReceived(data[100_000:])
        self.assertEqual(transport.bufferSize, SMALL_READ_SIZE)  # type: ignore[attr-defined]
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 1, None]])
