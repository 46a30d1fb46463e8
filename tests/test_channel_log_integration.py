"""
Channels as retained logs, end to end: the real daemon, blocking clients,
subscriber processes, a TCP proxy the test cuts, a daemon restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from .common import PACKAGE_ROOT, TOKEN, Daemon
from .test_channels_integration import tick

#: A subscriber process: says "ready", then counts messages until "__end__"
#: and prints the count, the last seq and the gaps it was told of.
COUNTER = r"""
import json, sys, lttx
c = lttx.connect("127.0.0.1", int(sys.argv[1]), token=sys.argv[2], timeout=60)
c.subscribe("hq")
print("ready", flush=True)
count, last = 0, 0
while True:
    m = c.Q.get(timeout=120)
    if m.key == "__end__":
        break
    count, last = count + 1, m.seq
print(json.dumps({"count": count, "last": last, "gaps": c.gaps}), flush=True)
c.close()
"""

#: A publisher process: pushes N messages, makes one request, and exits at
#: once, without close() or the exit hook that would flush its pushes.
PUBLISHER = r"""
import os, sys, lttx
c = lttx.connect("127.0.0.1", int(sys.argv[1]), token=sys.argv[2], timeout=60,
                 push_buffer=128 * 1024 * 1024)
print("connected", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[3])):
    c.push("%06d.SH" % (i % 5000), "%08d|" % i + "x" * 1000, "hq")
