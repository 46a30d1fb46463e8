"""
A request connection whose daemon end goes away under a call
(:mod:`lttx.client.requests`): against a scripted daemon on a real socket,
a request the daemon never read goes the main way (NOT_TAKEN: it waits for
the reconnection), one it read and never answered is ConnectionLost (it may
have been applied: never sent twice).  Both with the kernel's count of
acknowledged bytes and with the TCP state checked before each send.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

from twisted.trial.unittest import TestCase

from lttx.client import requests as requests_module
from lttx.client.requests import NOT_TAKEN, OPEN_AFTER, RequestConnection
from lttx.errors import BadRequest, ConnectionLost, TimeoutError, WrongTypeError
from lttx.wire import codec

from ..common import frame


def _read_frame(conn: socket.socket) -> Any:
    head = b""
    while len(head) < 4:
        head += conn.recv(4 - len(head))
    (length,) = struct.unpack("!I", head)
    payload = b""
    while len(payload) < length:
        payload += conn.recv(length - len(payload))
    return codec.decode(payload)


class _ScriptedDaemon:
    """Answers hello and one request, then does ``then(conn)`` and closes."""

    def __init__(self, then: Callable[[socket.socket], None],
                 answer: Callable[[int], bytes] = lambda i: frame([codec.REPLY, i, "pong"]),
                 ) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.read: list[Any] = []
        self._then = then
        self._answers = [lambda i: frame([codec.REPLY, i, "pong"]), answer]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            for answer in self._answers:  # hello, then one request
                request = _read_frame(conn)
                self.read.append(request)
                conn.sendall(answer(request[1]))
            self._then(conn)
        self.listener.close()


def _owner(port: int) -> Any:
    """What a RequestConnection reads of its blocking client: connected, no
    subscription, the main connection plain TCP to ``port``."""
    peer = SimpleNamespace(host="127.0.0.1", port=port)
    protocol = SimpleNamespace(sender=SimpleNamespace(direct=True), max_frame=2**20,
                               transport=SimpleNamespace(getPeer=lambda: peer))
    settings = SimpleNamespace(hello_args=lambda mode: ["token", {"mode": mode}])
    client = SimpleNamespace(protocol=protocol, _subscriptions={}, connected=True,
                             watches=SimpleNamespace(listeners=[]), settings=settings)
    return SimpleNamespace(_client=client, _closed=False, timeout=10.0,
                           _loop=SimpleNamespace(_thread=SimpleNamespace(ident=-1)))


class RequestEndTests(TestCase):
    def opened(self, then: Callable[[socket.socket], None]) -> tuple[RequestConnection, Any]:
        """A request connection opened and answered once by a scripted daemon."""
        daemon = _ScriptedDaemon(then)
        self.addCleanup(daemon.thread.join, 10)
        connection = RequestConnection(_owner(daemon.port))
        self.addCleanup(connection.close)
        for _ in range(OPEN_AFTER - 1):
            self.assertIs(connection.call("ping", ()), NOT_TAKEN)  # (not opened yet)
        self.assertEqual(connection.call("ping", ()), "pong")
        return connection, daemon

    def closed_before_the_request(self) -> None:
        connection, daemon = self.opened(lambda conn: None)
        daemon.thread.join(10)
        select.select([connection._sock], [], [], 10)  # until its FIN is here
        self.assertIs(connection.call("put", ("v", 1)), NOT_TAKEN)
        self.assertFalse(connection.is_open)

    def closed_after_reading_the_request(self) -> None:
        read: list[Any] = []
        connection, daemon = self.opened(lambda conn: read.append(_read_frame(conn)))
        with self.assertRaises(ConnectionLost):
            connection.call("put", ("v", 1))
        daemon.thread.join(10)
        self.assertEqual([r[2:] for r in read], [["put", ["v", 1]]])
        self.assertFalse(connection.is_open)

    def test_a_daemon_gone_before_the_request_never_had_it(self) -> None:
        """The daemon closed its side before the request came: its kernel
        acknowledged none of it, so the call goes the main way."""
        self.closed_before_the_request()

    def test_a_daemon_gone_after_reading_the_request_is_a_lost_connection(self) -> None:
        """The daemon read the request, then closed without a reply: it may
        have applied it, so the call says ConnectionLost (never sent again)."""
        self.closed_after_reading_the_request()

    def test_a_daemon_that_read_the_request_then_reset_is_a_lost_connection(self) -> None:
        """The daemon read the request and ended the connection with a reset
        (SO_LINGER 0): its ACK of the request may never have come (it rides
        on the reply), so a reset proves nothing: ConnectionLost, the request
        is not sent again."""
        read: list[Any] = []

        def read_then_reset(conn: socket.socket) -> None:
            read.append(_read_frame(conn))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        connection, daemon = self.opened(read_then_reset)
        with self.assertRaises(ConnectionLost):
            connection.call("incr", ("n", 1))
        daemon.thread.join(10)
        self.assertEqual([r[2:] for r in read], [["incr", ["n", 1]]])
        self.assertFalse(connection.is_open)

    def test_a_reply_in_pieces_keeps_to_the_calls_time_out(self) -> None:
        """The reply's first half comes after half the time-out, the rest only
        after 1.3 time-outs: the call times out (its time-out counts from the
        send, not from each read)."""
        def in_pieces(conn: socket.socket) -> None:
            request = _read_frame(conn)
            reply = frame([codec.REPLY, request[1], "late"])
            time.sleep(0.5)
            conn.sendall(reply[:5])
            time.sleep(0.8)
            with contextlib.suppress(OSError):  # (the client may have closed it)
                conn.sendall(reply[5:])

        connection, daemon = self.opened(in_pieces)
        connection._owner.timeout = 1.0
        with self.assertRaises(TimeoutError):
            connection.call("get", ("v",))
        daemon.thread.join(10)

    def test_the_acknowledged_count_is_what_is_used(self) -> None:
        """On Linux the count replaces the check before each send: with the
        check made to fail, calls are still answered."""
        if requests_module._TCP_INFO is None:
            self.skipTest("no TCP_INFO here")
        self.patch(requests_module, "peer_open", lambda sock: False)
        connection, _ = self.opened(lambda conn: None)
        self.assertIsNotNone(connection._acked_base)

    def test_without_the_count_the_state_is_checked_before_each_send(self) -> None:
        """Where the kernel gives no acknowledged count: the same two outcomes,
        from the TCP state checked before the send."""
        self.patch(requests_module, "_BYTES_ACKED_AT", 10**6)  # (beyond any tcp_info)
        self.closed_before_the_request()
        self.closed_after_reading_the_request()


def _raw(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


class RequestReplyTests(TestCase):
    """The replies a call reads on its request connection, the common one
    (one whole reply in one read) and the others."""

    def answered(self, answer: Callable[[int], bytes]) -> tuple[RequestConnection, Any]:
        daemon = _ScriptedDaemon(lambda conn: None, answer)
        self.addCleanup(daemon.thread.join, 10)
        connection = RequestConnection(_owner(daemon.port))
        self.addCleanup(connection.close)
        for _ in range(OPEN_AFTER - 1):
            self.assertIs(connection.call("ping", ()), NOT_TAKEN)
        return connection, daemon

    def test_a_late_reply_then_its_own_in_one_read(self) -> None:
        """Another id's reply before this call's, in the same read: skipped."""
        connection, _ = self.answered(lambda i: frame([codec.REPLY, i - 1, "late"])
                                      + frame([codec.REPLY, i, "own"]))
        self.assertEqual(connection.call("get", ("v",)), "own")

    def test_an_error_reply(self) -> None:
        """An error frame for this call raises the daemon's error."""
        connection, _ = self.answered(
            lambda i: frame([codec.ERROR, i, "wrong_type", "v is not a number"]))
        with self.assertRaises(WrongTypeError):
            connection.call("incr", ("v",))

    def test_undecodable_replies_close_it(self) -> None:
        """Bytes that are not a frame of the protocol: BadRequest, and the
        connection is closed (the stream cannot be trusted)."""
        for payload in (b"\xc1", b"\x92\x01\x02", b"\x93\x01\x02", b"\xa3abc",
                        codec.encode([codec.ERROR, 2, "x"])):
            connection, _ = self.answered(lambda i: _raw(payload))
            with self.assertRaises(BadRequest):
                connection.call("ping", ())
            self.assertFalse(connection.is_open)
