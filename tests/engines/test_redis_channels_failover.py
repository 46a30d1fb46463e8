"""
Channels across real daemons (``--engine redis``) on one real redis-server,
when a daemon goes: a subscriber killed mid-stream resumes elsewhere; an
original-protocol subscriber.  (The shared log itself: test_redis_channels_integration.)
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

import lttx

from ..redis_server import RedisServer
from .test_redis_channels_integration import drain
from .test_redis_integration import redis_daemon


class FailoverTests(TestCase):
    def test_killed_daemon_mid_stream_every_message_once(self) -> None:
        """A subscriber on A (listing A and B) gets a stream from C; A is killed
        (SIGKILL) with most messages still in flight; the client resumes on B from
        its last seq and ends with every message exactly once, in order, without
        a gap."""
        redis = RedisServer(self)
        a, b, c = (redis_daemon(self, redis) for _ in range(3))
        client = lttx.connect([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                              token=a.token, timeout=15)
        self.addCleanup(client.close)
        client.subscribe("hq")
        publisher = c.connect()
        first, second = 20000, 2000
        for i in range(first):
            publisher.push(f"k{i % 10}", i, "hq")
        publisher.flush()
        got = drain(client, 1)
        a.kill()  # most of the first 20,000 are still on their way through A
        for i in range(first, first + second):
            publisher.push(f"k{i % 10}", i, "hq")
        publisher.flush()
        got += drain(client, first + second - 1)
        self.assertEqual([m.seq for m in got], list(range(1, first + second + 1)))
        self.assertEqual([m.data for m in got], list(range(first + second)))
        self.assertEqual(client.gaps_by_channel, {})
        self.assertEqual(publisher.publish("k", "last", "hq"), first + second + 1)
        self.assertEqual(client.Q.get(timeout=10).seq, first + second + 1)
        # B served the resumption: what A had not delivered came from the stream.
        self.assertGreater(b.connect().status()["channels"]["redis"]["history_read"], 0)


class LegacyTests(TestCase):
    def test_legacy_subscriber_gets_another_daemons_pushes(self) -> None:
        """An original-protocol push_mode subscriber on A is answered once A
        follows the channel's stream: a push through B right after it arrives."""
        from ..oldclient import legacy_daemon
        from ..test_legacy_integration import raw_handshake

        redis = RedisServer(self)
        a, port = legacy_daemon(self, "--engine", "redis", "--redis", redis.url)
        a.wait_for_log(r"redis streams: connected to Redis at")
        b = redis_daemon(self, redis)
        s, answer = raw_handshake(port, {"con_type": "push_mode", "who": "hq",
                                         "tocken": a.token})
        self.addCleanup(s.close)
        self.assertEqual(json.loads(answer)["code"], 0)
        publisher = b.connect()
        publisher.push("k", "from b", "hq")
        publisher.flush()
        data = b""
        while b'"k|from b"' not in data:
            chunk = s.recv(65536)
            self.assertTrue(chunk, f"closed; got {data!r}")
            data += chunk
