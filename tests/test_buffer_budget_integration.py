"""
The real daemon under clients that hold its memory (issue 19 finding 6):
peers that ask for a large value and never read the reply, peers that send
most of a large frame and stop.  Together they stay under ``--max-buffered``;
a well-behaved client is told with a ``limit`` error and served again once
the memory is free.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.trial.unittest import TestCase

import lttx
from lttx.wire import codec

from .common import TOKEN, Daemon, frame

MiB = 1024 * 1024


class RawConnection:
    """An authenticated command connection spoken by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.sendall(frame([codec.REQUEST, 0, "hello", [TOKEN, {}]]))
        assert self.read_frame()[:2] == [codec.REPLY, 0]

    def read_frame(self) -> Any:
        (length,) = struct.unpack("!I", self.read_exactly(4))
        return codec.decode(self.read_exactly(length))

    def read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


class BufferBudgetDaemonTests(TestCase):

    def raw(self, daemon: Daemon) -> RawConnection:
        connection = RawConnection(daemon.port)
        self.addCleanup(connection.close)
        return connection

    def test_unread_replies_stay_under_the_budget(self) -> None:
        """Peers asking for a 16 MiB value and reading nothing: the daemon sends
        replies until the unsent ones reach --max-buffered, then answers `limit`;
        a reading client gets `limit` too, then its value once the peers are gone."""
        daemon = Daemon(self, "--max-buffered", "64MiB")
        client = daemon.connect()
        client.put("big", b"x" * (16 * MiB))
        rss_before = daemon.rss_kib()
        hogs = []
        for i in range(40):
            hog = self.raw(daemon)
            hog.sock.sendall(frame([codec.REQUEST, 1, "get", ["big"]]))
            hogs.append(hog)
            if client.status()["buffers"]["replies_refused"]:
                break
        buffers = client.status()["buffers"]
        self.assertGreaterEqual(buffers["replies_refused"], 1, buffers)
        self.assertLessEqual(buffers["held"], 64 * MiB)
        with self.assertRaises(lttx.LimitExceeded) as refused:
            client.get("big")
        self.assertIn("--max-buffered", str(refused.exception))
        print(f"\n  {len(hogs)} peers not reading 16 MiB replies: daemon RSS "
              f"+{(daemon.rss_kib() - rss_before) // 1024} MiB, held "
              f"{buffers['held'] // MiB} MiB of a 64 MiB budget")
        for hog in hogs:
            hog.close()
        for _ in range(200):  # each status is a round trip: the closes get served
            if client.status()["buffers"]["held"] < 32 * MiB:
                break
        self.assertEqual(client.get("big"), b"x" * (16 * MiB))

    def test_incomplete_frames_stay_under_the_budget(self) -> None:
        """Peers that send 1 MiB of a 40 MiB frame and stop: two fit in a 100 MiB
        budget, the third is refused with `limit` and closed; small requests are
        served throughout."""
        daemon = Daemon(self, "--max-buffered", "100MiB")
        client = daemon.connect()
        start = frame([codec.REQUEST, 1, "put", ["big", b"\0" * (40 * MiB)]])[:MiB]
        stalled = [self.raw(daemon) for _ in range(2)]
        for peer in stalled:
            peer.sock.sendall(start)
        for _ in range(200):  # until the daemon has read both starts
            if client.status()["buffers"]["held"] >= 80 * MiB:
                break
        third = self.raw(daemon)
        third.sock.sendall(start)
        kind, request_id, code, message = third.read_frame()
        self.assertEqual((kind, request_id, code), (codec.ERROR, None, "limit"))
        self.assertIn("--max-buffered of 104857600", message)
        self.assertRaises(EOFError, third.read_frame)
        self.assertEqual(client.ping(), "pong")
        self.assertEqual(client.status()["buffers"]["frames_refused"], 1)
        daemon.wait_for_log("a frame of 41943.* bytes refused")
