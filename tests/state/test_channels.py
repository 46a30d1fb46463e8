"""
The channel registry, alone: list-backed subscribers, no network, no reactor.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lttx import AuthError, BadRequest, EncodeError
from lttx.wire import codec
from lttx.state.channels import ChannelRegistry, ISubscriber, pack_seq, split_channels

from ..common import frames_of


@implementer(ISubscriber)
class ListSubscriber:
    """Collects frames in a list; ``flush`` moves the queued ones to ``sent``."""

    def __init__(self) -> None:
        self.queued: list[tuple[bytes, Optional[Hashable]]] = []
        self.sent: list[bytes] = []
        self.flushes = 0
        self.closed: Optional[str] = None
        self.conflated_drops = 0

    def deliver(self, frame: bytes, conflation_key: Optional[Hashable]) -> bool:
        self.queued.append((frame, conflation_key))
        return len(self.queued) == 1

    def flush(self) -> None:
        self.flushes += 1
        self.sent.extend(frame for frame, _ in self.queued)
        self.queued = []

    def close(self, reason: str) -> None:
        self.closed = reason

    def messages(self) -> list[Any]:
        return frames_of(b"".join(self.sent))


class SplitChannelsTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """A name, 'a@b' and lists all give a flat list without duplicates, in order."""
        self.assertEqual(split_channels("a"), ["a"])
        self.assertEqual(split_channels("hq@cb_hq"), ["hq", "cb_hq"])
        self.assertEqual(split_channels(["x@y", "z", "x"]), ["x", "y", "z"])

    def test_bad_names(self) -> None:
        """Empty names, empty lists, non-strings and over-long names are BadRequest."""
        for bad in ("", "a@", "@b", [], ["a", 1], 7, None, "x" * 201):
            self.assertRaises(BadRequest, split_channels, bad)


class PackSeqTests(SynchronousTestCase):
    @given(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)))
    def test_same_bytes_as_msgpack(self, n: int) -> None:
        """pack_seq writes what msgpack writes for every sequence number."""
        self.assertEqual(pack_seq(n), msgpack.packb(n))


class FanOutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = ChannelRegistry()

    def test_fake_provides_the_interface(self) -> None:
        """The list-backed fake is a faithful ISubscriber."""
        verifyObject(ISubscriber, ListSubscriber())

    def test_every_subscriber_gets_every_message_in_order(self) -> None:
        """Three subscribers get the same messages with consecutive seq, in push order."""
        subs = [ListSubscriber() for _ in range(3)]
        for sub in subs:
            self.assertEqual(self.registry.subscribe(sub, ["hq"]), {"hq": 1})
        for i in range(5):
            self.assertEqual(self.registry.publish("hq", f"k{i}", {"p": i}), 3)
        self.registry.flush()
        expected = [[codec.MESSAGE, "hq", f"k{i}", {"p": i}, i + 1] for i in range(5)]
        for sub in subs:
            self.assertEqual(sub.messages(), expected)

    def test_one_encoding_per_message(self) -> None:
        """Every subscriber is handed the very same bytes object, length prefix included."""
        a, b = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(a, ["hq"])
        self.registry.subscribe(b, ["hq"])
        self.registry.publish("hq", "600000.SH", "10.23|10.24")
        self.assertIs(a.queued[0][0], b.queued[0][0])
        payload = codec.encode([codec.MESSAGE, "hq", "600000.SH", "10.23|10.24", 1])
        self.assertEqual(a.queued[0][0], len(payload).to_bytes(4, "big") + payload)

    def test_encoded_tail_is_reused(self) -> None:
        """A caller's encoding of channel, key, data gives the same frame as encoding here."""
        a = ListSubscriber()
        self.registry.subscribe(a, ["hq"])
        data = {"bid": [10.22, 10.21], "raw": b"\x00"}
        self.registry.publish("hq", "k", data)
        tail = msgpack.packb("hq") + msgpack.packb("k") + codec.encode(data)
        self.registry.publish("hq", "k", data, encoded=tail)
        self.assertEqual(a.queued[0][0][:-1], a.queued[1][0][:-1])  # all but the seq
        self.assertEqual([m[4] for m in frames_of(a.queued[0][0] + a.queued[1][0])], [1, 2])

    def test_one_flush_per_subscriber_per_batch(self) -> None:
        """A batch of 100 publishes costs each subscriber one flush, not 100."""
        a, b = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(a, ["x", "y"])
        self.registry.subscribe(b, ["y"])
        for i in range(50):
            self.registry.publish("x", i, i)
            self.registry.publish("y", i, i)
        self.registry.flush()
        self.assertEqual((a.flushes, b.flushes), (1, 1))
        self.assertEqual((len(a.messages()), len(b.messages())), (100, 50))
        self.registry.flush()
        self.assertEqual((a.flushes, b.flushes), (1, 1))

    def test_channels_are_separate(self) -> None:
        """Each channel has its own sequence; a subscriber of two gets both, in push order."""
        both, only_b = ListSubscriber(), ListSubscriber()
        self.assertEqual(self.registry.subscribe(both, split_channels("a@b")), {"a": 1, "b": 1})
        self.registry.subscribe(only_b, ["b"])
        self.registry.publish("a", "k", 1)
        self.registry.publish("b", "k", 2)
        self.registry.publish("a", "k", 3)
        self.registry.flush()
        self.assertEqual([(m[1], m[3], m[4]) for m in both.messages()],
                         [("a", 1, 1), ("b", 2, 1), ("a", 3, 2)])
        self.assertEqual([(m[1], m[3], m[4]) for m in only_b.messages()], [("b", 2, 1)])

    def test_nobody_subscribed(self) -> None:
        """A message on a channel without subscribers is counted and dropped."""
        self.assertEqual(self.registry.publish("void", "k", 1), 0)
        self.assertEqual(self.registry.status()["dropped_no_subscriber"], 1)
        self.assertEqual(self.registry.status()["channels"], {})

    def test_conflation_key_only_for_conflating_subscriptions(self) -> None:
        """A conflating subscription gets (channel, key) to conflate on; a plain one None."""
        plain, conflating = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(plain, ["hq"])
        self.registry.subscribe(conflating, ["hq"], conflate=True)
        self.registry.publish("hq", "600000.SH", 1)
        self.assertIsNone(plain.queued[0][1])
        self.assertEqual(conflating.queued[0][1], ("hq", "600000.SH"))

    def test_bad_publishes(self) -> None:
        """A bad channel, an unhashable key or unencodable data are typed errors."""
        sub = ListSubscriber()
        self.registry.subscribe(sub, ["hq"])
        self.assertRaises(BadRequest, self.registry.publish, "", "k", 1)
        self.assertRaises(BadRequest, self.registry.publish, 5, "k", 1)
        self.assertRaises(BadRequest, self.registry.publish, "hq", ["k"], 1)
        self.assertRaises(BadRequest, self.registry.publish, "nobody", {"k": 1}, 1)
        self.assertRaises(EncodeError, self.registry.publish, "hq", "k", {1, 2})
        self.assertEqual(sub.queued, [])
        self.registry.publish("hq", "k", 1)
        self.assertEqual(frames_of(sub.queued[0][0])[0][4], 1)  # no seq was used up


class SubscriptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = ChannelRegistry()

    def test_first_subscriber_sets_the_password(self) -> None:
        """The second subscriber must give the first one's password; '' means none."""
        a, b, c = ListSubscriber(), ListSubscriber(), ListSubscriber()
        self.registry.subscribe(a, ["private"], password="pw")
        self.assertRaises(AuthError, self.registry.subscribe, b, ["private"], "wrong")
        self.assertRaises(AuthError, self.registry.subscribe, b, ["private"], None)
        self.registry.subscribe(b, ["private"], password="pw")
        self.registry.subscribe(c, ["open"], password="")
        self.assertRaises(AuthError, self.registry.subscribe, a, ["open"], "pw")
        self.registry.subscribe(a, ["open"], password=None)

    def test_wrong_password_subscribes_nothing(self) -> None:
        """One wrong password in a list: none of the channels is subscribed."""
        owner, other = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(owner, ["locked"], password="pw")
        self.assertRaises(AuthError, self.registry.subscribe, other, ["fresh", "locked"], "x")
        self.assertEqual(self.registry.channels_of(other), [])
        self.assertNotIn("fresh", self.registry.status()["channels"])

    def test_unsubscribe(self) -> None:
        """After unsubscribe no more messages; unknown channels are ignored."""
        sub = ListSubscriber()
        self.registry.subscribe(sub, ["a", "b"])
        self.assertEqual(self.registry.unsubscribe(sub, ["a", "never"]), ["a"])
        self.registry.publish("a", "k", 1)
        self.registry.publish("b", "k", 2)
        self.registry.flush()
        self.assertEqual([m[1] for m in sub.messages()], ["b"])
        self.assertEqual(self.registry.unsubscribe(ListSubscriber(), ["b"]), [])

    def test_closed_connection_leaves_no_trace(self) -> None:
        """remove() forgets the subscriber, its empty channels and their passwords."""
        sub = ListSubscriber()
        self.registry.subscribe(sub, ["a", "b"], password="pw")
        self.registry.publish("a", "k", 1)  # queued, never flushed
        self.registry.remove(sub)
        self.registry.flush()
        self.assertEqual(sub.flushes, 0)
        status = self.registry.status()
        self.assertEqual((status["channels"], status["subscribers"]), ({}, 0))
        newcomer = ListSubscriber()
        self.assertEqual(self.registry.subscribe(newcomer, ["a"], password="new"), {"a": 1})
        self.registry.remove(sub)  # twice is harmless

    def test_cut_off(self) -> None:
        """cut_off removes, counts, logs one line and closes the subscriber with the reason."""
        slow, fast = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(slow, ["hq"])
        self.registry.subscribe(fast, ["hq"])
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.registry.cut_off(slow, "too slow", who="10.0.0.9:5000")
        self.assertEqual(slow.closed, "too slow")
        self.assertEqual(len(events), 1)
        self.assertIn("10.0.0.9:5000", events[0]["log_format"].format(**events[0]))
        self.assertEqual(self.registry.status()["slow_subscribers_cut_off"], 1)
        self.assertEqual(self.registry.publish("hq", "k", 1), 1)

    def test_status_and_rates(self) -> None:
        """status() shows channels, subscriber counts, totals and per-second rates."""
        now = [100.0]
        registry = ChannelRegistry(clock=lambda: now[0])
        a, b = ListSubscriber(), ListSubscriber()
        registry.subscribe(a, ["hq"], password="pw")
        registry.subscribe(b, ["hq"], password="pw", conflate=True)
        for i in range(30):
            registry.publish("hq", i, i)
        now[0] += 2.0
        registry.sample()
        b.conflated_drops = 4
        self.assertEqual(registry.status(), {
            "channels": {"hq": {"subscribers": 2, "conflating": 1, "messages": 30,
                                "rate": 15.0, "password": True}},
            "subscribers": 2, "published": 30, "delivered": 60,
            "dropped_no_subscriber": 0, "slow_subscribers_cut_off": 0,
            "conflated_drops": 4,
        })
        registry.remove(b)
        self.assertEqual(registry.status()["conflated_drops"], 4)


