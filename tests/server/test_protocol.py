"""
The daemon's protocol driven through a StringTransport, asserting exact frames.
"""

from __future__ import annotations

import struct

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lttx.wire import codec
from lttx.errors import ServerError

from ..common import TOKEN, frame, frames_of, server_protocol

R, E = codec.REPLY, codec.ERROR


class HelloTests(SynchronousTestCase):
    """The first frame authenticates."""

    def test_hello_with_the_token(self) -> None:
        """The right token gets a reply describing the daemon."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([0, 1, "hello", [TOKEN, {}]]))
        self.assertEqual(frames_of(transport.value()), [
            [R, 1, {"server": "lttx", "version": "0.1.0", "protocol": 2,
                    "max_frame": 64 * 1024 * 1024}]])
        self.assertFalse(transport.disconnecting)

    def test_wrong_token(self) -> None:
        """A wrong token gets an auth error and the connection is closed."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([0, 1, "hello", ["nope", {}]]))
        self.assertEqual(frames_of(transport.value()), [[E, 1, "auth", "wrong token"]])
        self.assertTrue(transport.disconnecting)

    def test_token_of_wrong_type(self) -> None:
        """A token that is not a string is a wrong token."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([0, 1, "hello", [12345, {}]]))
        self.assertEqual(frames_of(transport.value()), [[E, 1, "auth", "wrong token"]])

    def test_request_before_hello(self) -> None:
        """Any command before hello is refused and the connection closed."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([0, 1, "get", ["pos"]]))
        self.assertEqual(frames_of(transport.value()), [
            [E, 1, "auth", "authenticate first: the first frame must be hello"]])
        self.assertTrue(transport.disconnecting)

    def test_frames_after_a_fatal_error_are_ignored(self) -> None:
        """Frames already in the buffer after a refused hello are not served."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([0, 1, "hello", ["nope", {}]]) + frame([0, 2, "keys", []]))
        self.assertEqual(frames_of(transport.value()), [[E, 1, "auth", "wrong token"]])

    def test_garbage_before_hello(self) -> None:
        """An undecodable first frame is refused and the connection closed."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(struct.pack("!I", 1) + b"\xc1")
        [[kind, request_id, code, _]] = frames_of(transport.value())
        self.assertEqual((kind, request_id, code), (E, None, "bad_request"))
        self.assertTrue(transport.disconnecting)

    def test_protected_mode_loopback(self) -> None:
        """Without a token, a loopback peer is served whatever token it sends."""
        proto, transport = server_protocol(token=None, authenticate=False)
        proto.dataReceived(frame([0, 1, "hello", ["anything", {}]]))
        self.assertEqual(frames_of(transport.value())[0][0], R)

    def test_protected_mode_remote_peer(self) -> None:
        """Without a token, a peer from another machine is refused at once."""
        proto, transport = server_protocol(token=None, peer=("192.0.2.7", 5000),
                                           authenticate=False)
        self.assertEqual(frames_of(transport.value()), [[
            E, None, "auth", "the daemon runs without a token and serves loopback clients only"]])
        self.assertTrue(transport.disconnecting)

    def test_remote_peer_with_a_token(self) -> None:
        """With a token, a remote peer presenting it is served."""
        proto, transport = server_protocol(peer=("192.0.2.7", 5000))
        proto.dataReceived(frame([0, 2, "ping", []]))
        self.assertEqual(frames_of(transport.value()), [[R, 2, "pong"]])


