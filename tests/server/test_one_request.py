"""
The daemon's path for a read that is one whole request frame
(LTtxServerProtocol._one_request, FrameDecoder.whole) against its general
frame loop: the same bytes written, the same state, the same counters, for
any sequence of reads (whole frames, pieces, several frames, bad frames,
publishes, pauses, over-long frames).
"""

from __future__ import annotations

import struct
from unittest import mock
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.framing import FrameDecoder, FrameTooLong

from ..common import TOKEN, frame, server_protocol

#: Frames a client may send: requests good and bad, publishes, garbage.
_FRAMES = [
    frame([codec.REQUEST, 1, "put", ["v", {"a": [1.5, "x"]}]]),
    frame([codec.REQUEST, 2, "get", ["v"]]),
    frame([codec.REQUEST, 3, "get", ["missing"]]),
    frame([codec.REQUEST, 4, "incr", ["n", 2]]),
    frame([codec.REQUEST, 5, "incr", ["v"]]),  # wrong type: an error reply
    frame([codec.REQUEST, 6, "no_such_command", []]),
    frame([codec.REQUEST, 7, "get", []]),  # wrong argument count
    frame([codec.REQUEST, 8, "publish", ["hq", "k", 1]]),
    frame([codec.REQUEST, 9, "subscribe", [["hq"], None, {}]]),
    frame([codec.REQUEST, 10, "list_append", ["l", [1, 2]]]),
    frame([codec.REQUEST, -1, "get", ["v"]]),  # a bad id
    frame([codec.REQUEST, 11, "put", ["", 1]]),  # a bad name
    frame([codec.PUBLISH, "hq", "k", 2]),
    frame([codec.PUBLISH, "hq", ["bad", "key"], 3]),
    frame("not an array"),
    frame([]),
    frame([9, 1, 2, 3]),
    b"\x00\x00\x00\x03\x94\x00\xc1",  # not MessagePack
    b"\x00\x00\x00\x00",  # an empty frame
]

#: One step: a read of some frames (cut anywhere), or a pause / resume.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.lists(st.integers(0, len(_FRAMES) - 1), min_size=1,
                                            max_size=3),
                  st.lists(st.integers(min_value=0), max_size=2)),
        st.tuples(st.just("pause"), st.just([]), st.just([])),
        st.tuples(st.just("resume"), st.just([]), st.just([])),
    ),
    max_size=25)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if b > a]


def _general(data: bytes) -> None:
    """FrameDecoder.whole that never takes a read: the general loop serves all."""
    return None


class OneRequestTests(SynchronousTestCase):
    def pair(self, **state: Any) -> list[tuple[Any, Any]]:
        """Two daemons each with one connection: the first with the one-frame
        path, the second with the general loop only."""
        made = []
        for fast in (True, False):
            factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN),
                                              clock=Clock(), **state))
            proto, transport = server_protocol(factory=factory)
            if not fast:
                proto._decoder.whole = _general  # type: ignore[method-assign]
            made.append((proto, transport))
        return made

    @settings(max_examples=200, deadline=None)
    @given(_steps)
    def test_the_one_frame_path_serves_as_the_loop_does(
            self, steps: list[tuple[str, list[int], list[int]]]) -> None:
        """Any sequence of reads and pauses: both connections write the same
        bytes after each step, hold the same variables, count the same bytes,
        and buffer the same."""
        with mock.patch("lttx.state.channellog.new_epoch", return_value=7):  # (else random)
            self.serve_both(steps)

    def serve_both(self, steps: list[tuple[str, list[int], list[int]]]) -> None:
        pair = self.pair()
        for kind, chosen, cuts in steps:
            for proto, transport in pair:
                if kind == "pause":
                    proto.set_reading(False)
                elif kind == "resume":
                    proto.set_reading(True)
                else:
                    for piece in _split(b"".join(_FRAMES[i] for i in chosen), cuts):
                        proto.dataReceived(piece)
            (fast, fast_t), (general, general_t) = pair
            self.assertEqual(fast_t.value(), general_t.value())
            self.assertEqual(fast_t.disconnecting, general_t.disconnecting)
            self.assertEqual((fast.bytes_in, fast.bytes_out, fast.paused, fast.held_bytes),
                             (general.bytes_in, general.bytes_out, general.paused,
                              general.held_bytes))
            self.assertEqual(fast.state.store.get("v"), general.state.store.get("v"))
            self.assertEqual(fast.state.store.get("l"), general.state.store.get("l"))

    def test_a_frame_over_the_limit_still_closes(self) -> None:
        """A whole frame over --max-frame is not taken by the one-frame path:
        both say frame_too_large and close."""
        pair = self.pair(max_frame=64)
        data = frame([codec.REQUEST, 1, "put", ["v", "x" * 100]])
        for proto, _ in pair:
            proto.dataReceived(data)
        (_, fast_t), (_, general_t) = pair
        self.assertEqual(fast_t.value(), general_t.value())
        self.assertIn(b"too_large", fast_t.value())
        self.assertTrue(fast_t.disconnecting)

    def test_the_one_frame_path_is_taken(self) -> None:
        """A get alone in its read is served without feeding the decoder (so
        this test fails if the path is never taken), its reply written."""
        (proto, transport), _ = self.pair()
        fed: list[bytes] = []
        feed = proto._decoder.feed
        proto._decoder.feed = lambda data: (fed.append(data), feed(data))[1]  # type: ignore
        proto.dataReceived(frame([codec.REQUEST, 2, "get", ["v"]]))
        self.assertEqual(fed, [])
        self.assertEqual(transport.value(), frame([codec.REPLY, 2, []]))


class WholeTests(SynchronousTestCase):
    @given(st.binary(max_size=40), st.binary(max_size=12), st.integers(0, 60))
    def test_whole_is_feed_then_next_frame(self, before: bytes, data: bytes,
                                           limit: int) -> None:
        """Whatever was fed before: when whole() gives a payload, feeding the
        read instead gives that payload, then nothing buffered."""
        data = struct.pack("!I", len(data)) + data if len(data) % 2 else data
        decoder = FrameDecoder(limit)
        decoder.feed(before)
        try:
            while decoder.next_frame() is not None:
                pass
        except FrameTooLong:
            return  # (the connection is closed: nothing more is read)
        got = decoder.whole(data)
        if got is not None:
            self.assertEqual(decoder.buffered, 0)
            decoder.feed(data)
            self.assertEqual(decoder.next_frame(), got)
            self.assertEqual(decoder.buffered, 0)
