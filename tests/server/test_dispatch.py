"""
The one request dispatcher, driven with a list-backed connection: what each
request gets back, and the one log line of a refusal.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import LTtxError, NotFound
from lttx.server.dispatch import REPLIED, Dispatcher, command
from lttx.state.auth import Grant, Right

RIGHTS = {"echo": None, "read": Right("read", 0), "later": None, "fails_later": None,
          "broken": None, "streams": None, "bad_later": None}


class FakeConnection:
    """Records what the dispatcher sends, as ("reply"|"error", id, ...) tuples."""

    peer = "192.0.2.1:4000"

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.sent: list[tuple[Any, ...]] = []

    def send_reply(self, request_id: int, result: Any) -> None:
        self.sent.append(("reply", request_id, result))

    def send_error(self, request_id: Optional[int], error: LTtxError) -> None:
        self.sent.append(("error", request_id, error.code, error.message))


class Handlers:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.pending: list[Deferred[Any]] = []

    @command(1, 2)
    def cmd_echo(self, value: Any, more: Any = None) -> Any:
        return [value, more]

    @command(1)
    def cmd_read(self, name: Any) -> Any:
        return f"read {name}"

    @command(1)
    def cmd_unlisted(self, name: Any) -> Any:
        return "served"

    @command(0)
    def cmd_later(self) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    @command(0)
    def cmd_fails_later(self) -> "Deferred[Any]":
        return fail(NotFound("gone by then"))

    @command(0)
    def cmd_bad_later(self) -> "Deferred[Any]":
        return fail(KeyError("bug"))

    @command(0)
    def cmd_broken(self) -> Any:
        raise ZeroDivisionError("bug")

    @command(0, replies_itself=True)
    def cmd_streams(self, request_id: int) -> object:
        self.connection.send_reply(request_id, "header")
        self.connection.sent.append(("raw", b"data"))
        return REPLIED

    def cmd_unmarked(self) -> str:
        return "never served"


class DispatcherTests(SynchronousTestCase):
    """Each request gets exactly one reply or error; serving goes on."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.connect(Grant.everything())

    def connect(self, grant: Grant) -> None:
        self.connection = FakeConnection(grant)
        self.handlers = Handlers(self.connection)
        self.dispatcher = Dispatcher(self.handlers, self.connection, RIGHTS, Logger())

    def test_reply(self) -> None:
        """A handler's value is the reply, optional arguments included."""
        self.dispatcher.dispatch(1, "echo", ["a"])
        self.dispatcher.dispatch(2, "echo", ["a", "b"])
        self.assertEqual(self.connection.sent, [("reply", 1, ["a", None]),
                                                ("reply", 2, ["a", "b"])])

    def test_malformed_requests(self) -> None:
        """Unknown or unmarked commands, arguments not an array, a wrong count."""
        for request_id, (name, args) in enumerate(
                [("nosuch", []), (7, []), ("unmarked", []), ("echo", "a"), ("echo", []),
                 ("echo", [1, 2, 3]), ("read", [])], 1):
            self.dispatcher.dispatch(request_id, name, args)
        self.assertEqual(self.connection.sent, [
            ("error", 1, "bad_request", "unknown command 'nosuch'"),
            ("error", 2, "bad_request", "unknown command 7"),
            ("error", 3, "bad_request", "unknown command 'unmarked'"),
            ("error", 4, "bad_request", "arguments must be an array"),
            ("error", 5, "bad_request", "echo takes 1 to 2 arguments, not 0"),
            ("error", 6, "bad_request", "echo takes 1 to 2 arguments, not 3"),
            ("error", 7, "bad_request", "read takes 1 arguments, not 0"),
        ])

    def test_rights_from_the_table(self) -> None:
        """The table's right is checked on the named argument; unlisted needs every right."""
        self.connect(Grant.parse("reader", ["read:pos*"]))
        self.dispatcher.dispatch(1, "read", ["pos"])
        self.dispatcher.dispatch(2, "read", ["orders"])
        self.dispatcher.dispatch(3, "unlisted", ["x"])
        self.dispatcher.dispatch(4, "echo", ["x"])
        self.assertEqual(self.connection.sent, [
            ("reply", 1, "read pos"),
            ("error", 2, "forbidden", "the token 'reader' may not read 'orders'"),
            ("error", 3, "forbidden",
             "the token 'reader' may not use unlisted: it needs every right"),
            ("reply", 4, ["x", None])])

    def test_refusal_is_one_log_line_without_a_message_field(self) -> None:
        """A refused request logs peer, command, code and reason; no field named message."""
        self.dispatcher.dispatch(1, "echo", [])
        [event] = [e for e in self.events if "refused" in e["log_format"]]
        self.assertEqual(formatEvent(event), "192.0.2.1:4000: 'echo' refused: bad_request: "
                                             "echo takes 1 to 2 arguments, not 0")
        self.assertEqual((event["peer"], event["command"], event["code"], event["reason"]),
                         ("192.0.2.1:4000", "echo", "bad_request",
                          "echo takes 1 to 2 arguments, not 0"))
        # trial's legacy observer sets "message" to () in every event: the text is not there.
        self.assertNotIn("{message}", event["log_format"])
        self.assertFalse([e for e in self.events if e.get("log_failure")])

    def test_unexpected_exception_is_internal(self) -> None:
        """A bug is logged with its traceback and answered internal; the next request is served."""
        self.dispatcher.dispatch(1, "broken", [])
        self.dispatcher.dispatch(2, "echo", ["x"])
        self.assertEqual(self.connection.sent, [
            ("error", 1, "internal", "broken failed in the daemon"), ("reply", 2, ["x", None])])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_deferred_results(self) -> None:
        """A Deferred's value is replied when it fires; its failure is mapped the same way."""
        self.dispatcher.dispatch(1, "later", [])
        self.dispatcher.dispatch(2, "fails_later", [])
        self.dispatcher.dispatch(3, "bad_later", [])
        self.assertEqual(self.connection.sent, [
            ("error", 2, "not_found", "gone by then"),
            ("error", 3, "internal", "bad_later failed in the daemon")])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.handlers.pending[0].callback("done")
        self.assertEqual(self.connection.sent[-1], ("reply", 1, "done"))

    def test_handler_that_replies_itself(self) -> None:
        """A handler marked replies_itself gets the request id and sends its own reply."""
        self.dispatcher.dispatch(5, "streams", [])
        self.assertEqual(self.connection.sent, [("reply", 5, "header"), ("raw", b"data")])