class CommandTests(SynchronousTestCase):
    """Each command's exact reply frame."""

    def setUp(self) -> None:
        self.proto, self.transport = server_protocol()

    def request(self, *payload: object) -> list[object]:
        self.transport.clear()
        self.proto.dataReceived(frame(list(payload)))
        return frames_of(self.transport.value())

    def test_ping(self) -> None:
        self.assertEqual(self.request(0, 9, "ping", []), [[R, 9, "pong"]])

    def test_put_get(self) -> None:
        """put replies nil; get wraps the value in an array."""
        value = {"a": [1, 2.5, None, True, b"\x00", "中"]}
        self.assertEqual(self.request(0, 1, "put", ["v", value]), [[R, 1, None]])
        self.assertEqual(self.request(0, 2, "get", ["v"]), [[R, 2, [value]]])

    def test_get_missing_and_stored_none(self) -> None:
        """A missing variable is [], a stored None is [None]."""
        self.assertEqual(self.request(0, 1, "get", ["v"]), [[R, 1, []]])
        self.request(0, 2, "put", ["v", None])
        self.assertEqual(self.request(0, 3, "get", ["v"]), [[R, 3, [None]]])

    def test_delete_exists_keys(self) -> None:
        self.request(0, 1, "put", ["pos", 1])
        self.request(0, 2, "put", ["px", 2])
        self.request(0, 3, "put", ["other", 3])
        self.assertEqual(self.request(0, 4, "keys", []), [[R, 4, ["other", "pos", "px"]]])
        self.assertEqual(self.request(0, 5, "keys", ["p*"]), [[R, 5, ["pos", "px"]]])
        self.assertEqual(self.request(0, 6, "exists", ["pos"]), [[R, 6, True]])
        self.assertEqual(self.request(0, 7, "delete", ["pos"]), [[R, 7, True]])
        self.assertEqual(self.request(0, 8, "delete", ["pos"]), [[R, 8, False]])
        self.assertEqual(self.request(0, 9, "exists", ["pos"]), [[R, 9, False]])

    def test_dict_commands(self) -> None:
        self.assertEqual(self.request(0, 1, "dict_change", ["d", "k", 1]), [[R, 1, None]])
        self.assertEqual(self.request(0, 2, "dict_change", ["d", 5, "five"]), [[R, 2, None]])
        self.assertEqual(self.request(0, 3, "get_dict_value", ["d", "k"]), [[R, 3, [1]]])
        self.assertEqual(self.request(0, 4, "get_dict_value", ["d", "zz"]), [[R, 4, []]])
        self.assertEqual(self.request(0, 5, "get_dict_value", ["nod", "k"]), [[R, 5, []]])
        self.assertEqual(self.request(0, 6, "get", ["d"]), [[R, 6, [{"k": 1, 5: "five"}]]])

    def test_list_commands(self) -> None:
        self.assertEqual(self.request(0, 1, "list_append", ["l", "a"]), [[R, 1, 1]])
        self.assertEqual(self.request(0, 2, "list_append", ["l", 1]), [[R, 2, 2]])
        self.assertEqual(self.request(0, 3, "list_append", ["l", 1.0]), [[R, 3, 3]])
        self.assertEqual(self.request(0, 4, "get_list_value", ["l", 0]), [[R, 4, "a"]])
        self.assertEqual(self.request(0, 5, "list_remove", ["l", 1.0]), [[R, 5, True]])
        self.assertEqual(self.request(0, 6, "list_remove", ["l", 1.0]), [[R, 6, False]])
        self.assertEqual(self.request(0, 7, "list_remove", ["none", 1]), [[R, 7, False]])
        self.assertEqual(self.request(0, 8, "list_pop", ["l"]), [[R, 8, 1]])
        self.assertEqual(self.request(0, 9, "list_pop", ["l", 0]), [[R, 9, "a"]])
        self.assertEqual(self.request(0, 10, "get", ["l"]), [[R, 10, [[]]]])

    def test_errors_of_commands(self) -> None:
        """Each typed error comes as [2, id, code, message] and changes nothing."""
        self.request(0, 1, "put", ["l", [1]])
        self.request(0, 2, "put", ["d", {"a": 1}])
        cases = [
            (["dict_change", ["l", "k", 1]],
             "wrong_type", "dict_change needs a dict, but 'l' holds a list"),
            (["get_dict_value", ["l", "k"]],
             "wrong_type", "get_dict_value needs a dict, but 'l' holds a list"),
            (["list_append", ["d", 1]],
             "wrong_type", "list_append needs a list, but 'd' holds a dict"),
            (["list_pop", ["d"]], "wrong_type", "list_pop needs a list, but 'd' holds a dict"),
            (["list_remove", ["d", 1]],
             "wrong_type", "list_remove needs a list, but 'd' holds a dict"),
            (["get_list_value", ["d", 0]],
             "wrong_type", "get_list_value needs a list, but 'd' holds a dict"),
            (["list_pop", ["l", 5]], "index", "index 5 out of range for 'l' of length 1"),
            (["get_list_value", ["l", -2]], "index", "index -2 out of range for 'l' of length 1"),
            (["list_pop", ["nolist"]], "not_found", "no variable named 'nolist'"),
            (["get_list_value", ["nolist", 0]], "not_found", "no variable named 'nolist'"),
            (["list_pop", ["l", "0"]], "bad_request", "a list index must be an int, not str"),
            (["list_pop", ["l", True]], "bad_request", "a list index must be an int, not bool"),
            (["dict_change", ["d", [1], 1]],
             "bad_request", "a dict key must be str, int or bytes, not list"),
            (["put", ["", 1]], "bad_request", "a variable name must be a non-empty string, not ''"),
            (["put", [7, 1]], "bad_request", "a variable name must be a non-empty string, not 7"),
            (["keys", [1]], "bad_request", "a key pattern must be a string"),
            (["put", ["x"]], "bad_request", "put takes 2 to 3 arguments, not 1"),
            (["list_pop", ["x", 1, {}, 2]], "bad_request",
             "list_pop takes 1 to 3 arguments, not 4"),
            (["list_pop", ["x", 1, 2]], "bad_request", "list_pop options must be a map"),
            (["put", ["x", 1, {"ttl": 1, "tll": 2}]], "bad_request",
             "put has no option 'tll' (it takes if_revision, ttl)"),
            (["put", ["x", 1, {"ttl": 0}]], "bad_request", "ttl must be positive, not 0"),
            (["put", ["x", 1, {"if_revision": -1}]], "bad_request",
             "if_revision must be an int >= 0, not -1"),
            (["incr", ["d"]], "wrong_type", "incr needs an int or float, but 'd' holds a dict"),
            (["incr", ["x", True]], "bad_request", "incr needs an int or float amount, not bool"),
            (["expire", ["x", "1"]], "bad_request",
             "expire must be a finite number of seconds, not '1'"),
            (["nosuch", []], "bad_request", "unknown command 'nosuch'"),
            (["hello", [TOKEN, {}]], "bad_request", "unknown command 'hello'"),
            (["get", "pos"], "bad_request", "arguments must be an array"),
        ]
        for request_id, (request, code, message) in enumerate(cases, start=10):
            self.assertEqual(self.request(0, request_id, *request),
                             [[E, request_id, code, message]], request)
        self.assertEqual(self.request(0, 99, "get", ["l"]), [[R, 99, [[1]]]])
        self.assertEqual(self.request(0, 98, "get", ["d"]), [[R, 98, [{"a": 1}]]])
        self.assertFalse(self.transport.disconnecting)

    def test_pop_from_empty_list(self) -> None:
        self.request(0, 1, "put", ["l", []])
        self.assertEqual(self.request(0, 2, "list_pop", ["l"]),
                         [[E, 2, "index", "pop from the empty list 'l'"]])

    def test_undecodable_payload_after_hello(self) -> None:
        """The framing is intact: an error with a nil id, and the next frame is served."""
        self.transport.clear()
        self.proto.dataReceived(struct.pack("!I", 2) + b"\x01\x02" + frame([0, 3, "ping", []]))
        self.assertEqual(frames_of(self.transport.value()), [
            [E, None, "bad_request",
             "undecodable payload: ExtraData: unpack(b) received extra data."],
            [R, 3, "pong"]])
        self.assertFalse(self.transport.disconnecting)

    def test_malformed_frames_after_hello(self) -> None:
        """Frames of the wrong shape get an error with a nil id; serving goes on."""
        for payload in ([], {"a": 1}, [9, 1, 2], [0, -1, "ping", []], [0, "x", "ping", []]):
            [[kind, request_id, code, _]] = self.request(*payload) if isinstance(payload, list) \
                else self._raw(payload)
            self.assertEqual((kind, request_id, code), (E, None, "bad_request"), payload)
        self.assertEqual(self.request(0, 5, "ping", []), [[R, 5, "pong"]])

    def _raw(self, payload: object) -> list[object]:
        self.transport.clear()
        self.proto.dataReceived(frame(payload))
        return frames_of(self.transport.value())

    def test_frame_split_at_awkward_points(self) -> None:
        """Bytes arriving one at a time are reassembled into the same frames."""
        data = frame([0, 1, "put", ["v", "x" * 300]]) + frame([0, 2, "get", ["v"]])
        self.transport.clear()
        for i in range(len(data)):
            self.proto.dataReceived(data[i:i + 1])
        self.assertEqual(frames_of(self.transport.value()), [[R, 1, None], [R, 2, ["x" * 300]]])

    def test_frame_over_the_limit(self) -> None:
        """A length prefix over --max-frame gets too_large and a close."""
        proto, transport = server_protocol(max_frame=1024)
        proto.dataReceived(struct.pack("!I", 1025) + b"x" * 10)
        self.assertEqual(frames_of(transport.value()), [
            [E, None, "too_large", "frame of 1025 bytes is over the limit of 1024 bytes"]])
        self.assertTrue(transport.disconnecting)

    def test_unexpected_exception_is_logged_and_answered(self) -> None:
        """A bug in a store is an internal error for that request only."""

        class BrokenStore:
            def get(self, name: str) -> None:
                raise ZeroDivisionError("bug")

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = server_protocol(store=BrokenStore())
        proto.dataReceived(frame([0, 1, "get", ["x"]]) + frame([0, 2, "ping", []]))
        self.assertEqual(frames_of(transport.value()), [
            [E, 1, ServerError.code, "get failed in the daemon"], [R, 2, "pong"]])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(any("log_failure" in event for event in observer))


