"""
The exact frames of revisions, compare-and-set, counters and expiry
(docs/protocol.md, "Revisions, counters, expiry"), through the server
protocol on a StringTransport, with a Clock for the store's time.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lttx.state.store import MemoryStore

from ..common import frame, server_protocol


def hex_frame(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


class FrameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(self.clock.seconds)
        self.proto, self.transport = server_protocol(store=self.store)

    def exchange(self, request: str, reply: str) -> None:
        self.transport.clear()
        data = hex_frame(request)
        for i in range(0, len(data), 7):  # split at awkward points
            self.proto.dataReceived(data[i:i + 7])
        self.assertEqual(self.transport.value().hex(" "), reply)

    def test_documented_frames(self) -> None:
        """Every example of the protocol document, byte for byte."""
        for _ in range(4):
            self.store.put("limits", {"max": 5})
        self.store.put("fills", 4000)
        self.exchange(
            "00 00 00 23 94 00 0b a3 70 75 74 93 a6 6c 69 6d 69 74 73 81 a3 6d 61 78 05 81 ab 69 "
            "66 5f 72 65 76 69 73 69 6f 6e 03",
            "00 00 00 2e 94 02 0b a8 63 6f 6e 66 6c 69 63 74 d9 20 27 6c 69 6d 69 74 73 27 20 69 "
            "73 20 61 74 20 72 65 76 69 73 69 6f 6e 20 34 2c 20 6e 6f 74 20 33")
        self.exchange(
            "00 00 00 1a 94 00 0c a3 67 65 74 92 a6 6c 69 6d 69 74 73 81 a8 72 65 76 69 73 69 6f "
            "6e c3",
            "00 00 00 0b 93 01 0c 92 81 a3 6d 61 78 05 04")
        self.exchange(
            "00 00 00 24 94 00 0d a3 70 75 74 93 ac 61 6c 69 76 65 3a 73 74 72 61 74 37 c3 81 a3 "
            "74 74 6c cb 40 14 00 00 00 00 00 00",
            "00 00 00 04 93 01 0d c0")
        self.exchange(
            "00 00 00 10 94 00 0e a4 69 6e 63 72 92 a5 66 69 6c 6c 73 01",
            "00 00 00 06 93 01 0e cd 0f a1")
        self.exchange(
            "00 00 00 21 94 00 0f a6 65 78 70 69 72 65 92 ac 61 6c 69 76 65 3a 73 74 72 61 74 37 "
            "cb 40 14 00 00 00 00 00 00",
            "00 00 00 04 93 01 0f c3")
        self.clock.advance(0.75)
        self.exchange(
            "00 00 00 15 94 00 10 a3 74 74 6c 91 ac 61 6c 69 76 65 3a 73 74 72 61 74 37",
            "00 00 00 0c 93 01 10 cb 40 11 00 00 00 00 00 00")

    def test_expired_is_gone_for_every_command_at_once(self) -> None:
        """Past its deadline, before any sweep: get, exists, keys, ttl see nothing."""
        self.store.put("lease", 1, ttl=2)
        self.clock.advance(2)
        self.exchange(frame([0, 1, "exists", ["lease"]]).hex(" "), frame([1, 1, False]).hex(" "))
        self.exchange(frame([0, 2, "keys", []]).hex(" "), frame([1, 2, []]).hex(" "))
        self.exchange(frame([0, 3, "get", ["lease", {"revision": True}]]).hex(" "),
                      frame([1, 3, []]).hex(" "))
        self.exchange(frame([0, 4, "ttl", ["lease"]]).hex(" "), frame([1, 4, None]).hex(" "))

    def test_old_clients_frames_are_unchanged(self) -> None:
        """Requests without the options argument get the replies they always got."""
        self.exchange(frame([0, 1, "put", ["x", 1]]).hex(" "), frame([1, 1, None]).hex(" "))
        self.exchange(frame([0, 2, "get", ["x"]]).hex(" "), frame([1, 2, [1]]).hex(" "))
        self.exchange(frame([0, 3, "list_pop", ["nolist"]]).hex(" "),
                      frame([2, 3, "not_found", "no variable named 'nolist'"]).hex(" "))