print("pushed", flush=True)
c.get("anything")
os._exit(0)
"""


class Proxy:
    """A TCP proxy on 127.0.0.1 to ``port``, whose connections :meth:`cut` closes."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass  # cut: the other pump closes its side too
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already shut by the other pump

    def cut(self) -> None:
        """Close every connection through the proxy, mid-stream."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed
                s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def start(testcase: TestCase, script: str, *args: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def cleanup() -> None:
        if child.poll() is None:
            child.kill()
        child.communicate()

    testcase.addCleanup(cleanup)
    return child


class OrderTests(TestCase):
    """A request made after pushes is applied after them."""

    def test_get_after_pushes_sees_them_all(self) -> None:
        """A publisher process pushes 40,000 messages of 1 KB with 10 subscriber processes,
        calls get() and exits at once: every subscriber gets every message (the get
        was answered after the daemon applied them).  The daemon is frozen while
        the publisher pushes, so that most of the 40 MB wait in the client when
        get() is called (the kernel's buffers hold a few MB), as they do when a
        daemon reads slower than a publisher pushes."""
        count = 40_000
        daemon = Daemon(self)
        subscribers = [start(self, COUNTER, str(daemon.port), TOKEN) for _ in range(10)]
        for child in subscribers:
            assert child.stdout is not None
            self.assertEqual(child.stdout.readline().strip(), "ready")
        publisher = start(self, PUBLISHER, str(daemon.port), TOKEN, str(count))
        assert publisher.stdout is not None and publisher.stdin is not None
        self.assertEqual(publisher.stdout.readline().strip(), "connected")
        daemon.signal(signal.SIGSTOP)
        self.addCleanup(daemon.signal, signal.SIGCONT)
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        self.assertEqual(publisher.stdout.readline().strip(), "pushed")
        daemon.signal(signal.SIGCONT)
        self.assertEqual(publisher.wait(120), 0)
        status = daemon.connect().status()
        self.assertEqual(status["channels"]["channels"]["hq"]["newest_seq"], count)
        daemon.connect().push("__end__", None, "hq")
        for child in subscribers:
            out, err = child.communicate(timeout=120)
            self.assertEqual(json.loads(out.strip().splitlines()[-1]),
                             {"count": count, "last": count, "gaps": 0}, err)

    def test_publish_returns_consecutive_seqs_after_the_pushes(self) -> None:
        """publish() waits for the daemon and returns the seq: pushes before it count."""
        daemon = Daemon(self)
        client = daemon.connect()
        for i in range(1000):
            client.push("k", i, "orders")
        self.assertEqual([client.publish(f"order-{i}", {"n": i}, "orders") for i in range(5)],
                         [1001, 1002, 1003, 1004, 1005])
        self.assertRaises(lttx.BadRequest, client.publish, "k", 1, "")
        self.assertRaises(lttx.FrameTooLarge, client.publish, "k", b"x" * (65 * 2**20), "o")


class LogTests(TestCase):
    """What a subscriber gets of the log: bursts, the past, resumption."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.publisher = self.daemon.connect()

    def test_subscriber_in_the_publishers_process_gets_a_whole_burst(self) -> None:
        """150,000 messages pushed at full speed, default options: a subscriber in the
        same process, slower than the pusher, gets every one of them, in order."""
        subscriber = self.daemon.connect()
        subscriber.subscribe("hq")
        for i in range(150_000):
            self.publisher.push(f"{i % 5000:06d}.SH", tick(i), "hq")
        self.publisher.flush()
        seqs = [subscriber.Q.get(timeout=30).seq for _ in range(150_000)]
        self.assertEqual(seqs, list(range(1, 150_001)))
        self.assertEqual(subscriber.gaps, 0)

    def test_history_since_and_last_values_then_live(self) -> None:
        """history=3, since=7 and last_values give exactly the past messages, then
        the live ones, with nothing missed or repeated at the seam."""
        for i in range(10):
            self.publisher.push(f"k{i % 3}", i, "hq")
        self.assertEqual(self.publisher.publish("k0", 10, "hq"), 11)
        history, since, values = (self.daemon.connect() for _ in range(3))
        self.assertEqual(history.subscribe("hq", history=3), {"hq": 12})
        since.subscribe("hq", since=7)
        values.subscribe("hq", last_values=True)
        self.publisher.publish("k1", 11, "hq")

        def read(client: Any, n: int) -> list[tuple[str, int, int]]:
            return [(m.key, m.data, m.seq) for m in (client.Q.get(timeout=10) for _ in range(n))]

        self.assertEqual(read(history, 4), [("k2", 8, 9), ("k0", 9, 10), ("k0", 10, 11),
                                            ("k1", 11, 12)])
        self.assertEqual([s for _, _, s in read(since, 5)], [8, 9, 10, 11, 12])
        self.assertEqual(read(values, 4), [("k1", 7, 8), ("k2", 8, 9), ("k0", 10, 11),
                                           ("k1", 11, 12)])
        for client in (history, since, values):
            self.assertTrue(client.Q.empty())

    def test_cut_twice_behind_a_proxy_every_message_exactly_once(self) -> None:
        """A subscriber behind a TCP proxy that is cut twice mid-stream resumes from
        its last seq each time: it ends with every one of 60,000 messages, once."""
        proxy = Proxy(self.daemon.port)
        self.addCleanup(proxy.close)
        subscriber = lttx.connect("127.0.0.1", proxy.port, token=TOKEN, timeout=15)
        self.addCleanup(subscriber.close)
        subscriber.subscribe("hq")
        seqs: list[int] = []
        for batch in range(60):
            for i in range(batch * 1000, (batch + 1) * 1000):
                self.publisher.push(f"{i % 5000:06d}.SH", tick(i), "hq")
            self.publisher.flush()
            if batch in (20, 40):
                while len(seqs) < batch * 1000 - 5000:
                    seqs.append(subscriber.Q.get(timeout=30).seq)
                proxy.cut()
        while len(seqs) < 60_000:
            seqs.append(subscriber.Q.get(timeout=30).seq)
        self.assertEqual(seqs, list(range(1, 60_001)))
        self.assertEqual(subscriber.gaps, 0)
        self.assertEqual(self.daemon.log_text().count("subscribed to hq"), 3)


class RestartTests(TestCase):
    def test_a_daemon_restart_is_a_new_epoch_and_a_gap(self) -> None:
        """After a restart the channel has another epoch: the resubscribed client is
        told of a gap (from its next seq, end unknown), then gets the new log from 1."""
        first = Daemon(self)
        subscriber = first.connect()
        gaps: list[tuple[Any, ...]] = []
        got = threading.Event()

        def on_gap(*args: Any) -> None:
            gaps.append(args)
            got.set()

        subscriber.subscribe("hq", on_gap=on_gap)
        publisher = first.connect()
        for i in range(5):
            publisher.push("k", i, "hq")
        self.assertEqual([subscriber.Q.get(timeout=10).seq for _ in range(5)], [1, 2, 3, 4, 5])
        port = first.port
        first.stop()
        second = Daemon(self, listen=[f"tcp:{port}:interface=127.0.0.1"])
        second.connect().push("k", "after", "hq")
        self.assertTrue(got.wait(30))
        self.assertEqual(gaps, [("hq", 6, None)])
        message = subscriber.Q.get(timeout=10)
        self.assertEqual((message.data, message.seq), ("after", 1))
        self.assertEqual((subscriber.gaps, subscriber.gaps_by_channel), (1, {"hq": 1}))