class DeferredResultTests(SynchronousTestCase):
    """A store that answers later (a remote engine, a group fsync)."""

    def test_reply_waits_for_the_deferred(self) -> None:
        from twisted.internet.defer import Deferred

        pending: list[Deferred[None]] = []

        class SlowStore:
            def put(self, name: str, value: object) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d

        proto, transport = server_protocol(store=SlowStore())
        proto.dataReceived(frame([0, 1, "put", ["x", 1]]) + frame([0, 2, "ping", []]))
        self.assertEqual(frames_of(transport.value()), [[R, 2, "pong"]])
        transport.clear()
        pending[0].callback(None)
        self.assertEqual(frames_of(transport.value()), [[R, 1, None]])


class PublishTests(SynchronousTestCase):
    """Publish frames from a broken client hurt nobody."""

    def test_publish_on_a_map_channel_is_refused_and_the_batch_still_goes_out(self) -> None:
        """A map as channel gets a notice; the good publish before it reaches the subscriber."""
        from lttx.state.auth import TokenAuthenticator
        from lttx.server.factory import LTtxFactory
        from lttx.server.state import ServerState
        from lttx.state.store import MemoryStore

        factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN)))
        subscriber, sub_transport = server_protocol(factory=factory)
        publisher, pub_transport = server_protocol(factory=factory)
        subscriber.dataReceived(frame([0, 1, "subscribe", [["hq"], None, {}]]))
        sub_transport.clear()
        publisher.dataReceived(frame([5, "hq", "k", "good"]) + frame([5, {"a": 1}, "k", "bad"]))
        self.assertEqual(frames_of(sub_transport.value()), [[codec.MESSAGE, "hq", "k", "good", 1]])
        [[kind, code, _]] = frames_of(pub_transport.value())
        self.assertEqual((kind, code), (codec.NOTICE, "bad_request"))
        self.assertFalse(pub_transport.disconnecting)


