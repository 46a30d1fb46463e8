"""
The blocking client's requests written from the calling thread
(:mod:`lttx.client.sending`): against a real daemon, from many threads at
once, they keep each thread's order with its pushes, never interleave
frames (the daemon would close the connection), fall back to the reactor
thread where a send could overtake earlier bytes, and do not go through the
reactor thread where they need not.
"""

from __future__ import annotations

import select
import threading
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import TestCase

import lttx
from lttx.client import pacing
from lttx.client.sending import Sender

from ..common import Daemon

THREADS = 8


def run_threads(target: Any, n: int = THREADS) -> None:
    """Run ``target(k)`` in ``n`` threads at once; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(k: int) -> None:
        try:
            start.wait(10)
            target(k)
        except BaseException as e:  # handed to the test's thread below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


def own_replies(test: Any, client: Any, threads: int = 16, rounds: int = 50) -> None:
    """``threads`` threads each put and get their own variable ``rounds``
    times and increment one counter: each reply must reach the thread that
    asked (a wrong one fails the thread), and the counter end exact."""
    client.put("count", 0)

    def work(k: int) -> None:
        for i in range(rounds):
            client.put(f"t{k}", [k, i])
            got = client.get(f"t{k}")
            if got != [k, i]:
                raise AssertionError(f"thread {k} got {got!r} for {[k, i]!r}")
            client.incr("count")

    run_threads(work, threads)
    test.assertEqual(client.get("count"), threads * rounds)


class DirectRequestTests(TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()
        self.addCleanup(self.client.close)

    def test_requests_do_not_go_through_the_reactor_thread(self) -> None:
        """On plain TCP a put and a get are written by the caller: nothing is
        handed to the client's reactor thread (each hand-off would call
        callFromThread)."""
        self.client.ping()
        handed = self.count_hand_offs()
        for i in range(50):
            self.client.put("x", i)
            self.assertEqual(self.client.get("x"), i)
        self.assertEqual(handed, [])
        self.assertTrue(self.client._client.protocol.sender.direct)

    def test_each_thread_keeps_the_order_of_its_pushes_and_requests(self) -> None:
        """Eight threads alternate push and publish (a request) on one channel:
        the subscriber sees each thread's values in the order it made them,
        every one of them, and the connection stays up (no interleaved frame)."""
        self.check_order()

    def test_the_order_holds_with_every_push_sent_from_its_thread(self) -> None:
        """The same with every push written by its thread (no batching)."""
        self.patch(pacing, "DIRECT_PUSH_GAP", 0.0)
        self.patch(pacing, "STREAM_REST", 0.0)
        self.check_order()

    def test_the_order_holds_with_every_push_batched(self) -> None:
        """The same with every push handed to the reactor thread."""
        self.patch(pacing, "DIRECT_PUSH_RUN", 0)
        self.check_order()

    def test_a_push_after_a_pause_is_sent_from_its_thread(self) -> None:
        """Pushes spaced more than DIRECT_PUSH_GAP apart (here: any) are not
        handed to the reactor thread, and arrive in order."""
        self.patch(pacing, "DIRECT_PUSH_GAP", 0.0)
        sub = self.daemon.connect()
        self.addCleanup(sub.close)
        sub.subscribe("ticks")
        self.client.ping()
        handed = self.count_hand_offs()
        for i in range(50):
            self.client.push("k", i, "ticks")
        self.assertEqual([sub.Q.get(timeout=30).data for _ in range(50)], list(range(50)))
        self.assertEqual(handed, [])

    def test_a_short_burst_is_sent_from_its_thread_a_long_one_batched(self) -> None:
        """The first DIRECT_PUSH_RUN pushes of a burst go out from their
        thread; the rest of it is handed to the reactor thread; all arrive,
        in order."""
        self.patch(pacing, "DIRECT_PUSH_GAP", 1e9)  # every push in one burst
        self.patch(pacing, "DIRECT_PUSH_RUN", 5)
        sub = self.daemon.connect()
        self.addCleanup(sub.close)
        sub.subscribe("ticks")
        self.client.ping()
        self.client._pacing.last_push = float("-inf")  # a burst starts now
        handed = self.count_hand_offs()
        for i in range(5):
            self.client.push("k", i, "ticks")
        self.assertEqual(handed, [])
        for i in range(5, 200):
            self.client.push("k", i, "ticks")
        self.assertEqual([sub.Q.get(timeout=30).data for _ in range(200)], list(range(200)))
        self.assertGreater(len(handed), 0)

    def test_a_stream_stays_batched_until_it_rests_then_bursts_leave_at_once(self) -> None:
        """On a clock of the test's: a burst longer than DIRECT_PUSH_RUN spills
        to the reactor thread; a push soon after the reactor thread took the
        spilled ones (within STREAM_REST) is queued too, even as a new burst;
        once the stream rested, a burst goes out from its thread again."""
        clock = [100.0]
        self.patch(pacing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
        self.patch(pacing, "DIRECT_PUSH_RUN", 2)
        sub = self.daemon.connect()
        self.addCleanup(sub.close)
        sub.subscribe("ticks")
        self.client.ping()
        sent_direct: list[bytes] = []
        original = self.client._push_direct
        self.client._push_direct = lambda data: sent_direct.append(data) or original(data)

        def burst(first: int, n: int) -> None:
            for i in range(first, first + n):
                self.client.push("k", i, "ticks")
            self.client.flush()  # the reactor thread took what was queued

        burst(0, 5)  # 2 direct, 3 queued
        self.assertEqual(len(sent_direct), 2)
        clock[0] += pacing.DIRECT_PUSH_GAP + pacing.STREAM_REST  # rested
        burst(5, 2)
        self.assertEqual(len(sent_direct), 4)
        burst(7, 3)  # (the same burst) 1 queued: a stream again
        self.assertEqual(len(sent_direct), 4)
        clock[0] += pacing.DIRECT_PUSH_GAP + pacing.STREAM_REST / 2  # a new burst, no rest
        burst(10, 1)
        self.assertEqual(len(sent_direct), 4)
        self.assertEqual([sub.Q.get(timeout=30).data for _ in range(11)], list(range(11)))

    def count_hand_offs(self) -> list[Any]:
        """What is handed to the client's reactor thread from now to the test's end."""
        reactor = self.client._loop.reactor
        handed: list[Any] = []
        original = reactor.callFromThread

        def counting(f: Any, *args: Any, **kwargs: Any) -> None:
            handed.append(f)
            original(f, *args, **kwargs)

        reactor.callFromThread = counting
        self.addCleanup(setattr, reactor, "callFromThread", original)
        return handed

    def check_order(self) -> None:
        sub = self.daemon.connect()
        self.addCleanup(sub.close)
        sub.subscribe("order")
        n = 80

        def feed(k: int) -> None:
            for i in range(n):
                self.client.push(k, 2 * i, "order")
                self.client.publish(k, 2 * i + 1, "order")

        run_threads(feed)
        seen: dict[int, list[int]] = {k: [] for k in range(THREADS)}
        for _ in range(THREADS * 2 * n):
            message = sub.Q.get(timeout=30)
            seen[message.key].append(message.data)
        self.assertEqual(seen, {k: list(range(2 * n)) for k in range(THREADS)})
        self.assertTrue(self.client._client.connected)

    def test_many_threads_each_get_their_own_replies(self) -> None:
        """Sixteen threads put and get their own variables and increment one
        counter: every reply reaches the thread that asked, none is lost."""
        own_replies(self, self.client)

    def test_large_values_keep_the_order_when_the_kernel_takes_part(self) -> None:
        """Values of 2 MiB do not fit the socket buffer at once: the rest goes
        through the reactor thread, ahead of later writes; pushes and requests
        of several threads still arrive whole and in each thread's order."""
        sub = self.daemon.connect()
        self.addCleanup(sub.close)
        sub.subscribe("big")
        blob = bytes(range(256)) * (8 * 1024)  # 2 MiB

        def work(k: int) -> None:
            for i in range(4):
                self.client.push(k, 2 * i, "big")
                self.client.put(f"big{k}", [i, blob])
                self.client.publish(k, 2 * i + 1, "big")
                value = self.client.get(f"big{k}")
                if value != [i, blob]:
                    raise AssertionError(f"thread {k}: a wrong value came back")

        run_threads(work, 4)
        seen: dict[int, list[int]] = {k: [] for k in range(4)}
        for _ in range(4 * 8):
            message = sub.Q.get(timeout=30)
            seen[message.key].append(message.data)
        self.assertEqual(seen, {k: list(range(8)) for k in range(4)})

    def test_a_lost_connection_fails_the_waiting_call_and_the_next_reconnects(self) -> None:
        """The daemon is killed: a call on the dead connection fails at once
        (it does not wait for its time-out), and once a daemon is back on
        the port the calls go on, direct again."""
        self.client.put("x", 1)
        port = self.daemon.port
        self.daemon.kill()
        self.client.timeout = 2
        with self.assertRaises(lttx.ConnectionLost):
            for _ in range(1000):  # the loss is noticed at the latest on a reply
                self.client.put("x", 2)
        second = Daemon(self, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.client.timeout = 30
        self.client.put("x", 3)  # waits for the reconnection
        self.assertEqual(self.client.get("x"), 3)
        self.assertTrue(self.client._client.protocol.sender.direct)
        self.assertEqual(second.port, port)

    def test_no_direct_send_once_the_daemon_has_closed_its_side(self) -> None:
        """The daemon dies while the reactor thread is busy (it has not seen
        the connection go): a calling thread must not send on the dead
        connection, where its request would be lost with it; it takes the
        reactor thread's way, which waits for the reconnection."""
        self.client.put("x", 1)
        sender = self.client._client.protocol.sender

        def in_the_reactor_thread() -> tuple[bool, bool, bool]:
            before = sender.idle()
            self.daemon.kill()  # the kernel closes the daemon's side now
            # Until the daemon's FIN is there (the reactor thread is held).
            select.select([sender.transport.fileno()], [], [], 10)
            return before, sender.transport.connected, sender.idle()

        before, connected, after = self.client._loop.run(in_the_reactor_thread, timeout=30)
        self.assertEqual((before, connected, after), (True, True, False))


class SenderTests(TestCase):
    def test_not_direct_on_other_transports(self) -> None:
        """TLS (or any transport but Twisted's plain TCP) keeps every write
        in the reactor thread."""
        from twisted.internet.testing import StringTransport

        sender = Sender(StringTransport(), lambda f: None, direct=True)
        self.assertFalse(sender.direct)
        sender.write(b"abc")
        self.assertEqual(sender.transport.value(), b"abc")
