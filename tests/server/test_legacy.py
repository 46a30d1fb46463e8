"""
The legacy port's protocols on StringTransports: exact bytes of the original
wire, the registry and store they share with native connections, and what a
bad or slow peer gets.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lttx.server.legacy import LegacyFactory, LegacyProtocol
from lttx.server.legacy.handshake import REFUSAL_DELAY
from lttx.server.legacy.push_mode import HEARTBEAT_INTERVAL, SETTLE_DELAY, LegacyReader
from lttx.server.state import ServerState
from lttx.state.auth import Grant, TokenAuthenticator
from lttx.state.channels import ISubscriber
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.legacy import decode_put_value, dict_key, old_frame, old_value, split_key_data

from ..common import TOKEN


def old(body: Any) -> bytes:
    """An old client's frame: 8-byte little-endian length, then JSON."""
    data = json.dumps(body).encode("utf-8")
    return struct.pack("<Q", len(data)) + data


class Collector:
    """A native subscriber: reads its channels' logs to the end when woken and
    keeps the messages, decoded."""

    def __init__(self) -> None:
        self.positions: dict[str, Any] = {}
        self.frames: list[Any] = []

    def wake(self) -> None:
        for position in self.positions.values():
            position.prelude = []
            _, frames, position.next = position.log.read(position.next, 10**9)
            self.frames.extend(codec.decode(frame[4:]) for frame in frames)


class LegacyTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.state = ServerState(self.store, TokenAuthenticator(TOKEN), clock=self.clock,
                                 max_frame=4096, subscriber_buffer=2048)
        self.factory = LegacyFactory(self.state)

    def connect(self, handshake: Any = None, peer: str = "127.0.0.1",
                transport: Any = None) -> tuple[LegacyProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = transport or StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        proto.makeConnection(transport)
        if handshake is not None:
            proto.dataReceived(json.dumps(handshake).encode("utf-8"))
        return proto, transport

    def put_mode(self) -> tuple[LegacyProtocol, StringTransport]:
        proto, transport = self.connect({"con_type": "put_mode", "tocken": TOKEN})
        self.assertEqual(json.loads(transport.value()),
                         {"code": 0, "msg": "put_mode connected", "id_code": 1})
        transport.clear()
        return proto, transport


class HandshakeTests(LegacyTestCase):
    def test_handshake_in_pieces(self) -> None:
        """The JSON handshake may come in several reads, cut inside a UTF-8 character."""
        proto, transport = self.connect()
        data = json.dumps({"con_type": "put_mode", "tocken": TOKEN, "x": "深"},
                          ensure_ascii=False).encode("utf-8")
        cut = data.index("深".encode()) + 1
        proto.dataReceived(data[:cut])
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(data[cut:])
        self.assertEqual(json.loads(transport.value())["code"], 0)

    def test_wrong_token_answered_late(self) -> None:
        """The original's refusal ({"code": "-1"}) comes REFUSAL_DELAY late, then close."""
        proto, transport = self.connect({"con_type": "push_mode", "tocken": "bad",
                                         "who": "a", "pwd": ""})
        self.assertEqual(transport.value(), b"")
        self.clock.advance(REFUSAL_DELAY)
        self.assertEqual(json.loads(transport.value()), {"code": "-1", "msg": "wrong tocken"})
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.legacy.refused, 1)

    def test_protected_mode_refuses_remote_peers(self) -> None:
        self.state.auth = TokenAuthenticator(None)
        _, transport = self.connect(peer="10.1.2.3")
        self.assertEqual(json.loads(transport.value())["code"], -1)
        self.assertTrue(transport.disconnecting)
        proto, transport = self.connect({"con_type": "put_mode", "tocken": "anything"})
        self.assertEqual(json.loads(transport.value())["code"], 0)

    def test_no_handshake_in_time(self) -> None:
        _, transport = self.connect()
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_oversized_handshake(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b'{"con_type": "' + b"x" * 70000)
        self.assertTrue(transport.disconnecting)


