"""
Channels end to end: the real ``twistd -n lttx`` on 127.0.0.1, blocking clients,
and subscriber processes frozen with SIGSTOP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

import lttx

from .common import PACKAGE_ROOT, TOKEN, Daemon

#: A subscriber in a process of its own: subscribes, says "ready", then reads
#: until the key "__end__" and prints what it saw as one JSON line.
SUBSCRIBER = r"""
import json, sys, lttx
port, conflate = int(sys.argv[1]), sys.argv[2] == "conflate"
c = lttx.connect("127.0.0.1", port, token=sys.argv[3], timeout=30)
gaps = []
c.subscribe("hq", conflate=conflate, on_gap=lambda channel, first, last: gaps.append([first, last]))
print("ready", flush=True)
latest, seqs = {}, []
while True:
    m = c.Q.get(timeout=60)
    if m.key == "__end__":
        break
    latest[m.key] = m.data
    seqs.append(m.seq)
# The seqs not received, as [first, last] ranges.
missing = [[a + 1, b - 1] for a, b in zip([0] + seqs, seqs) if b > a + 1]
c.close()  # the callback thread has run every on_gap queued before __end__
print(json.dumps({"latest": latest, "count": len(seqs), "last": seqs[-1] if seqs else 0,
                  "increasing": all(a < b for a, b in zip(seqs, seqs[1:])),
                  "missing": missing, "gaps": gaps}), flush=True)
"""


def tick(i: int) -> str:
    """About 100 bytes, like one instrument's quote."""
    return f"{i:08d}|10.23|10.24|10.22|10.25|1200|3400|5600|7800|9000|1234567.89|20261126093000000|"


