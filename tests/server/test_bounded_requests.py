"""
Requests one hostile or clumsy client sends (issue 19, findings 1, 2 and 13):
option types checked, dict keys every store can reach, and bounds on the
arguments that drive work, each with a typed error.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.server.factory import LTtxFactory
from lttx.server.protocol import FRAME_TIMEOUT
from lttx.server.state import ServerState
from lttx.state.auth import TokenAuthenticator
from lttx.state.channels import STATUS_CHANNELS
from lttx.state.store import MemoryStore
from lttx.wire import codec
from lttx.wire.limits import MAX_CHANNELS_PER_CONNECTION, MAX_CHANNELS_PER_REQUEST

from ..common import TOKEN, frame, frames_of, server_protocol

R, E = codec.REPLY, codec.ERROR
Q = codec.REQUEST


def exchange(*frames: Any, **factory_args: Any) -> list[Any]:
    """The frames the daemon answers ``frames`` with, on one connection."""
    proto, transport = server_protocol(**factory_args)
    proto.dataReceived(b"".join(frame(f) for f in frames))
    return frames_of(transport.value())


class OptionTypeTests(SynchronousTestCase):
    def test_subscribe_flags_must_be_booleans(self) -> None:
        """{"conflate": "false"} is refused (it used to turn conflation on)."""
        for option in ("conflate", "last_values"):
            for bad in ("false", 0, 1, [], 0.0):
                [[kind, _, code, message]] = exchange(
                    [Q, 1, "subscribe", ["hq", None, {option: bad}]])
                self.assertEqual((kind, code), (E, "bad_request"), (option, bad))
                self.assertIn(f"subscribe option {option} must be true or false", message)
        options = {"conflate": False, "last_values": None}
        [reply] = exchange([Q, 1, "subscribe", ["hq", None, options]])
        self.assertEqual(reply[0], R)


class DictKeyTests(SynchronousTestCase):
    def test_list_remove_tells_int_keys_from_float_keys(self) -> None:
        """list_remove of {1.0: 'a'} does not remove {1: 'a'}."""
        self.assertEqual(exchange(
            [Q, 1, "list_append", ["l", {1: "a"}]],
            [Q, 2, "list_remove", ["l", {1.0: "a"}]],
            [Q, 3, "get", ["l"]],
            [Q, 4, "list_remove", ["l", {1: "a"}]]),
            [[R, 1, 1], [R, 2, False], [R, 3, [[{1: "a"}]]], [R, 4, True]])

    def test_bool_dict_keys_are_refused_where_values_are_kept(self) -> None:
        """A map with a True key is refused by put, dict_change and list_append
        (it could not be reached with get_dict_value, and True == 1 as a key)."""
        replies = exchange(
            [Q, 1, "put", ["d", {True: "a"}]],
            [Q, 2, "put", ["d", [{"x": {False: 1}}]]],
            [Q, 3, "dict_change", ["d", "k", {True: 1}]],
            [Q, 4, "list_append", ["l", {True: 1}]],
            [Q, 5, "exists", ["d"]],
            [Q, 6, "put", ["d", {1: "a", "b": {0: 1}}]])
        for reply in replies[:4]:
            self.assertEqual(reply[:3], [E, reply[1], "bad_request"])
            self.assertIn("a dict key may not be true or false", reply[3])
        self.assertEqual(replies[4:], [[R, 5, False], [R, 6, None]])


class ChannelBoundTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_one_subscribe_naming_two_million_channels(self) -> None:
        """2,000,000 channels in one subscribe (as 'a@b@...' and as a list): a limit
        error at once, nothing subscribed, no log line listing them."""
        many = [f"c{i}" for i in range(2_000_000)]
        for channels in ("@".join(many), many, ["@".join(many[:600]), "@".join(many[600:1001])]):
            start = time.perf_counter()
            proto, transport = server_protocol()
            proto.dataReceived(frame([Q, 1, "subscribe", [channels]]))
            took = (time.perf_counter() - start) * 1000
            proto.dataReceived(frame([Q, 2, "status", []]))
            [[kind, _, code, message], [_, _, status]] = frames_of(transport.value())
            self.assertEqual((kind, code), (E, "limit"))
            self.assertIn(f"at most {MAX_CHANNELS_PER_REQUEST} channels", message)
            self.assertEqual(status["channels"]["channel_count"], 0)
            print(f"\n  subscribe naming {message.split('not ')[1].split(' ')[0]} channels: "
                  f"refused in {took:.0f} ms (frame encode and decode included)")
        for event in self.events:
            self.assertLess(len(formatEvent(event)), 300)

    def test_channels_per_connection_are_bounded(self) -> None:
        """Ten subscribes of 1,000 channels fill a connection; one more channel is a
        limit error; channels it holds already count once."""
        proto, transport = server_protocol()
        per = MAX_CHANNELS_PER_REQUEST
        for batch in range(MAX_CHANNELS_PER_CONNECTION // per):
            proto.dataReceived(frame([Q, batch, "subscribe", [
                [f"c{i}" for i in range(batch * per, (batch + 1) * per)]]]))
        self.assertEqual({f[0] for f in frames_of(transport.value())}, {R})
        transport.clear()
        proto.dataReceived(frame([Q, 100, "subscribe", [["c0", "c1", "extra"]]]))
        proto.dataReceived(frame([Q, 101, "subscribe", [["c0", "c1"]]]))
        [refused, again] = frames_of(transport.value())
        self.assertEqual(refused[:3], [E, 100, "limit"])
        self.assertIn(f"at most {MAX_CHANNELS_PER_CONNECTION} channels; this subscribe would "
                      f"make {MAX_CHANNELS_PER_CONNECTION + 1}", refused[3])
        self.assertEqual(again[:2], [R, 101])

    def test_log_lines_name_a_bounded_number_of_channels(self) -> None:
        """A subscribe of 1,000 channels logs ten names and 'and 990 more'."""
        proto, _ = server_protocol()
        proto.dataReceived(frame([Q, 1, "subscribe", [[f"c{i}" for i in range(1000)]]]))
        [line] = [formatEvent(e) for e in self.events if "subscribed to" in formatEvent(e)]
        self.assertIn("c9 and 990 more", line)
        self.assertLess(len(line), 200)

    def test_status_lists_the_busiest_channels_and_counts_the_rest(self) -> None:
        """With 150 channels, status lists 100 (the busiest among them) and counts 150."""
        proto, transport = server_protocol()
        proto.dataReceived(b"".join(frame([codec.PUBLISH, f"c{i:03d}", "k", "x"])
                                    for i in range(150)))
        proto.dataReceived(b"".join(frame([codec.PUBLISH, "c149", "k", "x" * 1000])
                                    for i in range(5)))
        proto.dataReceived(frame([Q, 1, "status", []]))
        [[kind, _, status]] = frames_of(transport.value())
        channels = status["channels"]
        self.assertEqual((kind, len(channels["channels"]), channels["channel_count"]),
                         (R, STATUS_CHANNELS, 150))
        self.assertIn("c149", channels["channels"])


class ConnectionBoundTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_max_connections_and_per_host(self) -> None:
        """Past --max-connections-per-host (2) and --max-connections (3), a new
        connection gets one limit error frame and is closed, with one log line;
        a slot freed is used again."""
        clock = Clock()
        state = ServerState(MemoryStore(), TokenAuthenticator(TOKEN), clock=clock)
        state.max_connections, state.max_connections_per_host = 3, 2
        factory = LTtxFactory(state)
        a1, _ = server_protocol(factory=factory, peer=("10.0.0.1", 1))
        server_protocol(factory=factory, peer=("10.0.0.1", 2))
        _, refused = server_protocol(factory=factory, peer=("10.0.0.1", 3), authenticate=False)
        [[kind, _, code, message]] = frames_of(refused.value())
        self.assertEqual((kind, code), (E, "limit"))
        self.assertIn("2 connections are open from this host", message)
        self.assertTrue(refused.disconnecting)
        server_protocol(factory=factory, peer=("10.0.0.2", 1))
        _, full = server_protocol(factory=factory, peer=("10.0.0.3", 1), authenticate=False)
        self.assertIn("the daemon has 3 connections", frames_of(full.value())[0][3])
        lines = [formatEvent(e) for e in self.events if "refused" in formatEvent(e)]
        self.assertEqual(len(lines), 2, lines)
        a1.connectionLost(None)
        server_protocol(factory=factory, peer=("10.0.0.3", 1))  # authenticates: admitted
        self.assertEqual(len(state.connections), 3)

    def test_a_connection_stalled_mid_frame_is_closed(self) -> None:
        """60 bytes of a 1,000-byte frame, then silence: closed after 30 s without
        progress (each byte that arrives restarts the wait), with a timeout error."""
        clock = Clock()
        proto, transport = server_protocol(clock=clock)
        data = frame([Q, 1, "put", ["x", "y" * 1000]])
        proto.dataReceived(data[:60])
        clock.advance(FRAME_TIMEOUT - 1)
        proto.dataReceived(data[60:61])
        clock.advance(FRAME_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        [[kind, _, code, message]] = frames_of(transport.value())
        self.assertEqual((kind, code), (E, "timeout"))
        self.assertIn(f"no progress within a frame for {FRAME_TIMEOUT:g} seconds", message)
        [line] = [formatEvent(e) for e in self.events if "then nothing" in formatEvent(e)]
        self.assertIn("sent 61 bytes of a frame", line)

    def test_a_complete_frame_stops_the_wait(self) -> None:
        """A frame completed in time: no timer left, the connection stays open."""
        clock = Clock()
        proto, transport = server_protocol(clock=clock)
        data = frame([Q, 1, "ping", []])
        proto.dataReceived(data[:3])
        proto.dataReceived(data[3:])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(frames_of(transport.value()), [[R, 1, "pong"]])
