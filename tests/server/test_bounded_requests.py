"""
Requests one hostile or clumsy client sends (issue 19, findings 1, 2 and 13):
option types checked, dict keys every store can reach, and bounds on the
arguments that drive work, each with a typed error.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec

from ..common import frame, frames_of, server_protocol

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