class ChannelsTests(TestCase):
    """Subscribe, push, unsubscribe through one real daemon."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.publisher = self.daemon.connect()

    def test_20000_pushes_arrive_complete_in_order(self) -> None:
        """20,000 pushes from a plain loop arrive complete, in order, with consecutive seq."""
        subscriber = self.daemon.connect()
        self.assertEqual(subscriber.subscribe("hq"), {"hq": 1})
        for i in range(20_000):
            self.publisher.push(f"{i % 5000:06d}.SH", tick(i), "hq")
        received = [subscriber.Q.get(timeout=15) for _ in range(20_000)]
        self.assertEqual([m.seq for m in received], list(range(1, 20_001)))
        self.assertEqual([m.data for m in received], [tick(i) for i in range(20_000)])
        self.assertIsInstance(received[0], lttx.Message)
        self.assertEqual(received[0], lttx.Message("hq", "000000.SH", tick(0), 1))
        self.assertTrue(subscriber.Q.empty())

    def test_several_channels_and_unsubscribe(self) -> None:
        """'a@b' subscribes both; each channel counts its own seq; after unsubscribe
        nothing more of that channel arrives."""
        sub = self.daemon.connect()
        self.assertEqual(sub.subscribe("hq@cb_hq"), {"hq": 1, "cb_hq": 1})
        self.publisher.push("k", 1, "hq")
        self.publisher.push("k", 2, "cb_hq")
        self.publisher.push("k", 3, "hq")
        got = [sub.Q.get(timeout=10) for _ in range(3)]
        self.assertEqual(got, [lttx.Message("hq", "k", 1, 1), lttx.Message("cb_hq", "k", 2, 1),
                               lttx.Message("hq", "k", 3, 2)])
        self.assertEqual(sub.unsubscribe("cb_hq"), ["cb_hq"])
        self.assertEqual(sub.subscriptions, ["hq"])
        self.publisher.push("k", 4, "cb_hq")
        self.publisher.push("k", 5, "hq")
        self.assertEqual(sub.Q.get(timeout=10), lttx.Message("hq", "k", 5, 3))

    def test_password(self) -> None:
        """The first subscriber sets the password; a wrong one is AuthError and the
        client goes on; the right one subscribes."""
        owner = self.daemon.connect()
        owner.subscribe("private", password="pw")
        other = self.daemon.connect()
        with self.assertRaises(lttx.AuthError):
            other.subscribe("private", password="guess")
        self.assertEqual(other.subscriptions, [])
        self.assertEqual(other.subscribe(["private"], password="pw"), {"private": 1})
        self.publisher.push("order", {"side": "buy"}, "private")
        self.assertEqual(other.Q.get(timeout=10).data, {"side": "buy"})
        self.daemon.wait_for_log("'subscribe' refused: auth: wrong password")

    def test_stuck_callback_drops_past_the_queue_limit(self) -> None:
        """A callback that stops keeping up holds at most queue_limit messages; the
        rest are dropped and counted, and what it gets is in order with a seq gap."""
        started, release, finished = threading.Event(), threading.Event(), threading.Event()
        got: list[int] = []

        def stuck(message: lttx.Message) -> None:
            started.set()
            release.wait(30)
            got.append(message.seq)
            if len(got) == 101:
                finished.set()

        sub = self.daemon.connect(queue_limit=100)
        sub.subscribe("cb", callback=stuck)
        self.publisher.push("k", 0, "cb")
        self.assertTrue(started.wait(10))
        for i in range(1, 1000):
            self.publisher.push("k", i, "cb")
        self.publisher.flush()
        self.assertEqual(sub.ping(), "pong")  # the reactor thread is not held up
        sub.subscribe("marker")
        self.publisher.push("end", None, "marker")
        self.assertEqual(sub.Q.get(timeout=10).key, "end")  # every cb message was handed on
        self.assertEqual(sub.Q.dropped, 899)
        release.set()
        self.assertTrue(finished.wait(10))
        self.assertEqual(got, list(range(1, 102)))

    def test_callback_runs_off_the_reactor_thread(self) -> None:
        """A callback gets the messages of its channels in order, in a dispatch thread;
        other channels still go to Q; a failing callback does not stop the next ones."""
        got: list[lttx.Message] = []
        threads: set[str] = set()
        done = threading.Event()

        def on_message(message: lttx.Message) -> None:
            threads.add(threading.current_thread().name)
            got.append(message)
            if message.data == 0:
                raise ValueError("a bug in the user's callback")
            if len(got) == 100:
                done.set()

        sub = self.daemon.connect()
        sub.subscribe("cb", callback=on_message)
        sub.subscribe("plain")
        for i in range(100):
            self.publisher.push("k", i, "cb")
        self.publisher.push("k", "q", "plain")
        self.assertTrue(done.wait(10))
        self.assertEqual([m.data for m in got], list(range(100)))
        self.assertEqual(threads, {"lttx-callbacks"})
        self.assertEqual(sub.Q.get(timeout=10).data, "q")
        self.flushLoggedErrors(ValueError)

    def test_bad_push_is_a_notice_and_flush(self) -> None:
        """An unencodable push raises EncodeError at once; a push with an unhashable key
        is refused by the daemon with one log line; pushes around them are delivered
        intact; flush() returns."""
        sub = self.daemon.connect()
        sub.subscribe("hq")
        self.publisher.push("a", 1, "hq")
        self.assertRaises(lttx.EncodeError, self.publisher.push, "x", {1, 2}, "hq")
        self.assertRaises(lttx.EncodeError, self.publisher.push, "x", 2**70, "hq")
        self.publisher.push(["not", "a", "key"], 2, "hq")
        self.publisher.push("b", 3, "hq")
        self.publisher.flush()
        self.assertEqual([sub.Q.get(timeout=10).data for _ in range(2)], [1, 3])
        self.daemon.wait_for_log("publish refused: bad_request")


class SlowSubscriberTests(TestCase):
    """Subscriber processes frozen with SIGSTOP next to a fast one."""

    def start_subscriber(self, daemon: Daemon, conflate: bool) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        child = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, str(daemon.port),
             "conflate" if conflate else "plain", TOKEN],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

        def cleanup() -> None:
            if child.poll() is None:
                child.send_signal(signal.SIGCONT)
                child.kill()
            child.communicate()

        self.addCleanup(cleanup)
        assert child.stdout is not None
        self.assertEqual(child.stdout.readline().strip(), "ready")
        return child

    def test_frozen_subscribers_cost_their_position_and_read_on(self) -> None:
        """150,000 messages, 10 subscriber processes frozen with SIGSTOP beside a fast
        one: the fast one gets all of them in order, the daemon grows by no more than
        the history bound plus a few MiB, and each frozen one, resumed, reads on to
        the end, what it missed being exactly the gaps the daemon told it of."""
        history = 4 * 1024 * 1024
        daemon = Daemon(self, "--channel-history", str(history))
        fast = daemon.connect()
        fast.subscribe("hq")
        publisher = daemon.connect()
        frozen = [self.start_subscriber(daemon, conflate=False) for _ in range(10)]
        for child in frozen:
            child.send_signal(signal.SIGSTOP)
        rss_before = daemon.rss_kib()
        received: list[int] = []
        # The fast subscriber lives in this process, beside the publisher, and
        # a Python reader is slower than a Python pusher: the publisher waits
        # for it to stay within 3,000 messages (~600 KB, well within the
        # history), as a subscriber that keeps up would.
        for batch in range(150):
            for i in range(batch * 1000, (batch + 1) * 1000):
                publisher.push(f"{i % 5000:06d}.SH", tick(i), "hq")
            while len(received) < (batch + 1) * 1000 - 3000:
                received.append(fast.Q.get(timeout=30).seq)
        while len(received) < 150_000:
            received.append(fast.Q.get(timeout=30).seq)
        rss_after = daemon.rss_kib()
        self.assertEqual(received, list(range(1, 150_001)))
        self.assertEqual(fast.gaps, 0)
        publisher.push("__end__", None, "hq")
        publisher.flush()
        for child in frozen:
            child.send_signal(signal.SIGCONT)
        for child in frozen:
            out, err = child.communicate(timeout=60)
            result = json.loads(out.strip().splitlines()[-1])
            self.assertEqual(result["last"], 150_000)
            self.assertTrue(result["increasing"])
            self.assertTrue(result["missing"], "150,000 messages are ~28 MB, over the history")
            self.assertEqual(result["missing"], result["gaps"])
        # 150,000 messages are ~28 MB: a daemon keeping them for each frozen
        # subscriber would grow by ten times that.
        growth = rss_after - rss_before
        print(f"\ndaemon RSS before {rss_before} KiB, after {rss_after} KiB, "
              f"growth {growth} KiB")
        self.assertLess(growth, history // 1024 + 12 * 1024)
        self.assertNotIn("cut off", daemon.log_text())
        self.assertNotIn("Traceback", daemon.log_text())

    def test_frozen_conflating_subscriber_ends_with_the_latest_values(self) -> None:
        """A conflating subscriber frozen during 60,000 updates of 200 keys, then resumed,
        ends with the latest value of every key, having received fewer messages."""
        daemon = Daemon(self, "--subscriber-buffer", "64KiB")
        publisher = daemon.connect()
        child = self.start_subscriber(daemon, conflate=True)
        child.send_signal(signal.SIGSTOP)
        latest = {}
        for i in range(60_000):
            key = f"{i % 200:06d}.SZ"
            latest[key] = tick(i)
            publisher.push(key, latest[key], "hq")
        publisher.flush()
        publisher.ping()  # the daemon has fanned out every push before this reply
        publisher.push("__end__", None, "hq")
        publisher.flush()
        child.send_signal(signal.SIGCONT)
        out, err = child.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(result["latest"], latest)
        self.assertTrue(result["increasing"])
        self.assertLess(result["count"], 60_000)
        self.assertNotIn("slow subscriber", daemon.log_text())
        self.assertNotIn("Traceback", daemon.log_text())


class ReconnectionTests(TestCase):
    """The client reconnects, re-authenticates and resubscribes by itself."""

    def test_resubscribes_after_a_daemon_restart(self) -> None:
        """A daemon restarted on the same port under a subscribed client: the client
        reconnects, resubscribes (one log line) and receives what is pushed after."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        first = Daemon(self)
        subscriber = first.connect()
        subscriber.subscribe("hq@orders", conflate=False)
        subscriber.subscribe("private", password="pw")
        port = first.port
        first.stop()
        second = Daemon(self, listen=[f"tcp:{port}:interface=127.0.0.1"])
        self.assertEqual(subscriber.ping(), "pong")  # waits for the reconnection
        second.wait_for_log("subscribed to private")
        publisher = second.connect()
        publisher.push("k", "after", "orders")
        publisher.push("k", "secret", "private")
        got = {subscriber.Q.get(timeout=10) for _ in range(2)}
        self.assertEqual(got, {lttx.Message("orders", "k", "after", 1),
                               lttx.Message("private", "k", "secret", 1)})
        lines = [e["log_format"].format(**e) for e in events
                 if "reconnected" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertIn("hq", lines[0])

    def test_calls_while_disconnected_raise_connection_lost(self) -> None:
        """With the daemon gone, a call waits for the timeout, then raises ConnectionLost."""
        daemon = Daemon(self)
        client = daemon.connect(timeout=1)
        client.subscribe("hq")
        daemon.stop()
        with self.assertRaises(lttx.ConnectionLost):
            client.ping()
        with self.assertRaises(lttx.ConnectionLost):
            client.flush()


class PublisherTests(TestCase):
    """A publisher in a plain loop, with the daemon not reading."""

    def test_push_is_bounded_while_the_daemon_does_not_read(self) -> None:
        """With the daemon frozen, pushes fill the kernel buffers and then the client's
        bounded buffer, then push raises TimeoutError after the client's timeout; the
        daemon resumed, every accepted push is delivered, in order."""
        daemon = Daemon(self)
        subscriber = daemon.connect()
        subscriber.subscribe("hq")
        publisher = daemon.connect(timeout=1, push_buffer=256 * 1024)
        daemon.signal(signal.SIGSTOP)
        self.addCleanup(daemon.signal, signal.SIGCONT)
        accepted = 0
        with self.assertRaises(lttx.TimeoutError):
            for i in range(2_000_000):  # ~200 MB if nothing pushed back
                publisher.push(f"{i % 5000:06d}.SH", tick(i), "hq")
                accepted += 1
        # Kernel socket buffers (a few MB) plus the 256 KiB bound, not more.
        self.assertLess(accepted, 150_000)
        daemon.signal(signal.SIGCONT)
        publisher.flush()
        seqs = [subscriber.Q.get(timeout=15).seq for _ in range(accepted)]
        self.assertEqual(seqs, list(range(1, accepted + 1)))
