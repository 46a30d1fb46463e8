"""
The Redis engine's pieces without Redis: options, the service it builds, and
the shared channel registry on StringTransports (exact PUBLISH/SUBSCRIBE bytes).
"""

from __future__ import annotations

import os

import msgpack
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lttx.diskio import run_inline
from lttx.wire import codec
from lttx.engines.redis.resp import RedisAddress, RedisClient, RedisProtocol, encode_command
from lttx.engines.redis.channels import SharedChannelRegistry
from lttx.engines.redis.engine import redis_address
from lttx.engines.redis.store import RedisStore

from ..common import listeners
from ..state.test_channels import ListSubscriber
from ..test_tap import parse

DAEMON_ID = b"D" * 16


class OptionsTests(SynchronousTestCase):
    def test_engine_choices(self) -> None:
        self.assertEqual(parse()["engine"], "memory")
        self.assertRaises(usage.UsageError, parse, "--engine", "mongo")
        self.assertRaises(usage.UsageError, parse, "--engine", "redis", "--redis", "http://x")
        self.assertRaises(usage.UsageError, parse, "--engine", "redis",
                          "--redis-sentinel", "127.0.0.1:26379")

    def test_address_and_password(self) -> None:
        """The URL's parts, the sentinels, and the password from a file or the environment."""
        options = parse("--engine", "redis", "--redis", "redis://10.0.0.1:7000/3")
        address = redis_address(options, {"LTTX_REDIS_PASSWORD": "env-pw"})
        self.assertEqual((address.host, address.port, address.db, address.password),
                         ("10.0.0.1", 7000, 3, "env-pw"))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-pw\n")
        options = parse("--engine", "redis", "--redis-password-file", path,
                        "--redis-sentinel", "127.0.0.1:26379,127.0.0.1:26380",
                        "--redis-master", "lttx")
        address = redis_address(options, {"LTTX_REDIS_PASSWORD": "env-pw"})
        self.assertEqual(address.password, "file-pw")
        self.assertEqual(address.sentinels, [("127.0.0.1", 26379), ("127.0.0.1", 26380)])
        self.assertEqual(address.describe(),
                         "sentinel 'lttx' via 127.0.0.1:26379,127.0.0.1:26380")

    def test_service_status(self) -> None:
        """--engine redis: a Redis store, shared channels, and status says so."""
        options = parse("--engine", "redis", "--redis", "redis://127.0.0.1:6390/0",
                        "--data-dir", self.mktemp())
        from lttx.tap import makeService

        service = makeService(options, MemoryReactorClock())
        state = listeners(service)[0].factory.state
        os.makedirs(state.files.partial_directory)  # the file service's start makes it
        state.files.run_in_thread = run_inline  # a MemoryReactorClock has no thread pool
        self.assertIsInstance(state.store, RedisStore)
        self.assertIsInstance(state.channels, SharedChannelRegistry)
        status = self.successResultOf(state.status())
        self.assertEqual(status["engine"]["engine"], "redis")
        self.assertEqual(status["engine"]["address"], "redis://127.0.0.1:6390/0")
        self.assertEqual(status["engine"]["role"], "disconnected")
        # Files are shared through the Redis file directory; a daemon file session
        # serves them across daemons; nothing is known of replicas while disconnected.
        files = status["engine"]["files"]
        self.assertEqual((files["shared"], files["listed"]), (True, 0))
        self.assertRegex(files["holder"], r"^[0-9a-f]{32}$")  # the files folder's id
        self.assertIsNone(status["engine"]["replication"])
        from lttx.server.shared_files import SharedFiles
        self.assertIsInstance(getattr(state.file_sessions, "__self__", None), SharedFiles)
        self.assertNotIn("journal", status)
        self.assertIn("redis", status["channels"])

    def test_memory_is_the_default(self) -> None:
        from lttx.tap import makeService

        service = makeService(parse("--data-dir", self.mktemp()), MemoryReactorClock())
        state = listeners(service)[0].factory.state
        os.makedirs(state.files.partial_directory)
        state.files.run_in_thread = run_inline  # a MemoryReactorClock has no thread pool
        status = self.successResultOf(state.status())
        self.assertNotIn("engine", status)
        self.assertIn("journal_bytes", status["journal"])


def connected_client(pubsub: bool) -> tuple[RedisClient, StringTransport]:
    client = RedisClient(MemoryReactorClock(), RedisAddress(), pubsub=pubsub)
    protocol, transport = RedisProtocol(), StringTransport()
    protocol.makeConnection(transport)
    if pubsub:
        protocol.on_message = lambda channel, data: None
    client.protocol = protocol
    return client, transport


