"""
The Redis engine's pieces without Redis: options and the service it builds
(the shared channel registry's bytes are in test_redis_channels).
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lttx.diskio import run_inline
from lttx.engines.redis.channels import SharedChannelRegistry
from lttx.engines.redis.engine import redis_address
from lttx.engines.redis.store import RedisStore

from ..common import listeners
from ..test_tap import parse


class OptionsTests(SynchronousTestCase):
    def test_engine_choices(self) -> None:
        self.assertEqual(parse()["engine"], "memory")
        self.assertRaises(usage.UsageError, parse, "--engine", "mongo")
        self.assertRaises(usage.UsageError, parse, "--engine", "redis", "--redis", "http://x")
        self.assertRaises(usage.UsageError, parse, "--engine", "redis",
                          "--redis-sentinel", "127.0.0.1:26379")

    def test_redis_wait_options(self) -> None:
        """--redis-wait is off by default, --redis-wait-timeout 1 s; bad values refused."""
        options = parse("--engine", "redis")
        self.assertEqual((options["redis-wait"], options["redis-wait-timeout"]), (0, 1.0))
        options = parse("--engine", "redis", "--redis-wait", "2", "--redis-wait-timeout", "0.05")
        self.assertEqual((options["redis-wait"], options["redis-wait-timeout"]), (2, 0.05))
        for bad in (("--redis-wait", "-1"), ("--redis-wait-timeout", "0"),
                    ("--redis-wait", "one")):
            self.assertRaises(usage.UsageError, parse, "--engine", "redis", *bad)

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
