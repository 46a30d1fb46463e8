"""
Channels across real daemons (``--engine redis``) on one real redis-server:
one log per channel in Redis, so seqs, history and resumption are the same
through every daemon.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from ..redis_server import RedisServer
from .test_redis_integration import redis_daemon


def drain(client: Any, count: int, timeout: float = 20.0) -> list[lttx.Message]:
    return [client.Q.get(timeout=timeout) for _ in range(count)]


class SharedLogTests(TestCase):
    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a = redis_daemon(self, self.redis)
        self.b = redis_daemon(self, self.redis)

    def test_history_and_since_the_same_on_every_daemon(self) -> None:
        """history=, since= and last_values give the same messages, seqs and
        epoch through A and through B, whichever daemon they were published on."""
        pa, pb = self.a.connect(), self.b.connect()
        for i in range(60):  # acknowledged, so in this order
            self.assertEqual((pa if i % 2 else pb).publish(f"k{i % 4}", {"i": i}, "orders"), i + 1)
        self.assertEqual(pa.publish("k0", {"i": 60}, "orders"), 61)
        views = []
        for daemon in (self.a, self.b):
            histories = []
            for options in ({"history": 20}, {"since": 45}, {"last_values": True}):
                client = daemon.connect()
                reply = client.subscribe("orders", **options)
                count = {"history": 20, "since": 16, "last_values": 4}[next(iter(options))]
                histories.append([(m.seq, m.key, m.data) for m in drain(client, count)])
                self.assertEqual(reply, {"orders": 62})
                self.assertTrue(client.Q.empty())
            views.append(histories)
        self.assertEqual(views[0], views[1])
        history, since, values = views[0]
        self.assertEqual([s for s, _, _ in history], list(range(42, 62)))
        self.assertEqual([s for s, _, _ in since], list(range(46, 62)))
        self.assertEqual([(s, k) for s, k, _ in values],
                         [(58, "k1"), (59, "k2"), (60, "k3"), (61, "k0")])
        # The message with seq N is the same message through both daemons.
        self.assertEqual(history[-1], (61, "k0", {"i": 60}))

    def test_subscribe_then_publish_elsewhere_misses_nothing(self) -> None:
        """The subscribe reply is a position: a message published through the
        other daemon right after it arrives (20 fresh channels in a row)."""
        subscriber, publisher = self.b.connect(), self.a.connect()
        for i in range(20):
            subscriber.subscribe(f"fresh{i}")
            publisher.push("k", i, f"fresh{i}")
            publisher.flush()
            message = subscriber.Q.get(timeout=10)
            self.assertEqual((message.channel, message.data, message.seq), (f"fresh{i}", i, 1))

    def test_redis_restarted_empty_is_a_gap(self) -> None:
        """Redis restarted without its data: the channel's stream is gone, so its
        subscribers are told of a gap (a new epoch), then get the new messages."""
        gaps: list[tuple[Any, ...]] = []
        told = threading.Event()
        subscriber = self.b.connect()
        subscriber.subscribe("hq", on_gap=lambda *gap: (gaps.append(gap), told.set()))
        publisher = self.a.connect()
        for i in range(10):
            publisher.push("k", i, "hq")
        publisher.flush()
        self.assertEqual([m.seq for m in drain(subscriber, 10)], list(range(1, 11)))
        marks = (len(self.a.lines), len(self.b.lines))
        self.redis.stop()
        self.b.wait_for_log(r"redis streams: lost the connection", start=marks[1])
        self.redis.start()
        self.a.wait_for_log(r"redis: connected to Redis", start=marks[0])
        self.b.wait_for_log(r"stream in Redis was made again", start=marks[1])
        publisher.push("k", "after", "hq")
        publisher.flush()
        message = subscriber.Q.get(timeout=10)
        self.assertEqual((message.data, message.seq), ("after", 1))
        self.assertEqual(subscriber.gaps_by_channel, {"hq": 1})
        self.assertTrue(told.wait(10))  # on_gap runs in the callback thread
        self.assertEqual(gaps, [("hq", 11, None)])

    def test_status_shows_stream_lengths(self) -> None:
        publisher = self.a.connect()
        for i in range(30):
            publisher.push("k", i, "ticks")
        publisher.publish("k", "x", "ticks")
        self.b.connect().subscribe("ticks")
        reader = self.b.connect()
        for _ in range(50):  # sampled every second
            status = reader.status()
            if status["channels"]["redis"]["stream_lengths"]:
                break
            time.sleep(0.2)
        self.assertEqual(status["channels"]["redis"]["stream_lengths"], [["ticks", 31]])
        self.assertEqual(status["channels"]["channels"]["ticks"]["stream_length"], 31)
