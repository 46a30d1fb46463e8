"""
Tokens with roles: grants, the roles file, the authenticator, the rights each
command needs (exact frames), the ``--token-file`` option, and a real daemon.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

import lttx
from lttx import tap
from lttx.wire import codec
from lttx.state.auth import (
    ACTIONS,
    COMMAND_RIGHTS,
    Grant,
    RolesError,
    Right,
    TokenAuthenticator,
    parse_channel_passwords,
    parse_roles,
)
from lttx.errors import PermissionDenied
from lttx.server.commands import Commands
from lttx.server.dispatch import command
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.server.protocol import LTtxServerProtocol
from lttx.state.store import MemoryStore

from ..common import Daemon, frame, frames_of, listeners, server_protocol

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "contrib" / "tokens.example.json"

ROLES = {"tokens": [
    {"name": "reader", "token": "tok-reader", "rights": ["read"]},
    {"name": "orders", "token": "tok-orders", "rights": ["read:orders_*", "write:orders_*"]},
    {"name": "feed", "token": "tok-feed", "rights": ["publish:hq_*"]},
    {"name": "files", "token": "tok-files",
     "rights": ["subscribe:hq_*", "upload:report_*", "download:report_*"]},
    {"name": "admin", "token": "tok-admin", "rights": ["all"]},
]}


def roles_authenticator() -> TokenAuthenticator:
    return TokenAuthenticator.from_roles(parse_roles(json.dumps(ROLES)))


def store_with_data() -> MemoryStore:
    store = MemoryStore()
    store.put("pos", {"a": 1})
    store.put("orders_1", [10, 20])
    return store


class GrantTests(SynchronousTestCase):
    """A grant is a set of actions, each on names matching glob patterns."""

    def test_rights_syntax(self) -> None:
        """ACTION means ACTION:*; ACTION:GLOB limits it; all names every action."""
        grant = Grant.parse("g", ["read", "write:orders_*", "write:pos_?"])
        self.assertEqual(grant.rights(), ["read:*", "write:orders_*", "write:pos_?"])
        self.assertTrue(grant.allows("read", "anything"))
        self.assertTrue(grant.allows("write", "orders_1"))
        self.assertTrue(grant.allows("write", "pos_a"))
        self.assertFalse(grant.allows("write", "pos_ab"))
        self.assertFalse(grant.allows("write", "ORDERS_1"))  # case-sensitive
        self.assertFalse(grant.allows("publish", "orders_1"))
        self.assertFalse(grant.unlimited)
        self.assertTrue(Grant.parse("g", ["all"]).unlimited)
        # all:PATTERN is about those names: it does not include monitor.
        self.assertEqual(Grant.parse("g", ["all:x_*"]).rights(),
                         [f"{action}:x_*" for action in ACTIONS if action != "monitor"])

    def test_monitor_right(self) -> None:
        """monitor is a right of its own, in all, and takes no pattern."""
        self.assertTrue(Grant.parse("g", ["monitor"]).allows("monitor"))
        self.assertFalse(Grant.parse("g", ["monitor"]).allows("read", "x"))
        self.assertTrue(Grant.parse("g", ["all"]).allows("monitor"))
        self.assertTrue(Grant.everything().allows("monitor"))
        self.assertFalse(Grant.parse("g", ["all:x_*"]).allows("monitor"))
        self.assertFalse(Grant.parse("g", ["read", "write"]).allows("monitor"))
        with self.assertRaises(RolesError) as caught:
            Grant.parse("g", ["monitor:hq_*"])
        self.assertIn("monitor takes no pattern", str(caught.exception))

    def test_any_name(self) -> None:
        """resource=None asks whether the action is allowed on some name."""
        grant = Grant.parse("g", ["subscribe:hq_*"])
        self.assertTrue(grant.allows("subscribe", None))
        self.assertFalse(grant.allows("read", None))

    def test_non_name_is_covered_by_star_only(self) -> None:
        """A resource that is not a string matches only the pattern *."""
        self.assertFalse(Grant.parse("g", ["read:*x*"]).allows("read", 12))
        self.assertTrue(Grant.parse("g", ["read"]).allows("read", 12))

    def test_bad_rights(self) -> None:
        """An unknown action, an empty pattern or a non-string right is refused."""
        with self.assertRaises(RolesError) as caught:
            Grant.parse("feed", ["pubish:hq_*"])
        self.assertEqual(str(caught.exception),
                         "feed: unknown action 'pubish' in right 'pubish:hq_*' (actions: "
                         "read, write, publish, subscribe, upload, download, monitor, or all)")
        self.assertRaises(RolesError, Grant.parse, "g", ["read:"])
        self.assertRaises(RolesError, Grant.parse, "g", [1])


class RolesFileTests(SynchronousTestCase):
    """The roles file: JSON, a list of named tokens with their rights."""

    def test_example_file(self) -> None:
        """contrib/tokens.example.json (shown in the README) parses as documented."""
        roles = dict((grant.name, grant) for _, grant in
                     parse_roles(EXAMPLE.read_text(encoding="utf-8")))
        self.assertEqual(sorted(roles), ["admin", "md-feed", "prometheus", "reports", "strategy"])
        self.assertTrue(roles["admin"].unlimited)
        self.assertEqual(roles["prometheus"].rights(), ["monitor:*"])
        self.assertEqual(roles["md-feed"].rights(), ["read:cfg_*", "publish:hq_*"])
        self.assertEqual(parse_channel_passwords(EXAMPLE.read_text(encoding="utf-8")),
                         [("hq_ticks", "CHANGE-ME-channel-5e8a21")])

    def test_channel_password_errors(self) -> None:
        """A broken "channels" object is refused, naming the entry."""
        for channels, text in (([], '"channels" must be an object'),
                               ({"a": "pw"}, 'channels \'a\': must be an object with only'),
                               ({"a": {"password": ""}}, "password must be a non-empty"),
                               ({"a": {"password": "x", "extra": 1}}, "with only")):
            document = json.dumps({"tokens": [], "channels": channels})
            with self.assertRaises(RolesError) as caught:
                parse_channel_passwords(document, "roles.json")
            self.assertIn(text, str(caught.exception))
        self.assertEqual(parse_channel_passwords('{"tokens": []}'), [])

    def test_errors_name_the_entry(self) -> None:
        """Each mistake is refused with the source and the entry at fault."""
        def error(document: Any) -> str:
            text = document if isinstance(document, str) else json.dumps(document)
            with self.assertRaises(RolesError) as caught:
                parse_roles(text, "roles.json")
            return str(caught.exception)

        one = {"name": "a", "token": "t", "rights": ["read"]}
        self.assertIn("roles.json is not valid JSON", error('{"tokens": ['))
        self.assertIn("key 'token' appears twice",
                      error('{"tokens": [{"token": "a", "token": "b", "rights": []}]}'))
        self.assertEqual(error({"tokens": []}),
                         'roles.json must be an object with a non-empty list "tokens"')
        self.assertEqual(error({"tokens": [one, dict(one, name="b")]}),
                         "roles.json, token #2 (b): the same token is listed twice")
        self.assertEqual(error({"tokens": [one, dict(one, token="u")]}),
                         "roles.json, token #2: the name 'a' is used twice")
        self.assertEqual(error({"tokens": [dict(one, right=["x"])]}),
                         "roles.json, token #1: unknown field(s) right")
        self.assertEqual(error({"tokens": [dict(one, rights="read")]}),
                         "roles.json, token #1 (a): rights must be a list of strings")
        self.assertEqual(error({"tokens": [dict(one, token="")]}),
                         "roles.json, token #1 (a): token must be a non-empty string")
        self.assertIn("roles.json, token #1 (a): unknown action 'reed'",
                      error({"tokens": [dict(one, rights=["reed"])]}))

    def test_empty_rights_allow_nothing(self) -> None:
        """A token with an empty list of rights opens a connection that can only ping."""
        [(_, grant)] = parse_roles('{"tokens": [{"token": "t", "rights": []}]}')
        self.assertEqual(grant.name, "token #1")
        self.assertFalse(any(grant.allows(action) for action in ACTIONS))


class AuthenticatorTests(SynchronousTestCase):
    """The authenticator gives each token its grant, and a wrong token none."""

    def test_single_token_may_do_everything(self) -> None:
        auth = TokenAuthenticator("secret")
        self.assertTrue(auth.authenticate("secret").unlimited)  # type: ignore[union-attr]
        # A token is text: the same bytes are not a token (issue 19, finding 13).
        self.assertIsNone(auth.authenticate(b"secret"))
        self.assertIsNone(auth.authenticate("secret\udcff"))  # unencodable: refused, no raise
        self.assertIsNone(auth.authenticate("Secret"))
        self.assertIsNone(auth.authenticate(None))
        self.assertIsNone(auth.authenticate(["secret"]))
        self.assertFalse(auth.protected_mode)
        self.assertFalse(auth.named_tokens)

    def test_each_token_gets_its_grant(self) -> None:
        auth = roles_authenticator()
        self.assertEqual(auth.token_count, 5)
        self.assertTrue(auth.named_tokens)
        self.assertEqual(auth.authenticate("tok-feed").name, "feed")  # type: ignore[union-attr]
        self.assertEqual(auth.authenticate("tok-admin").name, "admin")  # type: ignore[union-attr]
        self.assertIsNone(auth.authenticate("tok-fee"))
        self.assertTrue(auth.check("tok-reader"))
        self.assertFalse(auth.check("nope"))

    def test_protected_mode(self) -> None:
        """Without tokens, loopback peers get every right and others are refused."""
        auth = TokenAuthenticator(None)
        self.assertTrue(auth.protected_mode)
        self.assertTrue(auth.authenticate("anything").unlimited)  # type: ignore[union-attr]
        self.assertFalse(auth.allows_peer(IPv4Address("TCP", "192.0.2.1", 1)))

    def test_token_and_roles_exclude_each_other(self) -> None:
        self.assertRaises(ValueError, TokenAuthenticator, "t", [("u", Grant.everything())])


class CommandRightsTests(SynchronousTestCase):
    """Each variable command is allowed or refused by the token's rights, exactly."""

    READS: list[tuple[list[Any], Any]] = [
        (["get", ["pos"]], [{"a": 1}]),
        (["exists", ["pos"]], True),
        (["get_dict_value", ["pos", "a"]], [1]),
        (["get_list_value", ["orders_1", 0]], 10),
    ]
    WRITES: list[list[Any]] = [
        ["put", ["pos", 1]],
        ["delete", ["pos"]],
        ["dict_change", ["pos", "b", 2]],
        ["list_append", ["orders_1", 30]],
        ["list_pop", ["orders_1"]],
        ["list_remove", ["orders_1", 10]],
    ]

    def connect(self, token: str) -> tuple[LTtxServerProtocol, StringTransport, MemoryStore]:
        store = store_with_data()
        factory = LTtxFactory(ServerState(store, roles_authenticator()))
        proto, transport = server_protocol(token=token, factory=factory)
        return proto, transport, store

    def request(self, proto: LTtxServerProtocol, transport: StringTransport,
                request_id: int, name: str, args: list[Any]) -> Any:
        transport.clear()
        proto.dataReceived(frame([codec.REQUEST, request_id, name, args]))
        [reply] = frames_of(transport.value())
        return reply

    def test_table_covers_every_variable_command(self) -> None:
        """The one table lists each variable command with the action it needs."""
        for (name, _), _ in self.READS:
            self.assertEqual(COMMAND_RIGHTS[name], Right("read", 0))
        for name, _ in self.WRITES:
            self.assertEqual(COMMAND_RIGHTS[name], Right("write", 0))
        self.assertEqual(COMMAND_RIGHTS["keys"], Right("read", None))
        self.assertIsNone(COMMAND_RIGHTS["ping"])

    def test_reader_reads_and_may_not_write(self) -> None:
        """A read token gets every read; each write is a forbidden error frame."""
        proto, transport, store = self.connect("tok-reader")
        for request_id, ((name, args), result) in enumerate(self.READS, 1):
            self.assertEqual(self.request(proto, transport, request_id, name, args),
                             [codec.REPLY, request_id, result])
        for request_id, (name, args) in enumerate(self.WRITES, 10):
            self.assertEqual(
                self.request(proto, transport, request_id, name, args),
                [codec.ERROR, request_id, "forbidden",
                 f"the token 'reader' may not write {args[0]!r}"])
        self.assertEqual(store.get("pos"), {"a": 1})
        self.assertEqual(store.get("orders_1"), [10, 20])
        self.assertEqual(self.request(proto, transport, 20, "keys", []),
                         [codec.REPLY, 20, ["orders_1", "pos"]])
        self.assertFalse(transport.disconnecting)

    def test_pattern_limits_reads_and_writes(self) -> None:
        """A token with read/write on orders_* changes orders_1 only, and sees only it."""
        proto, transport, store = self.connect("tok-orders")
        replies = [self.request(proto, transport, 1, "list_append", ["orders_1", 30]),
                   self.request(proto, transport, 2, "list_pop", ["orders_1", 0]),
                   self.request(proto, transport, 3, "list_remove", ["orders_1", 20]),
                   self.request(proto, transport, 4, "dict_change", ["orders_d", "k", 1]),
                   self.request(proto, transport, 5, "put", ["orders_2", "x"]),
                   self.request(proto, transport, 6, "delete", ["orders_2"])]
        self.assertEqual(replies, [[codec.REPLY, 1, 3], [codec.REPLY, 2, 10],
                                   [codec.REPLY, 3, True], [codec.REPLY, 4, None],
                                   [codec.REPLY, 5, None], [codec.REPLY, 6, True]])
        self.assertEqual(store.get("orders_1"), [30])
        self.assertEqual(self.request(proto, transport, 7, "put", ["pos", 0]),
                         [codec.ERROR, 7, "forbidden", "the token 'orders' may not write 'pos'"])
        self.assertEqual(self.request(proto, transport, 8, "get", ["pos"]),
                         [codec.ERROR, 8, "forbidden", "the token 'orders' may not read 'pos'"])
        self.assertEqual(self.request(proto, transport, 9, "keys", ["*"]),
                         [codec.REPLY, 9, ["orders_1", "orders_d"]])

    def test_documented_frames(self) -> None:
        """The refused put shown in hex in docs/protocol.md is what the daemon sends."""
        proto, transport, _ = self.connect("tok-reader")
        request = bytes.fromhex("00 00 00 0d 94 00 07 a3 70 75 74 92 a3 70 6f 73 00")
        for i in range(len(request)):  # one byte at a time: framing holds
            proto.dataReceived(request[i:i + 1])
        self.assertEqual(transport.value(), bytes.fromhex(
            "00 00 00 35 94 02 07 a9 66 6f 72 62 69 64 64 65 6e d9 26 74 68 65 20 74 6f 6b"
            " 65 6e 20 27 72 65 61 64 65 72 27 20 6d 61 79 20 6e 6f 74 20 77 72 69 74 65 20"
            " 27 70 6f 73 27"))

    def test_token_without_variable_rights(self) -> None:
        """A publish-only token may ping but not touch or list variables."""
        proto, transport, _ = self.connect("tok-feed")
        self.assertEqual(self.request(proto, transport, 1, "ping", []),
                         [codec.REPLY, 1, "pong"])
        self.assertEqual(self.request(proto, transport, 2, "keys", []),
                         [codec.ERROR, 2, "forbidden", "the token 'feed' may not read anything"])
        self.assertEqual(self.request(proto, transport, 3, "exists", ["pos"]),
                         [codec.ERROR, 3, "forbidden", "the token 'feed' may not read 'pos'"])

    def test_full_rights_token(self) -> None:
        """An "all" token may do every command, and sees every name."""
        proto, transport, store = self.connect("tok-admin")
        for request_id, (name, args) in enumerate(self.WRITES, 1):
            self.assertEqual(self.request(proto, transport, request_id, name, args)[0],
                             codec.REPLY, name)
        self.assertEqual(self.request(proto, transport, 9, "keys", []),
                         [codec.REPLY, 9, ["orders_1", "pos"]])

    def test_arity_is_checked_before_rights(self) -> None:
        """A malformed request is a bad_request, whatever the token."""
        proto, transport, _ = self.connect("tok-feed")
        self.assertEqual(self.request(proto, transport, 1, "put", []),
                         [codec.ERROR, 1, "bad_request", "put takes 2 to 3 arguments, not 0"])

    def test_refusal_is_logged_once(self) -> None:
        """A refused command gives one log line naming the token's role, no traceback."""
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher)  # type: ignore[arg-type]
        proto, transport, _ = self.connect("tok-reader")
        self.request(proto, transport, 1, "put", ["pos", 1])
        lines = [formatEvent(e) for e in events]
        self.assertIn("127.0.0.1:40000 connected as reader", lines)
        refused = [line for line in lines if "refused" in line]
        self.assertEqual(refused, ["127.0.0.1:40000: 'put' refused: forbidden: "
                                   "the token 'reader' may not write 'pos'"])
        self.assertFalse([e for e in events if e.get("log_failure")])