# An operation: (subscriber index, action, channel index).
_operations = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["sub", "unsub", "pub"]),
                                 st.integers(0, 2)), max_size=60)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_operations)
    def test_subscribers_see_exactly_what_was_published_while_subscribed(
            self, operations: list[tuple[int, str, int]]) -> None:
        """Against a model: every subscriber gets exactly the messages published on its
        channels while it was subscribed, in order, each seq one more than the last
        message of that channel."""
        registry = ChannelRegistry()
        subs = [ListSubscriber() for _ in range(3)]
        subscribed: list[set[str]] = [set() for _ in subs]
        expected: list[list[tuple[str, int]]] = [[] for _ in subs]
        seq: dict[str, int] = {}
        for n, (who, action, channel_index) in enumerate(operations):
            channel = f"c{channel_index}"
            if action == "sub":
                registry.subscribe(subs[who], [channel])
                if not any(channel in s for s in subscribed):
                    seq[channel] = 0  # a channel nobody was in starts over
                subscribed[who].add(channel)
            elif action == "unsub":
                registry.unsubscribe(subs[who], [channel])
                subscribed[who].discard(channel)
            else:
                registry.publish(channel, "k", n)
                if any(channel in s for s in subscribed):
                    seq[channel] += 1
                    for i, s in enumerate(subscribed):
                        if channel in s:
                            expected[i].append((channel, seq[channel]))
            if n % 7 == 0:
                registry.flush()
        registry.flush()
        for sub, wanted in zip(subs, expected):
            self.assertEqual([(m[1], m[4]) for m in sub.messages()], wanted)
