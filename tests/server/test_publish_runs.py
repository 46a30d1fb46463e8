"""
The daemon's run of PUBLISH frames (FrameDecoder.take_run and the loop of
LTtxServerProtocol.dataReceived that applies it): the same frames as
next_frame, stopping at the first other; order with requests in the same
read, broken and refused publishes in the middle of a run, limited tokens.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator, parse_roles
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.frames import PUBLISH_HEAD
from lttx.wire.framing import FrameDecoder

from ..common import TOKEN, frame, frames_of, server_protocol

#: A frame: (is a publish, size of its padding).
_frames = st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=30)


def payload(publish: bool, size: int) -> bytes:
    return (PUBLISH_HEAD if publish else b"\x94\x00") + b"x" * size


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if b > a]


class TakeRunTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(_frames, st.lists(st.integers(min_value=0), max_size=20), st.integers(1, 400),
           st.lists(st.booleans(), min_size=1, max_size=40))
    def test_same_frames_as_next_frame(self, spec: list[tuple[bool, int]], cuts: list[int],
                                       below: int, choices: list[bool]) -> None:
        """Frames fed in pieces cut anywhere, taken by take_run and next_frame
        in any mix: every frame once, in order; take_run gives only frames
        that start with the head and are shorter than ``below``, and stops at
        the first that is not one."""
        payloads = [payload(*one) for one in spec]
        stream = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
        decoder = FrameDecoder(2**31)
        out: list[bytes] = []
        k = 0
        for piece in split(stream, cuts):
            decoder.feed(piece)
            while True:
                k += 1
                if choices[k % len(choices)]:
                    run = decoder.take_run(PUBLISH_HEAD, below)
                    for one in run:
                        self.assertTrue(one.startswith(PUBLISH_HEAD))
                        self.assertLess(len(one), below)
                    out += run
                    if run:
                        continue
                got = decoder.next_frame()
                if got is None:
                    break
                out.append(got)
        self.assertEqual(out, payloads)

    def test_stops_at_the_first_other_frame(self) -> None:
        """A run stops before a frame of another kind, a long one, a short one
        whose bytes after it look like the head, and an incomplete one."""
        decoder = FrameDecoder(2**20)
        publishes = [payload(True, 3), payload(True, 0)]
        rest = [payload(False, 1), payload(True, 2)]
        decoder.feed(b"".join(struct.pack("!I", len(p)) + p for p in publishes + rest))
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), publishes)
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), [])
        self.assertEqual(decoder.next_frame(), rest[0])
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 4), [])  # 4 bytes: not under 4
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 5), [rest[1]])
        decoder.feed(b"\x00\x00\x00\x01\x94" + b"\x00\x00\x00\x03\x05\x94\x05")
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), [])
        self.assertEqual(decoder.next_frame(), b"\x94")
        decoder.feed(b"\x00\x00\x00\x05\x94\x05")
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), [])  # 05 94 05: not the head
        self.assertEqual(decoder.next_frame(), b"\x05\x94\x05")
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), [])  # incomplete
        decoder.feed(b"xyz")
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), [b"\x94\x05xyz"])

    def test_a_frame_over_the_limit_is_left_for_next_frame(self) -> None:
        decoder = FrameDecoder(10)
        decoder.feed(struct.pack("!I", 12) + payload(True, 10))
        self.assertEqual(decoder.take_run(PUBLISH_HEAD, 100), [])
        self.assertRaises(Exception, decoder.next_frame)


class ProtocolRunTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN)))
        self.sub, self.sub_t = server_protocol(factory=self.factory)
        self.sub.dataReceived(frame([codec.REQUEST, 1, "subscribe", [["hq"], None, {}]]))
        self.sub_t.clear()
        self.pub, self.pub_t = server_protocol(factory=self.factory)

    def messages(self) -> list[Any]:
        return [(m[2], m[3], m[4]) for m in frames_of(self.sub_t.value())]

    def test_requests_between_runs_see_the_publishes_before_them(self) -> None:
        """One read: 3 publishes, a publish request, 2 publishes, a put, a get.
        The request's seq is 4 (after the first run, before the second); the
        subscriber gets all six in order; the replies come in order."""
        self.pub.dataReceived(
            b"".join(frame([codec.PUBLISH, "hq", f"k{i}", i]) for i in range(3))
            + frame([codec.REQUEST, 5, "publish", ["hq", "r", "req"]])
            + b"".join(frame([codec.PUBLISH, "hq", f"k{i}", i]) for i in range(3, 5))
            + frame([codec.REQUEST, 6, "put", ["v", 1]])
            + frame([codec.REQUEST, 7, "get", ["v"]]))
        self.assertEqual([f[:3] for f in frames_of(self.pub_t.value())],
                         [[codec.REPLY, 5, 4], [codec.REPLY, 6, None], [codec.REPLY, 7, [1]]])
        self.assertEqual(self.messages(), [("k0", 0, 1), ("k1", 1, 2), ("k2", 2, 3),
                                           ("r", "req", 4), ("k3", 3, 5), ("k4", 4, 6)])

    def test_broken_and_refused_publishes_in_a_run_are_reported_and_the_run_goes_on(
            self) -> None:
        """A PUBLISH that does not decode gets an error with a nil id, one with
        a key of a refused type a bad_request notice; the publishes around them
        are applied, in order."""
        self.pub.dataReceived(
            frame([codec.PUBLISH, "hq", "a", 1])
            + b"\x00\x00\x00\x03\x94\x05\xc1"
            + frame([codec.PUBLISH, "hq", "b", 2])
            + frame([codec.PUBLISH, "hq", ["not", "a", "key"], 3])
            + frame([codec.PUBLISH, "", "c", 3])
            + frame([codec.PUBLISH, "hq", "d", 4]))
        replies = frames_of(self.pub_t.value())
        self.assertEqual([f[:3] for f in replies], [
            [codec.ERROR, None, "bad_request"], [codec.NOTICE, "bad_request", replies[1][2]],
            [codec.NOTICE, "bad_request", replies[2][2]]])
        self.assertEqual(self.messages(), [("a", 1, 1), ("b", 2, 2), ("d", 4, 3)])

    def test_a_token_without_every_right_is_checked_per_channel(self) -> None:
        """With roles, a token that may publish only on "hq": its publishes to
        "hq" arrive, those to "other" get a forbidden notice."""
        roles = {"tokens": [{"name": "feed", "token": "feed-token", "rights": ["publish:hq"]},
                            {"name": "reader", "token": "reader-token", "rights": ["all"]}]}
        auth = TokenAuthenticator.from_roles(parse_roles(json.dumps(roles)))
        factory = LTtxFactory(ServerState(MemoryStore(), auth))
        sub, sub_t = server_protocol(token="reader-token", factory=factory)
        sub.dataReceived(frame([codec.REQUEST, 1, "subscribe", [["hq"], None, {}]]))
        sub_t.clear()
        pub, pub_t = server_protocol(token="feed-token", factory=factory)
        pub.dataReceived(frame([codec.PUBLISH, "hq", "a", 1])
                         + frame([codec.PUBLISH, "other", "b", 2])
                         + frame([codec.PUBLISH, "hq", "c", 3]))
        self.assertEqual([f[:2] for f in frames_of(pub_t.value())],
                         [[codec.NOTICE, "forbidden"]])
        self.assertEqual([(m[2], m[4]) for m in frames_of(sub_t.value())], [("a", 1), ("c", 2)])
