"""
Frames a hostile or clumsy client sends (issue 19, findings 4, 8 and 13):
each gets a typed error frame and one bounded log line, never a traceback,
and the values the daemon keeps stay readable back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec
from lttx.wire.limits import MAX_NESTING

from ..common import TOKEN, frame, frames_of, server_protocol

R, E = codec.REPLY, codec.ERROR


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value whose lists nest ``depth`` deep (0: the leaf itself)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


class HostileFrameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def assert_no_traceback_and_short_logs(self) -> None:
        self.assertEqual([e for e in self.events if e["log_level"] >= LogLevel.error
                          or "log_failure" in e], [])
        for event in self.events:
            self.assertLess(len(formatEvent(event)), 300, formatEvent(event)[:300])

    def test_a_deep_frame_kind_before_hello(self) -> None:
        """A 1000-deep frame kind before hello: one error frame, closed, no traceback."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([nested(1000), 1, "hello", [TOKEN]]))
        self.assertEqual(frames_of(transport.value()), [
            [E, None, "bad_request", "a frame kind must be an int, not [[[[...]]]]"]])
        self.assertTrue(transport.disconnecting)
        self.assert_no_traceback_and_short_logs()

    def test_a_deep_command_name_before_and_after_hello(self) -> None:
        """A deep command name is refused in a bounded message, before and after hello."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([codec.REQUEST, 1, nested(1000), []]))
        [[kind, _, code, _]] = frames_of(transport.value())
        self.assertEqual((kind, code), (E, "auth"))
        proto, transport = server_protocol()
        proto.dataReceived(frame([codec.REQUEST, 1, nested(1000), []]))
        proto.dataReceived(frame([codec.REQUEST, 2, "ping", []]))
        self.assertEqual(frames_of(transport.value()), [
            [E, 1, "bad_request", "unknown command [[[[...]]]]"], [R, 2, "pong"]])
        self.assert_no_traceback_and_short_logs()

    def test_a_huge_argument_is_shown_as_an_excerpt(self) -> None:
        """A 2,000,000-element list as a variable name: the error text stays short."""
        proto, transport = server_protocol()
        proto.dataReceived(frame([codec.REQUEST, 1, "get", [list(range(2_000_000))]]))
        [[kind, _, code, message]] = frames_of(transport.value())
        self.assertEqual((kind, code), (E, "bad_request"))
        self.assertLess(len(message), 120)
        self.assert_no_traceback_and_short_logs()

    def test_false_and_float_are_not_frame_kinds(self) -> None:
        """[False, ...] and [0.0, ...] equal 0 in Python but are not requests."""
        for kind in (False, 0.0):
            proto, transport = server_protocol()
            proto.dataReceived(frame([kind, 1, "ping", []]))
            [[error_kind, request_id, code, message]] = frames_of(transport.value())
            self.assertEqual((error_kind, request_id, code), (E, None, "bad_request"))
            self.assertIn("frame kind must be an int", message)

    def test_a_bytes_token_is_not_a_token(self) -> None:
        """hello with the right token as bytes is a wrong token."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [TOKEN.encode(), {}]]))
        self.assertEqual(frames_of(transport.value()), [[E, 0, "auth", "wrong token"]])


class NestingTests(SynchronousTestCase):
    def request(self, *frames: Any) -> list[Any]:
        proto, transport = server_protocol()
        proto.dataReceived(b"".join(frame(f) for f in frames))
        return frames_of(transport.value())

    def test_values_past_the_nesting_bound_are_refused(self) -> None:
        """put of a value nested one level past the bound: bad_request, nothing stored."""
        text = f"a value may nest lists and maps at most {MAX_NESTING} levels deep"
        self.assertEqual(self.request(
            [codec.REQUEST, 1, "put", ["deep", nested(MAX_NESTING + 1)]],
            [codec.REQUEST, 2, "exists", ["deep"]]),
            [[E, 1, "bad_request", text], [R, 2, False]])

    def test_values_at_the_bound_are_kept_and_read_back(self) -> None:
        """A value nested exactly to the bound is stored and read back equal."""
        value = nested(MAX_NESTING)
        self.assertEqual(self.request([codec.REQUEST, 1, "put", ["deep", value]],
                                      [codec.REQUEST, 2, "get", ["deep"]]),
                         [[R, 1, None], [R, 2, [value]]])

    def test_in_place_values_count_the_level_they_go_into(self) -> None:
        """dict_change and list_append put the value one level down: bound minus one."""
        text = f"a value may nest lists and maps at most {MAX_NESTING - 1} levels deep"
        self.assertEqual(self.request(
            [codec.REQUEST, 1, "dict_change", ["d", "k", nested(MAX_NESTING)]],
            [codec.REQUEST, 2, "list_append", ["l", nested(MAX_NESTING)]],
            [codec.REQUEST, 3, "list_append", ["l", nested(MAX_NESTING - 1)]]),
            [[E, 1, "bad_request", text], [E, 2, "bad_request", text], [R, 3, 1]])
