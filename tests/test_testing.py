"""
lttx.testing, used as a user's own tests would use it: the in-memory daemon
with the Twisted-native client, the local daemon with the blocking client.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.testing import LocalDaemon, MemoryDaemon


class MemoryDaemonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.daemon = MemoryDaemon()
        self.addCleanup(self.daemon.close)

    def test_variables_round_trip(self) -> None:
        """A put is seen by another client's get once the daemon is flushed."""
        writer, reader = self.daemon.connect(), self.daemon.connect()
        put = writer.put("pos", {"600000.SH": 100})
        self.daemon.flush()
        self.assertIsNone(self.successResultOf(put))
        got = reader.get("pos")
        self.daemon.flush()
        self.assertEqual(self.successResultOf(got), {"600000.SH": 100})

    def test_messages_reach_a_subscriber(self) -> None:
        """A push arrives at another client's callback, with its seq."""
        received: list[lttx.Message] = []
        subscriber = self.daemon.connect(on_message=received.append)
        subscribed = subscriber.subscribe("ticks")
        self.daemon.flush()
        self.successResultOf(subscribed)
        self.daemon.connect().push("600000.SH", 10.23, "ticks")
        self.daemon.flush()
        self.assertEqual(received, [lttx.Message("ticks", "600000.SH", 10.23, 1)])

    def test_a_wrong_token_is_refused(self) -> None:
        """connect with another token raises AuthError, as a real daemon does."""
        self.assertRaises(lttx.AuthError, self.daemon.connect, token="wrong")

    def test_dropped_connections_are_resumed(self) -> None:
        """After the daemon drops every connection, the client reconnects and is served."""
        client = self.daemon.connect()
        self.daemon.drop_connections()
        self.daemon.clock.advance(0.1)
        self.daemon.flush()
        self.assertTrue(client.connected)
        self.assertEqual(self.daemon.connections_made, 2)


class LocalDaemonTests(SynchronousTestCase):
    def test_blocking_client(self) -> None:
        """A real daemon on 127.0.0.1: variables, a channel and a file with the blocking client."""
        with LocalDaemon() as daemon:
            with daemon.connect() as c:
                c.put("limits", [1, 2])
                self.assertEqual(c.get("limits"), [1, 2])
                c.subscribe("orders")
                with daemon.connect() as publisher:
                    publisher.push("o-1", {"qty": 5}, "orders")
                message = c.Q.get(timeout=10)
                self.assertEqual((message.channel, message.key, message.data),
                                 ("orders", "o-1", {"qty": 5}))
                source = self.mktemp()
                with open(source, "wb") as f:
                    f.write(b"x" * 100_000)
                sent = c.send_file(source, "report.bin")
                back = c.recv_file("report.bin", self.mktemp() + os.sep)
                self.assertEqual(back["md5"], sent["md5"])

    def test_large_keys_scans_run_in_the_daemons_own_reactor(self) -> None:
        """keys over more names than one slice is answered (its slices run in the
        daemon's reactor thread, not in the global reactor, which is not running)."""
        with LocalDaemon() as daemon:
            for i in range(5000):
                daemon.state.store.restore(f"n{i:04d}", i, 1, None)
            with daemon.connect() as c:
                self.assertEqual(c.keys("n1*"), [f"n{i}" for i in range(1000, 2000)])

    def test_wrong_token(self) -> None:
        """lttx.connect with a wrong token raises AuthError."""
        with LocalDaemon() as daemon:
            self.assertRaises(lttx.AuthError, daemon.connect, token="nope")