class BeforeHelloTests(SynchronousTestCase):
    """A peer that has not authenticated costs the daemon little."""

    def test_big_first_frame_is_refused_before_it_is_buffered(self) -> None:
        """Before hello, a frame over 64 KiB is refused at its length prefix."""
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(struct.pack("!I", 64 * 1024 * 1024 - 1) + b"\x00" * 100)
        self.assertEqual(frames_of(transport.value()), [
            [E, None, "too_large", "frame of 67108863 bytes is over the limit of 65536 bytes"]])
        self.assertTrue(transport.disconnecting)

    def test_limit_is_the_daemons_after_hello(self) -> None:
        """After hello, frames up to --max-frame are read."""
        proto, transport = server_protocol()
        proto.dataReceived(frame([0, 1, "put", ["big", b"x" * 100_000]]))
        self.assertEqual(frames_of(transport.value()), [[R, 1, None]])

    def test_silent_connection_is_closed(self) -> None:
        """A connection that never says hello is closed after the hello timeout."""
        from twisted.internet.task import Clock

        from lttx.state.auth import TokenAuthenticator
        from lttx.server.factory import LTtxFactory
        from lttx.server.state import ServerState
        from lttx.server.protocol import HELLO_TIMEOUT
        from lttx.state.store import MemoryStore

        clock = Clock()
        factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator(TOKEN), clock=clock))
        silent, silent_transport = server_protocol(factory=factory, authenticate=False)
        talker, talker_transport = server_protocol(factory=factory)
        clock.advance(HELLO_TIMEOUT)
        self.assertEqual(frames_of(silent_transport.value()), [
            [E, None, "auth", "no hello within 10 seconds"]])
        self.assertTrue(silent_transport.disconnecting)
        self.assertFalse(talker_transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])


