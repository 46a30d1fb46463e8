"""
The channel registry, alone: list-backed subscribers, no network, no reactor.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lttx import AuthError, BadRequest, EncodeError
from lttx.wire import codec
from lttx.state.channellog import Position
from lttx.state.channels import ChannelRegistry, ISubscriber, dropped_notice, pack_seq, \
    split_channels

from ..common import frames_of


@implementer(ISubscriber)
class ListSubscriber:
    """Reads each of its channels' logs to the end when woken, into ``sent``
    (channel by channel: the daemon's reader, lttx.server.reader, merges them)."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.sent: list[bytes] = []
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1
        for position in self.positions.values():
            self.sent.extend(position.prelude)
            position.prelude = []
            gap, frames, position.next = position.log.read(position.next, 10**9)
            if gap is not None:
                self.sent.append(dropped_notice(position.log.name, *gap, position.log.epoch))
            self.sent.extend(frames)

    def messages(self) -> list[Any]:
        return frames_of(b"".join(self.sent))


def nexts(reply: dict[str, dict[str, int]]) -> dict[str, int]:
    """Each channel's next seq, from a subscribe reply."""
    return {name: info["next"] for name, info in reply.items()}


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
            self.assertEqual(nexts(self.registry.subscribe(sub, ["hq"])), {"hq": 1})
        for i in range(5):
            self.assertEqual(self.registry.publish("hq", f"k{i}", {"p": i}), i + 1)
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
        self.registry.flush()
        self.assertIs(a.sent[0], b.sent[0])
        self.assertIs(a.sent[0], self.registry.channel("hq").frame_of(1))
        payload = codec.encode([codec.MESSAGE, "hq", "600000.SH", "10.23|10.24", 1])
        self.assertEqual(a.sent[0], len(payload).to_bytes(4, "big") + payload)

    def test_encoded_tail_is_reused(self) -> None:
        """A caller's encoding of channel, key, data gives the same frame as encoding here."""
        a = ListSubscriber()
        self.registry.subscribe(a, ["hq"])
        data = {"bid": [10.22, 10.21], "raw": b"\x00"}
        self.registry.publish("hq", "k", data)
        tail = msgpack.packb("hq") + msgpack.packb("k") + codec.encode(data)
        self.registry.publish("hq", "k", data, encoded=tail)
        self.registry.flush()
        self.assertEqual(a.sent[0][:-1], a.sent[1][:-1])  # all but the seq
        self.assertEqual([m[4] for m in a.messages()], [1, 2])

    def test_one_wake_per_subscriber_per_batch(self) -> None:
        """A batch of 100 publishes wakes each subscriber once, not 100 times."""
        a, b = ListSubscriber(), ListSubscriber()
        self.registry.subscribe(a, ["x", "y"])
        self.registry.subscribe(b, ["y"])
        for i in range(50):
            self.registry.publish("x", i, i)
            self.registry.publish("y", i, i)
        a.wakes = b.wakes = 0
        self.registry.flush()
        self.assertEqual((a.wakes, b.wakes), (1, 1))
        self.assertEqual((len(a.messages()), len(b.messages())), (100, 50))
        self.registry.flush()
        self.assertEqual((a.wakes, b.wakes), (1, 1))

    def test_channels_are_separate(self) -> None:
        """Each channel has its own sequence and epoch; a subscriber of two gets both."""
        both, only_b = ListSubscriber(), ListSubscriber()
        reply = self.registry.subscribe(both, split_channels("a@b"))
        self.assertEqual(nexts(reply), {"a": 1, "b": 1})
        self.assertNotEqual(reply["a"]["epoch"], reply["b"]["epoch"])
        self.registry.subscribe(only_b, ["b"])
        self.registry.publish("a", "k", 1)
        self.registry.publish("b", "k", 2)
        self.registry.publish("a", "k", 3)
        self.registry.flush()
        self.assertEqual(sorted((m[1], m[3], m[4]) for m in both.messages()),
                         [("a", 1, 1), ("a", 3, 2), ("b", 2, 1)])
        self.assertEqual([(m[1], m[3], m[4]) for m in only_b.messages()], [("b", 2, 1)])

    def test_messages_without_subscribers_are_retained(self) -> None:
        """A message on a channel nobody subscribes to makes its log; a later
        subscriber reads it with history=, and sets the password then."""
        self.assertEqual(self.registry.publish("void", "k", 1), 1)
        self.assertEqual(self.registry.status()["channels"]["void"]["messages"], 1)
        sub = ListSubscriber()
        reply = self.registry.subscribe(sub, ["void"], password="pw", history=10)
        self.assertEqual((reply["void"]["first"], reply["void"]["from"]), (1, 1))
        self.registry.flush()
        self.assertEqual([m[3:] for m in sub.messages()], [[1, 1]])
        self.assertRaises(AuthError, self.registry.subscribe, ListSubscriber(), ["void"], "x")

    def test_history_memory_cuts_the_largest_logs_first(self) -> None:
        """Past history_memory the oldest messages of the largest log go, down to 15/16
        of the bound, counted; a small log is untouched; readers are told by a gap."""
        registry = ChannelRegistry(history_bytes=10**9, history_memory=100_000)
        sub = ListSubscriber()
        registry.subscribe(sub, ["big"])
        registry.publish("small", "k", "x" * 100)
        for _ in range(500):
            registry.publish("big", "k", "x" * 200)
        status = registry.status()
        self.assertLessEqual(status["history_bytes"], 100_000)
        self.assertEqual(status["channels"]["small"]["messages"], 1)
        self.assertGreater(status["evicted_for_memory"], 0)
        self.assertEqual(status["evicted_for_memory"], status["channels"]["big"]["dropped"])
        self.assertEqual(status["history_bytes"],
                         sum(c["bytes"] for c in status["channels"].values()))
        registry.flush()
        frames = sub.messages()
        self.assertEqual(frames[0][:2], [codec.NOTICE, "gap"])
        self.assertEqual(frames[0][3]["first"], 1)
        self.assertEqual([m[4] for m in frames[1:]],
                         list(range(frames[0][3]["last"] + 1, 501)))

    def test_bad_publishes(self) -> None:
        """A bad channel, an unhashable key or unencodable data are typed errors."""
        sub = ListSubscriber()
        self.registry.subscribe(sub, ["hq"])
        self.assertRaises(BadRequest, self.registry.publish, "", "k", 1)
        self.assertRaises(BadRequest, self.registry.publish, 5, "k", 1)
        self.assertRaises(BadRequest, self.registry.publish, "hq", ["k"], 1)
        self.assertRaises(BadRequest, self.registry.publish, "nobody", {"k": 1}, 1)
        self.assertRaises(EncodeError, self.registry.publish, "hq", "k", {1, 2})
        self.registry.flush()
        self.assertEqual(sub.sent, [])
        self.registry.publish("hq", "k", 1)
        self.registry.flush()
        self.assertEqual(sub.messages()[0][4], 1)  # no seq was used up


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

    def test_closed_connection_forgets_idle_channels_keeps_logs(self) -> None:
        """remove() forgets the subscriber and its channels with empty logs; a
        channel with messages is retained, with its password and epoch."""
        sub = ListSubscriber()
        epochs = self.registry.subscribe(sub, ["a", "b"], password="pw")
        self.registry.publish("a", "k", 1)  # never flushed
        self.registry.remove(sub)
        self.registry.flush()
        self.assertEqual(sub.sent, [])
        status = self.registry.status()
        self.assertEqual((sorted(status["channels"]), status["subscribers"]), (["a"], 0))
        newcomer = ListSubscriber()
        self.assertRaises(AuthError, self.registry.subscribe, newcomer, ["a"], "new")
        again = self.registry.subscribe(newcomer, ["a", "b"], password="pw")
        self.assertEqual(again["a"]["epoch"], epochs["a"]["epoch"])
        self.assertNotEqual(again["b"]["epoch"], epochs["b"]["epoch"])
        self.assertEqual(nexts(again), {"a": 2, "b": 1})
        self.registry.remove(sub)  # twice is harmless

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
        registry.flush()
        registry.publish("hq", "late", 0)
        b.wake()
        log = registry.channel("hq")
        retained = log.bytes
        self.assertEqual(registry.status(), {
            "channels": {"hq": {"epoch": log.epoch, "subscribers": 2, "conflating": 1,
                                "messages": 31, "bytes": retained, "oldest_seq": 1,
                                "newest_seq": 31, "slowest_behind": 1, "dropped": 0,
                                "last_values": 31, "last_values_evicted": 0,
                                "rate": 15.0, "password": True}},
            "channel_count": 1, "subscribers": 2, "published": 31, "delivered": 0,
            "history_bytes": retained,
            "history_memory": registry.history_memory,
            "channel_history": registry.history_bytes, "evicted_for_memory": 0,
            "gaps": 0, "conflated_drops": 0,
        })


# An operation: (subscriber index, action, channel index).
_operations = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["sub", "unsub", "pub"]),
                                 st.integers(0, 2)), max_size=60)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_operations)
    def test_subscribers_see_exactly_what_was_published_while_subscribed(
            self, operations: list[tuple[int, str, int]]) -> None:
        """Against a model: every subscriber gets exactly the messages published on its
        channels while it was subscribed (and still was when the registry flushed),
        each channel's seqs consecutive from its log's first message."""
        registry = ChannelRegistry()
        subs = [ListSubscriber() for _ in range(3)]
        subscribed: list[set[str]] = [set() for _ in subs]
        expected: list[list[tuple[str, int]]] = [[] for _ in subs]
        # Published while subscribed, read at the next flush if still subscribed.
        pending: list[list[tuple[str, int]]] = [[] for _ in subs]
        seq: dict[str, int] = {}
        for n, (who, action, channel_index) in enumerate(operations):
            channel = f"c{channel_index}"
            if action == "sub":
                registry.subscribe(subs[who], [channel])
                if channel not in seq:
                    seq[channel] = 0  # the log is made
                subscribed[who].add(channel)
            elif action == "unsub":
                registry.unsubscribe(subs[who], [channel])
                subscribed[who].discard(channel)
                pending[who] = [m for m in pending[who] if m[0] != channel]
                if (channel in seq and not any(channel in s for s in subscribed)
                        and not seq[channel]):
                    del seq[channel]  # an idle channel with an empty log is forgotten
            else:
                registry.publish(channel, "k", n)
                seq[channel] = seq.get(channel, 0) + 1  # retained, subscribed or not
                for i, s in enumerate(subscribed):
                    if channel in s:
                        pending[i].append((channel, seq[channel]))
            if n % 7 == 0 or n == len(operations) - 1:
                registry.flush()
                for i in range(len(subs)):
                    expected[i] += pending[i]
                    pending[i] = []
        for sub, wanted in zip(subs, expected):
            self.assertEqual(sorted((m[1], m[4]) for m in sub.messages()), sorted(wanted))
