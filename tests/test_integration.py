"""
End-to-end: the real ``twistd -n lttx`` on 127.0.0.1 and the blocking client.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import sys
import threading

from twisted.trial.unittest import TestCase

import lttx

from .common import PACKAGE_ROOT, TOKEN, Daemon


class VariablesTests(TestCase):
    """Cloud variables through a real daemon."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()

    def test_nested_values_round_trip(self) -> None:
        """Nested dicts and lists with bytes, Chinese text, None and floats come back equal."""
        value = {
            "600000.SH": {"name": "浦发银行", "price": 10.23, "bid": [10.22, 10.21],
                          "raw": b"\x00\xff\x10", "halted": False, "note": None},
            "orders": [{"id": 2**62, "side": "买"}, [], {}],
            "negative": -2**63,
        }
        self.client.put("pos", value)
        self.assertEqual(self.client.get("pos"), value)
        self.assertIsInstance(self.client.get("pos")["600000.SH"]["raw"], bytes)

    def test_missing_and_default(self) -> None:
        """A missing name gives None or the default; a stored None stays None."""
        self.assertIsNone(self.client.get("nothing"))
        self.assertEqual(self.client.get("nothing", default=7), 7)
        self.client.put("none", None)
        self.assertIsNone(self.client.get("none", default=7))

    def test_in_place_operations(self) -> None:
        """dict_change, list_* and their errors behave as SPEC section 3 says."""
        c = self.client
        c.dict_change("pos", "000001.SZ", 200)
        c.dict_change("pos", "600000.SH", 100)
        self.assertEqual(c.get_dict_value("pos", "000001.SZ"), 200)
        self.assertEqual(c.get_dict_value("pos", "none", default=0), 0)
        self.assertEqual(c.list_append("orders", {"id": 1}), 1)
        self.assertEqual(c.list_append("orders", {"id": 2}), 2)
        self.assertEqual(c.get_list_value("orders", -1), {"id": 2})
        self.assertTrue(c.list_remove("orders", {"id": 1}))
        self.assertFalse(c.list_remove("orders", {"id": 1}))
        self.assertEqual(c.list_pop("orders", 0), {"id": 2})
        self.assertRaises(lttx.IndexOutOfRange, c.list_pop, "orders")
        self.assertRaises(lttx.WrongTypeError, c.dict_change, "orders", "k", 1)
        self.assertRaises(lttx.WrongTypeError, c.list_append, "pos", 1)
        self.assertRaises(lttx.NotFound, c.list_pop, "no-such-list")
        self.assertEqual(c.keys("p*"), ["pos"])
        self.assertEqual(c.keys(), ["orders", "pos"])
        self.assertTrue(c.delete("pos"))
        self.assertFalse(c.exists("pos"))

    def test_unencodable_value_is_refused_client_side(self) -> None:
        """A set or an int beyond 64 bits raises EncodeError and the connection goes on."""
        self.assertRaises(lttx.EncodeError, self.client.put, "x", {1, 2})
        self.assertRaises(lttx.EncodeError, self.client.put, "x", 2**64)
        self.assertEqual(self.client.ping(), "pong")

    def test_frame_over_limit_is_refused(self) -> None:
        """A value over --max-frame raises FrameTooLarge and the connection goes on."""
        daemon = Daemon(self, "--max-frame", "64KiB")
        client = daemon.connect()
        self.assertRaises(lttx.FrameTooLarge, client.put, "big", b"x" * 100_000)
        client.put("small", b"x" * 1000)
        self.assertEqual(len(client.get("small")), 1000)

    def test_threads_share_one_client(self) -> None:
        """8 threads append 300 items each to one list: none lost, each thread's in order."""
        errors: list[BaseException] = []

        def append(thread: int) -> None:
            try:
                for i in range(300):
                    self.client.list_append("shared", [thread, i])
            except BaseException as e:  # reported by the main thread below
                errors.append(e)

        threads = [threading.Thread(target=append, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        items = self.client.get("shared")
        self.assertEqual(len(items), 8 * 300)
        for thread in range(8):
            self.assertEqual([i for t, i in items if t == thread], list(range(300)))


class AuthTests(TestCase):
    """The token and protected mode."""

    def test_wrong_token(self) -> None:
        """A wrong token raises AuthError, and the daemon logs one line."""
        daemon = Daemon(self)
        self.assertRaises(lttx.AuthError, lttx.connect, "127.0.0.1", daemon.port,
                          token="wrong", timeout=10)
        daemon.wait_for_log("failed to authenticate: wrong token")
        self.assertNotIn("Traceback", daemon.log_text())

    def test_no_daemon(self) -> None:
        """Nothing listening raises ConnectError, a ConnectionError."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with self.assertRaises(ConnectionError):
            lttx.connect("127.0.0.1", port, timeout=5)

    def test_protected_mode(self) -> None:
        """Without a token the daemon says so and serves loopback clients."""
        daemon = Daemon(self, token=None)
        daemon.wait_for_log("protected mode")
        client = daemon.connect()
        client.put("a", 1)
        self.assertEqual(client.get("a"), 1)


class GarbageTests(TestCase):
    """Hostile and broken connections do not hurt anyone else."""

    def test_garbage_connections_leave_the_daemon_serving(self) -> None:
        """Hundreds of garbage connections, then a good client is served normally."""
        daemon = Daemon(self)
        good = daemon.connect()
        good.put("before", 1)
        rng = random.Random(2025)
        for i in range(300):
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
                kind = i % 3
                if kind == 0:
                    s.sendall(rng.randbytes(rng.randint(1, 2000)))
                elif kind == 1:
                    s.sendall(struct.pack("!I", 0xFFFFFFF0) + b"x" * 100)
                else:
                    s.sendall(struct.pack("!I", 1000) + b"\x94\x00\x00")  # truncated frame
        self.assertEqual(good.get("before"), 1)
        other = daemon.connect()
        other.put("after", [1, 2])
        self.assertEqual(good.get("after"), [1, 2])
        self.assertNotIn("Traceback", daemon.log_text())


class UnreadRepliesTests(TestCase):
    """A client that never reads its replies cannot grow the daemon."""

    def test_unread_replies_do_not_pile_up_in_the_daemon(self) -> None:
        """1000 pipelined gets of a 1 MiB value, never read: the daemon stops reading
        that connection, its memory stays bounded, and other clients are served."""
        from lttx.wire import codec

        from .common import frame

        daemon = Daemon(self)
        good = daemon.connect()
        good.put("v", b"x" * (1024 * 1024))
        rss_before = daemon.rss_kib()
        hog = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        self.addCleanup(hog.close)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        hog.sendall(frame([codec.REQUEST, 0, "hello", [TOKEN, {}]]))
        requests = b"".join(frame([codec.REQUEST, i, "get", ["v"]]) for i in range(1, 1001))
        hog.setblocking(False)
        sent = 0
        # Send what the daemon reads; once it stops reading, the socket fills up.
        for _ in range(200):
            try:
                sent += hog.send(requests[sent:])
            except BlockingIOError:
                if good.get("v") is None:  # a round trip: gives the daemon time to act
                    break
            if sent == len(requests):
                break
        self.assertEqual(good.ping(), "pong")
        self.assertEqual(len(good.get("v")), 1024 * 1024)
        growth_mib = (daemon.rss_kib() - rss_before) / 1024
        self.assertLess(growth_mib, 64, f"daemon grew by {growth_mib:.0f} MiB")


def run_script(daemon: Daemon, body: str) -> "subprocess.CompletedProcess[str]":
    """Run ``body`` as a plain script with ``c``, a client of ``daemon``, never closed."""
    script = (f"import lttx\nc = lttx.connect('127.0.0.1', {daemon.port}, token={TOKEN!r})\n"
              + body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))


class ProcessTests(TestCase):
    """The client inside real programs."""

    def test_exit_without_close(self) -> None:
        """A script that never calls close() exits at once."""
        daemon = Daemon(self)
        result = run_script(daemon, "c.put('from-script', 42)\nprint(c.get('from-script'))\n")
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "42"), result.stderr)

    def test_pushes_of_a_script_without_close_are_delivered(self) -> None:
        """A script that pushes 20,000 messages and exits without close() delivers them all."""
        daemon = Daemon(self)
        subscriber = daemon.connect()
        subscriber.subscribe("hq")
        result = run_script(daemon, "for i in range(20000):\n    c.push('k', i, 'hq')\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        received = [subscriber.Q.get(timeout=15).data for _ in range(20000)]
        self.assertEqual(received, list(range(20000)))

    def test_twistd_lists_the_plugin(self) -> None:
        """``twistd --help`` lists lttx and ``twistd lttx --help`` documents the options."""
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        out = subprocess.run([sys.executable, "-c",
                              "from twisted.scripts.twistd import run; run()", "--help"],
                             capture_output=True, text=True, env=env, timeout=60).stdout
        self.assertRegex(out, r"\n\s+lttx\s+LTtx")
        out = subprocess.run([sys.executable, "-c",
                              "from twisted.scripts.twistd import run; run()", "lttx", "--help"],
                             capture_output=True, text=True, env=env, timeout=60).stdout
        for option in ("--port", "--listen", "--token", "--token-file", "--data-dir",
                       "--fsync", "--max-frame", "--subscriber-buffer"):
            self.assertIn(option, out)