class PutModeTests(LegacyTestCase):
    def test_get_reply_is_json_twice(self) -> None:
        """A get is answered with json.dumps(json.dumps({"value": v})) in an old frame."""
        self.store.put("pos", {"600000.SH": 100})
        proto, transport = self.put_mode()
        proto.dataReceived(old({"func": "get", "value": "pos"}))
        body = json.dumps(json.dumps({"value": {"600000.SH": 100}})).encode()
        self.assertEqual(transport.value(), struct.pack("<Q", len(body)) + body)

    def test_writes_then_reads_in_order(self) -> None:
        """Writes get no reply; reads are answered in request order; conventions apply."""
        proto, transport = self.put_mode()
        proto.dataReceived(
            old({"func": "put", "value": ["cfg", '{"a": 1}']})
            + old({"func": "dict_change", "value": ["d", 5, "five"]})
            + old({"func": "list_append", "value": ["l", 1]})
            + old({"func": "list_append", "value": ["l", 2]})
            + old({"func": "list_pop", "value": ["l", "0"]})
            + old({"func": "get", "value": "cfg"})
            + old({"func": "get_dict_value", "value": ["d", 5]})
            + old({"func": "get_list_value", "value": ["l", 0]})
            + old({"func": "get_list_value", "value": ["l", 9]})
            + old({"func": "get_dataframe", "value": "none"})
            + old({"func": "put", "value": [600000, 10.5]})
            + old({"func": "get", "value": 600000}))
        self.assertEqual(self.store.get("cfg"), {"a": 1})
        self.assertEqual(self.store.get("d"), {"5": "five"})
        data, replies = transport.value(), []
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            replies.append(json.loads(json.loads(data[8:8 + length])))
            data = data[8 + length:]
        self.assertEqual(replies, [{"value": {"a": 1}}, {"value": "five"}, {"value": 2},
                                   {"value": None}, {"value": "[]"}, {"value": 10.5}])
        self.assertEqual(self.store.get("600000"), 10.5)  # as the original's data0.txt had it

    def test_push_published_and_heartbeat_not(self) -> None:
        """A push is split at the first '|'; start_tx's heartbeat reaches no one."""
        native = Collector()
        self.state.channels.subscribe(native, ["hq", "heartbeat0"])
        proto, _ = self.put_mode()
        proto.dataReceived(old({"func": "push", "value": "heartbeat|1", "who": "heartbeat0"})
                           + old({"func": "push", "value": "600000.SH|10.2|10.3", "who": "hq"}))
        self.assertEqual(native.frames, [[codec.MESSAGE, "hq", "600000.SH", "10.2|10.3", 1]])
        self.assertEqual(self.factory.legacy.heartbeats, 1)

    def test_frame_over_max_frame_closes_before_buffering(self) -> None:
        proto, transport = self.put_mode()
        proto.dataReceived(struct.pack("<Q", 4097) + b"x" * 100)
        self.assertTrue(transport.disconnecting)
        self.assertLess(proto.mode.decoder.buffered, 200)  # type: ignore[union-attr]

    def test_rights(self) -> None:
        """A read-only token: reads served, writes and pushes refused (logged), a refused
        read answered with the original's error dict."""
        self.state.auth = TokenAuthenticator.from_roles(
            [("ro", Grant.parse("ro", ["read:pub_*"]))])
        self.store.put("pub_a", 1)
        native = Collector()
        self.state.channels.subscribe(native, ["hq"])
        proto, transport = self.connect({"con_type": "put_mode", "tocken": "ro"})
        transport.clear()
        proto.dataReceived(old({"func": "put", "value": ["pub_a", 2]})
                           + old({"func": "push", "value": "k|v", "who": "hq"})
                           + old({"func": "get", "value": "pub_a"})
                           + old({"func": "get", "value": "secret"}))
        self.assertEqual(self.store.get("pub_a"), 1)
        self.assertEqual(native.frames, [])
        data = transport.value()
        (n,) = struct.unpack("<Q", data[:8])
        self.assertEqual(json.loads(json.loads(data[8:8 + n])), {"value": 1})
        second = json.loads(json.loads(data[16 + n:]))
        self.assertEqual(second["code"], -1)
        self.assertIn("forbidden", second["msg"])

    def test_plus_mode(self) -> None:
        native = Collector()
        self.state.channels.subscribe(native, ["hq"])
        proto, transport = self.connect({"con_type": "plus_mode", "tocken": TOKEN})
        self.assertEqual(json.loads(transport.value())["code"], 0)
        for text in ("heartbeat|t:who:test22", "a|b|c:who:x:who:hq", "no separator"):
            data = text.encode()
            proto.dataReceived(struct.pack("<Q", len(data)) + data)
        self.assertEqual(native.frames, [[codec.MESSAGE, "hq", "a", "b|c:who:x", 1]])


