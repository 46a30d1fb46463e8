"""
Frames dense with lists and maps (:func:`lttx.wire.limits.decode_request`):
an empty list is one byte on the wire and ~70 in memory, so a frame of them
is refused before it is all decoded; ordinary values of any size pass.
"""

from __future__ import annotations

import resource
import struct
import time

import msgpack
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import BadRequest
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.limits import DENSE_FROM, MAX_CONTAINERS, decode_request

from ..common import frame, frames_of, server_protocol


def put_of_empty_lists(count: int) -> bytes:
    """A put request whose value is a list of ``count`` empty lists (1 byte each)."""
    head = msgpack.packb([codec.REQUEST, 1, "put", ["x", []]])[:-1]  # up to the value
    return head + b"\xdd" + struct.pack(">I", count) + b"\x90" * count


class DensityTests(SynchronousTestCase):

    def test_a_frame_of_empty_lists_is_refused_early(self) -> None:
        """8,000,000 empty lists in a 7.6 MiB frame (550 MiB and 4.4 s to decode
        before): refused as a bad request once the bound is passed (figures printed)."""
        payload = put_of_empty_lists(8_000_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        with self.assertRaises(BadRequest) as refused:
            decode_request(payload)
        print(f"\n  refused in {(time.perf_counter() - started) * 1000:.0f} ms, peak RSS "
              f"+{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024} MiB")
        self.assertIn(f"at most {MAX_CONTAINERS} lists and maps", refused.exception.message)

    def test_the_bound_is_one_container_per_four_bytes(self) -> None:
        """A 100 KB frame of empty lists (one a byte) is refused; one of pairs of ints
        (a list per 7 bytes at most) passes."""
        dense = put_of_empty_lists(100_000)
        self.assertRaises(BadRequest, decode_request, dense)
        pairs = codec.encode([codec.REQUEST, 1, "put", ["x", [[i, i] for i in range(30_000)]]])
        self.assertGreater(len(pairs), DENSE_FROM)
        self.assertEqual(len(decode_request(pairs)[3][1]), 30_000)

    def test_ordinary_values_pass(self) -> None:
        """Records, bytes and small frames decode as with codec.decode."""
        records = [{"p": 1.5 + i, "q": i, "side": "b"} for i in range(50_000)]
        for value in (records, b"x" * 10_000_000, [[]] * 1000):
            payload = codec.encode([codec.REQUEST, 1, "put", ["x", value]])
            self.assertEqual(decode_request(payload), codec.decode(payload))

    def test_through_the_protocol_the_connection_goes_on(self) -> None:
        """After hello, a dense frame gets a bad_request error frame and nothing is
        stored; the framing is intact, so the next request is served."""
        store = MemoryStore()
        proto, transport = server_protocol(store=store)
        proto.dataReceived(struct.pack(">I", len(dense := put_of_empty_lists(300_000))) + dense)
        [[kind, request_id, code, message]] = frames_of(transport.value())
        self.assertEqual((kind, request_id, code), (codec.ERROR, None, "bad_request"))
        self.assertIn("lists and maps", message)
        transport.clear()
        proto.dataReceived(frame([codec.REQUEST, 2, "exists", ["x"]]))
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 2, False]])