def encoded(channel: str, key: object, data: object) -> bytes:
    return msgpack.packb(channel) + msgpack.packb(key) + codec.encode(data)


class SharedRegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = SharedChannelRegistry(lambda: 0.0, "p:", DAEMON_ID)
        self.publisher, self.pub_transport = connected_client(False)
        self.subscriber, self.sub_transport = connected_client(True)
        self.registry.attach(self.publisher, self.subscriber)

    def test_subscribes_in_redis_while_a_client_does(self) -> None:
        """SUBSCRIBE for a channel's first local subscriber, UNSUBSCRIBE after its last."""
        one, two = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(one, ["hq", "cb"])
        self.registry.subscribe(two, ["hq"])
        self.assertEqual(self.sub_transport.value(),
                         encode_command(["SUBSCRIBE", b"p:c:cb", b"p:c:hq"]))
        self.sub_transport.clear()
        self.registry.unsubscribe(one, ["hq"])
        self.assertEqual(self.sub_transport.value(), b"")
        self.registry.remove(one)
        self.registry.remove(two)
        self.assertEqual(self.sub_transport.value(),
                         encode_command(["UNSUBSCRIBE", b"p:c:cb"]) +
                         encode_command(["UNSUBSCRIBE", b"p:c:hq"]))
        self.assertEqual(self.subscriber.channels, set())

    def test_publishes_one_batch_per_channel_per_flush(self) -> None:
        """Local subscribers get messages at once; Redis one PUBLISH per channel per flush."""
        local = ListSubscriber()
        self.registry.subscribe(local, ["hq"])
        self.registry.publish("hq", "a", 1, encoded("hq", "a", 1))
        self.registry.publish("other", "b", 2)
        self.registry.publish("hq", "c", 3, encoded("hq", "c", 3))
        self.assertEqual(self.pub_transport.value(), b"")
        self.registry.flush()
        batch = [encoded("hq", "a", 1), encoded("hq", "c", 3)]
        self.assertEqual(self.pub_transport.value(), encode_command(
            ["PUBLISH", b"p:c:hq", DAEMON_ID + b"".join(
                len(e).to_bytes(4, "big") + e for e in batch)]) + encode_command(
            ["PUBLISH", b"p:c:other", DAEMON_ID + len(encoded("other", "b", 2)).to_bytes(
                4, "big") + encoded("other", "b", 2)]))
        self.assertEqual(local.messages(), [[3, "hq", "a", 1, 1], [3, "hq", "c", 3, 2]])

    def test_remote_batches_take_the_local_path(self) -> None:
        """Another daemon's batch is delivered here in order, numbered by this daemon;
        a batch of our own is ignored (it was delivered when published)."""
        local = ListSubscriber()
        self.registry.subscribe(local, ["hq"])
        self.registry.publish("hq", "mine", 0)
        self.registry.flush()
        batch = b"".join(len(e).to_bytes(4, "big") + e
                         for e in (encoded("hq", "x", 1), encoded("hq", "y", [2])))
        self.registry.message_received(b"p:c:hq", b"E" * 16 + batch)
        self.registry.message_received(b"p:c:hq", DAEMON_ID + batch)
        self.assertEqual(local.messages(), [[3, "hq", "mine", 0, 1], [3, "hq", "x", 1, 2],
                                            [3, "hq", "y", [2], 3]])
        self.assertEqual(self.registry.status()["redis"]["remote_messages"], 2)

    def test_lost_pubsub_connection_shows_as_a_gap(self) -> None:
        """Losing Redis: each subscriber gets a gap notice of unknown range; seqs go on."""
        local = ListSubscriber()
        self.registry.subscribe(local, ["hq"])
        self.registry.publish("hq", "k", 1)
        self.registry.flush()
        self.registry.redis_lost()
        self.registry.publish("hq", "k", 2)
        self.registry.flush()
        frames = local.messages()
        self.assertEqual(frames[0][4], 1)
        self.assertEqual(frames[1][:2], [4, "gap"])
        self.assertEqual((frames[1][3]["first"], frames[1][3]["last"]), (None, None))
        self.assertEqual(frames[2][4], 2)

    def test_redis_down_drops_for_others_only(self) -> None:
        local = ListSubscriber()
        self.registry.subscribe(local, ["hq"])
        self.publisher.protocol = None
        self.registry.publish("hq", "k", 1)
        self.registry.flush()
        self.assertEqual(len(local.messages()), 1)
        self.assertEqual(self.registry.status()["redis"]["dropped_redis_down"], 1)
