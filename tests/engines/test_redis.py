"""
The Redis client: exact RESP bytes on a StringTransport, replies in order,
pub/sub pushes, script fallback, and failing at once without a connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import Unavailable
from lttx.engines.redis.resp import (
    RedisAddress,
    RedisClient,
    RedisError,
    RedisProtocol,
    ReplyParser,
    Script,
    encode_command,
)


def connected() -> tuple[RedisProtocol, StringTransport]:
    protocol, transport = RedisProtocol(), StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class EncodingTests(SynchronousTestCase):
    def test_command_bytes(self) -> None:
        """Arguments are bulk strings: str as UTF-8, numbers in decimal, bytes as they are."""
        self.assertEqual(encode_command(["SET", "kö", b"\x00\xff", 12, -1.5]),
                         b"*5\r\n$3\r\nSET\r\n$3\r\nk\xc3\xb6\r\n$2\r\n\x00\xff\r\n"
                         b"$2\r\n12\r\n$4\r\n-1.5\r\n")
        self.assertRaises(TypeError, encode_command, ["SET", None])


class ProtocolTests(SynchronousTestCase):
    def test_pipelined_replies_in_order(self) -> None:
        """Commands go out at once; each Deferred gets its reply, of every RESP kind."""
        protocol, transport = connected()
        results: list[Any] = []
        for args in (("PING",), ("GET", "a"), ("INCR", "n"), ("LRANGE", "l", 0, -1),
                     ("GET", "nil")):
            protocol.execute(*args).addCallback(results.append)
        failures: list[Any] = []
        protocol.execute("BAD").addErrback(failures.append)
        self.assertEqual(transport.value(), b"".join(encode_command(a) for a in (
            ("PING",), ("GET", "a"), ("INCR", "n"), ("LRANGE", "l", 0, -1), ("GET", "nil"),
            ("BAD",))))
        replies = (b"+PONG\r\n$5\r\nhe\r\no\r\n:42\r\n*2\r\n$1\r\nx\r\n$-1\r\n$-1\r\n"
                   b"-ERR unknown\r\n")
        # byte by byte: every split point of a reply must be handled
        for i in range(len(replies)):
            protocol.dataReceived(replies[i:i + 1])
        self.assertEqual(results, ["PONG", b"he\r\no", 42, [b"x", None], None])
        self.assertEqual(failures[0].value.kind, "ERR")
        self.assertIsInstance(failures[0].value, RedisError)

    def test_large_bulk_in_pieces(self) -> None:
        protocol, transport = connected()
        results: list[Any] = []
        protocol.execute("GET", "big").addCallback(results.append)
        value = b"v" * 100000
        data = b"$100000\r\n" + value + b"\r\n"
        for i in range(0, len(data), 999):
            protocol.dataReceived(data[i:i + 999])
        self.assertEqual(results, [value])

    def test_nested_arrays_any_chunking(self) -> None:
        """Nested and empty arrays, nil and errors inside arrays, split anywhere."""
        data = (b"*3\r\n$1\r\na\r\n*2\r\n*0\r\n:7\r\n-ERR x\r\n"
                b"*-1\r\n" + b"*2000\r\n" + b"$3\r\nabc\r\n" * 2000)
        expected_first = [b"a", [[], 7], "ERR x"]
        for size in (1, 7, 4096):
            parser = ReplyParser()
            replies: list[Any] = []
            for i in range(0, len(data), size):
                replies.extend(parser.feed(data[i:i + size]))
            self.assertEqual(replies[0][:2], expected_first[:2])
            self.assertEqual(replies[0][2].message, "ERR x")
            self.assertEqual(replies[1:], [None, [b"abc"] * 2000])

    def test_lost_connection_fails_pending(self) -> None:
        """Replies that can no longer come fail with Unavailable, and so does every new call."""
        protocol, transport = connected()
        d = protocol.execute("GET", "a")
        protocol.connectionLost()
        self.failureResultOf(d, Unavailable)
        self.failureResultOf(protocol.execute("GET", "a"), Unavailable)

    def test_pubsub_messages(self) -> None:
        protocol, transport = connected()
        got: list[Any] = []
        protocol.on_message = lambda channel, data: got.append((channel, data))
        protocol.execute("SUBSCRIBE", "c")
        self.assertEqual(transport.value(), b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n")
        protocol.dataReceived(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
                              b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n")
        self.assertEqual(got, [(b"c", b"hi")])


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.script = Script("return 1")
        self.client = RedisClient(self.reactor, RedisAddress("127.0.0.1", 6390, password="pw"),
                                  scripts=[self.script], pubsub=False)

    def connect(self, role: bytes = b"master") -> tuple[RedisProtocol, StringTransport]:
        """Start the client, accept its connection, answer its set-up."""
        self.client.start()
        self.addCleanup(self.client.stop)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("127.0.0.1", 6390))
        transport = StringTransport()
        proxy = factory.buildProtocol(None)
        proxy.makeConnection(transport)
        self.assertEqual(transport.value(), b"".join(encode_command(c) for c in (
            ("AUTH", "pw"), ("ROLE",), ("SCRIPT", "LOAD", "return 1"))))
        transport.clear()
        proxy.dataReceived(b"+OK\r\n*3\r\n$%d\r\n%s\r\n:0\r\n*0\r\n$40\r\n%s\r\n" % (
            len(role), role, self.script.sha.encode()))
        return proxy, transport

    def test_down_fails_at_once(self) -> None:
        """Without a connection, a call fails at once with Unavailable."""
        self.client.start()
        self.addCleanup(self.client.stop)
        self.failureResultOf(self.client.execute("GET", "a"), Unavailable)

    def test_evalsha_falls_back_to_eval(self) -> None:
        proxy, transport = self.connect()
        self.assertTrue(self.client.connected)
        self.assertEqual(self.client.role, "master")
        d = self.client.evalsha(self.script, ["k"], ["a"])
        self.assertEqual(transport.value(), encode_command(
            ["EVALSHA", self.script.sha, 1, "k", "a"]))
        transport.clear()
        proxy.dataReceived(b"-NOSCRIPT No matching script.\r\n")
        self.assertEqual(transport.value(), encode_command(["EVAL", "return 1", 1, "k", "a"]))
        proxy.dataReceived(b":1\r\n")
        self.assertEqual(self.successResultOf(d), 1)

    def test_reconnects_after_loss(self) -> None:
        """A lost connection: calls fail at once, then a new connection after the backoff."""
        proxy, transport = self.connect()
        proxy.connectionLost(None)
        self.assertFalse(self.client.connected)
        self.failureResultOf(self.client.execute("GET", "a"), Unavailable)
        before = len(self.reactor.tcpClients)
        self.reactor.advance(5)
        self.assertEqual(len(self.reactor.tcpClients), before + 1)


class PubSubClientTests(SynchronousTestCase):
    def test_resubscribes_after_reconnect(self) -> None:
        """The channels subscribed to are subscribed again on every new connection."""
        reactor = MemoryReactorClock()
        got: list[Any] = []
        client = RedisClient(reactor, RedisAddress("127.0.0.1", 6390), pubsub=True,
                             on_message=lambda c, d: got.append((c, d)))
        client.subscribe([b"a", b"b"])
        client.start()
        self.addCleanup(client.stop)
        for attempt in range(2):
            factory = reactor.tcpClients[-1][2]
            transport = StringTransport()
            proxy = factory.buildProtocol(None)
            proxy.makeConnection(transport)
            self.assertEqual(transport.value(), encode_command(["ROLE"]))
            transport.clear()
            proxy.dataReceived(b"*1\r\n$6\r\nmaster\r\n")
            self.assertEqual(transport.value(), encode_command(["SUBSCRIBE", b"a", b"b"]))
            proxy.dataReceived(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\n%d\r\n" % attempt)
            proxy.connectionLost(None)
            reactor.advance(5)
        self.assertEqual(got, [(b"a", b"0"), (b"a", b"1")])