class PushModeTests(LegacyTestCase):
    def subscribe(self, who: str = "hq", pwd: str = "",
                  transport: Any = None) -> tuple[LegacyProtocol, StringTransport]:
        proto, transport = self.connect({"con_type": "push_mode", "tocken": TOKEN,
                                         "who": who, "pwd": pwd}, transport=transport)
        self.assertEqual(json.loads(transport.value())["code"], 0)
        transport.clear()
        return proto, transport

    def test_messages_after_the_settle_delay_as_old_frames(self) -> None:
        """Nothing comes with the handshake reply; then json.dumps("key|data") frames."""
        proto, transport = self.subscribe("hq@cb")
        channels = self.state.channels
        channels.publish("hq", "600000.SH", "10.2")
        channels.publish("cb", 7, {"a": 1})
        channels.flush()
        self.assertEqual(transport.value(), b"")
        self.clock.advance(SETTLE_DELAY)
        self.assertEqual(transport.value(),
                         old_frame(json.dumps("600000.SH|10.2").encode())
                         + old_frame(json.dumps("7|{'a': 1}").encode()))

    def test_heartbeat_every_5_seconds(self) -> None:
        proto, transport = self.subscribe()
        self.clock.advance(SETTLE_DELAY)
        self.clock.advance(HEARTBEAT_INTERVAL)
        self.assertEqual(transport.value(), old_frame(b'{"1": 1}'))

    def test_password(self) -> None:
        self.subscribe("private", "pw")
        proto, transport = self.connect({"con_type": "push_mode", "tocken": TOKEN,
                                         "who": "private", "pwd": "wrong"})
        self.clock.advance(REFUSAL_DELAY)
        self.assertEqual(json.loads(transport.value())["code"], -1)
        self.assertRaises(Exception, self.state.channels.subscribe, Collector(), ["private"],
                          "nope")

    def test_slow_old_subscriber_reads_on_and_others_go_on(self) -> None:
        """An old subscriber that does not read holds nothing and is not cut off; a
        native subscriber of the channel gets every message meanwhile, and the old
        one, resumed, reads every message from the log, as old frames, in order."""
        slow = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        proto, transport = self.subscribe(transport=slow)
        self.clock.advance(SETTLE_DELAY)
        transport.clear()
        proto.mode.subscriber.pauseProducing()  # type: ignore[union-attr]
        native = Collector()
        self.state.channels.subscribe(native, ["hq"])
        for i in range(100):
            self.state.channels.publish("hq", "k", "x" * 50 + str(i))
            self.state.channels.flush()
        self.assertEqual(len(native.frames), 100)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        proto.mode.subscriber.resumeProducing()  # type: ignore[union-attr]
        self.assertEqual(transport.value(), b"".join(
            old_frame(json.dumps("k|" + "x" * 50 + str(i)).encode()) for i in range(100)))

    def test_subscriber_seam(self) -> None:
        proto, _ = self.subscribe()
        self.assertTrue(verifyObject(ISubscriber,
                                     proto.mode.subscriber))  # type: ignore[union-attr]
        self.assertIsInstance(proto.mode.subscriber, LegacyReader)  # type: ignore
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.state.channels.status()["subscribers"], 0)


class ConventionsTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(decode_put_value('{"a": [1]}'), {"a": [1]})
        self.assertEqual(decode_put_value("123"), 123)
        self.assertEqual(decode_put_value("plain"), "plain")
        self.assertEqual(decode_put_value([1]), [1])
        self.assertEqual(dict_key(5), "5")
        self.assertEqual(dict_key(None), "null")
        self.assertEqual(dict_key("k"), "k")
        self.assertEqual(old_value({1: (b"x", 2)}), {"1": ["x", 2]})
        self.assertEqual(split_key_data("a|b|c"), ("a", "b|c"))
        self.assertEqual(split_key_data("nobar"), ("nobar", ""))