class ChannelRightsTests(SynchronousTestCase):
    """subscribe and publish follow the token's channel patterns, exactly."""

    def setUp(self) -> None:
        self.factory = LTtxFactory(ServerState(MemoryStore(), roles_authenticator()))
        self.feed, self.feed_out = server_protocol(token="tok-feed", factory=self.factory)
        self.sub, self.sub_out = server_protocol(token="tok-files", factory=self.factory,
                                                 peer=("127.0.0.1", 40001))

    def test_subscribe_needs_the_right_for_every_channel(self) -> None:
        """One channel outside the token's patterns refuses the whole request."""
        self.sub.dataReceived(frame([codec.REQUEST, 1, "subscribe", ["hq_center@orders"]]))
        self.assertEqual(frames_of(self.sub_out.value()), [[
            codec.ERROR, 1, "forbidden", "the token 'files' may not subscribe 'orders'"]])
        self.sub_out.clear()
        self.sub.dataReceived(frame([codec.REQUEST, 2, "subscribe", [["hq_center"]]]))
        epoch = self.factory.state.channels.channel("hq_center").epoch
        self.assertEqual(frames_of(self.sub_out.value()), [[codec.REPLY, 2, {
            "hq_center": {"epoch": epoch, "first": 1, "next": 1, "from": 1}}]])
        self.sub_out.clear()
        self.feed.dataReceived(frame([codec.REQUEST, 3, "subscribe", ["hq_center"]]))
        self.assertEqual(frames_of(self.feed_out.value()), [[
            codec.ERROR, 3, "forbidden", "the token 'feed' may not subscribe 'hq_center'"]])

    def test_publish_outside_the_patterns_is_a_notice(self) -> None:
        """A refused publish gets a forbidden notice and reaches no subscriber."""
        self.sub.dataReceived(frame([codec.REQUEST, 1, "subscribe", ["hq_center"]]))
        self.sub_out.clear()
        self.feed.dataReceived(frame([codec.PUBLISH, "hq_center", "600000.SH", 10.23])
                               + frame([codec.PUBLISH, "orders", "k", 1]))
        self.assertEqual(frames_of(self.feed_out.value()), [[
            codec.NOTICE, "forbidden", "the token 'feed' may not publish 'orders'"]])
        self.assertEqual(frames_of(self.sub_out.value()),
                         [[codec.MESSAGE, "hq_center", "600000.SH", 10.23, 1]])

    def test_unsubscribe_needs_no_right(self) -> None:
        self.feed.dataReceived(frame([codec.REQUEST, 1, "unsubscribe", ["hq_center"]]))
        self.assertEqual(frames_of(self.feed_out.value()), [[codec.REPLY, 1, []]])


