"""
The blocking client's request connection (:mod:`lttx.client.requests`),
against a real daemon: the calling thread reads its own reply there, and only
where nobody can tell: the order of a thread's pushes and calls (also across
threads), a watcher seeing its own write before the reply, many threads each
getting their own replies, a daemon that dies, a call that times out, and no
second connection where it is not used.
"""

from __future__ import annotations

import select
import signal
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

import lttx
from lttx.client import requests as requests_module
from lttx.client.requests import NOT_TAKEN, OPEN_AFTER

from ..common import Daemon
from .test_direct_requests import own_replies

BLOB = bytes(range(256)) * (8 * 1024)  # 2 MiB: more than one read of the daemon


class RequestConnectionTests(TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()
        self.requests = self.client._requests

    def warm(self) -> None:
        """Make the calls after which the request connection is open."""
        for _ in range(OPEN_AFTER):
            self.client.ping()
        self.assertTrue(self.requests.is_open)

    def test_the_caller_reads_its_own_reply(self) -> None:
        """Once open, puts and gets are answered on the request connection:
        nothing is handed to the client's reactor thread (no wake-up there),
        and the daemon lists it as a request connection."""
        self.warm()
        reactor = self.client._loop.reactor
        handed: list[Any] = []
        original = reactor.callFromThread
        reactor.callFromThread = lambda f, *a, **k: (handed.append(f), original(f, *a, **k))
        self.addCleanup(setattr, reactor, "callFromThread", original)
        answered = self.requests.answered
        for i in range(50):
            self.client.put("x", {"i": i})
            self.assertEqual(self.client.get("x"), {"i": i})
        with self.assertRaises(lttx.WrongTypeError):  # an error reply, mapped as on the main one
            self.client.incr("x")
        self.assertEqual(self.requests.answered - answered, 101)
        self.assertEqual(handed, [])
        self.daemon.wait_for_log(r"connected \(request connection\)")
        status = self.client.status()
        self.assertEqual(status["connections"], 2)

    def test_a_value_that_cannot_be_encoded_is_refused_there(self) -> None:
        """A set (or an int past 64 bits) on the request connection: the
        caller gets EncodeError as on the main one, nothing is sent, and the
        connection's encoder serves the next call with the right bytes."""
        self.warm()
        answered = self.requests.answered
        with self.assertRaises(lttx.EncodeError):
            self.client.put("x", {"bad": {1, 2}})
        with self.assertRaises(lttx.EncodeError):
            self.client.put("x", [2**70])
        self.client.put("x", {"good": [1.5, "z", None, b"b"]})
        self.assertEqual(self.client.get("x"), {"good": [1.5, "z", None, b"b"]})
        self.assertEqual(self.requests.answered - answered, 2)
        self.assertTrue(self.requests.is_open)

    def test_a_push_then_a_call_keep_their_order(self) -> None:
        """A push of 2 MiB (the daemon reads it in many chunks) then a publish:
        the publish is not sent on the request connection, where it would
        overtake the push; the subscriber sees the two in order, each time."""
        self.warm()
        sub = self.daemon.connect()
        sub.subscribe("order")
        for i in range(5):
            self.client.push("k", [2 * i, BLOB], "order")
            self.client.publish("k", [2 * i + 1], "order")
        got = [sub.Q.get(timeout=30).data[0] for _ in range(10)]
        self.assertEqual(got, list(range(10)))

    def test_the_order_holds_across_threads(self) -> None:
        """Thread A pushes, then lets thread B call: B's publish still comes
        after A's push (the fence counts every thread's pushes)."""
        self.warm()
        sub = self.daemon.connect()
        sub.subscribe("order")
        for i in range(5):
            pushed = threading.Event()
            pusher = threading.Thread(
                target=lambda: (self.client.push("k", [2 * i, BLOB], "order"), pushed.set()))
            pusher.start()
            self.assertTrue(pushed.wait(30))
            self.client.publish("k", [2 * i + 1], "order")
            pusher.join(30)
        got = [sub.Q.get(timeout=30).data[0] for _ in range(10)]
        self.assertEqual(got, list(range(10)))

    def test_calls_after_the_pushes_are_answered_take_it_again(self) -> None:
        """A call on the main connection answered after a push lifts the fence:
        the next calls are answered on the request connection."""
        self.warm()
        self.client.push("k", 1, "ch")
        answered = self.requests.answered
        self.client.put("x", 1)  # the main way: the push is then applied
        self.assertEqual(self.requests.answered, answered)
        self.client.put("x", 2)
        self.assertEqual(self.requests.answered, answered + 1)

    def test_large_values_take_the_main_connection(self) -> None:
        """A request of 256 KiB or more is written by the reactor (at the pace
        the daemon reads it), as before; the next small one is answered here."""
        self.warm()
        answered = self.requests.answered
        self.client.put("big", BLOB)
        self.assertEqual(self.requests.answered, answered)
        self.assertEqual(self.client.get("big"), BLOB)  # a large reply: read here
        self.assertEqual(self.requests.answered, answered + 1)

    def test_no_call_after_close(self) -> None:
        """Once the client is closed, no call opens it again."""
        self.warm()
        self.client.close()
        self.assertFalse(self.requests.is_open)
        with self.assertRaises(lttx.LTtxError):
            self.client.ping()
        self.assertFalse(self.requests.is_open)

    def test_a_watcher_sees_its_own_write_before_the_reply(self) -> None:
        """A client with a mirror: each put returns once its mirror shows it
        (its calls stay on the main connection, where the change comes first)."""
        self.warm()
        mirror = self.client.mirror("m*")
        answered = self.requests.answered
        for i in range(100):
            self.client.put("m1", i)
            self.assertEqual(mirror["m1"], i)
        self.assertEqual(self.requests.answered, answered)
        mirror.close()
        self.client.ping()
        self.assertEqual(self.requests.answered, answered + 1)  # nothing watched: back

    def test_a_subscriber_makes_no_request_connection(self) -> None:
        """A client that subscribes first never opens a second connection."""
        client = self.daemon.connect()
        client.subscribe("ticks")
        for i in range(20):
            client.put("y", i)
        self.assertEqual(client.get("y"), 19)
        self.assertFalse(client._requests.is_open)
        self.assertEqual(client._requests.answered, 0)

    def test_a_one_call_client_makes_no_request_connection(self) -> None:
        """A script making one call (the lttx command) opens one connection."""
        client = self.daemon.connect()
        client.put("z", 1)
        self.assertFalse(client._requests.is_open)
        self.assertNotIn("(request connection)", self.daemon.log_text())

    def test_many_threads_each_get_their_own_replies(self) -> None:
        """Sixteen threads put and get their own variables and increment one
        counter: one at a time on the request connection, the others on the
        main one meanwhile; each reply reaches the thread that asked."""
        self.warm()
        answered = self.requests.answered
        own_replies(self, self.client)
        self.assertGreater(self.requests.answered - answered, 0)

    def test_a_late_reply_is_not_taken_by_the_next_call(self) -> None:
        """A put times out (the daemon is stopped); once it runs again, its
        late reply (None) is skipped: the next get gets its own (the value)."""
        self.warm()
        self.client.timeout = 1
        assert self.daemon.process is not None
        self.daemon.signal(signal.SIGSTOP)
        try:
            with self.assertRaises(lttx.TimeoutError):
                self.client.put("late", "A")
        finally:
            self.daemon.signal(signal.SIGCONT)
        self.client.timeout = 15
        answered = self.requests.answered
        self.assertEqual(self.client.get("late"), "A")
        self.assertEqual(self.requests.answered, answered + 1)

    def test_a_call_after_a_timed_out_main_call_stays_behind_it(self) -> None:
        """A large put (the main way) times out while the daemon is stopped:
        unanswered, it may still be applied, so the next put of the same
        variable does not take the request connection (it could overtake it)
        but goes the main way behind it; the variable ends with the later
        value, and the fence lifts once that call is answered."""
        self.warm()
        self.client.timeout = 1
        self.daemon.signal(signal.SIGSTOP)
        try:
            with self.assertRaises(lttx.TimeoutError):
                self.client.put("v", BLOB)  # 2 MiB: written by the reactor thread
        finally:
            self.daemon.signal(signal.SIGCONT)
        self.client.timeout = 15
        answered = self.requests.answered
        self.client.put("v", "later")
        self.assertEqual(self.requests.answered, answered)  # the main way
        self.assertEqual(self.client.get("v"), "later")
        self.assertEqual(self.requests.answered, answered + 1)  # fence lifted

    def test_not_sent_once_the_daemon_has_closed_its_side(self) -> None:
        """The daemon dies while the client's reactor thread is held (it has
        not seen its connection go): a call is not answered on the request
        connection, whose daemon is gone (and never had the request: its
        kernel acknowledged none of it): the connection is closed and the
        call takes the main way."""
        self.warm()
        sock = self.requests._sock

        def in_the_reactor_thread() -> Any:
            self.daemon.kill()
            select.select([sock], [], [], 10)  # until the daemon's FIN is there
            got: list[Any] = []
            caller = threading.Thread(target=lambda: got.append(
                self.requests.call("ping", ())))
            caller.start()
            caller.join(10)
            return got, self.client._client.connected

        got, connected = self.client._loop.run(in_the_reactor_thread, timeout=30)
        self.assertEqual((got, connected), ([NOT_TAKEN], True))
        self.assertFalse(self.requests.is_open)

    def test_after_a_restart_the_calls_wait_and_reopen_it(self) -> None:
        """The daemon is killed while the client is idle and comes back on
        its port: the next call waits for the reconnection, and the request
        connection is opened again beside the new main connection."""
        self.warm()
        port = self.daemon.port
        protocol = self.client._client.protocol
        lost: Deferred[None] = Deferred()
        self.client._loop.run(lambda: protocol.lost.addBoth(
            lambda result: (lost.callback(None), result)[1]) and None)
        self.daemon.kill()
        self.client._loop.run(lambda: lost, timeout=30)  # the client saw it
        Daemon(self, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.client.put("x", 3)  # waits for the reconnection
        answered = self.requests.answered
        self.assertEqual(self.client.get("x"), 3)
        self.assertEqual(self.requests.answered, answered + 1)
        self.assertIsNot(self.client._client.protocol, protocol)

    def test_close_ends_a_call_waiting_there(self) -> None:
        """Closing while a thread waits for its reply on the request
        connection (the daemon is stopped): that call fails at once."""
        self.warm()
        errors: list[BaseException] = []
        self.daemon.signal(signal.SIGSTOP)
        self.addCleanup(self.daemon.signal, signal.SIGCONT)

        def wait() -> None:
            try:
                self.client.put("x", 1)
            except lttx.LTtxError as e:
                errors.append(e)

        caller = threading.Thread(target=wait)
        caller.start()
        while caller.is_alive() and not self.requests._lock.locked():
            caller.join(0.01)  # until the call holds the request connection
        self.requests.close()  # (what Client.close does, the daemon not needed)
        caller.join(10)
        self.assertFalse(caller.is_alive())
        self.assertEqual([str(e) for e in errors],
                         ["the client was closed while this call waited"])

    def test_a_refused_opening_is_said_and_the_calls_go_on(self) -> None:
        """A daemon at its per-host connection limit refuses the request
        connection: one warning, every call answered on the main connection,
        no new attempt before the back-off."""
        daemon = Daemon(self, "--max-connections-per-host", "1")
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        self.patch(requests_module, "RETRY_FIRST", 3600.0)
        client = daemon.connect()
        for i in range(10):
            client.put("x", i)
        self.assertEqual(client.get("x"), 9)
        self.assertFalse(client._requests.is_open)
        warnings = [e for e in events if "no request connection" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("--max-connections-per-host", warnings[0]["why"])