class ByteCounterTests(SynchronousTestCase):
    def test_connection_counts_its_bytes(self) -> None:
        """bytes_in counts what was received; bytes_out replies and messages written."""
        from lttx.state.channels import ChannelRegistry

        registry = ChannelRegistry()
        subscriber, sub_transport = server_protocol(channels=registry)
        publisher, pub_transport = server_protocol(channels=registry)
        hello = len(frame([codec.REQUEST, 0, "hello", [TOKEN, {}]]))
        self.assertEqual(subscriber.bytes_in, hello)
        self.assertGreater(subscriber.bytes_out, 0)  # the hello reply
        request = frame([codec.REQUEST, 1, "subscribe", [["hq"]]])
        before = subscriber.bytes_out
        subscriber.dataReceived(request)
        self.assertEqual(subscriber.bytes_in, hello + len(request))
        self.assertEqual(subscriber.bytes_out - before, len(sub_transport.value()))
        sub_transport.clear()
        before = subscriber.bytes_out
        push = frame([codec.PUBLISH, "hq", "k", b"x" * 100])
        publisher.dataReceived(push * 3)
        self.assertEqual(publisher.bytes_in, hello + 3 * len(push))
        self.assertEqual(subscriber.bytes_out - before, len(sub_transport.value()))
        self.assertGreater(len(sub_transport.value()), 300)


class RequestConnectionTests(SynchronousTestCase):
    """A blocking client's request connection (hello mode "requests")."""

    def hello(self) -> tuple[object, object]:
        proto, transport = server_protocol(authenticate=False)
        proto.dataReceived(frame([0, 1, "hello", [TOKEN, {"mode": "requests"}]]))
        self.assertEqual(frames_of(transport.value())[0][:2], [R, 1])
        transport.clear()
        return proto, transport

    def test_serves_requests(self) -> None:
        """Variable commands and publish are served as on any command connection."""
        proto, transport = self.hello()
        proto.dataReceived(frame([0, 2, "put", ["x", 1]]) + frame([0, 3, "get", ["x"]])
                           + frame([0, 4, "publish", ["ch", "k", "v"]]))
        self.assertEqual(frames_of(transport.value()), [[R, 2, None], [R, 3, [1]], [R, 4, 1]])

    def test_neither_subscribes_nor_watches(self) -> None:
        """Messages and changes arrive on the client's main connection only: a
        subscribe or a watch here is refused, and the connection goes on."""
        proto, transport = self.hello()
        proto.dataReceived(frame([0, 2, "subscribe", [["ch"], None, {}]])
                           + frame([0, 3, "watch", [["x*"]]]) + frame([0, 4, "ping", []]))
        refusal = 'a request connection (hello mode "requests") neither subscribes nor watches'
        self.assertEqual(frames_of(transport.value()), [
            [E, 2, "bad_request", refusal], [E, 3, "bad_request", refusal], [R, 4, "pong"]])
        self.assertIsNone(proto.reader)
        self.assertFalse(transport.disconnecting)

    def test_listed_as_a_request_connection(self) -> None:
        """The status page's connection list names its kind."""
        from lttx.web.report import connections_report

        proto, _ = self.hello()
        [row] = connections_report(proto.state)["connections"]
        self.assertEqual(row["kind"], "requests")