class _CommandsWithExtraCommand(Commands):
    @command(0)
    def cmd_status_like(self) -> str:
        return "served"


class _ProtocolWithExtraCommand(LTtxServerProtocol):
    command_handlers = _CommandsWithExtraCommand


class AuthorizeTests(SynchronousTestCase):
    """``authorize`` checks one action of the connection's token on one name."""

    def connect(self, token: str, protocol: type = LTtxServerProtocol) -> tuple[
            LTtxServerProtocol, StringTransport]:
        factory = LTtxFactory(ServerState(MemoryStore(), roles_authenticator()))
        proto = protocol(factory.state)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000))
        proto.makeConnection(transport)
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [token, {}]]))
        self.assertEqual(frames_of(transport.value())[0][0], codec.REPLY)
        transport.clear()
        return proto, transport

    def test_channel_and_file_actions(self) -> None:
        """publish, subscribe, upload and download follow the token's patterns."""
        feed, _ = self.connect("tok-feed")
        feed.authorize("publish", "hq_center")
        with self.assertRaises(PermissionDenied) as caught:
            feed.authorize("publish", "orders")
        self.assertEqual(str(caught.exception), "the token 'feed' may not publish 'orders'")
        self.assertRaises(PermissionDenied, feed.authorize, "subscribe", "hq_center")

        files, _ = self.connect("tok-files")
        files.authorize("subscribe", "hq_center")
        files.authorize("upload", "report_1.csv")
        files.authorize("download", "report_1.csv")
        files.authorize("download")  # listing files: some download right
        self.assertRaises(PermissionDenied, files.authorize, "upload", "secret.csv")
        self.assertRaises(PermissionDenied, files.authorize, "download", "secret.csv")
        self.assertRaises(PermissionDenied, files.authorize, "publish", "hq_center")

    def test_before_hello_nothing_is_allowed(self) -> None:
        proto = LTtxFactory(ServerState(MemoryStore(), roles_authenticator())).buildProtocol(None)
        self.assertRaises(PermissionDenied, proto.authorize, "read", "pos")

    def test_unlisted_command_needs_every_right(self) -> None:
        """A command missing from COMMAND_RIGHTS is refused to limited tokens (fail closed)."""
        proto, transport = self.connect("tok-reader", _ProtocolWithExtraCommand)
        proto.dataReceived(frame([codec.REQUEST, 1, "status_like", []]))
        self.assertEqual(frames_of(transport.value()), [[
            codec.ERROR, 1, "forbidden",
            "the token 'reader' may not use status_like: it needs every right"]])
        proto, transport = self.connect("tok-admin", _ProtocolWithExtraCommand)
        proto.dataReceived(frame([codec.REQUEST, 1, "status_like", []]))
        self.assertEqual(frames_of(transport.value()), [[codec.REPLY, 1, "served"]])


class TokenFileOptionTests(SynchronousTestCase):
    """--token-file takes a plain token (as before) or a roles file."""

    def write(self, content: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        return path

    def test_plain_token_file_is_one_token(self) -> None:
        """A one-line file stays the single token that may do everything."""
        options = tap.Options()
        options.parseOptions(["--token-file", self.write("secret\n")])
        self.assertIsNone(options["roles"])
        auth = tap.make_authenticator(options, {})
        self.assertTrue(auth.authenticate("secret").unlimited)  # type: ignore[union-attr]
        self.assertEqual(auth.token_count, 1)

    def test_roles_file(self) -> None:
        """A file holding a JSON object is a roles file; makeService uses its tokens."""
        options = tap.Options()
        options.parseOptions(["--token-file", str(EXAMPLE), "--data-dir", self.mktemp()])
        self.assertEqual([grant.name for _, grant in options["roles"]],
                         ["admin", "md-feed", "strategy", "reports", "prometheus"])
        auth = tap.make_authenticator(options, {"LTTX_TOKEN": "ignored"})
        self.assertEqual(auth.token_count, 5)
        self.assertIsNone(auth.authenticate("ignored"))
        service = tap.makeService(options, MemoryReactorClock())
        self.assertEqual(len(listeners(service)), 1)

    def test_broken_roles_file_is_a_usage_error(self) -> None:
        """twistd refuses to start on a broken roles file, saying what is wrong."""
        path = self.write('{"tokens": [{"token": "t", "rights": ["raed"]}]}')
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--token-file", path])
        self.assertIn(f"--token-file {path}, token #1 (token #1): unknown action 'raed'",
                      str(caught.exception))
        self.assertRaises(usage.UsageError, tap.Options().parseOptions,
                          ["--token-file", os.path.join(self.mktemp(), "missing")])

    def test_help_documents_roles(self) -> None:
        """twistd lttx --help tells the roles file format and the actions."""
        text = " ".join(str(tap.Options()).split())
        self.assertIn("a roles file", text)
        self.assertIn('"rights": ["publish:hq_*", "read"]', text)
        self.assertIn("read, write (variables), publish, subscribe (channels), upload, "
                      "download (files), monitor (the status report, the HTTP page and "
                      "metrics), all", text)


class RolesIntegrationTests(TestCase):
    """The real daemon with a roles file, and the blocking client."""

    def test_roles_through_the_daemon(self) -> None:
        """Each token does what its rights allow; the rest raises PermissionDenied."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(ROLES, f)
        daemon = Daemon(self, "--token-file", path, token=None)
        daemon.wait_for_log(r"5 tokens with roles from ")
        admin = daemon.connect(token="tok-admin")
        admin.put("pos", {"a": 1})
        reader = daemon.connect(token="tok-reader")
        self.assertEqual(reader.get("pos"), {"a": 1})
        with self.assertRaises(lttx.PermissionDenied) as caught:
            reader.put("pos", 2)
        self.assertEqual(str(caught.exception), "the token 'reader' may not write 'pos'")
        self.assertEqual(reader.get("pos"), {"a": 1})  # the connection goes on
        orders = daemon.connect(token="tok-orders")
        self.assertEqual(orders.list_append("orders_1", {"id": 1}), 1)
        self.assertEqual(orders.keys(), ["orders_1"])
        self.assertRaises(lttx.AuthError, daemon.connect, token="tok-nobody")
        daemon.wait_for_log(r"connected as reader$")
        daemon.wait_for_log(r"connected as admin$")

    def test_file_rights_through_the_daemon(self) -> None:
        """upload/download patterns govern send_file, recv_file, list_files and delete_file."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(ROLES, f)
        daemon = Daemon(self, "--token-file", path, token=None)
        folder = self.mktemp()
        os.makedirs(folder)
        for name in ("report_1.csv", "secret.csv"):
            Path(folder, name).write_bytes(name.encode() * 1000)
        admin = daemon.connect(token="tok-admin")
        admin.send_file(os.path.join(folder, "secret.csv"))
        files = daemon.connect(token="tok-files")
        self.assertEqual(files.send_file(os.path.join(folder, "report_1.csv"))["size"], 12000)
        with self.assertRaises(lttx.PermissionDenied) as caught:
            files.send_file(os.path.join(folder, "secret.csv"), name="secret2.csv")
        self.assertEqual(str(caught.exception), "the token 'files' may not upload 'secret2.csv'")
        self.assertEqual([f["name"] for f in files.list_files()], ["report_1.csv"])
        self.assertEqual([f["name"] for f in admin.list_files()],
                         ["report_1.csv", "secret.csv"])
        downloads = self.mktemp()
        os.makedirs(downloads)
        self.assertEqual(files.recv_file("report_1.csv", downloads)["size"], 12000)
        self.assertRaises(lttx.PermissionDenied, files.recv_file, "secret.csv", downloads)
        self.assertEqual(sorted(os.listdir(downloads)), ["report_1.csv"])
        self.assertRaises(lttx.PermissionDenied, files.delete_file, "secret.csv")
        self.assertTrue(files.delete_file("report_1.csv"))
        reader = daemon.connect(token="tok-reader")
        with self.assertRaises(lttx.PermissionDenied) as caught:
            reader.list_files()
        self.assertEqual(str(caught.exception), "the token 'reader' may not download anything")
        self.assertEqual([f["name"] for f in admin.list_files()], ["secret.csv"])

    def test_channel_and_file_rights_through_the_daemon(self) -> None:
        """publish/subscribe/upload/download rights hold on the real daemon."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(ROLES, f)
        daemon = Daemon(self, "--token-file", path, token=None)
        files = daemon.connect(token="tok-files")
        feed = daemon.connect(token="tok-feed")

        self.assertRaises(lttx.PermissionDenied, files.subscribe, "chat")
        files.subscribe("hq_sh")
        feed.push("600000.SH", "refused", "chat")      # outside the feed's rights
        feed.push("600000.SH", "10.23", "hq_sh")
        message = files.Q.get(timeout=15)
        self.assertEqual((message.channel, message.key, message.data),
                         ("hq_sh", "600000.SH", "10.23"))
        daemon.wait_for_log(r"publish refused: forbidden: the token 'feed' may not publish 'chat'")

        report = Path(self.mktemp())
        report.write_bytes(b"pnl,1\n")
        self.assertEqual(files.send_file(str(report), name="report_1.csv")["size"], 6)
        with self.assertRaises(lttx.PermissionDenied):
            files.send_file(str(report), name="secret.csv")
        admin = daemon.connect(token="tok-admin")
        admin.send_file(str(report), name="other.csv")
        self.assertEqual([f["name"] for f in files.list_files()], ["report_1.csv"])
        self.assertRaises(lttx.PermissionDenied, files.recv_file, "other.csv", self.mktemp())
        self.assertRaises(lttx.PermissionDenied, files.delete_file, "other.csv")
        self.assertRaises(lttx.PermissionDenied, feed.list_files)
        self.assertEqual(sorted(f["name"] for f in admin.list_files()),
                         ["other.csv", "report_1.csv"])
